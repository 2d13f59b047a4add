"""Event mapping, attachment and cleaning rules of SPEC §3 on hand-made rows.

One dataset holds every case (a distinct charttime minute per case, so rows are easy to find); it
is built and collected once per module because each Spark action costs seconds on a busy machine.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest

from spark_jobs.events import EVENTS_COLUMNS, EventsConfig, build_events
from spark_jobs.mimic_schema import mimic_iv_tables

TABLES = mimic_iv_tables("v2")
T0 = datetime(2150, 1, 1, 0, 0, 0)  # subject 1, stay 100: [T0, T0 + 48h]
T2 = datetime(2150, 2, 1, 0, 0, 0)  # subject 2, stay 200: [T2, T2 + 24h]
T3 = datetime(
    2150, 3, 1, 0, 0, 0
)  # subject 3, overlapping stays 300: [T3, T3 + 10h], 301: [T3 + 5h, T3 + 20h]
BASE = {1: T0, 2: T2, 3: T3}  # subject -> time origin of its minutes
STAY_SUBJECT = {100: 1, 200: 2, 300: 3, 301: 3}

HR, SBP_ART, SBP_NBP, DBP_NBP = 220045, 220050, 220179, 220180
TEMP_F, TEMP_C, WEIGHT_KG, WEIGHT_LB, WEIGHT_OZ = 223761, 223762, 226512, 226531, 3582
HEIGHT_IN, HEIGHT_CM, FIO2, SPO2 = 226707, 226730, 223835, 220277
GLUCOSE, PH, EYE, VERBAL, MOTOR = 220621, 223830, 220739, 223900, 223901
CRR_R, CRR_L = 223951, 224308
LAB_GLUCOSE, LAB_PH, LAB_SPO2, LAB_URINE_GLUCOSE = 50931, 50820, 50817, 51478


def frame(spark, table: str, rows: list[dict]):
    spec = TABLES[table]
    schema = ", ".join(f"`{c}` {t}" for c, t in spec.columns)
    return spark.createDataFrame([tuple(r.get(c) for c in spec.column_names) for r in rows], schema)


def at(minute: float, base: datetime = T0) -> datetime:
    return base + timedelta(minutes=minute)


def chart(minute, itemid, value, valuenum=None, uom=None, stay_id=100, store=0, subject_id=1, hadm_id=10):
    """A chartevents row; ``store`` = minutes after the charttime it was stored."""
    ct = at(minute) if minute is not None else None
    return dict(
        subject_id=subject_id,
        hadm_id=hadm_id,
        stay_id=stay_id,
        charttime=ct,
        storetime=ct + timedelta(minutes=store) if ct else None,
        itemid=itemid,
        value=value,
        valuenum=valuenum,
        valueuom=uom,
    )


def lab(labevent_id, minute, itemid, value, valuenum=None, subject_id=1, hadm_id=10, base=T0):
    ct = at(minute, base)
    return dict(
        labevent_id=labevent_id,
        subject_id=subject_id,
        hadm_id=hadm_id,
        itemid=itemid,
        charttime=ct,
        storetime=ct + timedelta(minutes=30),
        value=value,
        valuenum=valuenum,
    )


CHART_ROWS = [
    chart(1, TEMP_F, "98.6", 98.6, "°F"),
    chart(2, TEMP_C, "100.4", 100.4, "°C"),  # Fahrenheit by value >= 79
    chart(3, TEMP_C, "37.2", 37.2, "°C"),
    chart(4, WEIGHT_LB, "200", 200.0, "lbs"),
    chart(5, WEIGHT_KG, "80", 80.0, "kg"),
    chart(6, HEIGHT_IN, "70", 70.0, "Inch"),
    chart(7, HEIGHT_CM, "170", 170.0, "cm"),
    chart(8, FIO2, "50", 50.0, None),
    chart(9, FIO2, "0.4", 0.4, None),
    chart(10, SPO2, "0.95", 0.95, "%"),
    chart(11, SBP_NBP, "120/80"),
    chart(12, DBP_NBP, "120/80"),
    chart(13, GLUCOSE, "ERROR"),
    chart(14, PH, "<6.8"),
    chart(15, EYE, "Spontaneously", 4.0),
    chart(16, EYE, "Eyes Closed", 1.0),  # not a category of the channel
    chart(17, CRR_R, "Normal <3 Seconds"),
    chart(18, CRR_L, "Abnormal >3 Seconds"),
    chart(19, HR, "500", 500.0),  # outlier (HR outlier high 390)
    chart(20, HR, "360", 360.0),  # clipped to valid high 350
    chart(21, HR, "80", 80.0, store=1),  # duplicate charttime: stored first ...
    chart(21, HR, "82", 82.0, store=5),  # ... stored last: wins
    chart(22, SBP_ART, "110", 110.0, store=2),  # same storetime: larger itemid wins
    chart(22, SBP_NBP, "115", 115.0, store=2),
    chart(23, WEIGHT_OZ, "3200", 3200.0),  # 200 lb
    chart(24, TEMP_F, "30", 30.0, "°F"),  # -1.1 C: outlier
    chart(30, EYE, "Spontaneously", 4.0),  # E4 V5 M6 -> derived 15
    chart(30, VERBAL, "Oriented", 5.0),
    chart(30, MOTOR, "Obeys Commands", 6.0),
    chart(31, EYE, "To Pain", 2.0),  # no verbal at 31: no total
    chart(31, MOTOR, "Localizes Pain", 5.0),
    chart(32, EYE, "None", 1.0),  # E1 V1(ETT) M1 -> derived 3
    chart(32, VERBAL, "No Response-ETT", 1.0),
    chart(32, MOTOR, "No response", 1.0),
    chart(-120, HR, "70", 70.0),  # before intime: kept, hours -2
    chart(40, HR, "71", 71.0, stay_id=999, subject_id=9, hadm_id=90),  # stay not in cohort
    chart(41, 226253, "95", 95.0),  # itemid not in the map
    chart(None, HR, "72", 72.0),  # no charttime
    chart(43, HR, None, None),  # no value at all
]

LAB_ROWS = [
    lab(1, 60, LAB_GLUCOSE, "150", 150.0),  # own admission, inside the window
    lab(2, 61, LAB_PH, "7.35", 7.35, hadm_id=None),  # null hadm_id, inside the window: attaches
    lab(3, 60 * 72, LAB_PH, "7.30", 7.30, hadm_id=None),  # null hadm_id, after outtime: no_stay
    lab(4, 60, LAB_GLUCOSE, "99", 99.0, subject_id=2, hadm_id=21, base=T2),  # other admission
    lab(5, 62, LAB_URINE_GLUCOSE, "NEG"),  # urine: not in the default map
    lab(6, 63, LAB_SPO2, "97", 97.0),
    lab(7, 64, LAB_GLUCOSE, "___"),  # non-numeric lab
    lab(8, 60 * 3, LAB_GLUCOSE, "120", 120.0, subject_id=2, hadm_id=20, base=T2),  # stay 200
    lab(9, 60 * 7, LAB_PH, "7.40", 7.40, subject_id=3, hadm_id=None, base=T3),  # overlap: earlier stay
    lab(10, 60 * 12, LAB_PH, "7.41", 7.41, subject_id=3, hadm_id=None, base=T3),  # only in stay 301
    lab(11, 60 * 8, LAB_GLUCOSE, "130", 130.0, subject_id=3, hadm_id=31, base=T3),  # own admission
]


def stays_frame(spark):
    return spark.createDataFrame(
        [
            (100, 1, 10, T0, T0 + timedelta(hours=48)),
            (200, 2, 20, T2, T2 + timedelta(hours=24)),
            (300, 3, 30, T3, T3 + timedelta(hours=10)),
            (301, 3, 31, T3 + timedelta(hours=5), T3 + timedelta(hours=20)),
        ],
        "stay_id long, subject_id long, hadm_id long, intime timestamp, outtime timestamp",
    )


def _minute(ts, base=T0) -> float | None:
    if ts is None:
        return None
    if isinstance(ts, str):  # JSON: ISO text in UTC (the session time zone)
        ts = datetime.fromisoformat(ts.replace("Z", "+00:00")).astimezone(timezone.utc).replace(tzinfo=None)
    return (ts - base).total_seconds() / 60.0


def collect_checked(checked) -> tuple[list[dict], list[dict]]:
    """(kept, rejected) rows as dicts, from ONE Spark action: both halves share the plan's shuffles
    and broadcasts instead of computing them twice (each job costs seconds on a busy machine)."""
    from pyspark.sql import functions as F

    def as_json(df, tag):
        return df.select(
            F.lit(tag).alias("tag"),
            F.to_json(F.struct(*df.columns), {"ignoreNullFields": "false"}).alias("row"),
        )

    rows = as_json(checked.kept, "kept").unionByName(as_json(checked.rejected, "rejected")).collect()
    return (
        [json.loads(r["row"]) for r in rows if r["tag"] == "kept"],
        [json.loads(r["row"]) for r in rows if r["tag"] == "rejected"],
    )


class Result:
    def __init__(self, checked, n_in: int):
        self.kept, self.rejected = collect_checked(checked)
        self.columns = checked.kept.columns
        self.dtypes = dict(checked.kept.dtypes)
        self.n_in = n_in

    def kept_at(self, minute, variable=None, stay_id=100, source=None):
        base = BASE[STAY_SUBJECT[stay_id]]
        return [
            r
            for r in self.kept
            if r["stay_id"] == stay_id
            and _minute(r["charttime"], base) == minute
            and (variable is None or r["variable"] == variable)
            and (source is None or r["source"] == source)
        ]

    def one(self, minute, variable=None, **kw):
        rows = self.kept_at(minute, variable, **kw)
        assert len(rows) == 1, rows
        return rows[0]

    def reasons(self) -> list[tuple[str, int, float | None, str]]:
        out = []
        for r in self.rejected:
            rec = json.loads(r["record"])
            base = BASE.get(rec.get("subject_id"), T0)
            out.append((r["reason"], rec["itemid"], _minute(rec.get("charttime"), base), r["source"]))
        return sorted(out, key=str)


@pytest.fixture(scope="module")
def default(spark):
    chartevents = frame(spark, "chartevents", CHART_ROWS)
    labevents = frame(spark, "labevents", LAB_ROWS)
    return Result(build_events(chartevents, labevents, stays_frame(spark)), len(CHART_ROWS) + len(LAB_ROWS))


def test_contract_columns_and_types(default):
    assert tuple(default.columns) == EVENTS_COLUMNS
    assert default.dtypes == {
        "stay_id": "bigint",
        "subject_id": "bigint",
        "charttime": "timestamp",
        "hours": "double",
        "variable": "string",
        "value": "string",
        "valuenum": "double",
        "itemid": "bigint",
        "source": "string",
    }


def test_row_count_invariant(default):
    derived = [r for r in default.kept if r["source"] == "derived"]
    assert len(derived) == 2
    assert len(default.kept) - len(derived) + len(default.rejected) == default.n_in


def test_rejection_reasons(default):
    assert default.reasons() == sorted(
        [
            ("non_numeric", GLUCOSE, 13.0, "chartevents"),
            ("non_numeric", PH, 14.0, "chartevents"),
            ("unknown_category", EYE, 16.0, "chartevents"),
            ("outlier", HR, 19.0, "chartevents"),
            ("duplicate", HR, 21.0, "chartevents"),
            ("duplicate", SBP_ART, 22.0, "chartevents"),
            ("outlier", TEMP_F, 24.0, "chartevents"),
            ("stay_not_in_cohort", HR, 40.0, "chartevents"),
            ("item_not_in_map", 226253, 41.0, "chartevents"),
            ("missing_charttime", HR, None, "chartevents"),
            ("missing_value", HR, 43.0, "chartevents"),
            ("no_stay", LAB_PH, 60.0 * 72, "labevents"),
            ("no_stay", LAB_GLUCOSE, 60.0, "labevents"),
            ("item_not_in_map", LAB_URINE_GLUCOSE, 62.0, "labevents"),
            ("non_numeric", LAB_GLUCOSE, 64.0, "labevents"),
        ],
        key=str,
    )
    assert {r["stage"] for r in default.rejected} == {"events"}


def test_temperature_fahrenheit_by_itemid_and_by_value(default):
    assert default.one(1)["valuenum"] == pytest.approx(37.0)
    assert default.one(2)["valuenum"] == pytest.approx(38.0)
    assert default.one(3)["valuenum"] == pytest.approx(37.2)
    assert float(default.one(1)["value"]) == pytest.approx(37.0)


def test_weight_pounds_ounces_and_height_inches(default):
    assert default.one(4)["valuenum"] == pytest.approx(90.7184)
    assert default.one(5)["valuenum"] == pytest.approx(80.0)
    assert default.one(23)["valuenum"] == pytest.approx(90.7184)
    assert default.one(6)["valuenum"] == pytest.approx(177.8)
    assert default.one(7)["valuenum"] == pytest.approx(170.0)


def test_fio2_percent_and_spo2_fraction(default):
    assert default.one(8)["valuenum"] == pytest.approx(0.5)
    assert default.one(9)["valuenum"] == pytest.approx(0.4)
    assert default.one(10)["valuenum"] == pytest.approx(95.0)


def test_blood_pressure_strings(default):
    sbp = default.one(11)
    dbp = default.one(12)
    assert (sbp["variable"], sbp["valuenum"], sbp["value"]) == ("Systolic blood pressure", 120.0, "120.0")
    assert (dbp["variable"], dbp["valuenum"]) == ("Diastolic blood pressure", 80.0)


def test_categorical_values(default):
    eye = default.one(15)
    assert (eye["value"], eye["valuenum"]) == ("Spontaneously", None)
    assert default.one(17)["value"] == "0.0"
    assert default.one(18)["value"] == "1.0"
    assert default.one(18)["variable"] == "Capillary refill rate"


def test_outlier_clip_and_duplicates(default):
    assert default.kept_at(19) == []
    assert default.one(20)["valuenum"] == 350.0
    assert default.one(21)["valuenum"] == 82.0
    sbp = default.one(22)
    assert (sbp["itemid"], sbp["valuenum"]) == (SBP_NBP, 115.0)


def test_derived_gcs_total(default):
    total = default.one(30, "Glascow coma scale total")
    assert (total["value"], total["itemid"], total["source"], total["valuenum"]) == (
        "15",
        -1,
        "derived",
        None,
    )
    assert total["hours"] == pytest.approx(0.5)
    assert default.one(32, "Glascow coma scale total")["value"] == "3"
    assert default.kept_at(31, "Glascow coma scale total") == []


def test_chart_outside_window_kept_with_negative_hours(default):
    assert default.one(-120)["hours"] == pytest.approx(-2.0)


def test_labs_attach_by_admission_or_time_window(default):
    glucose = default.one(60, source="labevents")
    assert (glucose["variable"], glucose["valuenum"], glucose["hours"]) == (
        "Glucose",
        150.0,
        pytest.approx(1.0),
    )
    ph = default.one(61)
    assert (ph["stay_id"], ph["variable"], ph["valuenum"]) == (100, "pH", pytest.approx(7.35))
    assert default.one(63)["variable"] == "Oxygen saturation"
    other = default.one(180, stay_id=200)
    assert (other["subject_id"], other["valuenum"], other["hours"]) == (2, 120.0, pytest.approx(3.0))


def test_labs_in_overlapping_stays_attach_once(default):
    assert default.one(60 * 7, stay_id=300)["valuenum"] == pytest.approx(7.40)
    assert default.kept_at(60 * 7, stay_id=301) == []
    assert default.one(60 * 12, stay_id=301)["hours"] == pytest.approx(7.0)
    assert default.one(60 * 8, stay_id=301)["variable"] == "Glucose"  # own admission, in the overlap
    assert default.kept_at(60 * 8, stay_id=300) == []


def test_parity_preset(spark):
    rows = [
        chart(1, CRR_R, "Normal <3 Seconds"),  # MetaVision CRR: not in the reference map
        chart(2, HR, "500", 500.0),  # no outlier policy
        chart(30, EYE, "Spontaneously", 4.0),  # no derived total
        chart(30, VERBAL, "Oriented", 5.0),
        chart(30, MOTOR, "Obeys Commands", 6.0),
    ]
    labs = [lab(1, 62, LAB_URINE_GLUCOSE, "100", 100.0)]  # urine glucose is in the reference map
    res = Result(
        build_events(
            frame(spark, "chartevents", rows),
            frame(spark, "labevents", labs),
            stays_frame(spark),
            EventsConfig.parity(),
        ),
        len(rows) + len(labs),
    )
    assert res.reasons() == [("item_not_in_map", CRR_R, 1.0, "chartevents")]
    assert res.one(2)["valuenum"] == 500.0
    assert res.one(62)["variable"] == "Glucose"
    assert [r for r in res.kept if r["source"] == "derived"] == []
    assert len(res.kept) + len(res.rejected) == res.n_in


def test_config_validation():
    with pytest.raises(ValueError):
        EventsConfig(item_map="mimic3")
    assert EventsConfig.parity().outliers is False
