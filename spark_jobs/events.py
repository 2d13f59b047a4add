"""Silver ``events``: the 17 benchmark variables, cleaned, attached to cohort stays (SPEC §3).

Pure transforms from bronze ``chartevents`` and ``labevents`` (columns of
``spark_jobs/mimic_schema.py``) and silver ``stays`` to silver ``events`` (TABLES.md). Every input
row is either kept or rejected with a reason, so the stage can show
``chartevents + labevents = kept (source != 'derived') + rejected``; derived GCS totals are extra
rows (``source = 'derived'``) and are counted apart.

Steps and reject reasons, in the order they apply:

1. item map (preset ``default`` or ``parity``) on (itemid, raw table) — ``item_not_in_map``.
2. attach to a stay. chartevents: by ``stay_id`` — ``stay_not_in_cohort`` (also null stay_id);
   ``missing_charttime``. Charted times outside the stay window are kept (hours < 0 or > LOS; the
   discretizer drops them). labevents have no stay_id: a lab attaches to the subject's cohort
   stay whose [intime, outtime] holds its charttime, and whose hadm_id equals the lab's hadm_id
   when the lab has one. A lab with a null hadm_id attaches by subject and time window alone
   (MIMIC-IV leaves hadm_id null on many in-ICU labs; the window is the evidence; where two of
   a subject's stays overlap, the earlier stay keeps the overlap). Anything else — outside
   every window, other admission, no charttime — is ``no_stay``. With ``null_hadm="drop"``
   (parity) every event without hadm_id is ``null_hadm_id``, as in the reference.
3. clean the value (reference rules, by itemid unit hint and ``valueuom``; height in -> cm is
   x2.54 without the reference's rounding to whole cm): ``missing_value``,
   ``non_numeric`` (e.g. glucose "ERROR", pH "<6.8"), ``unknown_category`` (a CRR or GCS text
   outside the channel's list: counted, never a crash). The parity flags read numbers from the
   text (unsigned for glucose / pH / SpO2) and switch off the unit tests the reference never
   fires (see :class:`EventsConfig`).
4. outlier policy (default on): outside [OUTLIER LOW, OUTLIER HIGH] — ``outlier``; then clip to
   [VALID LOW, VALID HIGH]. Continuous channels only; categorical values are already validated
   against their value lists.
5. duplicates (stay_id, charttime, variable): the row with the largest storetime, then itemid,
   wins (parity: the largest value, as the reference sorts it) — the others are ``duplicate``.
6. derived GCS total (default preset): E + V + M of one stay charted at the same charttime.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, get_args

from spark_jobs import resources
from spark_jobs.quality import Checked, rejects

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, SparkSession

STAGE = "events"
CHART, LAB, DERIVED = resources.CHARTEVENTS, resources.LABEVENTS, "derived"
DERIVED_ITEMID = -1

CRR = "Capillary refill rate"
DBP = "Diastolic blood pressure"
SBP = "Systolic blood pressure"
FIO2 = "Fraction inspired oxygen"
GCS_EYE = "Glascow coma scale eye opening"
GCS_MOTOR = "Glascow coma scale motor response"
GCS_VERBAL = "Glascow coma scale verbal response"
GCS_TOTAL = "Glascow coma scale total"
HEIGHT = "Height"
SPO2 = "Oxygen saturation"
TEMP = "Temperature"
WEIGHT = "Weight"
GCS_COMPONENTS = (GCS_EYE, GCS_MOTOR, GCS_VERBAL)
GLUCOSE, PH = "Glucose", "pH"
# The channels the reference parses with its unsigned pattern (its clean_lab and clean_o2sat).
UNSIGNED_CHANNELS = (GLUCOSE, PH, SPO2)
# The channels the reference does not clean: their values stay text, so its duplicate sort
# compares them as text.
TEXT_CHANNELS = ("Heart Rate", "Respiratory rate", "Mean blood pressure", GCS_TOTAL, *GCS_COMPONENTS)

NullHadm = Literal["attach", "drop"]
Numbers = Literal["valuenum", "value"]
Duplicates = Literal["storetime", "value"]

# The raw columns both sources share (the record of a rejected row, and the attach input).
RAW_COLUMNS = (
    "source",
    "subject_id",
    "hadm_id",
    "stay_id",
    "labevent_id",
    "itemid",
    "charttime",
    "storetime",
    "value",
    "valuenum",
    "valueuom",
)
EVENTS_COLUMNS = (
    "stay_id",
    "subject_id",
    "charttime",
    "hours",
    "variable",
    "value",
    "valuenum",
    "itemid",
    "source",
)

# Reference CRR texts (CareVue) and MetaVision's; compared lower-cased.
CRR_NORMAL = ("normal <3 secs", "normal <3 seconds", "brisk")
CRR_ABNORMAL = ("abnormal >3 secs", "abnormal >3 seconds", "delayed")

# Clinical GCS score of every category string of discretizer_config.json. channel_info.json's
# ordinal codes give eye "None" 0, but "None" is the eye score 1 (MIMIC-IV valuenum 1 too), and
# E+V+M must land in the total's list 3..15.
GCS_SCORES: dict[str, dict[str, int]] = {
    GCS_EYE: {
        "None": 1,
        "1 No Response": 1,
        "To Pain": 2,
        "2 To pain": 2,
        "To Speech": 3,
        "3 To speech": 3,
        "Spontaneously": 4,
        "4 Spontaneously": 4,
    },
    GCS_MOTOR: {
        "No response": 1,
        "1 No Response": 1,
        "Abnormal extension": 2,
        "2 Abnorm extensn": 2,
        "Abnormal Flexion": 3,
        "3 Abnorm flexion": 3,
        "Flex-withdraws": 4,
        "4 Flex-withdraws": 4,
        "Localizes Pain": 5,
        "5 Localizes Pain": 5,
        "Obeys Commands": 6,
        "6 Obeys Commands": 6,
    },
    GCS_VERBAL: {
        "No Response": 1,
        "No Response-ETT": 1,
        "1 No Response": 1,
        "1.0 ET/Trach": 1,
        "Incomprehensible sounds": 2,
        "2 Incomp sounds": 2,
        "Inappropriate Words": 3,
        "3 Inapprop words": 3,
        "Confused": 4,
        "4 Confused": 4,
        "Oriented": 5,
        "5 Oriented": 5,
    },
}

_NUMBER = r"^[+-]?(\d+(\.\d*)?|\.\d+)$"
# The reference's pattern for the channels it cleans as labs and SpO2: no sign, no blanks.
_UNSIGNED = r"^(\d+(\.\d*)?|\.\d+)$"
_BP = r"^(\d+(?:\.\d*)?)\s*/\s*(\d+(?:\.\d*)?)$"
LB_TO_KG = 0.453592
IN_TO_CM = 2.54


@dataclass
class EventsConfig:
    """How events are mapped and cleaned. :meth:`parity` reproduces the published MedMod
    extraction (SPEC §3 "What parity means"), its bugs included, so that matrices match it."""

    item_map: Literal["default", "parity"] = "default"
    # Drop values outside the outlier range, clip the rest to the valid range (variable_ranges).
    outliers: bool = True
    # Add GCS total = E + V + M where the three are charted at the same time in a stay.
    derive_gcs_total: bool = True
    # Events without hadm_id: "attach" labs by subject and stay window (MIMIC-IV leaves hadm_id
    # null on many in-ICU labs); "drop" them (``null_hadm_id``) as the reference's validate_events.
    null_hadm: NullHadm = "attach"
    # Where a number comes from: "valuenum" (else the text); "value": the text only, as the
    # reference reads it, glucose / pH / SpO2 through its unsigned pattern (a negative is
    # ``non_numeric``).
    numbers: Numbers = "valuenum"
    # The next three are the reference's unit tests that never fire on MIMIC-IV (they look for
    # units in the valuenum column): False copies them.
    # Temperature in F by unit (item 223761, valueuom); the value test (>= 79) applies either way.
    fahrenheit_by_unit: bool = True
    # Height in inches (item 226707, valueuom) -> cm.
    height_inches: bool = True
    # FiO2 / 100 only above 1 (a percentage); False divides every value, as the reference does.
    fio2_percent_only: bool = True
    # Duplicates at one (stay, charttime, variable): "storetime" keeps the latest stored row;
    # "value" keeps the largest value, compared as the reference sorts it (text for the channels
    # it does not clean, so "98" beats "100.5"; the cleaned number for the others).
    duplicates: Duplicates = "storetime"

    def __post_init__(self) -> None:
        if self.item_map not in resources.ITEM_MAP_PRESETS:
            raise ValueError(f"item_map must be one of {resources.ITEM_MAP_PRESETS}, got {self.item_map!r}")
        choices = {"null_hadm": NullHadm, "numbers": Numbers, "duplicates": Duplicates}
        for name, literal in choices.items():
            allowed = get_args(literal)
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")

    @classmethod
    def parity(cls, **overrides) -> EventsConfig:
        reference = {
            "item_map": "parity",
            "outliers": False,
            "derive_gcs_total": False,
            "null_hadm": "drop",
            "numbers": "value",
            "fahrenheit_by_unit": False,
            "height_inches": False,
            "fio2_percent_only": False,
            "duplicates": "value",
        }
        return cls(**{**reference, **overrides})


# --------------------------------------------------------------------------------------------
# lookups
#
# The item map is a small broadcast join. The category lookups are literal maps: Spark folds a
# literal map into one constant, cheap as long as the expression using it is not copied many
# times (the optimizer inlines column definitions into later filters and projections; a big
# expression copied a dozen times makes generated code too large to compile).

ITEM_COLUMNS = (
    "itemid long, source string, variable string, __unit string, __categorical boolean, "
    "__outlier_low double, __valid_low double, __valid_high double, __outlier_high double"
)


def item_map_frame(spark: SparkSession, preset: str) -> DataFrame:
    """The items of ``preset`` keyed by (itemid, source table), with what cleaning needs per item:
    variable, unit hint, categorical flag and the variable's outlier / valid bounds."""
    cfg = resources.discretizer_config()
    ranges = resources.variable_ranges()
    rows = []
    for m in resources.item_map(preset):
        r = ranges.get(m.variable)
        bounds = (r.outlier_low, r.valid_low, r.valid_high, r.outlier_high) if r else (None,) * 4
        categorical = bool(cfg["is_categorical_channel"].get(m.variable, False))
        rows.append((m.itemid, m.linksto, m.variable, m.unit, categorical, *bounds))
    return spark.createDataFrame(rows, ITEM_COLUMNS)


