"""spark_jobs.delta_io: the one writer every stage uses (commit metadata, rows written, file
statistics), on a real local Spark with Delta."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from spark_jobs import delta_io


def file_stats(path: Path) -> list[dict]:
    """The ``stats`` of every file added by the latest commit of the Delta table at ``path``,
    under the columns' names (a column-mapped table keeps them under physical names)."""
    latest = sorted((path / "_delta_log").glob("*.json"))[-1]
    actions = [json.loads(line) for line in latest.read_text().splitlines()]
    (meta,) = [a["metaData"] for a in actions if "metaData" in a]
    fields = json.loads(meta["schemaString"])["fields"]
    names = {f["metadata"].get("delta.columnMapping.physicalName", f["name"]): f["name"] for f in fields}
    stats = [json.loads(a["add"]["stats"]) for a in actions if "add" in a]
    for s in stats:
        for key in ("minValues", "maxValues", "nullCount"):
            s[key] = {names[k]: v for k, v in s.get(key, {}).items()}
    return stats


def test_statistics_cover_scalar_non_text_columns_on_every_overwrite(spark, tmp_path):
    """Ids, times and numbers (a name with a space included) get statistics; text, arrays and
    flags only what every file has (the row count); an overwrite keeps the same choice and data
    skipping still prunes by an id."""
    from pyspark.sql import functions as F

    rows = spark.range(0, 1000, numPartitions=4).select(
        F.col("id").alias("stay_id"),
        F.col("id").cast("string").alias("value"),
        (F.col("id") / 10).alias("Lung Lesion"),
        F.timestamp_seconds(F.col("id") * 3600).alias("charttime"),
        F.array(F.col("id").cast("float")).alias("x"),
        (F.col("id") % 2 == 0).alias("flag"),
    )
    path = tmp_path / "t"
    for _ in range(2):  # created, then overwritten
        assert delta_io.write_table(rows, str(path), {"run": "r"}) == 1000
        stats = file_stats(path)
        assert len(stats) == 4 and sum(s["numRecords"] for s in stats) == 1000
        assert all(set(s["minValues"]) == {"stay_id", "Lung Lesion", "charttime"} for s in stats)
        assert all(set(s["nullCount"]) == {"stay_id", "Lung Lesion", "charttime"} for s in stats)
    table = delta_io.read_table(spark, str(path))
    assert table.where("stay_id = 999").count() == 1
    scanned = table.where("stay_id = 999").inputFiles()
    assert len(scanned) == 1  # the id statistics let the read skip three of the four files


def test_explicit_statistics_options_replace_the_default(spark, tmp_path):
    rows = spark.range(0, 10).selectExpr("cast(id as string) AS reason", "id")
    path = tmp_path / "t"
    delta_io.write_table(rows, str(path), {}, options={"delta.dataSkippingNumIndexedCols": "1"})
    assert all(set(s["minValues"]) == {"reason"} for s in file_stats(path))


def test_a_table_of_text_only_keeps_row_counts(spark, tmp_path):
    rows = spark.range(0, 10).selectExpr("cast(id as string) AS record")
    path = tmp_path / "t"
    assert delta_io.write_table(rows, str(path), {}) == 10
    assert all(not s["minValues"] and s["numRecords"] > 0 for s in file_stats(path))


def test_last_commit_reads_what_delta_history_says(spark, tmp_path):
    """The commit read from the log file (no Spark job) is Delta's own latest history entry:
    after a first write, an overwrite, a replaceWhere, a commit made by another Delta log (a
    writer this JVM's cached log has not seen) and a table deleted and made again."""
    from delta.tables import DeltaTable
    from pyspark.sql import functions as F

    path = str(tmp_path / "t")

    def history():
        row = DeltaTable.forPath(spark, path).history(1).first()
        return row["version"], row["userMetadata"], dict(row["operationMetrics"])

    def ours():
        got = delta_io.last_commit(spark, path)
        return got["version"], got["userMetadata"], got["operationMetrics"]

    rows = spark.range(0, 50).select(F.col("id"), (F.col("id") % 3).alias("part"))
    assert delta_io.write_table(rows, path, {"step": 1}) == 50
    assert ours() == history() and ours()[0] == 0
    assert delta_io.write_table(rows.where("id < 20"), path, {"step": 2}) == 20
    delta_io.write_table(rows.where("part = 1"), path, {"step": 3}, replace_where="part = 1")
    assert ours() == history() and ours()[0] == 2
    assert delta_io.last_commit_metadata(spark, path) == (2, {"step": 3})

    # Another writer: commit 3 written as a file this JVM's Delta log never read.
    log = Path(path) / "_delta_log"
    commit = json.dumps({"commitInfo": {"operation": "WRITE", "operationMetrics": {"numOutputRows": "7"}}})
    (log / f"{3:020d}.json").write_text(commit + "\n")
    assert delta_io.last_commit(spark, path)["version"] == 3
    assert delta_io.last_commit_rows(spark, path) == 7

    import shutil

    shutil.rmtree(path)
    assert delta_io.write_table(rows.where("id < 5"), path, {"step": "again"}) == 5
    assert ours() == history() and ours()[0] == 0
    shutil.rmtree(path)
    Path(path).mkdir()
    with pytest.raises(FileNotFoundError, match="not a Delta table"):
        delta_io.last_commit(spark, path)


@pytest.mark.s3
def test_last_commit_on_s3(spark, s3_server):
    """The commit file is read through Hadoop's file system, so an S3A table (moto's server on
    loopback) answers as a local one: Delta's history and the rows written agree."""
    import uuid

    import boto3
    from delta.tables import DeltaTable

    from tests.test_ingest import _s3a_bucket_conf

    bucket = f"delta-{uuid.uuid4().hex[:8]}"
    boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1").create_bucket(Bucket=bucket)
    _s3a_bucket_conf(spark, s3_server, bucket)
    path = f"s3a://{bucket}/silver/t"
    assert delta_io.write_table(spark.range(0, 12), path, {"step": 1}) == 12
    assert delta_io.write_table(spark.range(0, 5), path, {"step": 2}) == 5
    got = delta_io.last_commit(spark, path)
    row = DeltaTable.forPath(spark, path).history(1).first()
    assert (got["version"], got["userMetadata"], got["operationMetrics"]) == (
        row["version"],
        row["userMetadata"],
        dict(row["operationMetrics"]),
    )
    assert delta_io.last_commit_metadata(spark, path) == (1, {"step": 2})
