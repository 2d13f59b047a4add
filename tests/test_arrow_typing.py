"""The Arrow reader's own typing of clean rows (``arrow_typing``): a value it accepts is the
value Spark's typing gives, and its task stages exactly the clean rows, passing on the rest."""

from __future__ import annotations

import gzip
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from spark_jobs.ingest import arrow_csv, arrow_typing
from tests.test_ingest import V2, csv_text
from tests.test_ingest_arrow import EV, chartevents_parser

SAMPLES = {
    "long": [
        "0",
        "7",
        "007",
        "220045",
        "123456789012345678",
        "1234567890123456789",
        "-1",
        "+1",
        " 1",
        "1 ",
        "1.0",
        "1e3",
        "0x10",
        "",
        "١٢",
        "99999999999999999999",
    ],
    "int": ["0", "1", "123456789", "1234567890", "2147483647", "2147483648", "-5", "1.0", "1.5", ""],
    "double": [
        "0",
        "72",
        "72.5",
        "-0",
        "-0.0",
        "0.1",
        "1e5",
        "1E-3",
        ".5",
        "5.",
        "+5",
        "NaN",
        "Infinity",
        "-inf",
        "1,5",
        " 2",
        "0.1000000000000000055511151231257827",
        "123456789012345678901234567890",
        "1234567890123456789012345678901",
        "9" * 25 + ".5",
        "",
    ],
    "timestamp": [
        "2180-07-23 14:00:00",
        "2180-02-29 00:00:00",
        "2183-02-29 00:00:00",
        "2180-02-30 10:00:00",
        "2180-04-31 10:00:00",
        "2180-13-01 00:00:00",
        "2180-00-10 00:00:00",
        "2180-01-00 00:00:00",
        "2180-01-01 23:59:59",
        "2180-01-01 24:00:00",
        "2180-01-01 10:60:00",
        "2180-01-01 10:00:60",
        "2180-01-01T10:00:00",
        "2180-01-01 10:00+01",
        "2180-01-01 10-01:00",
        "2180-01-01 10:00:00.5",
        "2180-1-1 10:00:00",
        "0999-01-01 00:00:00",
        "1000-01-01 00:00:00",
        "9999-12-31 23:59:59",
        "2180-01-01",
        " 2180-01-01 10:00:00",
        "",
    ],
}


def _spark_values(spark, texts: list[str], logical: str) -> list:
    """Spark's typing (staging._typed) of each text; timestamps as epoch micros."""
    from pyspark.sql import functions as F
    from pyspark.sql.types import StringType

    from spark_jobs.ingest.staging import _typed

    df = spark.createDataFrame([(i, t) for i, t in enumerate(texts)], "i int, x string")
    value, _ = _typed("x", logical, StringType())
    if logical == "timestamp":
        value = F.unix_micros(value)
    rows = df.select("i", value.alias("v")).orderBy("i").collect()
    return [r["v"] for r in rows]


def _arrow_values(texts: list[str], logical: str) -> list:
    values = arrow_typing.plain_value(pa.array(texts, pa.string()), logical)
    if logical == "timestamp":
        values = values.cast(pa.int64())
    return values.to_pylist()


@pytest.mark.parametrize("logical", list(SAMPLES))
def test_a_plain_value_is_what_spark_makes_of_it(spark, logical):
    texts = SAMPLES[logical]
    arrow, reference = _arrow_values(texts, logical), _spark_values(spark, texts, logical)
    accepted = [(t, a, r) for t, a, r in zip(texts, arrow, reference, strict=True) if a is not None]
    assert [(t, a) for t, a, _ in accepted] == [(t, r) for t, _, r in accepted]
    # Both kinds are in the samples: values Arrow types, and values it leaves to Spark, some of
    # which Spark types (so the plain forms are a strict subset) and some it rejects.
    left = [(t, r) for t, a, r in zip(texts, arrow, reference, strict=True) if a is None and t]
    assert len(accepted) >= 3 and any(r is not None for _, r in left) and any(r is None for _, r in left)


@pytest.mark.parametrize("logical", list(SAMPLES))
def test_a_value_is_typed_alike_alone_and_among_others(logical):
    # Timestamps: an array of plain ones takes Arrow's whole-array cast, one holding a value that
    # looks plain but is not (02-30, :60) the value-by-value checks; both must agree.
    texts = SAMPLES[logical]
    among_others = _arrow_values(texts, logical)
    assert [_arrow_values([t], logical)[0] for t in texts] == among_others
    assert _arrow_values(texts[:2] + texts[-1:], logical) == among_others[:2] + among_others[-1:]