def _lit_map(pairs: dict) -> Column:
    from pyspark.sql import functions as F

    args = []
    for k, v in pairs.items():
        args += [F.lit(k), F.lit(v)]
    return F.create_map(*args)


def _category_key(variable: Column) -> Column:
    from pyspark.sql import functions as F

    return F.concat(variable, F.lit("|"), F.lower(F.trim(F.col("value"))))


def category_lookup() -> tuple[dict[str, str], dict[str, int]]:
    """``variable|lower(text)`` -> category string, and -> clinical score (GCS components).

    GCS components: every string of the channel's list (matched case-insensitively);
    capillary refill: the CareVue and MetaVision texts -> "0.0" / "1.0".
    """
    cfg = resources.discretizer_config()
    category: dict[str, str] = {}
    score: dict[str, int] = {}
    for ch in GCS_COMPONENTS:
        for v in cfg["possible_values"][ch]:
            category[f"{ch}|{v.lower()}"] = v
            score[f"{ch}|{v.lower()}"] = GCS_SCORES[ch][v]
    category.update({f"{CRR}|{t}": "0.0" for t in CRR_NORMAL})
    category.update({f"{CRR}|{t}": "1.0" for t in CRR_ABNORMAL})
    return category, score


# --------------------------------------------------------------------------------------------
# helpers


