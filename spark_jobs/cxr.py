"""Silver ``cxr``: the AP images of MIMIC-CXR-JPG with study time, file path and CheXpert labels.

Every task pairs stays with images by time and keeps AP views only (SPEC §6), so this stage turns
MIMIC-CXR's split date/time fields into one timestamp once, and counts every image it leaves out:
non-AP views by view (``view_PA``, ``view_LATERAL``, ...; ``not_ap`` when the view is blank) and
unparseable dates (``bad_study_time``). Labels stay raw (1.0 / 0.0 / -1.0 / null) so that each task
can apply its own uncertainty policy; an image whose study has no CheXpert row gets ``labels`` null.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from spark_jobs.mimic_schema import CHEXPERT_LABELS
from spark_jobs.quality import Checked, split_by

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame

STAGE = "cxr"
AP = "AP"
COLUMNS = ("dicom_id", "subject_id", "study_id", "study_time", "view", "path", "labels")


@dataclass
class CxrConfig:
    """How image times are read. :meth:`parity` copies the references' ``int(float(StudyTime))``."""

    # Drop the fraction of a second of StudyTime, as the references do before pairing (an image
    # 0.4 s after a window's end then falls inside it).
    truncate_study_time: bool = False

    @classmethod
    def parity(cls, **overrides) -> CxrConfig:
        return cls(**{"truncate_study_time": True, **overrides})


def study_time(study_date: Column, study_time_col: Column, truncate: bool = False) -> Column:
    """StudyDate (YYYYMMDD int) + StudyTime (HHMMSS.fff float) as a timestamp; null if invalid.

    StudyTime drops its leading zeros as a number (``5923.5`` is 00:59:23.5), so hours, minutes
    and seconds are read positionally from the left-padded value. The fraction is kept to the
    microsecond through a decimal, without float noise (``truncate``: dropped). Invalid parts (month 13, Feb 30, minute 60,
    negative or NaN times) give null rather than an error, also under ANSI mode.
    """
    from pyspark.sql import functions as F

    date_ok = study_date.isNotNull() & study_date.between(10000101, 99991231)
    day = F.try_to_timestamp(F.when(date_ok, study_date.cast("string")), F.lit("yyyyMMdd"))
    t = study_time_col.cast("double")
    time_ok = t.isNotNull() & ~F.isnan(t) & (t >= 0) & (t < 240000)
    dec = F.when(time_ok, t).cast("decimal(18,6)")
    whole = F.floor(dec).cast("long")
    hh = F.floor(whole / 10000).cast("long")
    mm = (F.floor(whole / 100) % 100).cast("long")
    ss = (whole % 100).cast("long")
    micros_frac = F.lit(0) if truncate else ((dec - whole) * 1000000).cast("long")
    parts_ok = time_ok & (hh <= 23) & (mm <= 59) & (ss <= 59)
    micros = ((hh * 60 + mm) * 60 + ss) * 1000000 + micros_frac
    return F.when(parts_ok & day.isNotNull(), F.timestamp_micros(F.unix_micros(day) + micros))


def view_reason(view: Column) -> Column:
    """Null for AP; ``view_<X>`` for any other view (spaces etc. as ``_``); ``not_ap`` when blank."""
    from pyspark.sql import functions as F

    norm = F.upper(F.trim(view))
    return (
        F.when(norm.isNull() | (norm == ""), F.lit("not_ap"))
        .when(norm != AP, F.concat(F.lit("view_"), F.regexp_replace(norm, "[^A-Z0-9]+", "_")))
        .otherwise(F.lit(None).cast("string"))
    )


def image_path(subject_id: Column, study_id: Column, dicom_id: Column) -> Column:
    """:func:`spark_jobs.mimic_schema.cxr_image_relpath` as a Spark expression (no Python UDF)."""
    from pyspark.sql import functions as F

    sid = subject_id.cast("string")
    return F.concat(
        F.lit("files/p"),
        F.substring(sid, 1, 2),
        F.lit("/p"),
        sid,
        F.lit("/s"),
        study_id.cast("string"),
        F.lit("/"),
        dicom_id,
        F.lit(".jpg"),
    )


def study_labels(chexpert: DataFrame) -> DataFrame:
    """``subject_id, study_id, labels`` (14 raw values in CHEXPERT_LABELS order), one row per study.

    MIMIC-CXR has one CheXpert row per study; should a file repeat a study, the smallest label
    vector is taken so that the join can never duplicate images and the result is deterministic.
    """
    from pyspark.sql import functions as F

    labels = F.array(*[F.col(f"`{c}`").cast("double") for c in CHEXPERT_LABELS])
    return (
        chexpert.select(
            F.col("subject_id").cast("long").alias("subject_id"),
            F.col("study_id").cast("long").alias("study_id"),
            labels.alias("labels"),
        )
        .groupBy("subject_id", "study_id")
        .agg(F.min("labels").alias("labels"))
    )


def build_cxr(metadata: DataFrame, chexpert: DataFrame, cfg: CxrConfig | None = None) -> Checked:
    """Silver ``cxr`` from bronze metadata and chexpert; rejected: non-AP views and bad times.

    A non-AP image is reported by its view even when its time is also broken: it would be left
    out either way, and the view is the reason that decides it.
    """
    from pyspark.sql import functions as F

    cfg = cfg or CxrConfig()
    when = study_time(F.col("StudyDate"), F.col("StudyTime"), cfg.truncate_study_time)
    reason = F.coalesce(
        view_reason(F.col("ViewPosition")),
        F.when(when.isNull(), F.lit("bad_study_time")),
    )
    checked = split_by(metadata, reason, STAGE, "metadata")
    images = checked.kept.select(
        F.col("dicom_id").cast("string").alias("dicom_id"),
        F.col("subject_id").cast("long").alias("subject_id"),
        F.col("study_id").cast("long").alias("study_id"),
        when.alias("study_time"),
        F.lit(AP).alias("view"),
        image_path(F.col("subject_id"), F.col("study_id"), F.col("dicom_id")).alias("path"),
    )
    kept = images.join(study_labels(chexpert), ["subject_id", "study_id"], "left").select(*COLUMNS)
    return Checked(kept, checked.rejected)
