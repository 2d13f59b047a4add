"""Gold ``normalizer_<task>``: train-split mean and std of the 12 continuous columns (SPEC §5).

Each task gets its own statistics over the rows its training windows contain (the references
reuse the phenotyping normalizer for every task, a bug SPEC §5 asks us not to copy). Imputed
values are included (the model sees them); one-hots and masks are not scaled. The std is the
sample std (N - 1), floored at 1e-7 so that a constant column (or a single row) cannot divide by 0.

Which rows count — the choice SPEC leaves open, made so that every training bin counts once:

- ``ihm``, ``pheno``, ``decomp``, ``los``: each training stay's whole-stay ``timeseries`` rows with
  ``bin < max(n_bins)`` over that stay's train samples, i.e. the first 48 bins (IHM), the whole
  stay (phenotyping), or the stay up to its last sample hour (hourly tasks). Counting every hourly
  sample's window separately would weigh the first hours of a long stay once per later hour
  (hundreds of times); one prefix per stay is also exactly what the segment shards feed the model.
- ``radiology``: windows end at image times, so their last bin is not a whole-stay bin; the rows
  are those of each training stay's longest window (its latest image), from gold
  ``windows_radiology`` (the tasks stage discretizes every sample's window once).

Only the ``samples`` given are used, so paired and partial mode each get their own statistics.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from conf.tasks import task_spec
from spark_jobs.timeseries import continuous_indices

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

COLUMNS = ("column", "mean", "std", "n")


@dataclass
class NormalizerConfig:
    split: str = "train"
    min_std: float = 1e-7
    channels_path: str = ""  # decides which columns are continuous (2, 3, 49..58 by default)


def stay_prefix_rows(samples: DataFrame, timeseries: DataFrame, split: str = "train") -> DataFrame:
    """``x`` of each ``split`` stay's timeseries bins below its largest sample ``n_bins``."""
    from pyspark.sql import functions as F

    prefix = samples.where(F.col("split") == split).groupBy("stay_id").agg(F.max("n_bins").alias("__n"))
    return timeseries.join(prefix, "stay_id").where(F.col("bin") < F.col("__n")).select("x")


def latest_samples(samples: DataFrame, split: str = "train") -> DataFrame:
    """``sample_id, stay_id, hour`` of each ``split`` stay's latest sample (ties: the largest
    sample_id)."""
    from pyspark.sql import functions as F

    return (
        samples.where(F.col("split") == split)
        .groupBy("stay_id")
        .agg(F.max(F.struct("hour", "sample_id")).alias("__s"))
        .select(F.col("__s.sample_id").alias("sample_id"), "stay_id", F.col("__s.hour").alias("hour"))
    )


def latest_window_rows(samples: DataFrame, window_timeseries: DataFrame, split: str = "train") -> DataFrame:
    """``x`` of the window of each ``split`` stay's latest sample (ties: the largest sample_id)."""
    latest = latest_samples(samples, split).select("sample_id")
    return window_timeseries.join(latest, "sample_id").select("x")


def normalizer_stats(rows: DataFrame, cfg: NormalizerConfig | None = None) -> DataFrame:
    """``column int, mean double, std double, n long`` of the continuous columns of ``rows.x``.

    One aggregation pass over ``rows`` (mean and ``stddev_samp``, which Spark computes with a
    numerically stable update), then ``stack`` turns the one result row into 12 rows.
    """
    from pyspark.sql import functions as F

    cfg = cfg or NormalizerConfig()
    cols = continuous_indices(cfg.channels_path)
    aggs = []
    for i in cols:
        v = F.col("x").getItem(i).cast("double")
        aggs += [F.avg(v).alias(f"m{i}"), F.stddev_samp(v).alias(f"s{i}"), F.count(v).alias(f"n{i}")]
    stacked = ", ".join(f"{i}, m{i}, s{i}, n{i}" for i in cols)
    std = F.col("std")
    floor = F.lit(cfg.min_std)
    return (
        rows.agg(*aggs)
        .selectExpr(f"stack({len(cols)}, {stacked}) AS (column, mean, std, n)")
        .select(
            F.col("column").cast("int").alias("column"),
            F.col("mean").cast("double").alias("mean"),
            F.when(std.isNull() | F.isnan(std) | (std < floor), floor).otherwise(std).alias("std"),
            F.col("n").cast("long").alias("n"),
        )
    )


# Keyed by ``TaskSpec.normalizer`` (conf.tasks).
ROWS: dict[str, Callable[[DataFrame, DataFrame, str], DataFrame]] = {
    "stay_prefix": stay_prefix_rows,
    "latest_window": latest_window_rows,
}


def build_normalizer(
    task: str, samples: DataFrame, timeseries: DataFrame, cfg: NormalizerConfig | None = None
) -> DataFrame:
    """Gold ``normalizer_<task>`` from ``samples_<task>`` and the matching discretized rows.

    ``timeseries``: silver ``timeseries`` (``stay_id, bin, x``), or for a task with per-sample
    windows its gold ``windows_<task>`` (``sample_id, bin, x``).
    """
    cfg = cfg or NormalizerConfig()
    rows = ROWS[task_spec(task).normalizer]
    return normalizer_stats(rows(samples, timeseries, cfg.split), cfg)