def _split(df: DataFrame, reason: Column, drop: tuple[str, ...] = ()) -> Checked:
    """Keep rows whose ``reason`` is null; reject the others, recording the raw event columns."""
    from pyspark.sql import functions as F

    tagged = df.withColumn("__reason", reason)
    kept = tagged.where(F.col("__reason").isNull()).drop("__reason", *drop)
    bad = tagged.where(F.col("__reason").isNotNull())
    # source = the raw table of the row (chartevents / labevents).
    rejected = rejects(bad, STAGE, F.col("source"), F.col("__reason"), list(RAW_COLUMNS))
    return Checked(kept, rejected)


def raw_events(chartevents: DataFrame, labevents: DataFrame) -> DataFrame:
    """Both raw tables in one shape (``RAW_COLUMNS``; absent columns null)."""
    from pyspark.sql import functions as F

    types = {
        "subject_id": "long",
        "hadm_id": "long",
        "stay_id": "long",
        "labevent_id": "long",
        "itemid": "long",
        "charttime": "timestamp",
        "storetime": "timestamp",
        "value": "string",
        "valuenum": "double",
        "valueuom": "string",
    }

    def shape(df: DataFrame, source: str) -> DataFrame:
        cols = [F.lit(source).alias("source")]
        for name, tp in types.items():
            col = F.col(name) if name in df.columns else F.lit(None)
            cols.append(col.cast(tp).alias(name))
        return df.select(*cols)

    return shape(chartevents, CHART).unionByName(shape(labevents, LAB))


