"""``etl=parity`` against the published MedMod extraction, one crafted stay per rule (issue #16).

One stay of 60 h gets, each in its own hour bin, an event that one of the reference's rules
decides: duplicates whose string order differs from their number order, an inch height, FiO2 0.4,
Fahrenheit 98.6 and 78.8 (below the reference's ``>= 79`` test), labs without hadm_id, negative
glucose / pH / SpO2, a value text that disagrees with valuenum; and an image 0.4 s after the IHM
window. The events run through :func:`build_events` + the Spark discretizer; the expected 48 h
matrices come from ``tests/reference_discretizer.py`` over hand-written lists of the events each
rule set keeps (read off the reference code: mimic3benchmark/preprocessing.py ``clean_*``,
subject.py ``convert_events_to_timeseries``, scripts/validate_events.py), so neither side shares
code with the other.
"""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pytest

from conf import typed
from spark_jobs import timeseries as ts
from spark_jobs.cohort import CohortConfig
from spark_jobs.cxr import CxrConfig, build_cxr
from spark_jobs.events import EventsConfig, build_events
from spark_jobs.mimic_schema import CXR_TABLES
from spark_jobs.pipeline import PipelineConfig, load_config
from spark_jobs.tasks import TasksConfig, ihm_samples
from tests import reference_discretizer as ref
from tests.test_events import T0, _minute, chart, frame, lab

HR, RR, VERBAL, GLUCOSE, PH, SPO2 = 220045, 220210, 223900, 220621, 223830, 220277
HEIGHT_IN, FIO2, TEMP_F = 226707, 223835, 223761
LAB_GLUCOSE, LAB_PH = 50931, 50820
LOS_HOURS = 60.0

# (minute, ...) — every case in its own hour bin; ``store`` = minutes until stored.
CHART_ROWS = [
    chart(30, HR, "98", 98.0, store=1),  # text "98" > "100.5": parity keeps 98
    chart(30, HR, "100.5", 100.5, store=5),  # ... default keeps the later stored 100.5
    chart(90, VERBAL, "Oriented", 5.0, store=1),  # "Oriented" > "Confused" as text
    chart(90, VERBAL, "Confused", 4.0, store=5),
    chart(150, GLUCOSE, "120", 120.0, store=1),  # cleaned channel: compared as a number
    chart(150, GLUCOSE, "95", 95.0, store=5),
    chart(210, HEIGHT_IN, "70", 70.0, "Inch"),
    chart(270, FIO2, "0.4", 0.4),
    chart(330, FIO2, "50", 50.0),
    chart(390, TEMP_F, "98.6", 98.6, "°F"),
    chart(450, TEMP_F, "78.8", 78.8, "°F"),  # Fahrenheit below 79
    chart(510, SPO2, "-95", -95.0, "%"),
    chart(570, GLUCOSE, "-5", -5.0),
    chart(630, PH, "-7.2", -7.2),
    chart(690, RR, "9", 9.0, store=1),  # "9" > "20" as text
    chart(690, RR, "20", 20.0, store=5),
    chart(930, HR, "88", 87.0),  # the reference reads the text
]
LAB_ROWS = [
    lab(1, 750, LAB_GLUCOSE, "140", 140.0, hadm_id=None),
    lab(2, 810, LAB_PH, "7.31", 7.31, hadm_id=None),
    lab(3, 870, LAB_GLUCOSE, "130", 130.0),  # with its hadm_id: kept by both
]

CONT, CAT = "valuenum", "value"
# (hours, variable, value): what each rule set keeps, one row per (charttime, variable).
SHARED = [
    (5.5, "Fraction inspired oxygen", 0.5),
    (6.5, "Temperature", (98.6 - 32) * 5 / 9),
    (14.5, "Glucose", 130.0),
]
PARITY_EVENTS = [
    (0.5, "Heart Rate", 98.0),
    (1.5, "Glascow coma scale verbal response", "Oriented"),
    (2.5, "Glucose", 120.0),
    (3.5, "Height", 70.0),  # 226707's inch test never fires
    (4.5, "Fraction inspired oxygen", 0.4 / 100),  # every FiO2 / 100
    (7.5, "Temperature", 78.8),  # the F test never fires; only >= 79 converts
    (11.5, "Respiratory rate", 9.0),
    (15.5, "Heart Rate", 88.0),
    # SpO2 -95, glucose -5, pH -7.2: not the unsigned pattern; labs without hadm_id: dropped
]
DEFAULT_EVENTS = [
    (0.5, "Heart Rate", 100.5),
    (1.5, "Glascow coma scale verbal response", "Confused"),
    (2.5, "Glucose", 95.0),
    (3.5, "Height", 70 * 2.54),
    (4.5, "Fraction inspired oxygen", 0.4),
    (7.5, "Temperature", 26.0),  # (78.8 - 32) * 5 / 9 = 26.0
    (11.5, "Respiratory rate", 20.0),
    (12.5, "Glucose", 140.0),  # a lab without hadm_id attaches by time window
    (13.5, "pH", 7.31),
    (15.5, "Heart Rate", 87.0),
    # negatives: outside the outlier ranges (SpO2 -95 would be -9500 after the x100 rule)
]
PARITY_REJECTS = {
    ("duplicate", HR, 30.0),
    ("duplicate", VERBAL, 90.0),
    ("duplicate", GLUCOSE, 150.0),
    ("duplicate", RR, 690.0),
    ("non_numeric", SPO2, 510.0),
    ("non_numeric", GLUCOSE, 570.0),
    ("non_numeric", PH, 630.0),
    ("null_hadm_id", LAB_GLUCOSE, 750.0),
    ("null_hadm_id", LAB_PH, 810.0),
}
DEFAULT_REJECTS = {
    ("duplicate", HR, 30.0),
    ("duplicate", VERBAL, 90.0),
    ("duplicate", GLUCOSE, 150.0),
    ("duplicate", RR, 690.0),
    ("outlier", SPO2, 510.0),
    ("outlier", GLUCOSE, 570.0),
    ("outlier", PH, 630.0),
}


