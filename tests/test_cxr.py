"""Silver cxr (SPEC §6): AP filter with reasons, StudyDate/StudyTime parsing, paths, raw labels."""

from __future__ import annotations

import datetime as dt

import pytest

from spark_jobs.cxr import CxrConfig, build_cxr
from spark_jobs.mimic_schema import CHEXPERT_LABELS, CXR_TABLES, cxr_image_relpath


def _ddl(table: str) -> str:
    return ", ".join(f"`{c}` {t}" for c, t in CXR_TABLES[table].columns)


def meta(dicom, subject, study, view, date, time):
    return (dicom, subject, study, "CHEST (PORTABLE AP)", view, 3056, 2544, date, time, None, None, None)


METADATA = [
    meta("d01", 10000032, 50000001, "AP", 21800101, 5923.5),  # zero padding: 00:59:23.5
    meta("d02", 10000032, 50000001, "PA", 21800101, 5923.5),
    meta("d03", 10000032, 50000001, "LATERAL", 21800101, 5923.5),
    meta("d04", 10000032, 50000002, "LL", 21800102, 120000.0),
    meta("d05", 10000032, 50000002, None, 21800102, 120000.0),
    meta("d06", 10000032, 50000002, "", 21800102, 120000.0),
    meta("d07", 10000032, 50000003, "AP AXIAL", 21800103, 120000.0),
    meta("d08", 11000011, 50000004, "AP", 21801301, 120000.0),  # month 13
    meta("d09", 11000011, 50000004, "AP", 21800230, 120000.0),  # 30 February
    meta("d10", 11000011, 50000004, "AP", 21800101, 126000.0),  # minute 60
    meta("d11", 11000011, 50000004, "AP", 21800101, None),
    meta("d12", 11000011, 50000004, "AP", None, 120000.0),
    meta("d13", 11000011, 50000005, "AP", 21800101, 123456.789),
    meta("d14", 11000011, 50000006, " AP ", 21801231, 0.0),  # midnight; study without CheXpert row
    meta("d15", 11000011, 50000004, "PA", 21801301, 120000.0),  # both wrong: the view decides
]


@pytest.fixture(scope="module")
def result(spark):
    from pyspark.sql import functions as F

    labels_a = [1.0, 0.0, -1.0, None] + [None] * 10
    labels_b = [0.0] * 13 + [1.0]
    chexpert = spark.createDataFrame(
        [(10000032, 50000001, *labels_a), (11000011, 50000005, *labels_b), (11000011, 50000004, *labels_b)],
        _ddl("chexpert"),
    )
    metadata = spark.createDataFrame(METADATA, _ddl("metadata"))
    checked = build_cxr(metadata, chexpert)
    # kept rows and reject counts in one Spark job (the machine is shared)
    both = checked.kept.withColumn("__stage", F.lit(None).cast("string")).unionByName(
        checked.rejected.select(F.col("stage").alias("__stage"), "source", "reason"), allowMissingColumns=True
    )
    kept, reasons = {}, {}
    for r in both.collect():
        if r["__stage"] is None:
            kept[r["dicom_id"]] = r
        else:
            key = (r["__stage"], r["source"], r["reason"])
            reasons[key] = reasons.get(key, 0) + 1
    return checked, kept, reasons, labels_a, labels_b


def test_only_ap_kept_and_every_other_image_counted(result):
    checked, kept, reasons, _, _ = result
    assert sorted(kept) == ["d01", "d13", "d14"]
    assert {reason: n for (_, _, reason), n in reasons.items()} == {
        "view_PA": 2,
        "view_LATERAL": 1,
        "view_LL": 1,
        "not_ap": 2,
        "view_AP_AXIAL": 1,
        "bad_study_time": 5,
    }
    assert {(stage, source) for stage, source, _ in reasons} == {("cxr", "metadata")}
    assert len(kept) + sum(reasons.values()) == len(METADATA)
    assert checked.kept.columns == [
        "dicom_id",
        "subject_id",
        "study_id",
        "study_time",
        "view",
        "path",
        "labels",
    ]


def test_study_time_is_zero_padded(result):
    _, kept, _, _, _ = result
    assert kept["d01"]["study_time"] == dt.datetime(2180, 1, 1, 0, 59, 23, 500000)
    assert kept["d13"]["study_time"] == dt.datetime(2180, 1, 1, 12, 34, 56, 789000)
    assert kept["d14"]["study_time"] == dt.datetime(2180, 12, 31, 0, 0, 0)


def test_path_view_and_raw_labels(result):
    _, kept, _, labels_a, labels_b = result
    for dicom, row in kept.items():
        assert row["path"] == cxr_image_relpath(row["subject_id"], row["study_id"], dicom)
        assert row["view"] == "AP"
    assert kept["d01"]["path"] == "files/p10/p10000032/s50000001/d01.jpg"
    assert kept["d01"]["labels"] == labels_a
    assert kept["d13"]["labels"] == labels_b
    assert kept["d14"]["labels"] is None
    assert len(CHEXPERT_LABELS) == 14


def test_parity_truncates_study_time_to_whole_seconds(spark):
    """The references pair with ``int(float(StudyTime))``: the fraction of a second goes."""
    rows = [
        meta("d01", 10000032, 50000001, "AP", 21800101, 5923.5),
        meta("d02", 1, 2, "AP", 21800101, 235959.999),
    ]
    chexpert = spark.createDataFrame([], _ddl("chexpert"))
    checked = build_cxr(spark.createDataFrame(rows, _ddl("metadata")), chexpert, CxrConfig.parity())
    got = {r["dicom_id"]: r["study_time"] for r in checked.kept.collect()}
    assert got == {"d01": dt.datetime(2180, 1, 1, 0, 59, 23), "d02": dt.datetime(2180, 1, 1, 23, 59, 59)}
    assert CxrConfig().truncate_study_time is False