def _hours(charttime: Column, intime: Column) -> Column:
    return (charttime.cast("double") - intime.cast("double")) / 3600.0


def stay_windows(stays: DataFrame) -> DataFrame:
    """Stay keys + ``__prev_out``: the latest outtime of the subject's earlier stays.

    A lab without hadm_id attaches by time alone; if two stays of a subject overlapped (not
    expected in the cohort, but not impossible in raw data) it would match both and be counted
    twice. Starting each stay's hadm-less window after the earlier stays' outtime makes the
    windows disjoint, so the join yields at most one stay per lab without shuffling the labs
    (only the small stays table). A lab with a hadm_id matches its own admission's stay, which
    is unique in the cohort.
    """
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    keys = stays.select(
        F.col("stay_id").cast("long").alias("__stay_id"),
        F.col("subject_id").cast("long").alias("__s_subject"),
        F.col("hadm_id").cast("long").alias("__s_hadm"),
        F.col("intime").cast("timestamp").alias("__intime"),
        F.col("outtime").cast("timestamp").alias("__outtime"),
    )
    earlier = (
        Window.partitionBy("__s_subject")
        .orderBy("__intime", "__stay_id")
        .rowsBetween(Window.unboundedPreceding, -1)
    )
    return keys.withColumn("__prev_out", F.max("__outtime").over(earlier))


# --------------------------------------------------------------------------------------------
# 1 + 2: map and attach


def map_items(raw: DataFrame, item_map: str = "default") -> Checked:
    """Adds the item columns (variable, unit hint, bounds); rejects ``item_not_in_map``."""
    from pyspark.sql import functions as F

    items = F.broadcast(item_map_frame(raw.sparkSession, item_map))
    joined = raw.join(items, ["itemid", "source"], "left")
    return _split(joined, F.when(F.col("variable").isNull(), "item_not_in_map"))


def attach_stays(mapped: DataFrame, stays: DataFrame, null_hadm: NullHadm = "attach") -> Checked:
    """The stay of each event (see the module docstring) as ``stay_id``/``subject_id`` + ``hours``.

    chartevents rejects: ``stay_not_in_cohort``, ``missing_charttime``; labevents: ``no_stay``.
    ``null_hadm="drop"``: any event without hadm_id is ``null_hadm_id`` instead, as in the
    reference's validate_events.
    """
    from pyspark.sql import functions as F

    windows = F.broadcast(stay_windows(stays))
    helper = ("__stay_id", "__s_subject", "__s_hadm", "__intime", "__outtime", "__prev_out")

    chart = mapped.where(F.col("source") == CHART).join(
        windows, F.col("stay_id") == F.col("__stay_id"), "left"
    )
    no_hadm = F.when(F.lit(null_hadm == "drop") & F.col("hadm_id").isNull(), "null_hadm_id")
    chart_reason = no_hadm.when(F.col("__stay_id").isNull(), "stay_not_in_cohort").when(
        F.col("charttime").isNull(), "missing_charttime"
    )

    ct = F.col("charttime")
    own_admission = F.col("hadm_id") == F.col("__s_hadm")
    by_time = (
        F.lit(null_hadm == "attach")
        & F.col("hadm_id").isNull()
        & (F.col("__prev_out").isNull() | (ct > F.col("__prev_out")))
    )
    in_window = (
        (F.col("subject_id") == F.col("__s_subject"))
        & (ct >= F.col("__intime"))
        & (ct <= F.col("__outtime"))
        & (own_admission | by_time)
    )
    lab = mapped.where(F.col("source") == LAB).join(windows, in_window, "left")
    lab_reason = no_hadm.when(F.col("__stay_id").isNull(), "no_stay")

    charted, labs = _split(chart, chart_reason), _split(lab, lab_reason)
    both = charted.kept.unionByName(labs.kept)
    kept = both.select(
        *[c for c in both.columns if c not in ("stay_id", "subject_id", *helper)],
        F.col("__stay_id").alias("stay_id"),
        F.col("__s_subject").alias("subject_id"),
        _hours(ct, F.col("__intime")).alias("hours"),
    )
    return Checked(kept, charted.rejected.unionByName(labs.rejected))


