"""Discretizer (SPEC §4): bin edges, last-wins, imputation, one-hots, and a reference comparison."""

from __future__ import annotations

import random

import numpy as np
import pytest

from spark_jobs import timeseries as ts
from tests import reference_discretizer as ref

EVENTS = "stay_id long, hours double, variable string, value string, valuenum double, itemid long"
STAYS = "stay_id long, los_hours double"
WINDOWS = "sample_id string, stay_id long, end_hours double"

NAMES = ts.feature_names()
COL = {name: i for i, name in enumerate(NAMES)}
HR, SBP, TEMP = "Heart Rate", "Systolic blood pressure", "Temperature"
EYE, TOTAL, CRR = "Glascow coma scale eye opening", "Glascow coma scale total", "Capillary refill rate"


def ev(stay, hours, variable, value, itemid=1):
    """One event row; continuous values go to valuenum (and value as text), categorical to value."""
    if isinstance(value, int | float):
        return (stay, hours, variable, str(value), float(value), itemid)
    return (stay, hours, variable, value, None, itemid)


def matrices(df, key):
    """{key: (n x 76) array} from a long-format result, bins checked to be 0..n-1."""
    out = {}
    rows = sorted(df.collect(), key=lambda r: (r[key], r["bin"]))
    for r in rows:
        out.setdefault(r[key], []).append((r["bin"], r["x"]))
    result = {}
    for k, items in out.items():
        assert [b for b, _ in items] == list(range(len(items)))
        result[k] = np.array([x for _, x in items], dtype=np.float32)
    return result


def test_column_layout():
    assert len(NAMES) == 76
    assert ts.continuous_indices() == [2, 3, *range(49, 59)]
    assert ts.mask_indices() == list(range(59, 76))
    assert NAMES[0] == "Capillary refill rate->0.0"
    assert NAMES[2] == "Diastolic blood pressure" and NAMES[3] == "Fraction inspired oxygen"
    assert NAMES[49] == "Glucose" and NAMES[58] == "pH"
    assert NAMES[59] == "mask->Capillary refill rate" and NAMES[75] == "mask->pH"
    assert NAMES == ref.header(ref.load_config())


def test_n_bins():
    assert ts.n_bins(48.0) == 48
    assert ts.n_bins(47.9) == 48
    assert ts.n_bins(48.5) == 49
    assert ts.n_bins(0.0) == 0
    assert ts.n_bins(5.0, 2.0) == 3
    assert ts.n_bins(-3.0) == 0


EDGE_EVENTS = [
    ev(1, -0.5, HR, 200.0),  # before intime: dropped
    ev(1, 0.0, HR, 70.0),  # t = 0 -> bin 0
    ev(1, 1.0, HR, 80.0),  # t = 1.0 -> still bin 0, and later: wins
    ev(1, 1.5, HR, 90.0),  # bin 1
    ev(1, 2.0, HR, 95.0),  # bin 1, later: wins
    ev(1, 3.5, HR, 300.0),  # after the window end (los 3.0): dropped
    ev(1, 0.5, EYE, "Blinks"),  # unknown category: missing, never a crash
    ev(1, 2.5, EYE, "3 To speech"),
    ev(1, 0.2, TOTAL, "12.0"),  # numeric match to "12"
    ev(1, 2.2, TEMP, 37.5, itemid=223762),  # same hours: larger itemid wins
    ev(1, 2.2, TEMP, 38.5, itemid=223761),
    (1, 1.2, SBP, "abc", None, 1),  # continuous without a number: missing
    ev(1, 1.7, "Not a channel", 1.0),
    ev(3, 0.5, HR, 100.0),  # a stay that is not in `stays`
]


@pytest.fixture(scope="module")
def edge_case(spark):
    ev_df = spark.createDataFrame(EDGE_EVENTS, EVENTS)
    stays = spark.createDataFrame([(1, 3.0), (2, 1.5)], STAYS)
    out = matrices(ts.discretize(ev_df, stays), "stay_id")
    return ev_df, stays, out


