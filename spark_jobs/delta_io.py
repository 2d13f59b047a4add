"""Thin Delta I/O shared by the stages: atomic, idempotent writes that say who made them.

A write replaces the table (or the partitions named by ``replace_where``) in one Delta commit, so
a re-run never appends duplicates and a failed run leaves the previous version readable. Every
commit carries ``userMetadata`` (stage, run id, config hash, code version), and the number of rows
written is read back from the commit's own metrics instead of re-scanning the data.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from functools import lru_cache
from pathlib import Path
from typing import Any

CODE_VERSION_FALLBACK = "0.1.0"


@lru_cache(maxsize=1)
def code_version() -> str:
    """git describe of the working tree when there is one (suffix -dirty), else the package version."""
    root = Path(__file__).resolve().parents[1]
    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty", "--abbrev=12"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
        return out.stdout.strip() or CODE_VERSION_FALLBACK
    except (OSError, subprocess.SubprocessError):
        return CODE_VERSION_FALLBACK


def config_hash(config: Any) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


# Characters Delta cannot store in a column name on the basic protocol.
_INVALID_NAME_CHARS = frozenset(" ,;{}()\n\t=")


def _column_mapping(columns: list[str]) -> dict[str, str]:
    """Writer options that keep names Delta cannot store as-is (CheXpert's ``Lung Lesion``),
    through column mapping; other tables stay on the basic protocol every Delta reader knows."""
    if not any(_INVALID_NAME_CHARS & set(c) for c in columns):
        return {}
    return {
        "delta.columnMapping.mode": "name",
        "delta.minReaderVersion": "2",
        "delta.minWriterVersion": "5",
    }


# Table properties that choose the columns Delta keeps file statistics for.
_STATS_OPTIONS = ("delta.dataSkippingNumIndexedCols", "delta.dataSkippingStatsColumns")


def quoted(column: str) -> str:
    """``column`` as a Spark SQL identifier (backticks), whatever characters it holds."""
    return "`" + column.replace("`", "``") + "`"


def stats_columns(schema) -> dict[str, str]:
    """Writer option that keeps file statistics (min / max / null count, what data skipping
    reads) for the top-level ids, times and numbers. Delta's default covers the first 32 columns
    whatever their type, and min / max of text columns (event values, units, quarantined records
    as JSON) cost the big writes time for a skipping nothing here asks for (BENCHMARKS.md)."""
    from pyspark.sql.types import DateType, NumericType, TimestampNTZType, TimestampType

    # The types Delta keeps min / max for (it refuses to be asked for booleans).
    ranged = (NumericType, DateType, TimestampType, TimestampNTZType)
    chosen = [f.name for f in schema.fields if isinstance(f.dataType, ranged)]
    if not chosen:
        return {"delta.dataSkippingNumIndexedCols": "0"}
    return {"delta.dataSkippingStatsColumns": ",".join(quoted(c) for c in chosen)}


def write_table(
    df,
    path: str,
    metadata: dict[str, Any],
    partition_by: list[str] | None = None,
    replace_where: str | None = None,
    options: dict[str, Any] | None = None,
) -> int:
    """Overwrite ``path`` (or its ``replace_where`` slice) with ``df`` in one commit stamped with
    ``metadata``; return the rows written (Delta's ``numOutputRows``: with ``replace_where`` on
    columns the table is not partitioned by, the rows of touched files that Delta rewrote are
    counted too, so count a slice by reading it). ``options``: further Delta writer options
    (``maxRecordsPerFile``, table properties such as ``delta.dataSkippingNumIndexedCols``, which
    replaces the :func:`stats_columns` default)."""
    writer = (
        df.write.format("delta")
        .mode("overwrite")
        .option("userMetadata", json.dumps(metadata, sort_keys=True, default=str))
    )
    if replace_where:
        writer = writer.option("replaceWhere", replace_where)
    else:
        writer = writer.option("overwriteSchema", "true")
    options = dict(options or {})
    if not any(key in options for key in _STATS_OPTIONS):
        options.update(stats_columns(df.schema))
    for key, value in {**_column_mapping(df.columns), **options}.items():
        writer = writer.option(key, value)
    if partition_by:
        writer = writer.partitionBy(*partition_by)
    writer.save(path)
    return last_commit_rows(df.sparkSession, path)


def last_commit(spark, path: str) -> dict[str, Any]:
    """``version``, ``userMetadata``, ``operationMetrics`` (and the rest of the commit's
    ``commitInfo``) of the latest commit of the Delta table at ``path``.

    Read from the commit file itself: ``DeltaTable.history(1)`` answers the same but runs a Spark
    job, ~0.2 s warm and over 1 s cold, for each of the ~40 writes of a pipeline run
    (BENCHMARKS.md). The version this JVM's Delta log last saw (after a write here: that commit)
    is only a starting point: later commit files, written by another process say, are looked for.
    """
    jvm = spark._jvm
    delta_log = jvm.org.apache.spark.sql.delta.DeltaLog.forTable(spark._jsparkSession, path)
    version = max(int(delta_log.unsafeVolatileSnapshot().version()), 0)
    log_dir = jvm.org.apache.hadoop.fs.Path(path.rstrip("/") + "/_delta_log")
    fs = log_dir.getFileSystem(spark._jsc.hadoopConfiguration())

    def commit_file(v: int):
        return jvm.org.apache.hadoop.fs.Path(log_dir, f"{v:020d}.json")

    if not fs.exists(commit_file(version)):
        # The table was replaced behind this JVM's back (its folder deleted and written again):
        # the commit files say which is the latest.
        names = (
            [status.getPath().getName() for status in fs.listStatus(log_dir)] if fs.exists(log_dir) else []
        )
        versions = [int(n[:-5]) for n in names if len(n) == 25 and n.endswith(".json") and n[:-5].isdigit()]
        if not versions:
            raise FileNotFoundError(f"{path} is not a Delta table: {log_dir} holds no commit")
        version = max(versions)
    while fs.exists(commit_file(version + 1)):
        version += 1
    stream = fs.open(commit_file(version))
    try:
        text = jvm.org.apache.commons.io.IOUtils.toString(stream, "UTF-8")
    finally:
        stream.close()
    for line in text.splitlines():
        action = json.loads(line)
        if "commitInfo" in action:
            info = action["commitInfo"]
            return {**info, "version": version, "operationMetrics": info.get("operationMetrics") or {}}
    # A writer may leave commitInfo out (it is optional in the protocol): ask Delta's history.
    from delta.tables import DeltaTable

    return DeltaTable.forPath(spark, path).history(1).first().asDict()


def last_commit_rows(spark, path: str) -> int:
    """numOutputRows of the latest commit of the Delta table at ``path``."""
    metrics = last_commit(spark, path)["operationMetrics"] or {}
    return int(metrics.get("numOutputRows", 0))


def last_commit_metadata(spark, path: str) -> tuple[int, dict[str, Any]]:
    """(version, userMetadata as written by :func:`write_table`) of the latest commit."""
    row = last_commit(spark, path)
    return int(row["version"]), json.loads(row["userMetadata"]) if row.get("userMetadata") else {}


def read_table(spark, path: str):
    return spark.read.format("delta").load(path)


def exists(spark, path: str) -> bool:
    from delta.tables import DeltaTable

    return DeltaTable.isDeltaTable(spark, path)
