"""RELIABILITY.md, raw inputs: each bad input ends in an error naming the file and the problem, or
in rejected rows with their reason (rows in = kept + rejected). Cases the older ingest / cohort /
events tests already show are cited there, not repeated here."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from spark_jobs import ingest
from spark_jobs.cohort import select_stays
from spark_jobs.ingest import CorruptInputError, HeaderError, IngestConfig
from tests.test_cohort import admission, collect_checked, frame, patient, stay
from tests.test_ingest import V2, csv_text, read_checked, reasons

PATIENTS = V2["patients"].column_names
ROW = dict(subject_id="1", gender="F", anchor_age="60", anchor_year="2150", anchor_year_group="2017 - 2019")


def _patients_file(root: Path, data: bytes) -> Path:
    path = root / "hosp/patients.csv.gz"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _run(spark, tmp_path: Path) -> dict:
    cfg = IngestConfig(raw=str(tmp_path / "raw"), cxr="", layout="v2", tables=["patients"])
    return ingest.run(spark, cfg, str(tmp_path / "out"))["patients"]


def _checked(spark, tmp_path: Path, text: bytes):
    """(kept rows, {reason: n}) of ``text`` as raw patients, split as ``ingest.run`` splits them."""
    _patients_file(tmp_path / "raw", gzip.compress(text))
    checked = read_checked(spark, str(tmp_path / "raw"), V2["patients"])
    return checked.kept.collect(), reasons(checked.rejected)


@pytest.mark.parametrize(
    "data,problem",
    [
        (b"", "EOF"),  # zero bytes: not even a gzip header
        (gzip.compress(b""), "no header line"),  # a valid gzip of nothing
    ],
    ids=["zero_bytes", "empty_gzip"],
)
def test_empty_file_is_an_error_naming_it(spark, tmp_path, data, problem):
    path = _patients_file(tmp_path / "raw", data)
    with pytest.raises(CorruptInputError) as err:
        _run(spark, tmp_path)
    msg = str(err.value)
    assert str(path) in msg and problem in msg and len(msg.splitlines()) < 12


def test_header_only_is_an_empty_table(spark, tmp_path):
    kept, why = _checked(spark, tmp_path, csv_text(PATIENTS, []).encode())
    assert (kept, why) == ([], {})


@pytest.mark.parametrize("sep,name", [(";", "semicolon"), ("\t", "tab")])
def test_wrong_delimiter_names_the_file_and_the_delimiter(spark, tmp_path, sep, name):
    text = csv_text(PATIENTS, [ROW]).replace(",", sep)
    path = _patients_file(tmp_path / "raw", gzip.compress(text.encode()))
    with pytest.raises(HeaderError) as err:
        _run(spark, tmp_path)
    msg = str(err.value)
    assert str(path) in msg and f"{name}-separated" in msg and "comma-separated" in msg


def test_quoted_newline_splits_into_counted_malformed_lines(spark, tmp_path):
    """The csv reader is line-based (splittable parts): a quoted field with a newline becomes two
    physical lines, both quarantined as ``malformed_line`` with their text; nothing is dropped."""
    broken = ROW | dict(subject_id="2", anchor_year_group="2017\n2019")
    kept, why = _checked(spark, tmp_path, csv_text(PATIENTS, [ROW, broken]).encode())
    assert [r["subject_id"] for r in kept] == [1]
    assert why == {"malformed_line": 2}


def test_non_utf8_text_is_rejected_not_silently_replaced(spark, tmp_path):
    latin1 = "3,F,62,2150,\xe9t\xe9,\n".encode("latin-1")  # 'été' in latin-1: invalid UTF-8
    bad_id = b"4\xff,F,62,2150,x,\n"
    kept, why = _checked(spark, tmp_path, csv_text(PATIENTS, [ROW]).encode() + latin1 + bad_id)
    assert [r["subject_id"] for r in kept] == [1]
    assert why == {"bad_encoding:anchor_year_group": 1, "bad_long:subject_id": 1}


def test_negative_ids_are_rejected_duplicates_reach_the_cohort(spark, tmp_path):
    """Bronze keeps rows as read (a duplicate id is two rows); ids below 0 are bad values."""
    rows = [ROW, ROW, ROW | dict(subject_id="-5"), ROW | dict(subject_id="6", anchor_age="-3")]
    kept, why = _checked(spark, tmp_path, csv_text(PATIENTS, rows).encode())
    assert sorted(r["subject_id"] for r in kept) == [1, 1, 6]  # an age is not an id (cohort: minor)
    assert why == {"negative_id:subject_id": 1}


def test_duplicate_ids_in_the_cohort_are_rejected_with_a_reason(spark):
    """A stay_id on two icustays rows, or an admission / patient id with two different rows, is
    a rejected stay; an exact repeat of an admission or patient row is the same fact, once."""
    icu = frame(
        spark,
        "icustays",
        [
            stay(1, 10, 100),  # kept: its admission and patient rows are repeated verbatim
            stay(2, 20, 200),  # stay_id 2 twice (other admissions): both rejected
            stay(2, 21, 200),
            stay(3, 30, 300),  # hadm_id 30 has two different admissions rows
            stay(4, 40, 400),  # subject_id 400 has two different patients rows
        ],
    )
    adm_rows = [
        admission(h, s) for h, s in [(10, 100), (10, 100), (20, 200), (21, 200), (30, 300), (40, 400)]
    ]
    adm_rows.append(admission(30, 300, days=3))
    pats = [patient(100), patient(100), patient(200), patient(300), patient(400), patient(400, age=70)]
    out = select_stays(icu, frame(spark, "admissions", adm_rows), frame(spark, "patients", pats))
    kept, rejected = collect_checked(out)
    assert [r["stay_id"] for r in kept] == [1]
    assert sorted((json.loads(r["record"])["stay_id"], r["reason"]) for r in rejected) == [
        (2, "duplicate_stay"),
        (2, "duplicate_stay"),
        (3, "conflicting_admission"),
        (4, "conflicting_patient"),
    ]
    assert len(kept) + len(rejected) == 5