def test_bins_last_value_and_edges(edge_case):
    _, _, out = edge_case
    x = out[1]
    assert x.shape == (3, 76)
    assert x[:, COL[HR]].tolist() == [80.0, 95.0, 95.0]  # t=1.0 in bin 0; last wins; carried forward
    assert x[:, COL["mask->" + HR]].tolist() == [1.0, 1.0, 0.0]
    # unknown eye string at 0.5: missing -> normal "4 Spontaneously" until "3 To speech" in bin 2
    assert x[:, COL[EYE + "->4 Spontaneously"]].tolist() == [1.0, 1.0, 0.0]
    assert x[:, COL[EYE + "->3 To speech"]].tolist() == [0.0, 0.0, 1.0]
    assert x[:, COL["mask->" + EYE]].tolist() == [0.0, 0.0, 1.0]
    eye_cols = [i for n, i in COL.items() if n.startswith(EYE + "->")]
    assert x[:, eye_cols].sum(axis=1).tolist() == [1.0, 1.0, 1.0]
    assert x[:, COL[TOTAL + "->12"]].tolist() == [1.0, 1.0, 1.0]
    assert x[:, COL[TOTAL + "->15"]].tolist() == [0.0, 0.0, 0.0]
    assert x[:, COL[TEMP]].tolist() == [pytest.approx(36.6), pytest.approx(36.6), 37.5]
    assert x[:, COL[SBP]].tolist() == [118.0, 118.0, 118.0]  # normal value, never observed
    assert x[:, COL["mask->" + SBP]].tolist() == [0.0, 0.0, 0.0]
    assert x[:, COL[CRR + "->0.0"]].tolist() == [1.0, 1.0, 1.0]


def test_stay_without_events_gets_normals(edge_case):
    _, _, out = edge_case
    assert set(out) == {1, 2}  # stay 3 has events but no stay row: no output
    x = out[2]
    assert x.shape == (2, 76)  # int(1.5 + 1 - 1e-6) = 2
    assert x[0, COL[HR]] == 86.0 and x[0, COL["Fraction inspired oxygen"]] == pytest.approx(0.21)
    assert x[:, 59:].sum() == 0.0


def test_check_events_counts_every_unused_event(edge_case):
    from pyspark.sql import functions as F

    ev_df, stays, _ = edge_case
    checked = ts.check_events(ev_df, stays)
    assert checked.kept.columns == ev_df.columns
    tagged = checked.kept.select(F.lit("kept").alias("reason")).unionByName(checked.rejected.select("reason"))
    counts = {r["reason"]: r["count"] for r in tagged.groupBy("reason").count().collect()}
    assert counts == {
        "kept": 8,
        "before_intime": 1,
        "after_outtime": 1,
        "unknown_category": 1,
        "null_value": 1,
        "unknown_variable": 1,
        "no_stay": 1,
    }
    assert sum(counts.values()) == len(EDGE_EVENTS)


def test_windows_cut_at_any_end_and_timestep(spark):
    from pyspark.sql import functions as F

    events = spark.createDataFrame(
        [ev(1, 2.0, HR, 60.0), ev(1, 2.1, HR, 61.0), ev(1, 2.4, HR, 62.0), ev(1, 2.6, HR, 63.0)], EVENTS
    )
    windows = spark.createDataFrame([("a", 1, 2.5), ("b", 1, 2.0), ("c", 1, 0.0)], WINDOWS)
    one = ts.discretize_windows(events, windows)
    two = ts.discretize_windows(events, windows, ts.TimeseriesConfig(timestep=2.0))
    out = matrices(
        one.unionByName(two.withColumn("sample_id", F.concat(F.lit("2:"), "sample_id"))), "sample_id"
    )
    assert set(out) == {"a", "b", "2:a", "2:b"}  # a window of 0 hours has no bins
    assert out["a"][:, COL[HR]].tolist() == [86.0, 60.0, 62.0]  # 2.6 is after the image time
    assert out["b"][:, COL[HR]].tolist() == [86.0, 60.0]
    assert out["2:a"][:, COL[HR]].tolist() == [60.0, 62.0]  # bins (0,2], (2,4]: n = int(1.25 + 1) = 2
    assert out["2:b"][:, COL[HR]].tolist() == [60.0]


