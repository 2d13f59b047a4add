"""Gold samples (SPEC §6-7): sample rules, label edges, pairing rules, paired vs partial mode."""

from __future__ import annotations

import datetime as dt

import pytest

from spark_jobs import tasks

BASE = dt.datetime(2180, 1, 1, 0, 0, 0)
STAYS = (
    "subject_id long, hadm_id long, stay_id long, gender string, age int, admittime timestamp, "
    "dischtime timestamp, intime timestamp, outtime timestamp, deathtime timestamp, dod date, "
    "los_hours double, mortality int, death_hours double, phenotypes array<int>, split string"
)
EVENTS = (
    "stay_id long, subject_id long, hours double, variable string, value string, valuenum double, itemid long"
)
CXR = (
    "dicom_id string, subject_id long, study_id long, study_time timestamp, view string, path string, "
    "labels array<double>"
)
HR = "Heart Rate"

# stay_id: (los_hours, mortality, death_hours, event hours)
SPECS = {
    1: (47.9, 0, None, [1.0]),  # IHM: too short by 0.1 h
    2: (48.0, 1, 48.0, [1.0]),  # IHM: exactly 48 h; decomp: death at the last hour
    3: (100.0, 0, None, [10.5, 30.0]),  # pairing stay (images below)
    4: (60.0, 0, None, [50.0]),  # IHM: no event in [0, 48]
    5: (70.0, 1, 69.5, []),  # no events at all
    6: (400.0, 0, None, [0.0]),  # LOS buckets at 8 and 14 days
    7: (3.5, 0, None, [1.0]),  # hourly tasks: nothing after 4 h
    8: (30.0, 1, None, [0.5]),  # died (flag) without a deathtime: decomp labels stay 0
    9: (50.0, 0, None, [48.0, -1.0]),  # IHM: the only in-window event is at exactly 48 h
    10: (10.0, 0, None, [6.0, 12.0]),  # first event exactly at an integer hour
}


def at(stay: int, hours: float) -> dt.datetime:
    return BASE + dt.timedelta(days=30 * stay, hours=hours)


def stay_row(stay: int):
    los, mortality, death, _ = SPECS[stay]
    intime = at(stay, 0.0)
    deathtime = None if death is None else at(stay, death)
    pheno = [stay % 2] * 24 + [1]
    split = "train" if stay % 2 else "test"
    return (stay, 100 + stay, stay, "F", 60, intime, at(stay, los), intime, at(stay, los), deathtime, None, los,
            mortality, death, pheno, split)  # fmt: skip


def image(dicom: str, stay: int, hours: float, labels=None):
    return (dicom, stay, 5000 + stay, at(stay, hours), "AP", f"files/{dicom}.jpg", labels)


LABELS_C = [1.0, -1.0, None, 0.0] + [0.0] * 10
IMAGES = [
    image("a", 3, -0.001, LABELS_C),  # before intime
    image("b", 3, 0.0, LABELS_C),  # exactly at intime
    image("c", 3, 20.0, LABELS_C),
    image("d", 3, 48.0, LABELS_C),  # exactly at the IHM window edge
    image("e1", 3, 60.0, LABELS_C),
    image("e2", 3, 60.0, None),  # same time: the larger dicom_id wins; no CheXpert row
    image("f", 3, 100.0, LABELS_C),  # exactly at outtime
    image("g", 3, 100.5, LABELS_C),  # after outtime
    image("h", 6, 200.0, LABELS_C),
]


@pytest.fixture(scope="module")
def frames(spark):
    stays = spark.createDataFrame([stay_row(s) for s in SPECS], STAYS)
    events = spark.createDataFrame(
        [(s, s, h, HR, "80", 80.0, 220045) for s, (_, _, _, hs) in SPECS.items() for h in hs], EVENTS
    )
    cxr = spark.createDataFrame(IMAGES, CXR)
    # computed once for the module (a real pipeline persists it too): fewer jobs on a shared machine
    first = tasks.first_event_hours(events, stays).localCheckpoint(eager=True)
    return stays, first, cxr


RUNS = {
    "ihm": ("ihm", {"paired": False}),
    "pheno": ("pheno", {"paired": False}),
    "decomp": ("decomp", {"paired": False}),
    "decomp_last_paired": ("decomp", {"pairing": "last_in_stay"}),
    "los": ("los", {"paired": False}),
    "radiology": ("radiology", {"uncertain_as": 1}),
}


