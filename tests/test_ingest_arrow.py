"""The Arrow reader of raw events (``ingest.reader=arrow``) against Spark's csv source: the same
bronze rows, the same rejects with the same reasons, the same counts, on ordinary and on broken
input; and the same clear errors naming the file."""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path

import pytest

from spark_jobs import ingest
from spark_jobs.ingest import CorruptInputError, HeaderError, IngestConfig
from tests.test_ingest import V2, csv_text

COLUMNS = V2["chartevents"].column_names
WANTED = [220045, 220210]
EV = dict(
    subject_id="1",
    hadm_id="10",
    stay_id="100",
    charttime="2180-01-01 10:00:00",
    storetime="2180-01-01 10:05:00",
    itemid="220045",
    value="80",
    valuenum="80",
    valueuom="bpm",
)


def _rows(n: int = 40) -> list[dict]:
    """Ordinary rows: wanted and unused items, a few bad values."""
    rows = []
    for i in range(n):
        item = ("220045", "220210", "999", "223761")[i % 4]
        rows.append(EV | dict(stay_id=str(100 + i % 3), itemid=item, valuenum=str(60 + i)))
    bad = {
        6: dict(charttime="not a time"),  # unused item (999): never typed, filtered out
        4: dict(charttime="2180-13-01 10:00:00"),  # wanted: bad_timestamp
        8: dict(valuenum="8o"),  # wanted: bad_double
    }
    return [row | bad.get(i, {}) for i, row in enumerate(rows)]


BROKEN_LINES = (
    "1,2,3",  # too few fields
    "1,10,100,,2180-01-01 10:00:00,2180-01-01 10:00:00,220045,1,1,x,extra,more",  # too many
    '1,10,100,,2180-01-01 10:00:00,,220045,"a ""quoted"" value",5,mmHg,',  # escaped quotes: kept
    "1,10,100,,2180-01-01 10:00:00,,x1,7,7,,",  # item unreadable: bad_long
    "1,10,100,,2180-01-01 10:00:00,,,7,7,,",  # no item: null_id
    "1,10,100,,2180-01-01 10:00:00,, 220045 ,7,7,,",  # item with blanks: typed by Spark, kept
    "1,10,100,,2180-01-01 10:00:00,,220045.0,7,7,,",  # '.0' item: kept as 220045
    "1,10,100,,2180-01-01 10:00:00,,0999,7,7,,",  # leading zero, unused item: filtered out
    "1,10,100,,2180-01-01 10:00:00,,99999999999999999999,7,7,,",  # too big for a long: bad_long
    "1,10,-100,,2180-01-01 10:00:00,,220045,7,7,,",  # negative_id
    "",  # blank line: skipped by both
)


NEAR_PLAIN = [
    EV | change
    for change in (
        dict(subject_id="007"),  # plain: leading zeros
        dict(hadm_id=""),  # absent, not required
        dict(stay_id=""),  # absent and required: null_id
        dict(stay_id=" 100"),
        dict(hadm_id="10.0"),
        dict(charttime="2180-02-30 10:00:00"),  # no such day: bad_timestamp
        dict(charttime="2180-02-29 10:00:00"),  # a leap day: plain
        dict(charttime="2180-01-01T10:00:00"),
        dict(charttime="2180-01-01 10:00:00.250"),
        dict(charttime="2180-01-01 24:00:00"),
        dict(storetime="0999-01-01 00:00:00"),  # typed by Spark, kept as it is (no calendar rebase)
        dict(storetime="1200-01-01 00:00:00"),  # plain
        dict(valuenum="1e5"),
        dict(valuenum="+5"),
        dict(valuenum=".5"),
        dict(valuenum="5."),
        dict(valuenum="-0"),
        dict(valuenum="NaN"),
        dict(valuenum="0.1000000000000000055511151231257827"),
        dict(warning="1"),
        dict(warning="1234567890"),
        dict(value="caf\ufffd"),  # U+FFFD in valid UTF-8: bad_encoding
    )
]


def _text(rows: list[dict], extra: tuple[str, ...] = (), header: list[str] | None = None) -> str:
    return csv_text(header or COLUMNS, rows, extra_lines=extra)