# --------------------------------------------------------------------------------------------
# 3 + 4: values


def _numeric(variable: Column, numbers: Numbers = "valuenum") -> Column:
    """The raw number: "a/b" blood pressure strings split, else valuenum, else value parsed.

    ``numbers="value"`` reads the text alone, as the reference does; glucose, pH and SpO2 then
    need its unsigned pattern on the untrimmed text, so "-95" and " 7.4" are not numbers.
    """
    from pyspark.sql import functions as F

    text = F.trim(F.col("value"))
    parsed = F.when(text.rlike(_NUMBER), text.cast("double"))
    if numbers == "value":
        unsigned = F.col("value").rlike(_UNSIGNED)
        number = F.when(~variable.isin(*UNSIGNED_CHANNELS) | unsigned, parsed)
    else:
        number = F.coalesce(F.col("valuenum"), parsed)
    is_bp = text.rlike(_BP)
    return (
        F.when((variable == SBP) & is_bp, F.regexp_extract(text, _BP, 1).cast("double"))
        .when((variable == DBP) & is_bp, F.regexp_extract(text, _BP, 2).cast("double"))
        .otherwise(number)
    )


def _converted(num: Column, variable: Column, cfg: EventsConfig) -> Column:
    """Unit conversions of SPEC §3, by the item's unit hint and the row's valueuom; the three
    unit flags of ``cfg`` switch off the tests the reference never fires.

    Written as (num + shift) * scale so that ``num`` appears a handful of times only: Spark
    inlines column definitions into later expressions, and repeated copies of a large expression
    make generated code too big to compile.
    """
    from pyspark.sql import functions as F

    unit = F.coalesce(F.col("__unit"), F.lit(""))
    uom = F.regexp_replace(F.lower(F.coalesce(F.col("valueuom"), F.lit(""))), "[^a-z]", "")
    f_unit = (unit == "F") | uom.isin("f", "degf", "degreesf", "fahrenheit")
    fahrenheit = (variable == TEMP) & ((f_unit & F.lit(cfg.fahrenheit_by_unit)) | (num >= 79.0))
    ounces = (unit == "oz") | uom.isin("oz", "ounce", "ounces")
    pounds = (unit == "lb") | uom.isin("lb", "lbs", "pound", "pounds")
    inches = F.lit(cfg.height_inches) & ((unit == "in") | uom.isin("in", "inch", "inches"))
    percent = ~F.lit(cfg.fio2_percent_only) | ((num > 1.0) & ~uom.contains("torr"))
    scale = (
        F.when(fahrenheit, 5.0 / 9.0)
        .when((variable == WEIGHT) & ounces, LB_TO_KG / 16.0)
        .when((variable == WEIGHT) & pounds, LB_TO_KG)
        .when((variable == HEIGHT) & inches, IN_TO_CM)
        .when((variable == FIO2) & percent, 0.01)
        .when((variable == SPO2) & (num <= 1.0), 100.0)
        .otherwise(1.0)
    )
    shift = F.when(fahrenheit, -32.0).otherwise(0.0)
    return (num + shift) * scale


def _categorical_value(variable: Column) -> Column:
    """The channel's category string for CRR / GCS rows (null when not in the channel's list).

    Text found in :func:`category_lookup` first; a numeric CRR 0/1 or GCS total 3..15 (CareVue
    charts numbers) is accepted as its number.
    """
    from pyspark.sql import functions as F

    text = F.trim(F.col("value"))
    number = F.coalesce(F.when(text.rlike(_NUMBER), text.cast("double")), F.col("valuenum"))
    as_int = number.cast("int")
    totals = resources.discretizer_config()["possible_values"][GCS_TOTAL]
    from_number = F.when((variable == CRR) & number.isin(0.0, 1.0), F.format_number(number, 1)).when(
        (variable == GCS_TOTAL) & (number == as_int) & as_int.cast("string").isin(*totals),
        as_int.cast("string"),
    )
    return F.coalesce(_lit_map(category_lookup()[0])[_category_key(variable)], from_number)


