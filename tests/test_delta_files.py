"""spark_jobs.delta_files: Parquet files written outside Spark made a Delta table's new version
in one commit of Delta's transaction API, on a real local Spark with the pinned delta-spark."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from spark_jobs import delta_files, delta_io

SCHEMA_ARROW = pa.schema(
    [("stay_id", pa.int64()), ("charttime", pa.timestamp("us", tz="UTC")), ("value", pa.string())]
)


def spark_schema():
    from pyspark.sql.types import LongType, StringType, StructField, StructType, TimestampType

    return StructType(
        [
            StructField("stay_id", LongType()),
            StructField("charttime", TimestampType()),
            StructField("value", StringType()),
        ]
    )


def write_parts(
    folder: Path, sizes: list[int], first: int = 0, schema: pa.Schema = SCHEMA_ARROW
) -> list[tuple]:
    """Parquet files of ``sizes`` rows under ``folder`` (one in a sub-folder, one hidden partial
    file that must be left out); the rows written, as Spark reads them back."""
    rows, start = [], first
    for i, n in enumerate(sizes):
        ids = list(range(start, start + n))
        table = pa.table(
            {
                "stay_id": ids,
                "charttime": pa.array([k * 3_600_000_000 for k in ids], pa.timestamp("us", tz="UTC")),
                "value": [None if k % 3 == 0 else f"v{k}" for k in ids],
            }
        ).select(schema.names)
        target = folder / ("sub" if i == 1 else "") / f"part-{i}.parquet"
        target.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table.cast(schema), target)
        rows += [(k, None if k % 3 == 0 else f"v{k}") for k in ids]
        start += n
    pq.write_table(pa.table({"stay_id": [-1]}), folder / ".part-9.parquet.partial")
    return sorted(rows)


def replace(spark, path: Path, sources: list[Path], metadata: dict | None = None) -> int:
    return delta_files.replace_with_files(
        spark, str(path), str(path), [str(f) for f in sources], spark_schema(), metadata or {}
    )


def read_back(spark, path: Path, version: int | None = None) -> list[tuple]:
    reader = spark.read.format("delta")
    if version is not None:
        reader = reader.option("versionAsOf", version)
    return sorted((r.stay_id, r.value) for r in reader.load(str(path)).collect())


def log_actions(path: Path, version: int) -> list[dict]:
    text = (path / "_delta_log" / f"{version:020d}.json").read_text()
    return [json.loads(line) for line in text.splitlines()]


def test_files_become_a_new_table_with_the_writers_metadata_and_counts(spark, tmp_path):
    rows = write_parts(tmp_path / "parts", [5, 7, 4])
    path = tmp_path / "t"
    # Two source folders: the Arrow reader's parts and Spark's own files, say.
    rows += write_parts(tmp_path / "spark", [2], first=100)
    rows.sort()
    assert replace(spark, path, [tmp_path / "parts", tmp_path / "spark"], {"run": "r1"}) == 18
    assert read_back(spark, path) == rows
    # Moved, not copied; the partial file stays behind.
    assert delta_files.parquet_files(str(tmp_path / "parts")) == []
    assert (tmp_path / "parts/.part-9.parquet.partial").exists()
    commit = delta_io.last_commit(spark, str(path))
    assert commit["version"] == 0 and json.loads(commit["userMetadata"]) == {"run": "r1"}
    assert delta_io.last_commit_rows(spark, str(path)) == 18
    assert commit["operation"] == "WRITE" and commit["operationMetrics"]["numFiles"] == "4"
    (meta,) = [a["metaData"] for a in log_actions(path, 0) if "metaData" in a]
    # The same table properties as the Delta writer's (statistics columns) and its schema.
    twin = tmp_path / "twin"
    delta_io.write_table(spark.read.format("delta").load(str(path)), str(twin), {})
    (twin_meta,) = [a["metaData"] for a in log_actions(twin, 0) if "metaData" in a]
    assert meta["configuration"] == twin_meta["configuration"]
    assert json.loads(meta["schemaString"]) == json.loads(twin_meta["schemaString"])
    adds = [a["add"] for a in log_actions(path, 0) if "add" in a]
    assert sorted(json.loads(a["stats"])["numRecords"] for a in adds) == [2, 4, 5, 7]
    assert all((path / a["path"]).is_file() and "/" not in a["path"] for a in adds)


def test_an_overwrite_keeps_history_and_reads_filter_right_without_min_max(spark, tmp_path):
    """Over a table the Delta writer made: the old files are removed in the same commit (the
    previous version stays readable), and filtered reads and counts are right although the added
    files carry no min / max."""
    path = tmp_path / "t"
    old = spark.createDataFrame([(1, None, "a"), (2, None, "b")], spark_schema())
    delta_io.write_table(old, str(path), {"run": "r0"})
    rows = write_parts(tmp_path / "parts", [50, 30])
    assert replace(spark, path, [tmp_path / "parts"], {"run": "r1"}) == 80
    assert read_back(spark, path) == rows
    assert read_back(spark, path, version=0) == [(1, "a"), (2, "b")]
    table = delta_io.read_table(spark, str(path))
    assert table.where("stay_id = 42").count() == 1
    assert table.where("stay_id >= 70").count() == 10
    assert table.count() == 80
    assert delta_io.last_commit_metadata(spark, str(path)) == (1, {"run": "r1"})


def test_a_new_schema_replaces_the_tables(spark, tmp_path):
    path = tmp_path / "t"
    other = spark.createDataFrame([(1, "x")], "stay_id long, unit string")
    delta_io.write_table(other, str(path), {})
    rows = write_parts(tmp_path / "parts", [3])
    replace(spark, path, [tmp_path / "parts"])
    assert delta_io.read_table(spark, str(path)).columns == ["stay_id", "charttime", "value"]
    assert read_back(spark, path) == rows


def test_files_with_other_columns_are_refused_before_anything_moves(spark, tmp_path):
    path = tmp_path / "t"
    old = spark.createDataFrame([(1, None, "a")], spark_schema())
    delta_io.write_table(old, str(path), {})
    write_parts(tmp_path / "parts", [3], schema=pa.schema([("stay_id", pa.int64()), ("value", pa.string())]))
    with pytest.raises(ValueError, match="holds columns"):
        delta_files.replace_with_files(
            spark, str(path), str(path), [str(tmp_path / "parts")], spark_schema(), {}
        )
    assert len(delta_files.parquet_files(str(tmp_path / "parts"))) == 1
    assert read_back(spark, path) == [(1, "a")]


def test_a_failed_commit_takes_the_moved_files_back_out(spark, tmp_path, monkeypatch):
    path = tmp_path / "t"
    old = spark.createDataFrame([(1, None, "a")], spark_schema())
    delta_io.write_table(old, str(path), {})
    before = sorted(p.name for p in path.iterdir())
    write_parts(tmp_path / "parts", [3, 2])

    def refuse(*args, **kwargs):
        raise RuntimeError("commit refused")

    monkeypatch.setattr(delta_files, "_register_write_metrics", refuse)
    with pytest.raises(RuntimeError, match="commit refused"):
        delta_files.replace_with_files(
            spark, str(path), str(path), [str(tmp_path / "parts")], spark_schema(), {}
        )
    assert sorted(p.name for p in path.iterdir()) == before
    assert read_back(spark, path) == [(1, "a")]


def test_column_mapped_tables_are_refused(spark, tmp_path):
    path = tmp_path / "t"
    mapped = spark.createDataFrame([(1, None, "a")], spark_schema())
    delta_io.write_table(
        mapped,
        str(path),
        {},
        options={
            "delta.columnMapping.mode": "name",
            "delta.minReaderVersion": "2",
            "delta.minWriterVersion": "5",
        },
    )
    write_parts(tmp_path / "parts", [3])
    with pytest.raises(ValueError, match="column-mapped"):
        delta_files.replace_with_files(
            spark, str(path), str(path), [str(tmp_path / "parts")], spark_schema(), {}
        )
    assert read_back(spark, path) == [(1, "a")]


def test_a_move_that_fails_half_way_takes_the_moved_files_back_out(spark, tmp_path, monkeypatch):
    import os

    path = tmp_path / "t"
    delta_io.write_table(spark.createDataFrame([(1, None, "a")], spark_schema()), str(path), {})
    before = sorted(p.name for p in path.iterdir())
    write_parts(tmp_path / "parts", [3, 2, 4])
    real, calls = os.replace, []

    def full_on_the_second(source, target):
        calls.append(source)
        if len(calls) == 2:
            raise OSError("no space left on device")
        real(source, target)

    monkeypatch.setattr(delta_files.os, "replace", full_on_the_second)
    with pytest.raises(OSError, match="no space"):
        replace(spark, path, [tmp_path / "parts"])
    monkeypatch.undo()
    assert sorted(p.name for p in path.iterdir()) == before
    assert read_back(spark, path) == [(1, "a")]
