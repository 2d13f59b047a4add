"""Gold ``samples_<task>``: which (stay, hour) pairs are samples, their labels and their image.

The sample rules follow mimic3-benchmarks' ``create_*`` scripts (SPEC §7), because the published
numbers were computed on those samples:

- ``ihm``: one per stay with ``los_hours >= 48`` (1e-6 tolerance, as the reference) and a usable
  event in [0, 48] h; label = in-hospital mortality; window the first 48 h.
- ``pheno``: one per stay with a usable event in [0, los]; labels = the 25 CCS groups; whole stay.
- ``decomp``: integer hours ``t`` (independent of the timestep) with ``t <= min(los, death) + 1e-6``,
  ``t > 4`` and ``t >`` the first event; label = died and ``death_hours - t < 24`` (the reference's
  ``lived_time - t < 24``: a death exactly 24 h after t is a 0, the hour of death itself a 1).
- ``los``: the same hours up to ``los`` (death does not cut them); label = bucket of the remaining
  LOS ``los_hours - t`` (``a <= rem < b`` on day edges 1..8, 14: exactly 1 day is bucket 1).
- ``radiology``: one per AP image taken in [intime, outtime]; 14 CheXpert labels (blank -> 0,
  -1 -> ``uncertain_as``); the EHR window ends at the image time.

"Usable event" means an event the discretizer uses (``timeseries.check_events``), so that every
sample's window holds at least one real observation. Images pair with stays on the stay's own
[intime, outtime] (SPEC §6) and the latest image wins (ties at the same time: the largest
dicom_id). IHM takes the latest in [intime, intime + 48 h], phenotyping the latest in the stay,
and the hourly tasks follow ``pairing``: ``causal`` (the latest image at or before t, no look into
the future) or ``last_in_stay`` (the references' rule: the stay's last image for every hour).
Paired mode keeps samples with an image; partial mode keeps all with ``has_image = 0``.
Stays without a sample and samples without an image (paired mode) come back as rejects.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from conf.tasks import task_spec
from spark_jobs.quality import Checked, split_by
from spark_jobs.timeseries import EPS, TimeseriesConfig, check_events, n_bins_col

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame

LOS_BUCKET_EDGES_DAYS = (1, 2, 3, 4, 5, 6, 7, 8, 14)  # buckets (-inf,1), [1,2) ... [8,14), [14,inf)
SAMPLE_COLUMNS = (
    "sample_id",
    "task",
    "stay_id",
    "subject_id",
    "hadm_id",
    "split",
    "hour",
    "n_bins",
    "y",
    "los_remaining_hours",
    "dicom_id",
    "cxr_hours",
    "has_image",
)
_INF = float("inf")


@dataclass
class TasksConfig:
    timestep: float = 1.0  # hours per EHR bin; decides n_bins only (sample hours stay integer)
    pairing: Literal["causal", "last_in_stay"] = "causal"
    paired: bool = True  # True: samples with an image only (the paper's counts); False: partial
    uncertain_as: Literal[0, 1] = 0  # radiology: what a CheXpert -1 becomes
    ihm_hours: float = 48.0
    min_hours: float = 4.0  # hourly tasks: samples at t > min_hours only
    decomp_horizon_hours: float = 24.0
    channels_path: str = ""  # discretizer_config.json deciding which events are usable

    def __post_init__(self) -> None:
        if self.pairing not in ("causal", "last_in_stay"):
            raise ValueError(f"pairing must be 'causal' or 'last_in_stay', got {self.pairing!r}")
        if self.uncertain_as not in (0, 1):
            raise ValueError(f"uncertain_as must be 0 or 1, got {self.uncertain_as!r}")
        if not self.timestep > 0:
            raise ValueError(f"timestep must be > 0, got {self.timestep}")

    def timeseries(self) -> TimeseriesConfig:
        return TimeseriesConfig(timestep=self.timestep, channels_path=self.channels_path)


# ---------------------------------------------------------------- shared pieces


def first_event_hours(events: DataFrame, stays: DataFrame, cfg: TasksConfig | None = None) -> DataFrame:
    """``stay_id, first_hour``: the earliest usable event in [0, los] of each stay that has one.

    The only thing the sample rules need from the ~300M events ("an event before 48 h", "after the
    first event"), so it is computed once, one small row per stay, and shared by every task.
    """
    from pyspark.sql import functions as F

    cfg = cfg or TasksConfig()
    usable = check_events(events, stays, cfg.timeseries()).kept
    return usable.groupBy("stay_id").agg(F.min(F.col("hours").cast("double")).alias("first_hour"))


def stay_images(stays: DataFrame, cxr: DataFrame) -> DataFrame:
    """``stay_id, dicom_id, cxr_hours, labels``: the AP images taken in [intime, outtime] of a stay.

    The window test compares timestamps (closed at both ends); ``cxr_hours`` is computed from
    microseconds so that an image exactly at intime + k hours has ``cxr_hours == k`` exactly.
    """
    from pyspark.sql import functions as F

    s = stays.select("stay_id", "subject_id", "intime", "outtime")
    c = cxr.select("subject_id", "dicom_id", "study_time", "labels")
    return (
        s.join(c, "subject_id")
        .where((F.col("study_time") >= F.col("intime")) & (F.col("study_time") <= F.col("outtime")))
        .select(
            "stay_id",
            "dicom_id",
            ((F.unix_micros("study_time") - F.unix_micros("intime")) / F.lit(3.6e9)).alias("cxr_hours"),
            "labels",
        )
    )


def pair_latest_image(samples: DataFrame, images: DataFrame, pair_hour: Column) -> DataFrame:
    """``samples`` + ``dicom_id, cxr_hours``: the stay's latest image with ``cxr_hours <= pair_hour``.

    Samples and images go into one stream per stay ordered by hour (an image before a sample at the
    same hour, so the bound is inclusive) and each sample takes the last image seen so far: no
    samples x images join, which matters for ~1M hourly samples.
    """
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    cols = samples.columns
    img = F.struct(F.col("dicom_id"), F.col("cxr_hours"))
    smp = samples.select(
        *cols,
        pair_hour.cast("double").alias("__h"),
        F.lit(1).alias("__kind"),
        F.lit(None).cast("struct<dicom_id:string,cxr_hours:double>").alias("__img"),
    )
    im = images.select(
        "stay_id", F.col("cxr_hours").alias("__h"), F.lit(0).alias("__kind"), img.alias("__img")
    )
    w = (
        Window.partitionBy("stay_id")
        .orderBy("__h", "__kind", F.col("__img.dicom_id"))
        .rowsBetween(Window.unboundedPreceding, Window.currentRow)
    )
    stream = smp.unionByName(im, allowMissingColumns=True)
    latest = F.last("__img", ignorenulls=True).over(w)
    return (
        stream.withColumn("__latest", latest)
        .where(F.col("__kind") == 1)
        .select(
            *cols,
            F.col("__latest.dicom_id").alias("dicom_id"),
            F.col("__latest.cxr_hours").alias("cxr_hours"),
        )
    )


def _hour_text(hour: Column) -> Column:
    """48.0 -> "48", 52.3456 -> "52.3456" (6 decimals at most): the ``<hour>`` of sample_id."""
    from pyspark.sql import functions as F

    text = F.regexp_replace(F.format_string("%.6f", hour), "0+$", "")
    return F.regexp_replace(text, "\\.$", "")


def _finish(samples: DataFrame, task: str, cfg: TasksConfig, stay_rejects: DataFrame) -> Checked:
    """Typed contract columns; in paired mode the samples without an image become rejects."""
    from pyspark.sql import functions as F

    has_image = F.col("dicom_id").isNotNull().cast("int")
    # A sample per image is named by the image; a sample per hour by its hour.
    sample_id = (
        F.concat_ws(":", F.lit(task), F.col("stay_id").cast("string"), F.col("dicom_id"))
        if task_spec(task).window == "image_time"
        else F.concat_ws(":", F.lit(task), F.col("stay_id").cast("string"), _hour_text(F.col("hour")))
    )
    out = samples.select(
        sample_id.alias("sample_id"),
        F.lit(task).alias("task"),
        F.col("stay_id").cast("long").alias("stay_id"),
        F.col("subject_id").cast("long").alias("subject_id"),
        F.col("hadm_id").cast("long").alias("hadm_id"),
        F.col("split").cast("string").alias("split"),
        F.col("hour").cast("double").alias("hour"),
        n_bins_col(F.col("hour"), cfg.timestep).alias("n_bins"),
        F.col("y").cast("array<float>").alias("y"),
        F.col("los_remaining_hours").cast("double").alias("los_remaining_hours"),
        F.col("dicom_id").cast("string").alias("dicom_id"),
        F.col("cxr_hours").cast("double").alias("cxr_hours"),
        has_image.alias("has_image"),
    )
    if not cfg.paired:
        return Checked(out, stay_rejects)
    checked = split_by(out, F.when(F.col("has_image") == 0, F.lit("no_image")), f"tasks.{task}", "samples")
    return Checked(checked.kept, stay_rejects.unionByName(checked.rejected))


def _stays_with_first_event(stays: DataFrame, first_events: DataFrame) -> DataFrame:
    return stays.join(first_events.select("stay_id", "first_hour"), "stay_id", "left")


# ---------------------------------------------------------------- stay-level tasks


def ihm_samples(
    stays: DataFrame, first_events: DataFrame, cxr: DataFrame, cfg: TasksConfig | None = None
) -> Checked:
    """In-hospital mortality: one sample per stay at hour ``ihm_hours`` (SPEC §7)."""
    from pyspark.sql import functions as F

    cfg = cfg or TasksConfig()
    base = _stays_with_first_event(stays, first_events)
    reason = F.coalesce(
        F.when(F.col("los_hours") < cfg.ihm_hours - EPS, F.lit("los_too_short")),
        F.when(F.col("first_hour").isNull(), F.lit("no_events")),
        F.when(F.col("first_hour") > cfg.ihm_hours, F.lit("no_event_in_window")),
    )
    checked = split_by(base, reason, "tasks.ihm", "stays")
    samples = checked.kept.select(
        "stay_id",
        "subject_id",
        "hadm_id",
        "split",
        F.lit(cfg.ihm_hours).alias("hour"),
        F.array(F.col("mortality").cast("float")).alias("y"),
        F.lit(None).cast("double").alias("los_remaining_hours"),
    )
    paired = pair_latest_image(samples, stay_images(stays, cxr), F.lit(cfg.ihm_hours))
    return _finish(paired, "ihm", cfg, checked.rejected)


def pheno_samples(
    stays: DataFrame, first_events: DataFrame, cxr: DataFrame, cfg: TasksConfig | None = None
) -> Checked:
    """Phenotyping: one sample per stay over the whole stay, paired with the stay's last image."""
    from pyspark.sql import functions as F

    cfg = cfg or TasksConfig()
    base = _stays_with_first_event(stays, first_events)
    checked = split_by(base, F.when(F.col("first_hour").isNull(), F.lit("no_events")), "tasks.pheno", "stays")
    samples = checked.kept.select(
        "stay_id",
        "subject_id",
        "hadm_id",
        "split",
        F.col("los_hours").alias("hour"),
        F.col("phenotypes").cast("array<float>").alias("y"),
        F.lit(None).cast("double").alias("los_remaining_hours"),
    )
    paired = pair_latest_image(samples, stay_images(stays, cxr), F.lit(_INF))
    return _finish(paired, "pheno", cfg, checked.rejected)


# ---------------------------------------------------------------- hourly tasks


@dataclass(frozen=True)
class _Hourly:
    """What differs between the hourly tasks: the last sample hour and the label at hour ``t``."""

    upper: Callable[[TasksConfig], Column]
    label: Callable[[TasksConfig, Column], Column]  # -> array<float>
    remaining: bool  # fill los_remaining_hours


def _decomp_upper(cfg: TasksConfig) -> Column:
    from pyspark.sql import functions as F

    return F.least(F.col("los_hours"), F.coalesce(F.col("death_hours"), F.lit(_INF)))


def _decomp_label(cfg: TasksConfig, t: Column) -> Column:
    from pyspark.sql import functions as F

    dies = (
        (F.col("mortality") == 1)
        & F.col("death_hours").isNotNull()
        & ((F.col("death_hours") - t) < cfg.decomp_horizon_hours)
    )
    return F.array(F.when(dies, F.lit(1.0)).otherwise(F.lit(0.0)).cast("float"))


def los_bucket(remaining_hours: Column) -> Column:
    """Bucket 0..9 of a remaining LOS in hours: ``edge_i * 24 <= rem < edge_{i+1} * 24``."""
    from pyspark.sql import functions as F

    expr = F.when(remaining_hours < LOS_BUCKET_EDGES_DAYS[0] * 24.0, F.lit(0))
    for i, days in enumerate(LOS_BUCKET_EDGES_DAYS[1:], start=1):
        expr = expr.when(remaining_hours < days * 24.0, F.lit(i))
    return expr.otherwise(F.lit(len(LOS_BUCKET_EDGES_DAYS)))


def _los_upper(cfg: TasksConfig) -> Column:
    from pyspark.sql import functions as F

    return F.col("los_hours")


def _los_label(cfg: TasksConfig, t: Column) -> Column:
    from pyspark.sql import functions as F

    return F.array(los_bucket(F.col("los_hours") - t).cast("float"))


_HOURLY = {
    "decomp": _Hourly(_decomp_upper, _decomp_label, remaining=False),
    "los": _Hourly(_los_upper, _los_label, remaining=True),
}


def hourly_samples(
    task: str, stays: DataFrame, first_events: DataFrame, cxr: DataFrame, cfg: TasksConfig | None = None
) -> Checked:
    """Decompensation and LOS: one sample per integer hour t, first > max(min_hours, first event).

    Hours run to ``ceil(upper + 1e-6) - 1`` (the reference's ``arange(0, upper + eps, 1)``) and
    start at the first integer strictly after both ``min_hours`` and the first usable event.
    """
    from pyspark.sql import functions as F

    cfg = cfg or TasksConfig()
    spec = _HOURLY[task]
    base = _stays_with_first_event(stays, first_events)
    start = F.greatest(F.floor(F.lit(cfg.min_hours)) + 1, F.floor(F.col("first_hour")) + 1)
    stop = F.ceil(spec.upper(cfg) + F.lit(EPS)) - 1
    reason = F.coalesce(
        F.when(F.col("first_hour").isNull(), F.lit("no_events")),
        F.when(start > stop, F.lit("no_sample_hours")),
    )
    checked = split_by(base, reason, f"tasks.{task}", "stays")
    hours = checked.kept.withColumn("__t", F.explode(F.sequence(start, stop))).withColumn(
        "hour", F.col("__t").cast("double")
    )
    t = F.col("hour")
    samples = hours.select(
        "stay_id",
        "subject_id",
        "hadm_id",
        "split",
        "hour",
        spec.label(cfg, t).alias("y"),
        (F.col("los_hours") - t if spec.remaining else F.lit(None))
        .cast("double")
        .alias("los_remaining_hours"),
    )
    pair_hour = t if cfg.pairing == "causal" else F.lit(_INF)
    paired = pair_latest_image(samples, stay_images(stays, cxr), pair_hour)
    return _finish(paired, task, cfg, checked.rejected)


def decomp_samples(
    stays: DataFrame, first_events: DataFrame, cxr: DataFrame, cfg: TasksConfig | None = None
) -> Checked:
    return hourly_samples("decomp", stays, first_events, cxr, cfg)


def los_samples(
    stays: DataFrame, first_events: DataFrame, cxr: DataFrame, cfg: TasksConfig | None = None
) -> Checked:
    return hourly_samples("los", stays, first_events, cxr, cfg)


# ---------------------------------------------------------------- radiology


def radiology_labels(labels: Column, uncertain_as: int = 0) -> Column:
    """Raw CheXpert values -> 0/1 floats: 1 -> 1, -1 -> ``uncertain_as``, 0 and blank -> 0."""
    from pyspark.sql import functions as F

    return F.transform(
        labels,
        lambda v: F.when(v == 1.0, F.lit(1.0))
        .when(v == -1.0, F.lit(float(uncertain_as)))
        .otherwise(F.lit(0.0))
        .cast("float"),
    )


def radiology_samples(
    stays: DataFrame, first_events: DataFrame, cxr: DataFrame, cfg: TasksConfig | None = None
) -> Checked:
    """One sample per AP image in [intime, outtime]; an image whose study has no labels is a reject.

    ``first_events`` is unused (the window is the image time, whatever was charted); the argument
    keeps every builder's signature the same.
    """
    from pyspark.sql import functions as F

    cfg = cfg or TasksConfig()
    images = stay_images(stays, cxr).join(
        stays.select("stay_id", "subject_id", "hadm_id", "split"), "stay_id"
    )
    checked = split_by(
        images, F.when(F.col("labels").isNull(), F.lit("no_labels")), "tasks.radiology", "images"
    )
    samples = checked.kept.select(
        "stay_id",
        "subject_id",
        "hadm_id",
        "split",
        F.col("cxr_hours").alias("hour"),
        radiology_labels(F.col("labels"), cfg.uncertain_as).alias("y"),
        F.lit(None).cast("double").alias("los_remaining_hours"),
        "dicom_id",
        "cxr_hours",
    )
    return _finish(samples, "radiology", cfg, checked.rejected)


def sample_windows(samples: DataFrame) -> DataFrame:
    """``sample_id, stay_id, end_hours`` for ``timeseries.discretize_windows``: each sample's EHR
    window ends at its ``hour`` (radiology: the image time)."""
    from pyspark.sql import functions as F

    return samples.select("sample_id", "stay_id", F.col("hour").alias("end_hours"))


# Keyed by ``TaskSpec.builder`` (conf.tasks).
BUILDERS: dict[str, Callable[..., Checked]] = {
    "ihm": ihm_samples,
    "pheno": pheno_samples,
    "decomp": decomp_samples,
    "los": los_samples,
    "radiology": radiology_samples,
}


def build_samples(
    task: str, stays: DataFrame, first_events: DataFrame, cxr: DataFrame, cfg: TasksConfig | None = None
) -> Checked:
    """Gold ``samples_<task>`` (kept) and the stays / samples / images left out (rejected).

    ``first_events`` is :func:`first_event_hours` (``stay_id, first_hour``); ``cxr`` silver cxr.
    """
    builder = BUILDERS[task_spec(task).builder]
    return builder(stays, first_events, cxr, cfg or TasksConfig())