def tag_values(events: DataFrame, cfg: EventsConfig | None = None) -> DataFrame:
    """``events`` (with the item columns of :func:`map_items`) + ``__reason`` (null: keep) + the
    cleaned ``__value`` / ``__valuenum`` + ``__gcs_score``. No row is dropped here: the split
    happens after the duplicate window, so Spark cannot push the reason filter (and with it
    copies of these expressions) below the shuffle; each expression is evaluated once per row.

    ``__gcs_score`` is the clinical score of a GCS component's validated category text, so that
    E + V + M always lands in the total's list 3..15; the raw valuenum is only a fallback.
    """
    from pyspark.sql import functions as F

    cfg = cfg or EventsConfig()
    outliers = cfg.outliers
    variable = F.col("variable")
    df = events.withColumn("__categorical", F.coalesce(F.col("__categorical"), F.lit(False)))
    categorical = F.col("__categorical")
    df = df.withColumn("__num", F.when(~categorical, _numeric(variable, cfg.numbers)))
    df = df.withColumn("__x", _converted(F.col("__num"), variable, cfg))
    df = df.withColumn("__cat", F.when(categorical, _categorical_value(variable)))
    x = F.col("__x")
    blank = F.col("value").isNull() | (F.trim(F.col("value")) == "")
    empty = blank & (F.col("valuenum").isNull() | F.lit(cfg.numbers == "value"))
    outside = (x < F.col("__outlier_low")) | (x > F.col("__outlier_high"))
    reason = (
        F.when(empty, "missing_value")
        .when(categorical & F.col("__cat").isNull(), "unknown_category")
        .when(~categorical & x.isNull(), "non_numeric")
        .when(F.lit(outliers) & ~categorical & F.coalesce(outside, F.lit(False)), "outlier")
    )
    # greatest/least skip nulls, so a missing bound leaves the value alone.
    clipped = F.least(F.greatest(x, F.col("__valid_low")), F.col("__valid_high")) if outliers else x
    scores = _lit_map(category_lookup()[1])
    gcs_score = F.when(
        variable.isin(*GCS_COMPONENTS),
        F.coalesce(scores[_category_key(variable)], F.col("valuenum").cast("int")),
    )
    helper = ("__unit", "__categorical", "__outlier_low", "__valid_low", "__valid_high", "__outlier_high")
    return (
        df.withColumn("__reason", reason)
        .withColumn("__valuenum", F.when(~categorical & x.isNotNull(), clipped))
        .withColumn(
            "__value", F.when(categorical, F.col("__cat")).otherwise(F.col("__valuenum").cast("string"))
        )
        .withColumn("__gcs_score", gcs_score)
        .drop("__num", "__x", "__cat", *helper)
    )


# --------------------------------------------------------------------------------------------
# 5 + 6: duplicates and derived GCS total


def _duplicate_order(duplicates: Duplicates) -> list[Column]:
    """Sort keys of one (stay_id, charttime, variable): the first row survives.

    "storetime": the latest stored row, then the larger itemid. "value": the reference's
    ``sort_values(value)`` + ``keep='last'``, i.e. the largest value — as text for the channels it
    leaves text (its cleaned CRR is "0.0"/"1.0", whose text order is the numeric one), else the
    cleaned number. The remaining keys only make a full tie come out the same every run.
    """
    from pyspark.sql import functions as F

    variable = F.col("variable")
    by_storetime = [F.col("storetime").desc_nulls_last(), F.col("itemid").desc()]
    as_text = F.when(variable.isin(*TEXT_CHANNELS), F.col("value")).when(variable == CRR, F.col("__value"))
    by_value = [as_text.desc_nulls_last(), F.col("__valuenum").desc_nulls_last()]
    first = by_value if duplicates == "value" else by_storetime
    rest = by_storetime if duplicates == "value" else []
    return [
        F.col("__reason").isNotNull().asc(),
        *first,
        *rest,
        F.col("source").desc(),
        F.col("__value").desc_nulls_last(),
    ]