@pytest.fixture(scope="module")
def results(frames):
    """{run: (samples, reject counts, kept DataFrame)} for every run of RUNS, in one Spark job:
    the machine is shared and a job's fixed cost dominates on data this small."""
    from pyspark.sql import functions as F

    kept, parts = {}, []
    for name, (task, cfg) in RUNS.items():
        checked = tasks.build_samples(task, *frames, tasks.TasksConfig(**cfg))
        assert checked.kept.columns == list(tasks.SAMPLE_COLUMNS)
        kept[name] = checked.kept
        parts.append(
            checked.kept.withColumn("__reason", F.lit(None).cast("string")).withColumn("__run", F.lit(name))
        )
        parts.append(checked.rejected.select(F.col("reason").alias("__reason"), F.lit(name).alias("__run")))
    union = parts[0]
    for part in parts[1:]:
        union = union.unionByName(part, allowMissingColumns=True)
    out = {name: ([], {}, kept[name]) for name in RUNS}
    for r in union.collect():
        rows, reasons, _ = out[r["__run"]]
        if r["__reason"] is None:
            rows.append(r)
        else:
            reasons[r["__reason"]] = reasons.get(r["__reason"], 0) + 1
    return out


def by_stay(rows):
    return {r["stay_id"]: r for r in rows}


def test_first_event_hours_ignore_events_outside_the_stay(frames):
    first = {r["stay_id"]: r["first_hour"] for r in frames[1].collect()}
    assert first == {1: 1.0, 2: 1.0, 3: 10.5, 4: 50.0, 6: 0.0, 7: 1.0, 8: 0.5, 9: 48.0, 10: 6.0}


def test_ihm_window_edges_and_pairing(results):
    rows, reasons, _ = results["ihm"]
    s = by_stay(rows)
    assert sorted(s) == [2, 3, 6, 9]  # 47.9 h stay out, 48.0 h stay in; event at exactly 48 h counts
    assert reasons == {"los_too_short": 4, "no_event_in_window": 1, "no_events": 1}  # 1, 7, 8, 10 | 4 | 5
    assert s[2]["sample_id"] == "ihm:2:48" and s[2]["hour"] == 48.0 and s[2]["n_bins"] == 48
    assert s[2]["y"] == [1.0] and s[3]["y"] == [0.0]
    assert (s[3]["dicom_id"], s[3]["cxr_hours"], s[3]["has_image"]) == ("d", 48.0, 1)  # edge inclusive
    assert (s[2]["dicom_id"], s[2]["has_image"]) == (None, 0)
    assert s[6]["dicom_id"] is None  # its image is at 200 h, outside [0, 48]
    assert s[3]["split"] == "train" and s[2]["split"] == "test" and s[3]["hadm_id"] == 103


def test_pheno_pairs_last_image_of_stay(results):
    rows, reasons, _ = results["pheno"]
    s = by_stay(rows)
    assert sorted(s) == [1, 2, 3, 4, 6, 7, 8, 9, 10] and reasons == {"no_events": 1}
    assert (s[3]["dicom_id"], s[3]["cxr_hours"]) == ("f", 100.0)  # image at exactly outtime
    assert s[6]["dicom_id"] == "h"
    assert s[1]["y"] == [1.0] * 25 and s[2]["y"] == [0.0] * 24 + [1.0]
    assert s[1]["hour"] == 47.9 and s[1]["n_bins"] == 48 and s[1]["sample_id"] == "pheno:1:47.9"


def _hours(rows, stay):
    return {r["hour"]: r for r in rows if r["stay_id"] == stay}


def test_decompensation_hours_labels_and_causal_pairing(results):
    rows, reasons, _ = results["decomp"]
    assert reasons == {"no_events": 1, "no_sample_hours": 1}  # stays 5 and 7
    two = _hours(rows, 2)
    assert sorted(two) == [float(t) for t in range(5, 49)]  # t > 4, up to the hour of death
    assert two[48.0]["y"] == [1.0]  # at the hour of death
    assert two[24.0]["y"] == [0.0]  # death exactly 24 h later: not "within 24 h"
    assert two[25.0]["y"] == [1.0]
    assert two[25.0]["sample_id"] == "decomp:2:25" and two[25.0]["n_bins"] == 25
    assert two[25.0]["los_remaining_hours"] is None
    eight = _hours(rows, 8)
    assert sorted(eight) == [float(t) for t in range(5, 31)]
    assert {tuple(r["y"]) for r in eight.values()} == {(0.0,)}  # no deathtime: never positive
    three = _hours(rows, 3)
    assert min(three) == 11.0 and max(three) == 100.0  # after the first event at 10.5 h
    assert sorted(_hours(rows, 10)) == [7.0, 8.0, 9.0, 10.0]  # t > first event at exactly 6 h
    causal = {t: three[t]["dicom_id"] for t in (11.0, 19.0, 20.0, 47.0, 48.0, 59.0, 60.0, 99.0, 100.0)}
    assert causal == {11.0: "b", 19.0: "b", 20.0: "c", 47.0: "c", 48.0: "d", 59.0: "d", 60.0: "e2",
                      99.0: "e2", 100.0: "f"}  # fmt: skip
    assert three[20.0]["cxr_hours"] == 20.0