def _ingest(spark, tmp_path: Path, reader: str, parts: dict[str, bytes]) -> tuple[dict, list, list]:
    """(counts, bronze rows, quarantine (reason, record) rows) of chartevents read by ``reader``."""
    raw = tmp_path / "raw"
    for name, data in parts.items():
        path = raw / "icu" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    out = tmp_path / f"out-{reader}"
    cfg = IngestConfig(
        raw=str(raw), cxr="", layout="v2", tables=["chartevents"], itemids=WANTED, reader=reader
    )
    counts = ingest.run(spark, cfg, str(out))["chartevents"]
    bronze = spark.read.format("delta").load(str(out / "bronze/chartevents"))
    kept = sorted(repr(tuple(r)) for r in bronze.drop("_source").collect())
    sources = {r["_source"] for r in bronze.select("_source").distinct().collect()}
    quarantine = spark.read.format("delta").load(str(out / "bronze/quarantine")).collect()
    rejects = sorted((r["reason"], _comparable(r["reason"], json.loads(r["record"]))) for r in quarantine)
    return counts, kept, [rejects, sources]


def _comparable(reason: str, record: dict) -> str:
    """A reject's record as both readers give it: for a malformed line, its text (Spark also
    keeps the fields it managed to split; the Arrow reader does not split a broken line)."""
    if reason == "malformed_line":
        return record["_corrupt_record"]
    return json.dumps(record, sort_keys=True)


def _upper_header(text: str) -> str:
    header, rest = text.split("\n", 1)
    return header.upper() + "\n" + rest


CASES = {
    "ordinary_gz": {"chartevents.csv.gz": gzip.compress(_text(_rows()).encode())},
    "broken_lines": {"chartevents.csv.gz": gzip.compress(_text(_rows(), BROKEN_LINES).encode())},
    "quoted_newline": {
        "chartevents.csv": _text(
            _rows(12) + [EV | dict(value="line one\nline two"), EV | dict(value="a\r\nb")]
        ).encode()
    },
    # Values just outside the plain forms the Arrow reader types itself (arrow_typing): Spark
    # types those rows; absent optional values and a missing required id in otherwise clean rows.
    "near_plain_values": {"chartevents.csv.gz": gzip.compress(_text(_rows(12) + NEAR_PLAIN).encode())},
    "latin1_and_crlf": {
        "chartevents.csv": _text(_rows(12)).replace("\n", "\r\n").encode()
        + "1,10,100,,2180-01-01 10:00:00,,220045,\xe9t\xe9,5,\xb0C,\r\n".encode("latin-1")
        + "1,10,100,,2180-01-01 10:00:00,,999,\xe9t\xe9,5,\xb0C,\r\n".encode("latin-1")
    },
    # Arrow cannot hand a malformed line that is not UTF-8 to its handler: the table is read
    # again by Spark's reader (a warning says so), with the same outcome.
    "latin1_malformed_line": {
        "chartevents.csv": _text(_rows(12)).encode() + "1,10,\xe9t\xe9\n".encode("latin-1")
    },
    "bom_reordered_extra_column_upper_case": {
        "chartevents.csv.gz": gzip.compress(
            ("\ufeff" + _upper_header(_text(_rows(), header=["extra", *COLUMNS[::-1]]))).encode()
        )
    },
    # Concatenated gzip members (pigz, bgzip, appending to a .gz) are one valid stream.
    "multi_member_gz": {
        "chartevents.csv.gz": gzip.compress(_text(_rows(12)).encode())
        + gzip.compress("\n".join(_text(_rows(20)).splitlines()[1:]).encode() + b"\n")
    },
    "parts_with_header_only_and_empty": {
        "chartevents/part-0.csv.gz": gzip.compress(_text(_rows(12)).encode()),
        "chartevents/part-1.csv.gz": gzip.compress(_text([]).encode()),
        "chartevents/part-2.csv": _text(_rows(20), BROKEN_LINES[:2]).encode(),
        "chartevents/part-3.csv.gz": gzip.compress(b""),
    },
}


def _committed_parts(out: Path) -> int:
    """Files of bronze chartevents that the bronze commit added as they were (delta_files'
    names), rather than Spark's Delta writer."""
    log = sorted((out / "bronze/chartevents/_delta_log").glob("*.json"))[-1]
    actions = [json.loads(line) for line in log.read_text().splitlines()]
    return sum(
        1
        for a in actions
        if "add" in a and re.fullmatch(r"part-\d{5}-[0-9a-f]{32}\.parquet", a["add"]["path"])
    )