def _reference_matrix(events: list[tuple]) -> np.ndarray:
    config = ref.load_config()
    rows = []
    for hours, variable, value in events:
        categorical = config["is_categorical_channel"][variable]
        rows.append(
            dict(
                hours=hours,
                variable=variable,
                value=value if categorical else str(value),
                valuenum=None if categorical else float(value),
                itemid=0,
            )
        )
    return np.array(ref.discretize(rows, 48.0, 1.0, config), dtype=np.float32)


def _stays(spark):
    row = (100, 1, 10, T0, T0 + timedelta(hours=LOS_HOURS), "train", LOS_HOURS, 0)
    schema = (
        "stay_id long, subject_id long, hadm_id long, intime timestamp, outtime timestamp, "
        "split string, los_hours double, mortality int"
    )
    return spark.createDataFrame([row], schema)


def _run(spark, cfg: EventsConfig) -> tuple[np.ndarray, set[tuple], int]:
    """(48 h matrix, rejected (reason, itemid, minute), kept + rejected) for one events config."""
    import json

    checked = build_events(
        frame(spark, "chartevents", CHART_ROWS), frame(spark, "labevents", LAB_ROWS), _stays(spark), cfg
    )
    windows = spark.createDataFrame([("ihm", 100, 48.0)], "sample_id string, stay_id long, end_hours double")
    rows = sorted(ts.discretize_windows(checked.kept, windows).collect(), key=lambda r: r["bin"])
    rejected = set()
    for r in checked.rejected.select("reason", "record").collect():
        rec = json.loads(r["record"])
        rejected.add((r["reason"], rec["itemid"], _minute(rec["charttime"])))
    n_out = checked.kept.count() + len(checked.rejected.collect())
    return np.array([r["x"] for r in rows], dtype=np.float32), rejected, n_out


@pytest.fixture(scope="module")
def parity(spark):
    return _run(spark, EventsConfig.parity())


@pytest.fixture(scope="module")
def default(spark):
    return _run(spark, EventsConfig())


@pytest.mark.parametrize(
    ("name", "expected"),
    [("parity", SHARED + PARITY_EVENTS), ("default", SHARED + DEFAULT_EVENTS)],
)
def test_matrix_equals_the_reference_discretizer_over_the_kept_events(request, name, expected):
    matrix, _, _ = request.getfixturevalue(name)
    want = _reference_matrix(sorted(expected, key=lambda e: e[0]))
    assert matrix.shape == want.shape == (48, 76)
    np.testing.assert_allclose(matrix, want, rtol=1e-6, atol=0)


@pytest.mark.parametrize(("name", "expected"), [("parity", PARITY_REJECTS), ("default", DEFAULT_REJECTS)])
def test_every_dropped_row_has_its_reason(request, name, expected):
    _, rejected, n_out = request.getfixturevalue(name)
    assert rejected == expected
    assert n_out == len(CHART_ROWS) + len(LAB_ROWS)


def test_parity_pairs_an_image_truncated_into_the_ihm_window(spark):
    """An image 0.4 s after intime + 48 h: the references' ``int(float(StudyTime))`` puts it at
    48 h exactly, inside the IHM window; the default keeps the fraction and leaves it out."""
    meta_row = ("d1", 1, 50000001, "CHEST (PORTABLE AP)", "AP", 3056, 2544, 21500103, 0.4, None, None, None)
    ddl = {t: ", ".join(f"`{c}` {tp}" for c, tp in CXR_TABLES[t].columns) for t in ("metadata", "chexpert")}
    metadata = spark.createDataFrame([meta_row], ddl["metadata"])
    chexpert = spark.createDataFrame([], ddl["chexpert"])
    first = spark.createDataFrame([(100, 0.5)], "stay_id long, first_hour double")
    paired = {}
    for name, cfg in (("parity", CxrConfig.parity()), ("default", CxrConfig())):
        cxr = build_cxr(metadata, chexpert, cfg).kept
        (sample,) = ihm_samples(_stays(spark), first, cxr, TasksConfig(paired=False)).kept.collect()
        paired[name] = (sample["dicom_id"], sample["cxr_hours"])
    assert paired == {"parity": ("d1", 48.0), "default": (None, None)}


def test_presets_match_the_stage_configs():
    """conf/etl/*.yaml and the ``parity()`` constructors say the same thing, flag by flag."""
    preset = load_config(["etl=parity"])
    assert preset.events == EventsConfig.parity()
    assert preset.cohort == CohortConfig.parity()
    assert preset.cxr_stage == CxrConfig.parity()
    default = load_config([])
    fresh = PipelineConfig()
    assert (default.events, default.cohort, default.cxr_stage) == (
        fresh.events,
        fresh.cohort,
        fresh.cxr_stage,
    )
    assert typed.to_dict(preset.cohort)["count_expire_flag"] is False
