"""Silver ``stays``: the ICU-stay cohort with outcomes, phenotype labels and split (SPEC §2, §7, §8).

Pure transforms over the bronze tables ``icustays``, ``admissions``, ``patients`` and
``diagnoses_icd`` (columns of ``spark_jobs/mimic_schema.py``). Every stay that does not make it
into the cohort is returned as a reject with its reason, so that the stage can prove
``stays in = stays kept + stays rejected`` and report how many fell at each rule — the
reference counts of SPEC §2 are checked that way.

Rule order (a stay gets the first reason that applies): ``duplicate_stay`` (its stay_id is on
more than one icustays row), ``transfer`` (first_careunit differs from
last_careunit), ``missing_admission`` (hadm_id null or not in admissions), ``conflicting_admission``
(two different admissions rows with its hadm_id),
``multiple_stays_in_admission`` (more than one non-transfer stay in the admission: like the
references, stays are counted after dropping transfers and before any other rule),
``missing_patient``, ``conflicting_patient`` (two different patients rows), ``bad_times`` (intime/outtime null or outtime <= intime), ``missing_age``,
``minor`` (age < ``min_age``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from spark_jobs import resources
from spark_jobs.quality import Checked, rejects

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, SparkSession

STAGE = "cohort"
SOURCE = "icustays"
SPLITS = ("train", "val", "test")

STAYS_COLUMNS = (
    "subject_id",
    "hadm_id",
    "stay_id",
    "gender",
    "age",
    "admittime",
    "dischtime",
    "intime",
    "outtime",
    "deathtime",
    "dod",
    "los_hours",
    "mortality",
    "death_hours",
    "phenotypes",
    "split",
)


@dataclass
class CohortConfig:
    """How the cohort is selected, labelled and split.

    ``default``: anchor_age, mortality from deathtime / hospital_expire_flag, hash split.
    ``parity`` (:meth:`parity`, conf/etl/parity.yaml): mortality from deathtime and a ``dod``
    inside the admission, never hospital_expire_flag, as the references. The split stays the hash
    split: the reference subject lists (``split_method="files"``) only mean something on real
    MIMIC-IV ids, and the split changes neither samples, labels nor matrices.
    """

    min_age: int = 18
    # anchor_age + year(intime) - anchor_year instead of anchor_age alone.
    age_from_intime: bool = False
    # Count a patients.dod that falls inside [admittime, dischtime] as in-hospital death (references).
    count_dod: bool = False
    # Count hospital_expire_flag = 1 as in-hospital death (SPEC §2.4); the references never read it.
    count_expire_flag: bool = True
    split_method: Literal["hash", "files"] = "hash"
    # hash split: subject-level fractions; test gets the rest. The salt makes the split a choice
    # that can be changed on purpose (a new salt is a new split), never by accident.
    split_salt: str = "medmod-v1"
    train_fraction: float = 0.7
    val_fraction: float = 0.1
    # files split: `subject_id,flag` lists (flag 1 = in that set; no header); empty = the shipped
    # reference lists of spark_jobs/resources/splits/. Local paths or any URL Spark can read.
    split_test_file: str = ""
    split_val_file: str = ""

    def __post_init__(self) -> None:
        if self.split_method not in ("hash", "files"):
            raise ValueError(f"split_method must be 'hash' or 'files', got {self.split_method!r}")
        if not (
            0.0 <= self.train_fraction
            and 0.0 <= self.val_fraction
            and self.train_fraction + self.val_fraction <= 1.0
        ):
            raise ValueError("train_fraction and val_fraction must be >= 0 and sum to <= 1")

    @classmethod
    def parity(cls, **overrides) -> CohortConfig:
        """The references' mortality: deathtime or dod inside the admission, no expire flag."""
        return cls(**{"count_dod": True, "count_expire_flag": False, **overrides})


# --------------------------------------------------------------------------------------------
# selection


def _hours_between(end: Column, start: Column) -> Column:
    from pyspark.sql import functions as F

    return (end.cast("double") - start.cast("double")) / F.lit(3600.0)


