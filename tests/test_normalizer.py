"""Normalizer (SPEC §5): train rows only, each stay's rows once, sample std, 1e-7 floor."""

from __future__ import annotations

import numpy as np
import pytest

from spark_jobs import normalizer
from spark_jobs.timeseries import continuous_indices

TS = "stay_id long, bin int, x array<float>"
WTS = "sample_id string, bin int, x array<float>"
SAMPLES = "sample_id string, stay_id long, split string, hour double, n_bins int"
CONT = continuous_indices()
HR = 50  # Heart Rate column


def row(hr: float, dbp: float = 60.0, ph: float = 7.4) -> list[float]:
    x = [0.0] * 76
    x[2], x[HR], x[58], x[0] = dbp, hr, ph, 1.0  # x[0]: a one-hot, must be ignored
    return x


def by_column(rows):
    out = {r["column"]: r for r in rows}
    assert sorted(out) == CONT
    return out


@pytest.fixture(scope="module")
def stats(spark):
    """{run: {column: row}} for the three runs below, in one Spark job (the machine is shared)."""
    from pyspark.sql import functions as F

    ts = spark.createDataFrame(
        [(1, b, row(v, dbp=60.0 + b)) for b, v in enumerate([1.0, 2.0, 3.0, 4.0, 5.0])]
        + [(2, b, row(v)) for b, v in enumerate([10.0, 20.0, 30.0])]
        + [(3, b, row(1000.0)) for b in range(2)],
        TS,
    )
    samples = spark.createDataFrame(
        [
            ("decomp:1:2", 1, "train", 2.0, 2),
            ("decomp:1:3", 1, "train", 3.0, 3),  # stay 1: bins 0..2, once (not 2 + 3 rows)
            ("decomp:2:1", 2, "train", 1.0, 1),
            ("decomp:3:2", 3, "test", 2.0, 2),  # test split: ignored
        ],
        SAMPLES,
    )
    wts = spark.createDataFrame(
        [("r:1:a", 0, row(100.0)), ("r:1:a", 1, row(100.0))]
        + [("r:1:b", b, row(v)) for b, v in enumerate([1.0, 2.0, 4.0])]
        + [("r:2:c", 0, row(7.0))],
        WTS,
    )
    rad = spark.createDataFrame(
        [("r:1:a", 1, "train", 1.5, 2), ("r:1:b", 1, "train", 2.5, 3), ("r:2:c", 2, "val", 0.5, 1)], SAMPLES
    )
    runs = {
        "decomp": normalizer.build_normalizer("decomp", samples, ts),
        "radiology": normalizer.build_normalizer("radiology", rad, wts),
        "radiology_val": normalizer.build_normalizer(
            "radiology", rad, wts, normalizer.NormalizerConfig(split="val")
        ),
    }
    for df in runs.values():
        assert df.columns == list(normalizer.COLUMNS)
    union = None
    for name, df in runs.items():
        part = df.withColumn("run", F.lit(name))
        union = part if union is None else union.unionByName(part)
    rows = union.collect()
    return {name: by_column([r for r in rows if r["run"] == name]) for name in runs}


def test_train_prefix_rows_counted_once(stats):
    dec = stats["decomp"]
    expected = np.array([1.0, 2.0, 3.0, 10.0])
    assert dec[HR]["n"] == 4
    assert dec[HR]["mean"] == pytest.approx(expected.mean())
    assert dec[HR]["std"] == pytest.approx(expected.std(ddof=1))
    assert dec[2]["mean"] == pytest.approx(np.mean([60.0, 61.0, 62.0, 60.0]))
    assert dec[58]["std"] == 1e-7  # constant column: floored
    assert dec[58]["mean"] == pytest.approx(7.4)


def test_radiology_uses_latest_window_and_single_row_floor(stats):
    val = stats["radiology_val"]
    rad = stats["radiology"]
    assert rad[HR]["n"] == 3 and rad[HR]["mean"] == pytest.approx(7.0 / 3)
    assert rad[HR]["std"] == pytest.approx(np.std([1.0, 2.0, 4.0], ddof=1))
    assert val[HR]["n"] == 1 and val[HR]["mean"] == 7.0 and val[HR]["std"] == 1e-7  # N - 1 = 0


def test_unknown_task_is_an_error():
    with pytest.raises(ValueError):
        normalizer.build_normalizer("mortality", None, None)


def test_latest_samples_pick_one_window_per_stay(spark):
    """What the pipeline discretizes for the radiology normalizer: each stay's latest sample of
    the split (ties on hour: the largest sample_id), with the window end it needs."""
    rad = spark.createDataFrame(
        [
            ("r:1:a", 1, "train", 1.5, 2),
            ("r:1:b", 1, "train", 2.5, 3),
            ("r:1:c", 1, "train", 2.5, 3),  # same hour as b: the larger id wins
            ("r:1:d", 1, "test", 9.0, 9),  # other split
            ("r:2:e", 2, "train", 0.5, 1),
        ],
        SAMPLES,
    )
    got = sorted(tuple(r) for r in normalizer.latest_samples(rad, "train").collect())
    assert got == [("r:1:c", 1, 2.5), ("r:2:e", 2, 0.5)]