@pytest.mark.parametrize("case", list(CASES))
def test_arrow_reader_gives_what_the_spark_reader_gives(spark, tmp_path, case):
    arrow = _ingest(spark, tmp_path, "arrow", CASES[case])
    reference = _ingest(spark, tmp_path, "spark", CASES[case])
    assert arrow == reference
    # The clean rows were typed by the Arrow reader's tasks, their parts committed to bronze as
    # they are (but for the case read again by Spark); Spark's reader goes through its writer.
    parts = {reader: _committed_parts(tmp_path / f"out-{reader}") for reader in ("arrow", "spark")}
    assert parts["spark"] == 0 and (parts["arrow"] > 0) is (case != "latin1_malformed_line")
    counts = arrow[0]
    assert counts["rows_in"] == counts["kept"] + counts["rejected"] + counts["filtered_out"]
    assert counts["kept"] > 0 and counts["filtered_out"] > 0


@pytest.mark.parametrize("folder", ["my out", "50%25 done"])
def test_parts_reach_bronze_from_an_output_folder_with_odd_characters(spark, tmp_path, folder):
    """The tasks write with Python's file system, the commit and the later stages go through
    Hadoop's: both must mean the same folder (Hadoop takes a path string without URL decoding)."""
    raw = tmp_path / "raw/icu/chartevents.csv.gz"
    raw.parent.mkdir(parents=True)
    raw.write_bytes(gzip.compress(_text(_rows(30)).encode()))
    out = tmp_path / folder
    cfg = IngestConfig(raw=str(tmp_path / "raw"), cxr="", layout="v2", tables=["chartevents"], itemids=WANTED)
    counts = ingest.run(spark, cfg, str(out))["chartevents"]
    assert counts["kept"] > 0 and _committed_parts(out) > 0
    bronze = spark.read.format("delta").load(str(out / "bronze/chartevents"))
    assert bronze.count() == counts["kept"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["raw", folder])


def test_many_batches_count_every_unused_row(spark, tmp_path, monkeypatch):
    """Counts of dropped rows are summed over the parser's batches (small blocks: many)."""
    from spark_jobs.ingest import arrow_csv

    monkeypatch.setattr(arrow_csv, "_BLOCK_BYTES", 1 << 10)  # read by the driver, handed to the tasks
    rows = [EV | dict(itemid=("999" if i % 5 else "220045"), valuenum=str(i)) for i in range(3000)]
    counts, kept, _ = _ingest(
        spark, tmp_path, "arrow", {"chartevents.csv.gz": gzip.compress(_text(rows).encode())}
    )
    assert counts == dict(rows_in=3000, kept=600, rejected=0, filtered_out=2400)
    assert len(kept) == 600
    # The tasks did get small blocks: one marker row of unused rows per batch.
    path = tmp_path / "raw/icu/chartevents.csv.gz"
    raw = arrow_csv.read_csv(spark, [str(path)], COLUMNS, {c: c for c in COLUMNS}, "itemid", WANTED)
    assert raw.where("__unused IS NOT NULL").count() > 50


