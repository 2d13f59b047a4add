"""Bronze ingest: raw csv.gz / csv parts / parquet (local and S3) -> typed rows + quarantine."""

from __future__ import annotations

import csv
import dataclasses
import gzip
import io
import json
import random
import uuid
from datetime import date, datetime
from pathlib import Path

import pytest

from spark_jobs import delta_io, ingest
from spark_jobs.ingest import (
    CorruptInputError,
    HeaderError,
    IngestConfig,
    MissingInputError,
    detect_layout,
    locate,
    read_raw,
    stage_rows,
    unstage,
)
from spark_jobs.mimic_schema import CXR_TABLES, RawTable, mimic_iv_tables
from spark_jobs.quality import Checked

V2 = mimic_iv_tables("v2")
V1 = mimic_iv_tables("v1")


def csv_text(header: list[str], rows: list[dict], extra_lines: tuple[str, ...] = ()) -> str:
    """A csv file as MIMIC writes it; unspecified columns are empty, ``extra_lines`` verbatim."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    for row in rows:
        writer.writerow([row.get(c, "") for c in header])
    return buf.getvalue() + "".join(line + "\n" for line in extra_lines)


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.name.endswith(".gz"):
        path.write_bytes(gzip.compress(text.encode()))
    else:
        path.write_text(text)
    return path


def split_rows(raw, table: RawTable) -> Checked:
    """Kept and rejected rows of raw rows, as ``ingest.run`` splits them (minus its Delta copy)."""
    return unstage(stage_rows(raw, table), table)


def read_checked(spark, root: str, table: RawTable) -> Checked:
    """``table`` under ``root`` located, read and split as ``ingest.run`` does."""
    return split_rows(read_raw(spark, locate(spark, root, table), table), table)


def reasons(rejected) -> dict[str, int]:
    """{reason: n} of a rejected DataFrame or of its collected rows."""
    out: dict[str, int] = {}
    for r in rejected if isinstance(rejected, list) else rejected.collect():
        out[r["reason"]] = out.get(r["reason"], 0) + 1
    return out


def last_commit_metadata(spark, path: Path) -> dict:
    from delta.tables import DeltaTable

    (commit,) = DeltaTable.forPath(spark, str(path)).history(1).select("userMetadata").collect()
    return json.loads(commit["userMetadata"])


def test_csv_gz_typed_by_name_with_quarantine(spark, tmp_path):
    """Columns mapped by name (shuffled header, one extra column); bad rows get their reason."""
    table = V2["chartevents"]
    header = ["itemid", "extra_col"] + [c for c in table.column_names if c != "itemid"]
    good = dict(subject_id="1", hadm_id="10", stay_id="100", itemid="220045", warning="0")
    rows = [
        good | dict(charttime="2180-01-01 10:00:00", value="80", valuenum="80", valueuom="bpm"),
        good | dict(charttime="2180-01-01T11:00:00.5", value='a "q", b\\c', storetime="2180-01-01 11:05:00"),
        good | dict(hadm_id="", charttime="2180-01-01 12:00:00"),  # hadm_id may be null
        good | dict(subject_id="7.0", charttime="2180-01-01 13:00:00"),  # integral float text
        good | dict(charttime="garbage"),
        good | dict(subject_id="x12", charttime="2180-01-01 10:00:00"),
        good | dict(stay_id=" ", charttime="2180-01-01 10:00:00"),
        good | dict(valuenum="12.0.1", charttime="2180-01-01 10:00:00"),
        good | dict(warning="1.5", charttime="2180-01-01 10:00:00"),
        good | dict(charttime="2180-02-30 10:00:00"),
    ]
    write(tmp_path / "icu/chartevents.csv.gz", csv_text(header, rows, extra_lines=("220045,1,2",)))

    checked = read_checked(spark, str(tmp_path), table)
    kept = checked.kept
    assert kept.columns == table.column_names + ["_source"]
    types = dict(kept.dtypes)
    assert (types["subject_id"], types["charttime"], types["valuenum"], types["warning"]) == (
        "bigint",
        "timestamp",
        "double",
        "int",
    )
    got = sorted(kept.collect(), key=lambda r: r["charttime"])
    assert [r["subject_id"] for r in got] == [1, 1, 1, 7]
    assert got[0]["valuenum"] == 80.0 and got[0]["itemid"] == 220045
    assert got[1]["charttime"] == datetime(2180, 1, 1, 11, 0, 0, 500000)
    assert got[1]["value"] == 'a "q", b\\c'
    assert got[2]["hadm_id"] is None
    assert got[0]["_source"].endswith("icu/chartevents.csv.gz")

    rejected = checked.rejected.collect()
    assert reasons(rejected) == {
        "bad_timestamp:charttime": 2,
        "bad_long:subject_id": 1,
        "null_id:stay_id": 1,
        "bad_double:valuenum": 1,
        "bad_int:warning": 1,
        "malformed_line": 1,
    }
    assert len(got) + len(rejected) == len(rows) + 1  # rows in = kept + rejected
    rec = {r["reason"]: json.loads(r["record"]) for r in rejected}
    assert rec["malformed_line"]["_corrupt_record"] == "220045,1,2"
    assert rec["bad_long:subject_id"]["subject_id"] == "x12"
    assert {(r["stage"], r["source"]) for r in rejected} == {("ingest", "chartevents")}


def test_typing_rules(spark):
    """Pure: required ids per table, ints that overflow, dates with a time part, strict formats."""
    from chispa import assert_df_equality

    table = V2["patients"]
    cols = ", ".join(f"`{c}` string" for c in table.column_names)
    rows = [
        ("1", "F", "60", "2150", "2017 - 2019", "2180-01-02"),
        ("2", "M", "61", "2150", "2017 - 2019", "2180-01-03 00:00:00"),
        ("3", "M", "62", "2150", "2017 - 2019", None),
        (None, "M", "62", "2150", "2017 - 2019", None),
        ("5", "M", "99999999999", "2150", "x", None),
        ("6", "M", "62", "2150", "x", "2180-01"),
        ("7", "M", "62", "2150", "x", "2180-01-03 25:00:00"),
    ]
    split = split_rows(spark.createDataFrame(rows, cols), table)
    expected = spark.createDataFrame(
        [
            (1, "F", 60, 2150, "2017 - 2019", date(2180, 1, 2)),
            (2, "M", 61, 2150, "2017 - 2019", date(2180, 1, 3)),
            (3, "M", 62, 2150, "2017 - 2019", None),
        ],
        "subject_id long, gender string, anchor_age int, anchor_year int, anchor_year_group string, dod date",
    )
    assert_df_equality(split.kept, expected, ignore_row_order=True, ignore_nullable=True)
    assert reasons(split.rejected) == {"null_id:subject_id": 1, "bad_int:anchor_age": 1, "bad_date:dod": 2}

    lab = V2["labevents"]
    lab_cols = ", ".join(f"`{c}` string" for c in lab.column_names)
    base = dict(labevent_id="1", subject_id="1", specimen_id="3", charttime="2180-01-01 00:00:00")
    lab_rows = [base | dict(itemid="50820"), base | dict(itemid=None)]
    frame = spark.createDataFrame([tuple(r.get(c) for c in lab.column_names) for r in lab_rows], lab_cols)
    split = split_rows(frame, lab)
    assert [r["hadm_id"] for r in split.kept.collect()] == [None]  # labevents.hadm_id is nullable
    assert reasons(split.rejected) == {"null_id:itemid": 1}


def test_csv_folder_of_parts(spark, tmp_path):
    table = V2["icustays"]
    stay = dict(subject_id="1", hadm_id="10", first_careunit="MICU", last_careunit="MICU")
    part = [
        stay | dict(stay_id="100", intime="2180-01-01 00:00:00", outtime="2180-01-03 00:00:00", los="2.0"),
        stay | dict(stay_id="101", intime="2180-02-01 00:00:00", outtime="2180-02-02 12:00:00", los="1.5"),
    ]
    folder = tmp_path / "icu/icustays"
    write(folder / "part-00000.csv", csv_text(table.column_names, part[:1]))
    write(folder / "part-00001.csv", csv_text(table.column_names, part[1:]))
    write(folder / "_SUCCESS", "")

    loc = locate(spark, str(tmp_path), table)
    assert (loc.format, len(loc.files)) == ("csv", 2)
    checked = read_checked(spark, str(tmp_path), table)
    got = sorted(checked.kept.collect(), key=lambda r: r["stay_id"])
    assert [(r["stay_id"], r["los"]) for r in got] == [(100, 2.0), (101, 1.5)]
    assert got[1]["outtime"] == datetime(2180, 2, 2, 12, 0, 0)
    assert {Path(r["_source"]).name for r in got} == {"part-00000.csv", "part-00001.csv"}
    assert checked.rejected.count() == 0


def test_parquet_typed_values_checked(spark, tmp_path):
    """Parquet columns are matched by name; a typed value must survive the cast unchanged."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = V2["admissions"]
    n = 3
    data = {c: pa.array([None] * n, pa.string()) for c in table.column_names}
    data |= {
        "subject_id": pa.array([1, 2, 3], pa.int64()),
        "hadm_id": pa.array([10.0, 11.5, None], pa.float64()),  # pandas-style float ids
        "admittime": pa.array([datetime(2180, 1, 1, 8)] * n, pa.timestamp("us")),
        "dischtime": pa.array(["2180-01-05 08:00:00", "2180-01-05 08:00:00", "soon"]),
        "hospital_expire_flag": pa.array([0, 1, 0], pa.int64()),
        "race": pa.array(["WHITE", "ASIAN", "OTHER"]),
    }
    path = tmp_path / "hosp/admissions.parquet"
    path.parent.mkdir(parents=True)
    pq.write_table(pa.table({c: data[c] for c in reversed(table.column_names)}), path)

    checked = read_checked(spark, str(tmp_path), table)
    kept = checked.kept.collect()
    assert [(r["hadm_id"], r["admittime"], r["race"]) for r in kept] == [
        (10, datetime(2180, 1, 1, 8), "WHITE")
    ]
    assert dict(checked.kept.dtypes)["hospital_expire_flag"] == "int"
    assert reasons(checked.rejected) == {"bad_long:hadm_id": 1, "null_id:hadm_id": 1}


