"""Silver ``timeseries``: the discretizer of SPEC §4 (mimic3-benchmarks' ``Discretizer``) in Spark.

Every model reads the EHR as a (bins x 76) matrix, so the rules below decide what the models see
and must match the reference exactly:

- bins start at ``intime`` and are right-closed: an event at hour ``t`` falls in
  ``int(t / timestep - 1e-6)`` (t = 0 and t = 1.0 both land in bin 0); a window of ``T`` hours has
  ``int(T / timestep + 1 - 1e-6)`` bins; events at ``t < 0`` or ``t > T`` are not used;
- within a bin, per channel, the last value wins (events ordered by ``hours``; ties at the same
  ``hours`` — which silver ``events`` already removes per variable — are broken by the larger
  ``itemid``, then the later category in the config list / the larger value, so that the result
  never depends on row order);
- ``previous`` imputation: a bin without an observation repeats the channel's last observed value,
  and before the first observation holds the channel's normal value; masks mark observed bins only;
- categorical channels are one-hot over ``discretizer_config.json``'s lists. A value outside the
  list is treated as missing (it never crashes the run); a purely numeric value is matched
  numerically first, so ``"15.0"`` counts as GCS total ``"15"`` and ``"0"`` as CRR ``"0.0"``.
  :func:`check_events` counts every event the discretizer cannot use, by reason.

The work per stay is a grouped pandas UDF (a cogroup of a stay's events with its windows), vectorized
with numpy: nothing is collected to the driver and no Python loop runs over events.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING, Any

import numpy as np

from spark_jobs.quality import Checked, rejects

if TYPE_CHECKING:
    import pandas as pd
    from pyspark.sql import Column, DataFrame

EPS = 1e-6
STAGE = "timeseries"
_KEY_SEP = "\x1f"  # joins channel and value in map keys; never part of either


@dataclass(frozen=True)
class Channels:
    """The 17 channels of ``discretizer_config.json`` and where each sits in the 76 columns."""

    names: tuple[str, ...]
    categorical: tuple[bool, ...]
    values: tuple[tuple[str, ...], ...]  # category lists (empty for continuous channels)
    normals: tuple[str, ...]
    begin: tuple[int, ...]  # first value column of each channel
    n_values: int  # value columns (59); the masks follow

    @property
    def n_columns(self) -> int:
        return self.n_values + len(self.names)


@dataclass
class TimeseriesConfig:
    timestep: float = 1.0  # hours per bin (SPEC §4: 1.0 in the released code)
    channels_path: str = ""  # a discretizer_config.json; empty: the packaged resource

    def __post_init__(self) -> None:
        if not self.timestep > 0:
            raise ValueError(f"timestep must be > 0 hours, got {self.timestep}")


def _load_config(path: str) -> dict[str, Any]:
    if path:
        import json
        from pathlib import Path

        return json.loads(Path(path).read_text())
    from spark_jobs import resources

    return resources.discretizer_config()


@cache
def channels(path: str = "") -> Channels:
    """Channel layout from ``path`` (a discretizer_config.json; empty: the packaged one)."""
    conf = _load_config(path)
    names = tuple(conf["id_to_channel"])
    categorical = tuple(bool(conf["is_categorical_channel"][c]) for c in names)
    values = tuple(
        tuple(conf["possible_values"][c]) if cat else () for c, cat in zip(names, categorical, strict=True)
    )
    normals = tuple(str(conf["normal_values"][c]) for c in names)
    begin, pos = [], 0
    for vals, cat in zip(values, categorical, strict=True):
        begin.append(pos)
        pos += len(vals) if cat else 1
    for c, cat, vals, normal in zip(names, categorical, values, normals, strict=True):
        if cat and normal not in vals:
            raise ValueError(f"normal value {normal!r} of {c!r} is not one of its categories")
    return Channels(names, categorical, values, normals, tuple(begin), pos)


def feature_names(channels_path: str = "") -> list[str]:
    """The 76 column names in SPEC §4 order (mimic3-benchmarks' header: ``ch->value``, ``mask->ch``)."""
    ch = channels(channels_path)
    cols: list[str] = []
    for name, cat, vals in zip(ch.names, ch.categorical, ch.values, strict=True):
        cols += [f"{name}->{v}" for v in vals] if cat else [name]
    return cols + [f"mask->{name}" for name in ch.names]


def continuous_indices(channels_path: str = "") -> list[int]:
    """Columns of the continuous channels (2, 3, 49..58): the only ones the normalizer scales."""
    ch = channels(channels_path)
    return [b for b, cat in zip(ch.begin, ch.categorical, strict=True) if not cat]


def mask_indices(channels_path: str = "") -> list[int]:
    ch = channels(channels_path)
    return list(range(ch.n_values, ch.n_columns))


def n_bins(end_hours: float, timestep: float = 1.0) -> int:
    """Bins of a window of ``end_hours`` (SPEC §4); 0 for empty or negative windows."""
    return max(int(end_hours / timestep + 1.0 - EPS), 0)


def n_bins_col(end_hours: Column, timestep: float = 1.0) -> Column:
    """:func:`n_bins` as a Spark expression (casting a double to int truncates, like Python's int)."""
    from pyspark.sql import functions as F

    return F.greatest((end_hours / F.lit(timestep) + F.lit(1.0 - EPS)).cast("int"), F.lit(0))


# ---------------------------------------------------------------- event encoding (Spark side)


def _numeric_key(text: str) -> str | None:
    try:
        return repr(float(text))
    except ValueError:
        return None


def _encoding(events: DataFrame, ch: Channels) -> DataFrame:
    """Adds ``__ch`` (channel index), ``__code`` (category index, -1 if continuous), ``__val``.

    ``__ch`` is null for an unknown variable, ``__code`` null for an unknown category and ``__val``
    null for a continuous event without a finite ``valuenum``: rows the discretizer skips.
    """
    from pyspark.sql import functions as F

    ch_map = F.create_map(*[x for i, n in enumerate(ch.names) for x in (F.lit(n), F.lit(i))])
    exact, numeric = [], []
    for name, cat, vals in zip(ch.names, ch.categorical, ch.values, strict=True):
        if not cat:
            continue
        for code, v in enumerate(vals):
            exact += [F.lit(f"{name}{_KEY_SEP}{v}"), F.lit(code)]
            num = _numeric_key(v)
            if num is not None:
                numeric += [F.lit(f"{name}{_KEY_SEP}#{num}"), F.lit(code)]
    exact_map = F.create_map(*exact)
    numeric_map = F.create_map(*numeric)
    categorical = F.array(*[F.lit(c) for c in ch.categorical])

    value = F.trim(F.col("value"))
    as_double = F.expr("try_cast(trim(value) AS DOUBLE)")
    code = F.coalesce(
        F.element_at(exact_map, F.concat(F.col("variable"), F.lit(_KEY_SEP), value)),
        F.element_at(
            numeric_map, F.concat(F.col("variable"), F.lit(_KEY_SEP + "#"), as_double.cast("string"))
        ),
    )
    valuenum = F.col("valuenum").cast("double")
    finite = valuenum.isNotNull() & ~F.isnan(valuenum) & (F.abs(valuenum) < F.lit(float("inf")))
    chan = F.element_at(ch_map, F.col("variable"))
    is_cat = F.element_at(categorical, chan + 1)
    return (
        events.withColumn("__ch", chan)
        .withColumn("__code", F.when(is_cat, code).otherwise(F.lit(-1)))
        .withColumn("__val", F.when(~is_cat & finite, valuenum))
    )


def _unusable_reason() -> Column:
    """Why an encoded event cannot be discretized at all (null: usable)."""
    from pyspark.sql import functions as F

    return (
        F.when(F.col("__ch").isNull(), "unknown_variable")
        .when(F.col("__code").isNull(), "unknown_category")
        .when((F.col("__code") < 0) & F.col("__val").isNull(), "null_value")
        .when(F.col("hours").isNull() | F.isnan("hours"), "null_hours")
    )


def check_events(events: DataFrame, stays: DataFrame, cfg: TimeseriesConfig | None = None) -> Checked:
    """Events the whole-stay discretization uses (kept) and the others, by reason (rejected).

    Reasons: ``no_stay`` (stay not in ``stays``), ``unknown_variable``, ``unknown_category``,
    ``null_value``, ``null_hours``, ``before_intime`` (hours < 0), ``after_outtime``
    (hours > los_hours). Kept rows have ``events``' columns unchanged. :func:`discretize` applies
    the same rules itself, so this is for counting (and for "an event in the window" tests).
    """
    from pyspark.sql import functions as F

    cfg = cfg or TimeseriesConfig()
    ch = channels(cfg.channels_path)
    cols = events.columns
    los = stays.select("stay_id", F.col("los_hours").alias("__los"), F.lit(True).alias("__in_cohort"))
    encoded = _encoding(events.join(los, "stay_id", "left").select(*cols, "__los", "__in_cohort"), ch)
    reason = F.coalesce(
        F.when(F.col("__in_cohort").isNull(), F.lit("no_stay")),
        _unusable_reason(),
        F.when(F.col("hours") < 0, F.lit("before_intime")),
        F.when(F.col("hours") > F.col("__los"), F.lit("after_outtime")),
    )
    tagged = encoded.withColumn("__reason", reason)
    kept = tagged.where(F.col("__reason").isNull()).select(*cols)
    bad = tagged.where(F.col("__reason").isNotNull())
    # the record holds the event as it came in, not the helper columns
    return Checked(kept, rejects(bad, STAGE, "events", F.col("__reason"), record_columns=cols))


# ---------------------------------------------------------------- per-stay work (pandas side)


@dataclass(frozen=True)
class _Layout:
    """What the pandas UDF needs, as plain numpy-friendly values (pickled once per task)."""

    timestep: float
    n_values: int
    n_columns: int
    begin: tuple[int, ...]
    categorical: tuple[bool, ...]
    normal: tuple[float, ...]  # continuous: the value; categorical: the category index

    @staticmethod
    def of(ch: Channels, timestep: float) -> _Layout:
        normal = tuple(
            float(vals.index(n)) if cat else float(n)
            for cat, vals, n in zip(ch.categorical, ch.values, ch.normals, strict=True)
        )
        return _Layout(timestep, ch.n_values, ch.n_columns, ch.begin, ch.categorical, normal)


def _window_matrix(hours: np.ndarray, chan: np.ndarray, value: np.ndarray, end: float, lay: _Layout) -> Any:
    """The (n x 76) float32 matrix of one window; events sorted in time order, all usable."""
    n = n_bins(end, lay.timestep) if np.isfinite(end) else 0
    n_ch = len(lay.begin)
    if n <= 0:
        return np.zeros((0, lay.n_columns), dtype=np.float32)
    keep = (hours >= 0) & (hours <= end)
    h, c, v = hours[keep], chan[keep], value[keep]
    b = (h / lay.timestep - EPS).astype(np.int64)  # astype truncates toward zero, like int()
    b = np.clip(b, 0, n - 1)  # h <= end already guarantees b <= n - 1; clip guards rounding only
    # last event per (bin, channel): events are in time order, so the last occurrence of the key
    key = b * n_ch + c
    rev_first = np.unique(key[::-1], return_index=True)[1]
    last = len(key) - 1 - rev_first
    obs = np.full((n, n_ch), -1, dtype=np.int64)
    obs[b[last], c[last]] = last
    observed = obs >= 0
    # previous imputation: the index of the last observed bin at or before each bin (-1: none yet)
    src_bin = np.maximum.accumulate(np.where(observed, np.arange(n)[:, None], -1), axis=0)
    src = np.where(src_bin >= 0, obs[np.maximum(src_bin, 0), np.arange(n_ch)], -1)
    filled = np.where(src >= 0, v[np.maximum(src, 0)] if len(v) else 0.0, np.asarray(lay.normal)[None, :])
    x = np.zeros((n, lay.n_columns), dtype=np.float32)
    rows = np.arange(n)
    for j in range(n_ch):
        if lay.categorical[j]:
            x[rows, lay.begin[j] + filled[:, j].astype(np.int64)] = 1.0
        else:
            x[:, lay.begin[j]] = filled[:, j]
    x[:, lay.n_values :] = observed
    return x


def _discretize_stays(events: pd.DataFrame, windows: pd.DataFrame, lay: _Layout) -> pd.DataFrame:
    """The stays of one bucket: their usable events and their windows (``__key``, ``stay_id``,
    ``end_hours``) -> long rows (``__key``, ``bin``, one float column per feature)."""
    import pandas as pd

    out_keys: list[Any] = []
    out_bins: list[np.ndarray] = []
    out_x: list[np.ndarray] = []
    if len(windows):
        # -1 stands for a null stay id (never one in silver): such rows then still pair up.
        stay = events["stay_id"].fillna(-1).to_numpy(dtype=np.int64)
        hours = events["hours"].to_numpy(dtype=np.float64)
        chan = events["__ch"].to_numpy(dtype=np.int64)
        code = events["__code"].to_numpy(dtype=np.float64)
        val = events["__val"].to_numpy(dtype=np.float64)
        itemid = events["__tb"].to_numpy(dtype=np.float64)
        value = np.where(code >= 0, code, val)
        # By stay, then the discretizer's order within one: hours, itemid, value (primary last).
        order = np.lexsort((value, itemid, hours, stay))
        stay, hours, chan, value = stay[order], hours[order], chan[order], value[order]
        window_stays = windows["stay_id"].fillna(-1).to_numpy(dtype=np.int64)
        first = np.searchsorted(stay, window_stays, side="left")
        last = np.searchsorted(stay, window_stays, side="right")
        for key, end, lo, hi in zip(
            windows["__key"].tolist(), windows["end_hours"].tolist(), first, last, strict=True
        ):
            span = slice(lo, hi)
            end = float(end) if end is not None else float("nan")
            x = _window_matrix(hours[span], chan[span], value[span], end, lay)
            if len(x):
                out_keys += [key] * len(x)
                out_bins.append(np.arange(len(x), dtype=np.int32))
                out_x.append(x)
    bins = np.concatenate(out_bins) if out_bins else np.zeros(0, dtype=np.int32)
    matrix = np.concatenate(out_x) if out_x else np.zeros((0, lay.n_columns), dtype=np.float32)
    key_series = pd.Series(out_keys, dtype=windows["__key"].dtype if len(out_keys) else object)
    # One float column per feature, not an array per row: PySpark converts an array column of a
    # pandas result element by element in Python, while flat columns cross as Arrow buffers; the
    # JVM packs them into ``x`` (see _discretize).
    columns = pd.DataFrame(matrix, columns=_feature_columns(lay.n_columns), copy=False)
    return pd.concat([pd.DataFrame({"__key": key_series, "bin": bins}), columns], axis=1)


def _feature_columns(n_columns: int) -> list[str]:
    return [f"__x{i}" for i in range(n_columns)]


# ---------------------------------------------------------------- public transforms

_BUCKET = "__bucket"
_MIN_BUCKETS = 256


def _usable_events(events: DataFrame, ch: Channels) -> DataFrame:
    from pyspark.sql import functions as F

    tb = F.col("itemid").cast("double") if "itemid" in events.columns else F.lit(0.0)
    encoded = _encoding(events, ch).withColumn("__tb", F.coalesce(tb, F.lit(0.0)))
    return encoded.where(_unusable_reason().isNull() & (F.col("hours") >= 0)).select(
        "stay_id",
        F.col("hours").cast("double").alias("hours"),
        F.col("__ch").cast("int").alias("__ch"),
        F.col("__code").cast("int").alias("__code"),
        F.col("__val"),
        F.col("__tb"),
    )


def _discretize(events: DataFrame, windows: DataFrame, key_type: str, cfg: TimeseriesConfig) -> DataFrame:
    """``windows``: ``__key, stay_id, end_hours`` -> ``__key, bin, x``."""
    from functools import partial

    from pyspark.sql import functions as F

    ch = channels(cfg.channels_path)
    lay = _Layout.of(ch, cfg.timestep)
    usable = _usable_events(events, ch)
    features = _feature_columns(lay.n_columns)
    schema = ", ".join([f"__key {key_type}", "bin int", *[f"{c} float" for c in features]])
    # Stays go to the pandas function by bucket, many at a time: a call per stay cost more in
    # per-group conversions than the discretization itself.
    buckets = max(_MIN_BUCKETS, 4 * int(events.sparkSession.conf.get("spark.sql.shuffle.partitions")))
    bucket = F.pmod(F.xxhash64(F.col("stay_id").cast("long")), F.lit(buckets)).alias(_BUCKET)
    flat = (
        usable.select("*", bucket)
        .groupBy(_BUCKET)
        .cogroup(windows.select("__key", "stay_id", "end_hours", bucket).groupBy(_BUCKET))
        .applyInPandas(partial(_discretize_stays, lay=lay), schema)
    )
    return flat.select("__key", "bin", F.array(*features).alias("x"))


def discretize(events: DataFrame, stays: DataFrame, cfg: TimeseriesConfig | None = None) -> DataFrame:
    """Silver ``timeseries``: every stay of ``stays`` over its whole stay (T = ``los_hours``).

    ``events``: silver events (``stay_id, hours, variable, value, valuenum``, ``itemid`` for ties).
    Returns ``stay_id long, bin int, x array<float>`` with bins 0 .. n_bins(los_hours) - 1; a stay
    without events still gets its bins (normal values, masks 0). Its first ``k`` bins are the window
    ending at ``k * timestep`` hours exactly.
    """
    from pyspark.sql import functions as F

    cfg = cfg or TimeseriesConfig()
    windows = stays.select(
        F.col("stay_id").cast("long").alias("__key"),
        F.col("stay_id").cast("long").alias("stay_id"),
        F.col("los_hours").cast("double").alias("end_hours"),
    )
    return _discretize(events, windows, "long", cfg).withColumnRenamed("__key", "stay_id")


def discretize_windows(
    events: DataFrame, windows: DataFrame, cfg: TimeseriesConfig | None = None
) -> DataFrame:
    """Windows with any end (radiology: the EHR cut at the image time), one matrix per sample.

    ``windows``: ``sample_id string, stay_id long, end_hours double`` (hours since intime).
    Returns ``sample_id string, bin int, x array<float>``: the window's own discretization, whose
    last bin holds only events up to ``end_hours`` (it differs from the whole-stay bin when the end
    is not a multiple of the timestep).
    """
    from pyspark.sql import functions as F

    cfg = cfg or TimeseriesConfig()
    w = windows.select(
        F.col("sample_id").cast("string").alias("__key"),
        F.col("stay_id").cast("long").alias("stay_id"),
        F.col("end_hours").cast("double").alias("end_hours"),
    )
    return _discretize(events, w, "string", cfg).withColumnRenamed("__key", "sample_id")