def test_last_in_stay_pairing_and_paired_mode(results):
    rows, reasons, _ = results["decomp_last_paired"]
    assert {r["stay_id"] for r in rows} == {3, 6}
    assert {r["dicom_id"] for r in rows if r["stay_id"] == 3} == {"f"}
    assert len(_hours(rows, 3)) == 90
    # stays without an image: 1 (t 5..47), 2 (5..48), 4 (51..60), 8 (5..30), 9 (49, 50), 10 (7..10)
    assert reasons["no_image"] == 43 + 44 + 10 + 26 + 2 + 4


def test_los_buckets_at_day_edges(results):
    rows, reasons, _ = results["los"]
    assert reasons == {"no_events": 1, "no_sample_hours": 1}
    three = _hours(rows, 3)
    assert three[76.0]["los_remaining_hours"] == 24.0 and three[76.0]["y"] == [1.0]  # exactly 1 day
    assert three[77.0]["y"] == [0.0] and three[100.0]["y"] == [0.0]
    assert three[100.0]["los_remaining_hours"] == 0.0
    six = _hours(rows, 6)
    assert min(six) == 5.0 and max(six) == 400.0
    assert six[208.0]["y"] == [8.0]  # exactly 8 days left
    assert six[209.0]["y"] == [7.0]
    assert six[64.0]["y"] == [9.0]  # exactly 14 days left
    assert six[65.0]["y"] == [8.0]
    assert six[352.0]["y"] == [2.0]  # 48 h
    two = _hours(rows, 2)
    assert max(two) == 48.0  # death does not cut LOS samples (the stay ends at 48 h anyway)
    assert sorted(_hours(rows, 8)) == [float(t) for t in range(5, 31)]
    assert six[200.0]["dicom_id"] == "h" and six[199.0]["dicom_id"] is None  # causal pairing


def test_radiology_one_sample_per_image_in_stay(results):
    rows, reasons, kept = results["radiology"]
    s = {r["dicom_id"]: r for r in rows}
    assert sorted(s) == ["b", "c", "d", "e1", "f", "h"]  # a, g outside the stay
    assert reasons == {"no_labels": 1}  # e2
    c = s["c"]
    assert c["sample_id"] == "radiology:3:c" and c["hour"] == 20.0 and c["n_bins"] == 20
    assert c["y"] == [1.0, 1.0, 0.0, 0.0] + [0.0] * 10  # -1 -> 1 under uncertain_as=1, blank -> 0
    assert s["b"]["n_bins"] == 0 and s["b"]["has_image"] == 1  # image at exactly intime: empty EHR
    windows = tasks.sample_windows(kept)
    assert windows.columns == ["sample_id", "stay_id", "end_hours"]


def test_radiology_labels_default_policy(spark):
    from pyspark.sql import functions as F

    raw = F.array(*[F.lit(v).cast("double") for v in (1.0, -1.0, 0.0, None)])
    row = (
        spark.range(1)
        .select(tasks.radiology_labels(raw).alias("a"), tasks.radiology_labels(raw, 1).alias("b"))
        .first()
    )
    assert row["a"] == [1.0, 0.0, 0.0, 0.0] and row["b"] == [1.0, 1.0, 0.0, 0.0]


def test_config_is_validated():
    from conf import typed

    cfg = typed.build(tasks.TasksConfig, {"pairing": "last_in_stay", "paired": False, "uncertain_as": 1})
    assert (cfg.pairing, cfg.paired, cfg.uncertain_as, cfg.timestep) == ("last_in_stay", False, 1, 1.0)
    with pytest.raises(typed.ConfigError):
        typed.build(tasks.TasksConfig, {"pairing": "future"})
    with pytest.raises(typed.ConfigError):
        typed.build(tasks.TasksConfig, {"ihm_hour": 48})
    with pytest.raises(ValueError):
        tasks.TasksConfig(pairing="future")
    with pytest.raises(ValueError):
        tasks.TasksConfig(uncertain_as=2)
    with pytest.raises(ValueError):
        tasks.build_samples("mortality", None, None, None)