def test_header_missing_column_names_file_and_column(spark, tmp_path):
    table = V2["patients"]
    header = [c for c in table.column_names if c not in ("dod", "gender")]
    path = write(tmp_path / "hosp/patients.csv.gz", csv_text(header, [dict(subject_id="1")]))
    with pytest.raises(HeaderError) as err:
        read_checked(spark, str(tmp_path), table)
    msg = str(err.value)
    assert str(path) in msg and "gender" in msg and "dod" in msg


def test_missing_table_lists_paths_tried(spark, tmp_path):
    with pytest.raises(MissingInputError) as err:
        locate(spark, str(tmp_path), V2["labevents"])
    msg = str(err.value)
    assert "labevents" in msg and str(tmp_path) in msg
    for suffix in (".csv.gz", ".csv", ".parquet"):
        assert f"hosp/labevents{suffix}" in msg
    assert msg.count("hosp/labevents") == 4


def test_truncated_gzip_names_the_file(spark, tmp_path):
    table = V2["patients"]
    rng = random.Random(0)
    rows = [
        dict(
            subject_id=str(i),
            gender=rng.choice("MF"),
            anchor_age=str(rng.randint(18, 90)),
            anchor_year="2150",
        )
        | dict(anchor_year_group=uuid.UUID(int=rng.getrandbits(128)).hex)
        for i in range(3000)
    ]
    blob = gzip.compress(csv_text(table.column_names, rows).encode())
    path = tmp_path / "raw/hosp/patients.csv.gz"
    path.parent.mkdir(parents=True)
    path.write_bytes(blob[: len(blob) // 2])

    cfg = IngestConfig(raw=str(tmp_path / "raw"), cxr=str(tmp_path / "cxr"), tables=["patients"])
    with pytest.raises(CorruptInputError) as err:
        ingest.run(spark, cfg, str(tmp_path / "out"))
    msg = str(err.value)
    assert str(path) in msg and "EOF" in msg
    assert len(msg.splitlines()) < 12  # a message, not a Java stack trace


def test_damaged_part_among_many_is_named(spark, tmp_path):
    """Spark does not say which gzip part broke; the error still names it (and only it)."""
    table = V2["diagnoses_icd"]
    rng = random.Random(1)
    rows = [
        dict(subject_id=str(i), hadm_id=str(i), icd_code=uuid.UUID(int=rng.getrandbits(128)).hex)
        for i in range(3000)
    ]
    folder = tmp_path / "raw/hosp/diagnoses_icd"
    write(folder / "part-0.csv.gz", csv_text(table.column_names, rows[:10]))
    blob = gzip.compress(csv_text(table.column_names, rows).encode())
    (folder / "part-1.csv.gz").write_bytes(blob[: len(blob) // 2])
    cfg = IngestConfig(
        raw=str(tmp_path / "raw"), cxr=str(tmp_path / "cxr"), layout="v2", tables=["diagnoses_icd"]
    )
    with pytest.raises(CorruptInputError) as err:
        ingest.run(spark, cfg, str(tmp_path / "out"))
    assert "part-1.csv.gz" in str(err.value) and "part-0" not in str(err.value)


def test_parts_with_different_headers(spark, tmp_path):
    table = V2["diagnoses_icd"]
    folder = tmp_path / "raw/hosp/diagnoses_icd"
    write(folder / "part-0.csv", csv_text(table.column_names, [dict(subject_id="1", hadm_id="2")]))
    write(folder / "part-1.csv", csv_text(table.column_names[::-1], [dict(subject_id="1", hadm_id="2")]))
    cfg = IngestConfig(raw=str(tmp_path / "raw"), cxr="", layout="v2", tables=["diagnoses_icd"])
    with pytest.raises(HeaderError, match="part-1.csv"):
        ingest.run(spark, cfg, str(tmp_path / "out"))


def test_detect_layout_v1_and_v2(spark, tmp_path):
    v1 = tmp_path / "v1"
    write(v1 / "core/patients.csv.gz", csv_text(V1["patients"].column_names, []))
    adm = dict(subject_id="1", hadm_id="10", admittime="2180-01-01 00:00:00", ethnicity="WHITE")
    write(v1 / "core/admissions.csv.gz", csv_text(V1["admissions"].column_names, [adm]))
    assert detect_layout(spark, str(v1)) == "v1"
    kept = read_checked(spark, str(v1), V1["admissions"]).kept
    assert "ethnicity" in kept.columns and "race" not in kept.columns
    assert [r["ethnicity"] for r in kept.collect()] == ["WHITE"]
    # v2 headers have race, not ethnicity: reading them as v1 must say so.
    write(tmp_path / "mixed/core/admissions.csv", csv_text(V2["admissions"].column_names, [adm]))
    with pytest.raises(HeaderError, match="ethnicity"):
        read_checked(spark, str(tmp_path / "mixed"), V1["admissions"])

    write(tmp_path / "v2/hosp/patients.csv.gz", csv_text(V2["patients"].column_names, []))
    assert detect_layout(spark, str(tmp_path / "v2")) == "v2"
    with pytest.raises(MissingInputError, match="core/patients"):
        detect_layout(spark, str(tmp_path / "nothing"))


def test_run_writes_bronze_and_quarantine(spark, tmp_path):
    raw, cxr, out = tmp_path / "raw", tmp_path / "cxr", tmp_path / "out"
    pts = [dict(subject_id="1", gender="F", anchor_age="60", anchor_year="2150"), dict(subject_id="zz")]
    write(raw / "hosp/patients.csv.gz", csv_text(V2["patients"].column_names, pts))
    ev = dict(subject_id="1", hadm_id="10", stay_id="100", charttime="2180-01-01 10:00:00")
    events = [ev | dict(itemid="220045"), ev | dict(itemid="1"), ev | dict(itemid="220045", charttime="?")]
    write(raw / "icu/chartevents.csv.gz", csv_text(V2["chartevents"].column_names, events))
    labels = CXR_TABLES["chexpert"]  # names with spaces ("Lung Lesion") must survive Delta
    study = {"subject_id": "1", "study_id": "5", "Lung Lesion": "-1.0", "Edema": "1.0"}
    write(cxr / "mimic-cxr-2.0.0-chexpert.csv.gz", csv_text(labels.column_names, [study]))

    cfg = IngestConfig(
        raw=str(raw), cxr=str(cxr), tables=["patients", "chartevents", "chexpert"], itemids=[220045]
    )
    counts = ingest.run(spark, cfg, str(out), metadata={"stage": "ingest", "run_id": "run-1"})
    assert counts == {
        "patients": dict(rows_in=2, kept=1, rejected=1, filtered_out=0),
        "chartevents": dict(rows_in=3, kept=1, rejected=1, filtered_out=1),
        "chexpert": dict(rows_in=1, kept=1, rejected=0, filtered_out=0),
    }
    (bronze,) = spark.read.format("delta").load(str(out / "bronze/chexpert")).collect()
    assert (bronze["Lung Lesion"], bronze["Edema"], bronze["Atelectasis"]) == (-1.0, 1.0, None)
    q = spark.read.format("delta").load(str(out / "bronze/quarantine"))
    assert sorted((r["source"], r["reason"]) for r in q.collect()) == [
        ("chartevents", "bad_timestamp:charttime"),
        ("patients", "bad_long:subject_id"),
    ]
    # A re-run replaces, never appends; re-running one table keeps the other tables' rejects.
    again = IngestConfig(raw=str(raw), cxr=str(cxr), tables=["patients"])
    assert ingest.run(spark, again, str(out)) == {"patients": counts["patients"]}
    assert spark.read.format("delta").load(str(out / "bronze/patients")).count() == 1
    assert sorted(r["source"] for r in q.collect()) == ["chartevents", "patients"]
    # Outside the pipeline, commits still say which stage and configuration made them.
    assert last_commit_metadata(spark, out / "bronze/patients") == {
        "stage": "ingest",
        "code_version": delta_io.code_version(),
        "config": dataclasses.asdict(again),
    }
    for table in ("chartevents", "chexpert"):  # not replaced by the re-run
        got = last_commit_metadata(spark, out / "bronze" / table)
        assert (got["stage"], got["run_id"]) == ("ingest", "run-1"), table


def test_damaged_input_leaves_bronze_untouched_and_no_staging(spark, tmp_path):
    """Every input is read (once, into bronze/_staging) before any bronze table is replaced, so a
    damaged one fails the run with the whole bronze layer as it was; staging copies never stay."""
    from delta.tables import DeltaTable

    raw, out = tmp_path / "raw", tmp_path / "out"
    pts = [dict(subject_id=str(i), gender="F", anchor_age="60", anchor_year="2150") for i in range(3)]
    write(raw / "hosp/patients.csv.gz", csv_text(V2["patients"].column_names, pts))
    rng = random.Random(2)
    dx = [
        dict(subject_id=str(i), hadm_id=str(i), icd_code=uuid.UUID(int=rng.getrandbits(128)).hex)
        for i in range(3000)
    ]
    dx_text = csv_text(V2["diagnoses_icd"].column_names, dx)
    write(raw / "hosp/diagnoses_icd.csv.gz", dx_text)
    cfg = IngestConfig(
        raw=str(raw), cxr=str(tmp_path / "cxr"), layout="v2", tables=["patients", "diagnoses_icd"]
    )
    assert ingest.run(spark, cfg, str(out))["diagnoses_icd"]["kept"] == 3000
    assert not (out / "bronze/_staging").exists()

    blob = gzip.compress(dx_text.encode())
    (raw / "hosp/diagnoses_icd.csv.gz").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(CorruptInputError, match="diagnoses_icd.csv.gz"):
        ingest.run(spark, cfg, str(out))
    assert not (out / "bronze/_staging").exists()
    for table in ("patients", "diagnoses_icd"):
        (last,) = (
            DeltaTable.forPath(spark, str(out / "bronze" / table)).history(1).select("version").collect()
        )
        assert last["version"] == 0  # not replaced by the failed run


def _s3a_bucket_conf(spark, endpoint: str, bucket: str) -> None:
    """Point S3A at the moto server for ``bucket`` only (per-bucket keys leave others alone)."""
    import os

    conf = spark._jsc.hadoopConfiguration()
    prefix = f"fs.s3a.bucket.{bucket}."
    settings = {
        "endpoint": endpoint,
        "endpoint.region": "us-east-1",
        "path.style.access": "true",
        "connection.ssl.enabled": "false",
        "aws.credentials.provider": "org.apache.hadoop.fs.s3a.SimpleAWSCredentialsProvider",
        "access.key": os.environ["AWS_ACCESS_KEY_ID"],
        "secret.key": os.environ["AWS_SECRET_ACCESS_KEY"],
        "attempts.maximum": "2",
        "retry.limit": "2",
    }
    for key, value in settings.items():
        conf.set(prefix + key, value)


@pytest.mark.s3
def test_read_from_s3(spark, s3_server):
    import boto3

    bucket = f"mimic-{uuid.uuid4().hex[:8]}"
    s3 = boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1")
    s3.create_bucket(Bucket=bucket)
    table = V2["patients"]
    rows = [dict(subject_id="1", gender="F", anchor_age="60", anchor_year="2150", dod="2180-05-01"), dict()]
    body = gzip.compress(csv_text(table.column_names, rows).encode())
    s3.put_object(Bucket=bucket, Key="mimic-iv/hosp/patients.csv.gz", Body=body)
    _s3a_bucket_conf(spark, s3_server, bucket)

    assert detect_layout(spark, f"s3://{bucket}/mimic-iv") == "v2"
    root = f"s3a://{bucket}/mimic-iv"
    checked = read_checked(spark, root, table)
    kept = checked.kept.collect()
    assert [(r["subject_id"], r["dod"]) for r in kept] == [(1, date(2180, 5, 1))]
    assert kept[0]["_source"] == f"{root}/hosp/patients.csv.gz"
    assert reasons(checked.rejected) == {"null_id:subject_id": 1}
    with pytest.raises(MissingInputError, match=f"s3a://{bucket}/mimic-iv/hosp/labevents.csv.gz"):
        locate(spark, root, V2["labevents"])


def _bronze(spark, out: Path, table: str):
    return spark.read.format("delta").load(str(out / "bronze" / table))


def _bronze_files(spark, out: Path, table: str) -> int:
    from delta.tables import DeltaTable

    return DeltaTable.forPath(spark, str(out / "bronze" / table)).detail().first()["numFiles"]


def test_spread_single_gzip_same_rows_more_files(spark, tmp_path, monkeypatch):
    """A .csv.gz is read by one task; spreading its rows (a filtered events table: cutting the
    staged rows into files) changes the parallelism (bronze files) and nothing else: same rows,
    same counts, same quarantine."""
    from chispa import assert_df_equality

    monkeypatch.setattr(ingest.job, "STAGING_ROWS_PER_FILE", 50)
    raw = tmp_path / "raw"
    rng = random.Random(1)
    events = [
        dict(
            subject_id=str(rng.randint(1, 50)),
            hadm_id="10",
            stay_id=str(rng.randint(100, 120)),
            itemid=rng.choice(["220045", "220210", "1"]),
            charttime=rng.choice(["2180-01-01 10:00:00", "2180-01-02 11:30:00", "garbage"]),
            value=str(rng.randint(40, 140)),
        )
        for _ in range(600)
    ]
    write(raw / "icu/chartevents.csv.gz", csv_text(V2["chartevents"].column_names, events))
    counts = {}
    for spread in (1, 4):
        out = tmp_path / f"out{spread}"
        cfg = IngestConfig(
            raw=str(raw), cxr="", layout="v2", tables=["chartevents"], itemids=[220045, 220210], spread=spread
        )
        counts[spread] = ingest.run(spark, cfg, str(out))
        files = _bronze_files(spark, out, "chartevents")
        assert files == 1 if spread == 1 else files > 1
    assert counts[1] == counts[4]
    for table in ("chartevents", "quarantine"):
        assert_df_equality(
            _bronze(spark, tmp_path / "out1", table),
            _bronze(spark, tmp_path / "out4", table),
            ignore_row_order=True,
        )
    c = counts[4]["chartevents"]
    assert c["rows_in"] == 600 and c["rejected"] > 0 and c["filtered_out"] > 0
    assert c["rows_in"] == c["kept"] + c["rejected"] + c["filtered_out"]


def _encodings(folder: Path) -> dict[str, set[str]]:
    """{column: Parquet encodings used} over the data files under ``folder``."""
    import pyarrow.parquet as pq

    found: dict[str, set[str]] = {}
    for f in folder.rglob("*.parquet"):
        meta = pq.ParquetFile(f).metadata
        for g in range(meta.num_row_groups):
            for c in range(meta.num_columns):
                column = meta.row_group(g).column(c)
                found.setdefault(column.path_in_schema, set()).update(column.encodings)
    return found


@pytest.mark.parametrize("reader", ["arrow", "spark"])
def test_staging_columns_plain_encoded_bronze_keeps_dictionaries(spark, tmp_path, monkeypatch, reader):
    """The staging table, written once and read once, skips Parquet dictionaries (CPU); the
    bronze table, read by every later stage, keeps them, whether Spark's Delta writer wrote its
    files or the Arrow reader's tasks did."""
    staged: dict[str, dict[str, set[str]]] = {}
    drop = ingest.job.drop_staging

    def inspect_then_drop(spark_, plans, out):
        for p in plans:
            staged[p.name] = _encodings(Path(ingest.staging_path(out, p.name)))
        drop(spark_, plans, out)

    monkeypatch.setattr(ingest.job, "drop_staging", inspect_then_drop)
    raw = tmp_path / "raw"
    events = [dict(subject_id="1", hadm_id="10", stay_id="100", itemid="220045", value="80")] * 50
    # One reject, so that the staging table of the Arrow route holds a file too.
    events.append(dict(subject_id="x", hadm_id="10", stay_id="100", itemid="220045", value="80"))
    write(raw / "icu/chartevents.csv.gz", csv_text(V2["chartevents"].column_names, events))
    cfg = IngestConfig(
        raw=str(raw), cxr="", layout="v2", tables=["chartevents"], itemids=[220045], reader=reader
    )
    assert ingest.run(spark, cfg, str(tmp_path / "out"))["chartevents"]["kept"] == 50
    dictionary = {"PLAIN_DICTIONARY", "RLE_DICTIONARY"}
    staging = staged["chartevents"]
    typed = [c for c in staging if c.startswith("__v")]
    assert len(typed) == len(V2["chartevents"].columns)
    assert all(not staging[c] & dictionary for c in (*typed, "__reason", "__record"))
    bronze = _encodings(tmp_path / "out/bronze/chartevents")
    assert bronze["itemid"] & dictionary and bronze["subject_id"] & dictionary


def test_small_inputs_staged_in_memory_or_on_disk_alike(spark, tmp_path, monkeypatch):
    """Small inputs are staged in Spark's cache, big ones in a staging Delta table: the route
    changes nothing in bronze, the quarantine or the counts, and leaves nothing cached."""
    from chispa import assert_df_equality

    raw = tmp_path / "raw"
    rng = random.Random(4)
    pts = [
        dict(
            subject_id=rng.choice([str(i), "x"]),
            gender="F",
            anchor_age=rng.choice(["60", "?"]),
            anchor_year="2150",
        )
        for i in range(300)
    ]
    write(raw / "hosp/patients.csv.gz", csv_text(V2["patients"].column_names, pts, extra_lines=("1,2",)))
    stays = [
        dict(
            subject_id="1",
            hadm_id=str(i),
            stay_id=rng.choice([str(100 + i), ""]),
            intime="2180-01-01 00:00:00",
        )
        for i in range(200)
    ]
    write(raw / "icu/icustays.csv.gz", csv_text(V2["icustays"].column_names, stays))
    tables = ["patients", "icustays"]
    cache = spark._jsparkSession.sharedState().cacheManager()
    spark.catalog.clearCache()
    runs = {}
    for route, limit in (("memory", 1 << 30), ("disk", 0)):
        monkeypatch.setattr(ingest.job, "_IN_MEMORY_MAX_BYTES", limit)
        cfg = IngestConfig(raw=str(raw), cxr="", layout="v2", tables=tables)
        runs[route] = ingest.run(spark, cfg, str(tmp_path / route))
        assert not (tmp_path / route / "bronze/_staging").exists()
    assert runs["memory"] == runs["disk"]
    for name in tables:
        c = runs["memory"][name]
        assert c["rejected"] > 0 and c["rows_in"] == c["kept"] + c["rejected"]
    for table in (*tables, "quarantine"):
        assert_df_equality(
            _bronze(spark, tmp_path / "memory", table),
            _bronze(spark, tmp_path / "disk", table),
            ignore_row_order=True,
        )
    assert cache.isEmpty()


def test_spread_truncated_gzip_still_names_the_file(spark, tmp_path):
    table = V2["patients"]
    rows = [dict(subject_id=str(i), gender="F", anchor_age="50", anchor_year="2150") for i in range(5000)]
    blob = gzip.compress(csv_text(table.column_names, rows).encode())
    path = tmp_path / "raw/hosp/patients.csv.gz"
    path.parent.mkdir(parents=True)
    path.write_bytes(blob[: len(blob) // 2])
    cfg = IngestConfig(raw=str(tmp_path / "raw"), cxr="", layout="v2", tables=["patients"], spread=3)
    with pytest.raises(CorruptInputError) as err:
        ingest.run(spark, cfg, str(tmp_path / "out"))
    assert str(path) in str(err.value) and len(str(err.value).splitlines()) < 12


def test_unused_items_are_counted_not_typed(spark, tmp_path):
    """Rows of items outside ``itemids`` are filtered out before typing (a bad timestamp there is
    not a reject); rows whose item cannot be read are checked and rejected as usual."""
    raw = tmp_path / "raw"
    ev = dict(subject_id="1", hadm_id="10", stay_id="100", charttime="2180-01-01 10:00:00", value="7")
    events = [
        ev | dict(itemid="220045"),  # kept
        ev | dict(itemid="220045", charttime="not a time"),  # wanted, bad -> rejected
        ev | dict(itemid="999", charttime="not a time"),  # unused item: filtered_out, never typed
        ev | dict(itemid="999"),  # filtered_out
        ev | dict(itemid="x1"),  # item unreadable -> rejected
        ev | dict(itemid=""),  # no item -> rejected
    ]
    text = csv_text(V2["chartevents"].column_names, events, extra_lines=("1,2,3",))  # malformed
    write(raw / "icu/chartevents.csv.gz", text)
    cfg = IngestConfig(raw=str(raw), cxr="", layout="v2", tables=["chartevents"], itemids=[220045])
    counts = ingest.run(spark, cfg, str(tmp_path / "out"))
    assert counts["chartevents"] == dict(rows_in=7, kept=1, rejected=4, filtered_out=2)
    q = spark.read.format("delta").load(str(tmp_path / "out/bronze/quarantine"))
    assert reasons(q) == {
        "bad_timestamp:charttime": 1,
        "bad_long:itemid": 1,
        "null_id:itemid": 1,
        "malformed_line": 1,
    }