def test_truncated_gzip_names_the_file(spark, tmp_path):
    blob = gzip.compress(_text(_rows(2000)).encode())
    parts = {"chartevents/part-0.csv.gz": gzip.compress(_text(_rows(5)).encode())}
    parts["chartevents/part-1.csv.gz"] = blob[: len(blob) // 2]
    with pytest.raises(CorruptInputError) as err:
        _ingest(spark, tmp_path, "arrow", parts)
    msg = str(err.value)
    assert "part-1.csv.gz" in msg and "part-0" not in msg and len(msg.splitlines()) < 6
    assert not (tmp_path / "out-arrow/bronze/chartevents").exists()


def test_corrupt_gzip_data_names_the_file(spark, tmp_path):
    """Damage inside the deflate stream (not a cut): the inflate error, not a crash of the task."""
    blob = bytearray(gzip.compress(_text(_rows(3000)).encode(), mtime=0))
    middle = len(blob) // 2
    blob[middle : middle + 64] = bytes(b ^ 0x55 for b in blob[middle : middle + 64])
    with pytest.raises(CorruptInputError) as err:
        _ingest(spark, tmp_path, "arrow", {"chartevents.csv.gz": bytes(blob)})
    msg = str(err.value)
    assert "chartevents.csv.gz" in msg and len(msg.splitlines()) < 6
    assert not (tmp_path / "out-arrow/bronze/chartevents").exists()


def test_part_with_another_header_names_the_part(spark, tmp_path):
    parts = {
        "chartevents/part-0.csv": _text(_rows(5)).encode(),
        "chartevents/part-1.csv": _text(_rows(5), header=[*COLUMNS[1:], COLUMNS[0]]).encode(),
    }
    with pytest.raises(HeaderError) as err:
        _ingest(spark, tmp_path, "arrow", parts)
    msg = str(err.value)
    assert "part-1.csv" in msg and "does not conform" in msg and len(msg.splitlines()) < 6


@pytest.mark.parametrize(
    ("path", "readable"),
    [
        ("/data/icu/chartevents.csv.gz", True),
        ("file:///data/icu/chartevents.csv", True),
        ("s3a://bucket/icu/chartevents.csv.gz", True),
        ("s3://bucket/icu/chartevents.csv", True),
        ("hdfs://nn/icu/chartevents.csv.gz", False),  # no client in the task: Spark reads it
        ("/data/icu/chartevents.csv.snappy", False),  # Hadoop's framing, not Arrow's
        ("/data/icu/chartevents.csv/part-0.csv.bz2", False),
    ],
)
def test_arrow_reader_takes_local_and_s3_files_it_can_decompress(path, readable):
    from spark_jobs.ingest.job import _arrow_reads

    loc = ingest.Located(path, "csv", (path,))
    assert _arrow_reads("auto", loc) is readable
    if not readable:
        with pytest.raises(ValueError, match="local and S3 files"):
            _arrow_reads("arrow", loc)


def test_s3_settings_of_a_bucket_come_from_its_s3a_keys_first(spark):
    from spark_jobs.ingest.arrow_csv import s3_access
    from spark_jobs.ingest.job import _arrow_reads

    conf = spark.sparkContext._jsc.hadoopConfiguration()
    keys = {
        "fs.s3a.endpoint": "storage.example:9000",
        "fs.s3a.connection.ssl.enabled": "false",
        "fs.s3a.bucket.mine.path.style.access": "true",
        "fs.s3a.bucket.mine.access.key": "AKIDMINE",
        "fs.s3a.bucket.mine.secret.key": "s3cr3t-value",
        "fs.s3a.bucket.mine.endpoint.region": "eu-west-3",
        "fs.s3a.bucket.mine.aws.credentials.provider": "org.apache.hadoop.fs.s3a.SimpleAWSCredentialsProvider",
        "fs.s3a.bucket.role.aws.credentials.provider": "org.apache.hadoop.fs.s3a.auth.AssumedRoleCredentialProvider",
    }
    before = {key: conf.get(key) for key in keys}
    try:
        for key, value in keys.items():
            conf.set(key, value)
        mine, other, role = (s3_access(spark, b) for b in ("mine", "other", "role"))
        # A bucket the tasks could not authenticate to as S3A does is left to the Spark reader.
        loc = ingest.Located(
            "s3a://role/icu/chartevents.csv.gz", "csv", ("s3a://role/icu/chartevents.csv.gz",)
        )
        assert _arrow_reads("auto", loc, spark) is False
        with pytest.raises(ValueError, match="AssumedRoleCredentialProvider"):
            _arrow_reads("arrow", loc, spark)
        assert _arrow_reads("auto", loc._replace(files=("s3a://mine/c.csv.gz",)), spark) is True
    finally:
        for key, value in before.items():
            conf.unset(key) if value is None else conf.set(key, value)
    assert (mine.endpoint_url, mine.region, mine.path_style) == (
        "http://storage.example:9000",
        "eu-west-3",
        True,
    )
    assert (mine.key, mine.secret) == ("AKIDMINE", "s3cr3t-value")
    assert "s3cr3t" not in repr(mine)  # the access travels to the tasks; it never shows in a log
    assert mine.unsupported_providers == () and role.unsupported_providers != ()
    assert other.endpoint_url == "http://storage.example:9000"
    assert (other.key, other.path_style) == (None, conf.get("fs.s3a.path.style.access") == "true")


def _raw_on_s3(spark, s3_server, parts: dict[str, bytes]) -> str:
    """``parts`` under ``icu/`` of a new bucket on the moto server, which S3A is pointed at."""
    import uuid

    import boto3

    from tests.test_ingest import _s3a_bucket_conf

    bucket = f"raw-{uuid.uuid4().hex[:8]}"
    s3 = boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1")
    s3.create_bucket(Bucket=bucket)
    for name, data in parts.items():
        s3.put_object(Bucket=bucket, Key=f"mimic-iv/icu/{name}", Body=data)
    _s3a_bucket_conf(spark, s3_server, bucket)
    return f"s3a://{bucket}/mimic-iv"


def _ingest_s3(spark, root: str, tmp_path: Path, reader: str) -> tuple[dict, list, list]:
    """``_ingest`` of the raw files under ``root`` (S3), ``_source`` compared too."""
    out = tmp_path / f"out-{reader}"
    cfg = IngestConfig(raw=root, cxr="", layout="v2", tables=["chartevents"], itemids=WANTED, reader=reader)
    counts = ingest.run(spark, cfg, str(out))["chartevents"]
    bronze = spark.read.format("delta").load(str(out / "bronze/chartevents"))
    kept = sorted(repr(tuple(r)) for r in bronze.collect())
    quarantine = spark.read.format("delta").load(str(out / "bronze/quarantine")).collect()
    rejects = sorted((r["reason"], _comparable(r["reason"], json.loads(r["record"]))) for r in quarantine)
    return counts, kept, rejects


@pytest.mark.s3
def test_arrow_reader_on_s3_gives_what_the_spark_reader_gives(spark, s3_server, tmp_path, monkeypatch):
    from spark_jobs.ingest import arrow_csv

    parts = {
        "chartevents/part-0.csv.gz": gzip.compress(_text(_rows(), BROKEN_LINES).encode()),
        "chartevents/part-1.csv": _text(_rows(12)).encode(),
    }
    read_by_arrow = []  # the driver plans the Arrow reader's tasks (they run in Python workers)
    real_read = arrow_csv.read_csv
    monkeypatch.setattr(
        arrow_csv,
        "read_csv",
        lambda spark, files, *a: read_by_arrow.extend(files) or real_read(spark, files, *a),
    )
    root = _raw_on_s3(spark, s3_server, parts)
    arrow = _ingest_s3(spark, root, tmp_path, "auto")
    reference = _ingest_s3(spark, root, tmp_path, "spark")
    assert arrow == reference
    assert sorted(read_by_arrow) == [
        f"{root}/icu/chartevents/part-{i}.csv{ext}" for i, ext in enumerate((".gz", ""))
    ]
    assert any(f"{root}/icu/chartevents/part-0.csv.gz" in row for row in arrow[1])
    counts = arrow[0]
    assert counts["rows_in"] == counts["kept"] + counts["rejected"] + counts["filtered_out"]
    assert counts["kept"] > 0 and counts["filtered_out"] > 0 and counts["rejected"] > 0


@pytest.mark.s3
def test_truncated_gzip_on_s3_names_the_file(spark, s3_server, tmp_path):
    blob = gzip.compress(_text(_rows(2000)).encode())
    root = _raw_on_s3(spark, s3_server, {"chartevents.csv.gz": blob[: len(blob) // 2]})
    with pytest.raises(CorruptInputError) as err:
        _ingest_s3(spark, root, tmp_path, "arrow")
    msg = str(err.value)
    assert "s3a://" in msg and "chartevents.csv.gz" in msg and len(msg.splitlines()) < 6


def chartevents_parser(path: Path, wanted: list[int], block_bytes: int, **staging):
    """The task's parser of one chartevents file with the declared columns in their order;
    ``staging``: ``staging=`` and ``file_index=`` of the Arrow reader's own staging."""
    import pyarrow as pa

    from spark_jobs.ingest import arrow_csv

    return arrow_csv._FileParser(
        str(path),
        COLUMNS,
        COLUMNS,
        list(range(len(COLUMNS))),
        COLUMNS.index("itemid"),
        pa.array(wanted, pa.int64()),
        {},
        block_bytes=block_bytes,
        **staging,
    )


def _parsed(path: Path, block_bytes: int) -> list[tuple]:
    """What the task's parser makes of one file, in its order: ("row", values), ("corrupt",
    line) and ("unused", n) items."""
    from spark_jobs.ingest.staging import CORRUPT, UNUSED

    out: list[tuple] = []
    for batch in chartevents_parser(path, WANTED, block_bytes).batches():
        table = batch.to_pydict()
        for i in range(batch.num_rows):
            if table[UNUSED][i] is not None:
                out.append(("unused", table[UNUSED][i]))
            elif table[CORRUPT][i] is not None:
                out.append(("corrupt", table[CORRUPT][i]))
            else:
                out.append(("row", tuple(table[c][i] for c in COLUMNS)))
    return out


def test_blocks_parsed_ahead_give_what_blocks_parsed_in_turn_give(tmp_path, monkeypatch):
    """The next block is parsed (in a thread) while one is filtered: the output, malformed lines
    included, is the same item for item as parsing each block in turn, and the same lines and
    rows as parsing the file as one block."""
    from spark_jobs.ingest import arrow_csv

    lines = _text(_rows(400)).splitlines()
    too_few = [f"{i},2,3" for i in range(12)]
    line_break = [f'1,10,100,,2180-01-01 10:00:00,,220045,"a\nb{i}",5,x,' for i in range(3)]
    for k, line in enumerate(too_few + line_break):
        lines.insert(1 + 29 * (k + 1), line)
    path = tmp_path / "chartevents.csv.gz"
    path.write_bytes(gzip.compress(("\n".join(lines) + "\n").encode()))

    ahead = _parsed(path, block_bytes=1 << 10)

    def in_turn(step, depth=2):
        while True:
            try:
                yield step()
            except StopIteration:
                return

    monkeypatch.setattr(arrow_csv, "read_ahead", in_turn)
    assert ahead == _parsed(path, block_bytes=1 << 10)
    whole = _parsed(path, block_bytes=1 << 24)
    assert sorted(x for x in ahead if x[0] != "unused") == sorted(x for x in whole if x[0] != "unused")
    corrupt = [x[1] for x in ahead if x[0] == "corrupt"]
    assert [c for c in corrupt if c.endswith(",2,3")] == too_few and len(corrupt) == 12 + 2 * 3
    rows = sum(1 for x in ahead if x[0] == "row")
    assert rows + sum(x[1] for x in ahead if x[0] == "unused") == 400
    # Small blocks: many batches, with malformed lines between their rows.
    kinds = [x[0] for x in ahead]
    assert kinds.count("unused") > 10 and kinds.index("corrupt") < len(kinds) - kinds[::-1].index("row")


def test_read_ahead_gives_every_result_in_order_then_what_the_step_raised():
    from spark_jobs.ingest.arrow_csv import read_ahead

    def counting(limit: int, error: Exception | None):
        n = iter(range(limit))

        def step() -> int:
            value = next(n, None)
            if value is None:
                if error is not None:
                    raise error
                raise StopIteration
            return value

        return step

    assert list(read_ahead(counting(50, None), depth=2)) == list(range(50))
    got = []
    with pytest.raises(ValueError, match="damaged"):
        for value in read_ahead(counting(7, ValueError("damaged"))):
            got.append(value)
    assert got == list(range(7))


def test_read_ahead_stops_its_thread_when_the_caller_stops_early():
    import threading

    from spark_jobs.ingest.arrow_csv import read_ahead

    calls = []

    def endless() -> int:
        calls.append(1)
        return len(calls)

    results = read_ahead(endless, depth=2)
    assert [next(results) for _ in range(3)] == [1, 2, 3]
    results.close()
    assert not [t for t in threading.enumerate() if t.name == "medmod-read-ahead"]
    made = len(calls)
    assert made <= 3 + 2 + 1  # taken, queued, and the one under way when stopped


def test_a_task_that_fails_mid_file_leaves_no_read_ahead_thread(tmp_path, monkeypatch):
    import threading

    from spark_jobs.ingest import arrow_csv

    path = tmp_path / "chartevents.csv.gz"
    path.write_bytes(gzip.compress(_text(_rows(400)).encode()))
    convert, calls = arrow_csv._FileParser._convert, []

    def failing(self, batch):
        calls.append(1)
        if len(calls) == 3:
            raise OSError("disk full")
        return convert(self, batch)

    monkeypatch.setattr(arrow_csv._FileParser, "_convert", failing)
    with pytest.raises(OSError, match="disk full") as failure:
        _parsed(path, block_bytes=1 << 10)
    assert failure.traceback  # the failure, frames and all, is still referenced here
    assert not [t for t in threading.enumerate() if t.name == "medmod-read-ahead"]