def _one_row_per_id(df: DataFrame, key: str, count_col: str) -> DataFrame:
    """``df`` without exact duplicate rows, one row per ``key``, with ``count_col``: how many
    different rows the key had (more than one: a conflict the caller rejects)."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    distinct = df.distinct()
    counted = distinct.withColumn(count_col, F.count(F.lit(1)).over(Window.partitionBy(key)))
    return counted.dropDuplicates([key])


def select_stays(
    icustays: DataFrame, admissions: DataFrame, patients: DataFrame, cfg: CohortConfig | None = None
) -> Checked:
    """Apply the SPEC §2 selection; kept rows carry admission and patient columns and ``age``.

    Rejected rows are the ``icustays`` rows (as JSON records) with their reason.
    """
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    cfg = cfg or CohortConfig()
    icu_cols = icustays.columns
    transfer = ~F.col("first_careunit").eqNullSafe(F.col("last_careunit"))
    stays = icustays.withColumn("__transfer", transfer)
    per_adm = Window.partitionBy("hadm_id")
    stays = stays.withColumn("__n_in_adm", F.sum(F.when(~F.col("__transfer"), 1).otherwise(0)).over(per_adm))
    stays = stays.withColumn("__n_stay", F.count(F.lit(1)).over(Window.partitionBy("stay_id")))

    # Ids are unique in MIMIC. A repeated row is one fact (kept once); an id with two different
    # rows cannot be trusted: its stays are rejected, never joined to either row (or to both).
    adm = _one_row_per_id(
        admissions.select("hadm_id", "admittime", "dischtime", "deathtime", "hospital_expire_flag"),
        "hadm_id",
        "__n_adm",
    ).withColumn("__has_adm", F.lit(True))
    pat = _one_row_per_id(
        patients.select("subject_id", "gender", "anchor_age", "anchor_year", "dod"), "subject_id", "__n_pat"
    ).withColumn("__has_pat", F.lit(True))
    # admissions and patients are a few hundred thousand narrow rows even in MIMIC-IV v3:
    # broadcasting them avoids shuffling icustays twice.
    joined = stays.join(F.broadcast(adm), "hadm_id", "left").join(F.broadcast(pat), "subject_id", "left")

    age = F.col("anchor_age")
    if cfg.age_from_intime:
        age = age + F.year("intime") - F.col("anchor_year")
    joined = joined.withColumn("age", age.cast("int"))

    bad_times = F.col("intime").isNull() | F.col("outtime").isNull() | (F.col("outtime") <= F.col("intime"))
    reason = (
        F.when(F.col("__n_stay") > 1, "duplicate_stay")
        .when(F.col("__transfer"), "transfer")
        .when(F.col("hadm_id").isNull() | F.col("__has_adm").isNull(), "missing_admission")
        .when(F.col("__n_adm") > 1, "conflicting_admission")
        .when(F.col("__n_in_adm") > 1, "multiple_stays_in_admission")
        .when(F.col("__has_pat").isNull(), "missing_patient")
        .when(F.col("__n_pat") > 1, "conflicting_patient")
        .when(bad_times, "bad_times")
        .when(F.col("age").isNull(), "missing_age")
        .when(F.col("age") < F.lit(cfg.min_age), "minor")
    )
    tagged = joined.withColumn("__reason", reason)
    kept = tagged.where(F.col("__reason").isNull()).drop(
        "__reason", "__transfer", "__n_in_adm", "__has_adm", "__has_pat", "__n_stay", "__n_adm", "__n_pat"
    )
    rejected = rejects(
        tagged.where(F.col("__reason").isNotNull()), STAGE, SOURCE, F.col("__reason"), record_columns=icu_cols
    )
    return Checked(kept, rejected)


# --------------------------------------------------------------------------------------------
# outcomes


def add_outcomes(stays: DataFrame, count_dod: bool = False, count_expire_flag: bool = True) -> DataFrame:
    """``mortality``, ``los_hours`` and ``death_hours`` (SPEC §2.4).

    mortality = deathtime in [admittime, dischtime], or (with ``count_expire_flag``)
    hospital_expire_flag = 1, or (with ``count_dod``) dod in [admittime, dischtime]. dod is a
    date: like the references it is compared as midnight of that day, so a dod on the admission
    day itself only counts if admitted at 00:00.
    """
    from pyspark.sql import functions as F

    adm, dis = F.col("admittime"), F.col("dischtime")
    died = F.col("deathtime").isNotNull() & F.col("deathtime").between(adm, dis)
    if count_expire_flag:
        died = died | (F.coalesce(F.col("hospital_expire_flag"), F.lit(0)) == 1)
    if count_dod:
        dod_ts = F.col("dod").cast("timestamp")
        died = died | (dod_ts.isNotNull() & dod_ts.between(adm, dis))
    return (
        stays.withColumn("mortality", F.when(died, 1).otherwise(0).cast("int"))
        .withColumn("los_hours", _hours_between(F.col("outtime"), F.col("intime")))
        .withColumn("death_hours", _hours_between(F.col("deathtime"), F.col("intime")))
    )


# --------------------------------------------------------------------------------------------
# phenotypes


def phenotype_code_table(spark: SparkSession) -> DataFrame:
    """``icd_version int, icd_code string, group int`` for the 25 groups (small; broadcast)."""
    rows = []
    for i, g in enumerate(resources.phenotype_groups()):
        rows += [(9, c, i) for c in g.icd9]
        rows += [(10, c, i) for c in g.icd10]
    return spark.createDataFrame(rows, "icd_version int, icd_code string, group int")


def normalize_icd(code: Column) -> Column:
    """MIMIC-IV codes come without dots; other exports may have them, or padding, or lower case."""
    from pyspark.sql import functions as F

    return F.upper(F.regexp_replace(F.trim(code), r"\.", ""))


def add_phenotypes(stays: DataFrame, diagnoses: DataFrame, codes: DataFrame | None = None) -> DataFrame:
    """``phenotypes array<int>``: 1 where any diagnosis of the stay's admission is in the group.

    Codes match exactly (after :func:`normalize_icd`) within their ICD version, so an ICD-9 code
    can never hit an ICD-10 code of the same spelling. Stays without diagnoses get all zeros.
    """
    from pyspark.sql import functions as F

    codes = codes if codes is not None else phenotype_code_table(stays.sparkSession)
    n = len(resources.phenotype_groups())
    dx = diagnoses.select(
        "hadm_id",
        F.col("icd_version").cast("int").alias("icd_version"),
        normalize_icd(F.col("icd_code")).alias("icd_code"),
    )
    hits = (
        dx.join(F.broadcast(codes), ["icd_version", "icd_code"])
        .groupBy("hadm_id")
        .agg(F.collect_set("group").alias("__groups"))
    )
    labels = F.transform(
        F.sequence(F.lit(0), F.lit(n - 1)),
        lambda i: F.when(F.array_contains(F.coalesce(F.col("__groups"), F.array().cast("array<int>")), i), 1)
        .otherwise(0)
        .cast("int"),
    )
    return stays.join(hits, "hadm_id", "left").withColumn("phenotypes", labels).drop("__groups")


# --------------------------------------------------------------------------------------------
# split


def assign_split_hash(
    stays: DataFrame, salt: str = "medmod-v1", train_fraction: float = 0.7, val_fraction: float = 0.1
) -> DataFrame:
    """Subject-level split from xxhash64(salt, subject_id): the same on every run and machine.

    Spark's xxhash64 is specified (seed 42, fixed byte layout of a long), so the assignment does
    not depend on partitioning, executor count or Python's hash randomisation.
    """
    from pyspark.sql import functions as F

    buckets = 1_000_000
    u = F.pmod(F.xxhash64(F.lit(salt), F.col("subject_id").cast("long")), F.lit(buckets)) / F.lit(
        float(buckets)
    )
    split = (
        F.when(u < F.lit(train_fraction), "train")
        .when(u < F.lit(train_fraction + val_fraction), "val")
        .otherwise("test")
    )
    return stays.withColumn("split", split)


def read_split_list(spark: SparkSession, path: str) -> DataFrame:
    """A reference list (``subject_id,flag`` CSV without header) as ``subject_id long, flag int``."""
    return spark.read.csv(str(path), schema="subject_id long, flag int", header=False)


def assign_split_files(stays: DataFrame, test_list: DataFrame, val_list: DataFrame) -> DataFrame:
    """Split from the reference lists: flag 1 in the test list -> test, else flag 1 in the val
    list -> val, else train (also subjects absent from both lists)."""
    from pyspark.sql import functions as F

    def members(lst: DataFrame, name: str) -> DataFrame:
        return (
            lst.where(F.col("flag") == 1)
            .select("subject_id", F.lit(True).alias(name))
            .dropDuplicates(["subject_id"])
        )

    tagged = stays.join(F.broadcast(members(test_list, "__test")), "subject_id", "left").join(
        F.broadcast(members(val_list, "__val")), "subject_id", "left"
    )
    split = F.when(F.col("__test"), "test").when(F.col("__val"), "val").otherwise("train")
    return tagged.withColumn("split", split).drop("__test", "__val")


def assign_split(stays: DataFrame, cfg: CohortConfig) -> DataFrame:
    if cfg.split_method == "hash":
        return assign_split_hash(stays, cfg.split_salt, cfg.train_fraction, cfg.val_fraction)
    spark = stays.sparkSession
    test_default, val_default = resources.split_files()
    test_list = read_split_list(spark, cfg.split_test_file or str(test_default))
    val_list = read_split_list(spark, cfg.split_val_file or str(val_default))
    return assign_split_files(stays, test_list, val_list)


# --------------------------------------------------------------------------------------------
# the whole stage


def build_stays(
    icustays: DataFrame,
    admissions: DataFrame,
    patients: DataFrame,
    diagnoses: DataFrame,
    cfg: CohortConfig | None = None,
) -> Checked:
    """Silver ``stays`` (columns of TABLES.md, in that order) and the rejected icustays rows."""
    from pyspark.sql import functions as F

    cfg = cfg or CohortConfig()
    selected = select_stays(icustays, admissions, patients, cfg)
    stays = add_outcomes(selected.kept, cfg.count_dod, cfg.count_expire_flag)
    stays = add_phenotypes(stays, diagnoses)
    stays = assign_split(stays, cfg)
    typed = stays.select(
        F.col("subject_id").cast("long"),
        F.col("hadm_id").cast("long"),
        F.col("stay_id").cast("long"),
        F.col("gender").cast("string"),
        F.col("age").cast("int"),
        *[F.col(c).cast("timestamp") for c in ("admittime", "dischtime", "intime", "outtime", "deathtime")],
        F.col("dod").cast("date"),
        F.col("los_hours").cast("double"),
        F.col("mortality").cast("int"),
        F.col("death_hours").cast("double"),
        F.col("phenotypes").cast("array<int>"),
        F.col("split").cast("string"),
    )
    return Checked(typed.select(*STAYS_COLUMNS), selected.rejected)