def dedupe_and_derive(tagged: DataFrame, cfg: EventsConfig | None = None, persist: bool = False) -> Checked:
    """Kept events (contract columns) and rejects, from :func:`tag_values` output; one shuffle.

    Duplicates: among rows without a reason, one per (stay_id, charttime, variable) survives —
    by ``cfg.duplicates`` (:func:`_duplicate_order`); the others are ``duplicate``. Rows that
    already have a reason never win.

    Derived GCS total (``cfg.derive_gcs_total``): where the surviving eye, motor and verbal rows
    of a (stay_id, charttime) are all present and no GCS total is charted then, the eye row also
    emits a total row (itemid -1, source ``derived``, value = E + V + M as text). Both windows run
    on one partitioning by (stay_id, charttime), so events are shuffled once.

    ``persist``: keep the ranked rows (memory, spilling to disk) so that the kept and the rejected
    half share one shuffle; the caller calls ``release()`` on the result when both are written.
    """
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    cfg = cfg or EventsConfig()
    per_variable = Window.partitionBy("stay_id", "charttime", "variable").orderBy(
        *_duplicate_order(cfg.duplicates)
    )
    per_time = Window.partitionBy("stay_id", "charttime")
    ranked = tagged.repartition("stay_id", "charttime").withColumn(
        "__rank", F.row_number().over(per_variable)
    )
    if persist:
        ranked = ranked.persist()
    reason = F.coalesce(F.col("__reason"), F.when(F.col("__rank") > 1, "duplicate"))
    out = _split(ranked, reason)
    variable = F.col("variable")
    kept = out.kept
    if cfg.derive_gcs_total:
        # kept rows are already one per variable, and still partitioned by (stay_id, charttime).
        comp = variable.isin(*GCS_COMPONENTS)
        kept = (
            kept.withColumn("__n_comp", F.sum(F.when(comp, 1).otherwise(0)).over(per_time))
            .withColumn("__gcs_sum", F.sum(F.when(comp, F.col("__gcs_score"))).over(per_time))
            .withColumn("__has_total", F.max(F.when(variable == GCS_TOTAL, 1).otherwise(0)).over(per_time))
        )
        emit = (
            (variable == GCS_EYE)
            & (F.col("__n_comp") == 3)
            & (F.col("__has_total") == 0)
            & F.col("__gcs_sum").between(3, 15)
        )
        one_or_two = F.when(emit, F.array(F.lit(False), F.lit(True))).otherwise(F.array(F.lit(False)))
        kept = kept.withColumn("__derived", F.explode(one_or_two))
    else:
        kept = kept.withColumn("__derived", F.lit(False)).withColumn("__gcs_sum", F.lit(None).cast("long"))
    derived = F.col("__derived")
    events = kept.select(
        F.col("stay_id").cast("long"),
        F.col("subject_id").cast("long"),
        F.col("charttime").cast("timestamp"),
        F.col("hours").cast("double"),
        F.when(derived, F.lit(GCS_TOTAL)).otherwise(variable).alias("variable"),
        F.when(derived, F.col("__gcs_sum").cast("int").cast("string"))
        .otherwise(F.col("__value"))
        .alias("value"),
        F.when(derived, F.lit(None).cast("double")).otherwise(F.col("__valuenum")).alias("valuenum"),
        F.when(derived, F.lit(DERIVED_ITEMID).cast("long"))
        .otherwise(F.col("itemid").cast("long"))
        .alias("itemid"),
        F.when(derived, F.lit(DERIVED)).otherwise(F.col("source")).alias("source"),
    )
    return Checked(events, out.rejected, (ranked,) if persist else ())


def build_events(
    chartevents: DataFrame,
    labevents: DataFrame,
    stays: DataFrame,
    cfg: EventsConfig | None = None,
    persist: bool = False,
) -> Checked:
    """Silver ``events`` (TABLES.md columns) and every rejected input row with its reason.

    ``chartevents`` / ``labevents``: bronze rows (mimic_schema columns; chartevents needs
    subject_id, hadm_id, stay_id, charttime, storetime, itemid, value, valuenum, valueuom;
    labevents the same without stay_id, plus labevent_id for the reject records). ``stays``:
    silver stays (stay_id, subject_id, hadm_id, intime, outtime are read).

    Derived GCS totals are part of ``kept`` with ``source = 'derived'``; count them there. Both
    halves come from one plan: when both are consumed (the pipeline writes both), pass
    ``persist=True`` and ``release()`` the result afterwards, or Spark computes the plan twice.
    """
    cfg = cfg or EventsConfig()
    mapped = map_items(raw_events(chartevents, labevents), cfg.item_map)
    attached = attach_stays(mapped.kept, stays, cfg.null_hadm)
    final = dedupe_and_derive(tag_values(attached.kept, cfg), cfg, persist)
    rejected = mapped.rejected.unionByName(attached.rejected).unionByName(final.rejected)
    return Checked(final.kept.select(*EVENTS_COLUMNS), rejected, final.persisted)