def _random_events(rng: random.Random, stay: int, los: float, config: dict) -> list[tuple]:
    rows = []
    used = set()
    for _ in range(rng.randint(0, 40)):
        channel = rng.choice(config["id_to_channel"])
        hours = rng.choice([round(rng.uniform(-2, los + 2), 3), float(rng.randint(-1, int(los) + 1))])
        if (channel, hours) in used:  # silver events has one value per (time, variable)
            continue
        used.add((channel, hours))
        itemid = rng.randint(1, 3)
        if config["is_categorical_channel"][channel]:
            options = config["possible_values"][channel] + ["Unknown thing", "99"]
            rows.append((stay, hours, channel, rng.choice(options), None, itemid))
        else:
            value = None if rng.random() < 0.05 else round(rng.uniform(0, 200), 2)
            rows.append((stay, hours, channel, None if value is None else str(value), value, itemid))
    return rows


def test_matches_reference_on_random_stays(spark):
    from pyspark.sql import functions as F

    rng = random.Random(7)
    config = ref.load_config()
    stays = [(s, round(rng.uniform(0.5, 30.0), 2)) for s in range(10, 16)]
    stays.append((16, 12.0))
    events = [e for s, los in stays for e in _random_events(rng, s, los, config)]
    windows = [(f"w{s}-{i}", s, round(rng.uniform(0.0, los + 1), 2)) for s, los in stays for i in range(2)]
    ev_df = spark.createDataFrame(events, EVENTS)
    whole_df = ts.discretize(ev_df, spark.createDataFrame(stays, STAYS))
    cut_df = ts.discretize_windows(ev_df, spark.createDataFrame(windows, WINDOWS))
    both = matrices(
        whole_df.select(F.col("stay_id").cast("string").alias("k"), "bin", "x").unionByName(
            cut_df.select(F.col("sample_id").alias("k"), "bin", "x")
        ),
        "k",
    )
    whole = {s: both[str(s)] for s, _ in stays if str(s) in both}
    cut = {k: both[k] for k, _, _ in windows if k in both}
    fields = ["stay_id", "hours", "variable", "value", "valuenum", "itemid"]
    by_stay = {}
    for e in events:
        by_stay.setdefault(e[0], []).append(dict(zip(fields, e, strict=True)))
    for s, los in stays:
        expected = np.array(ref.discretize(by_stay.get(s, []), los, 1.0, config), dtype=np.float32)
        assert whole[s].shape == expected.shape
        np.testing.assert_array_equal(whole[s], expected)
    for key, s, end in windows:
        expected = np.array(ref.discretize(by_stay.get(s, []), end, 1.0, config), dtype=np.float32)
        got = cut.get(key, np.zeros((0, 76), dtype=np.float32))
        assert got.shape == expected.reshape(-1, 76).shape
        np.testing.assert_array_equal(got, expected.reshape(-1, 76))
    assert sum(len(v) for v in by_stay.values()) > 100  # the comparison saw real data


def test_many_stays_in_one_call_equal_one_stay_at_a_time(spark):
    """The pandas function gets the stays of a bucket together (events in any order): each
    window must come out as if its stay had been the only one."""
    import pandas as pd

    rng = random.Random(11)
    config = ref.load_config()
    stays = [(s, round(rng.uniform(0.5, 20.0), 2)) for s in range(20, 32)]
    events = [e for s, los in stays for e in _random_events(rng, s, los, config)]
    channels = ts.channels()
    lay = ts._Layout.of(channels, 1.0)
    usable = ts._usable_events(spark.createDataFrame(events, EVENTS), channels).toPandas()
    usable = usable.sample(frac=1.0, random_state=3).reset_index(drop=True)  # no order to rely on
    windows = pd.DataFrame(
        [(f"w{s}-{i}", s, round(rng.uniform(0.0, los + 1), 2)) for s, los in stays for i in range(2)]
        + [("no-events", 99, 5.0)],
        columns=["__key", "stay_id", "end_hours"],
    )
    together = ts._discretize_stays(usable, windows, lay)
    for stay, own in windows.groupby("stay_id"):
        alone = ts._discretize_stays(usable[usable["stay_id"] == stay], own, lay)
        mine = together[together["__key"].isin(own["__key"])].reset_index(drop=True)
        assert len(alone) > 0 or own["end_hours"].max() < 1e-6
        pd.testing.assert_frame_equal(mine, alone.reset_index(drop=True))
    assert together["__key"].value_counts()["no-events"] == 5
    assert set(together.columns) == {"__key", "bin", *[f"__x{i}" for i in range(lay.n_columns)]}