def test_days_past_the_end_of_a_month_are_left_to_spark():
    texts = ["2180-02-30 10:00:00", "2181-02-29 10:00:00", "2180-04-31 00:00:00", "2180-02-29 10:00:00"]
    assert [v is None for v in _arrow_values(texts, "timestamp")] == [True, True, True, False]


COLUMNS = V2["chartevents"].column_names
LOGICALS = tuple(logical for _, logical in V2["chartevents"].columns)
REQUIRED = tuple(c in ("subject_id", "stay_id", "itemid") for c in COLUMNS)
ROW = EV | dict(valuenum="80.5", warning="0")


def _parse(
    tmp_path: Path, rows: list[dict], rows_per_file: int
) -> tuple[list[pa.RecordBatch], arrow_csv.ArrowStaging]:
    path = tmp_path / "chartevents.csv.gz"
    path.write_bytes(gzip.compress(csv_text(COLUMNS, rows).encode()))
    staging = arrow_csv.ArrowStaging(
        str(tmp_path / "parts"), tuple(COLUMNS), LOGICALS, REQUIRED, rows_per_file
    )
    # Small blocks: several batches.
    parser = chartevents_parser(path, [220045], block_bytes=1 << 10, staging=staging, file_index=3)
    return list(parser.batches()), staging


def test_the_task_stages_clean_rows_typed_and_passes_on_the_rest(tmp_path):
    odd = {5: dict(valuenum="1e5"), 17: dict(stay_id=""), 30: dict(charttime="2180-02-30 10:00:00")}
    rows = [
        ROW
        | dict(subject_id=str(i), itemid="220045" if i % 3 else "999", hadm_id="" if i == 8 else "10")
        | odd.get(i, {})
        for i in range(60)
    ]
    batches, staging = _parse(tmp_path, rows, rows_per_file=7)
    out = pa.Table.from_batches(batches)
    markers = out.filter(pa.compute.is_valid(out["__unused"]))
    passed = out.filter(pa.compute.is_null(out["__unused"]))
    wanted = [r for i, r in enumerate(rows) if i % 3]
    clean = [r for i, r in enumerate(rows) if i % 3 and i not in odd]
    # The rows that are not clean go on to Spark as text; the clean ones only as a count.
    assert sorted(passed["subject_id"].to_pylist()) == sorted(
        r["subject_id"] for r in wanted if r not in clean
    )
    assert sum(markers["__arrow_staged"].to_pylist()) == len(clean)
    assert sum(markers["__unused"].to_pylist()) == len(rows) - len(wanted)
    files = sorted(p.name for p in (tmp_path / "parts").iterdir())
    assert files == [f"part-00003-{n:05d}.parquet" for n in range(-(-len(clean) // 7))]  # no partial files
    parts = pq.read_table(tmp_path / "parts")
    # Bronze's own columns: the parts are moved into the bronze table as they are.
    assert parts.schema.names == [*COLUMNS, "_source"] and parts.num_rows == len(clean)
    by_subject = {r["subject_id"]: r for r in parts.to_pylist()}
    for r in clean:
        typed = by_subject[int(r["subject_id"])]
        assert typed["hadm_id"] == (None if r["hadm_id"] == "" else 10)
        assert typed["charttime"].isoformat() == "2180-01-01T10:00:00+00:00"
        assert (typed["valuenum"], typed["valueuom"], typed["value"], typed["warning"]) == (
            80.5,
            "bpm",
            "80",
            0,
        )
        assert typed["_source"].startswith("file:///")


@pytest.mark.parametrize(
    ("out", "folder"),
    [
        ("/data/out", "/data/out/bronze/_staging/chartevents.arrow"),
        ("file:///data/my%20out", "/data/my out/bronze/_staging/chartevents.arrow"),
        ("s3a://bucket/out", None),  # the tasks write with the local file system only
    ],
)
def test_the_tasks_stage_clean_rows_for_a_local_output_and_utc_only(out, folder):
    from spark_jobs.ingest.job import _arrow_staging

    staging = _arrow_staging(out, V2["chartevents"], rows_per_file=5)
    assert (staging.folder if staging else None) == folder
    if staging:
        assert (
            staging.names == tuple(COLUMNS) and staging.logicals == LOGICALS and staging.required == REQUIRED
        )
        assert staging.rows_per_file == 5
        # Spark reads a raw time in its session's zone, Arrow as UTC: other zones stay with Spark.
        assert _arrow_staging(out, V2["chartevents"], 5, "America/New_York") is None
