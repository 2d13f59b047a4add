"""Parquet files written outside a Delta write made a Delta table's new version, as they are.

The Arrow reader's tasks write the clean rows of the raw events as Parquet files in bronze's own
columns; reading and writing them again through Spark's Delta writer would only be there to get
a commit. :func:`replace_with_files` moves such files into the table's folder and replaces the
table's content by them in one commit of Delta's transaction API (the public API has no "add
these files"): the same atomic overwrite as :func:`spark_jobs.delta_io.write_table` (a failed
run leaves the previous version current and readable), with its commit metadata, table
properties and ``numOutputRows`` metric.

Delta's transaction classes are internal Scala, reached through py4j; the project pins
delta-spark, and ``tests/test_delta_files.py`` checks every piece used here against it.
Files get ``numRecords`` as their only statistics: Delta keeps files without min / max in
every filtered read (no data skipping on them), and answers counts from ``numRecords``.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from spark_jobs import delta_io

if TYPE_CHECKING:
    from pyspark.sql import SparkSession
    from pyspark.sql.types import StructType


@dataclass(frozen=True)
class DataFile:
    """A Parquet file inside the table's folder, as its ``add`` action describes it."""

    path: str  # relative to the table's folder
    size: int
    modification_time: int  # ms since the epoch
    rows: int


def parquet_files(folder: str) -> list[str]:
    """Every complete Parquet file under ``folder`` (sub-folders too; names starting with '.'
    or '_', partial files and markers, skipped as Spark's reader skips them), sorted."""
    found = []
    for root, dirs, names in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith((".", "_")))
        found += [
            os.path.join(root, n) for n in names if n.endswith(".parquet") and not n.startswith((".", "_"))
        ]
    return sorted(found)


def footer_rows(files: Sequence[str], schema: StructType) -> list[int]:
    """The rows of each file, from its footer; ValueError unless every file holds exactly
    ``schema``'s columns, by name (checked before anything moves)."""
    import pyarrow.parquet as pq

    wanted = [f.name for f in schema.fields]
    rows = []
    for path in files:
        meta = pq.read_metadata(path)
        found = meta.schema.to_arrow_schema().names
        if sorted(found) != sorted(wanted):
            raise ValueError(f"{path} holds columns {found}, the table {wanted}")
        rows.append(meta.num_rows)
    return rows


def move_into(table_folder: str, files: Sequence[str], rows: Sequence[int], moved: list[DataFile]) -> None:
    """Move ``files`` (same file system) into ``table_folder`` under names no other write of the
    table uses, appending each to ``moved`` as soon as it is there (so that a caller can take
    them back out after a failure half-way)."""
    os.makedirs(table_folder, exist_ok=True)
    token = uuid.uuid4().hex
    for i, (source, n) in enumerate(zip(files, rows, strict=True)):
        name = f"part-{i:05d}-{token}.parquet"
        target = os.path.join(table_folder, name)
        os.replace(source, target)
        stat = os.stat(target)
        moved.append(DataFile(name, stat.st_size, int(stat.st_mtime * 1000), n))


class _Scala:
    """The few Scala values the transaction API takes, built through py4j."""

    def __init__(self, spark: SparkSession) -> None:
        self.jvm = spark._jvm
        self.utils = self.jvm.org.apache.spark.api.python.PythonUtils

    def map(self, values: dict[str, Any]):
        java = self.jvm.java.util.HashMap()
        for key, value in values.items():
            java.put(key, value)
        return self.utils.toScalaMap(java)

    def seq(self, values: Sequence[Any]):
        java = self.jvm.java.util.ArrayList()
        for value in values:
            java.add(value)
        return self.utils.toSeq(java)

    def some(self, value: Any):
        return self.jvm.scala.Some(value)

    @property
    def none(self):
        return self.jvm.scala.Option.apply(None)


def _configuration(scala: _Scala, metadata) -> dict[str, str]:
    """A Delta ``Metadata``'s table properties as a dict."""
    return dict(scala.jvm.scala.collection.JavaConverters.mapAsJavaMap(metadata.configuration()))


def _new_metadata(scala: _Scala, actions, schema_json: str, properties: dict[str, str], current=None):
    """The table's ``Metadata`` with ``schema_json`` and ``properties`` (keeping ``current``'s
    id, name and creation time), unpartitioned, as an overwrite with a new schema leaves it."""
    if current is None:
        return actions.Metadata.apply(
            str(uuid.uuid4()),
            None,
            None,
            actions.Format.apply("parquet", scala.map({})),
            schema_json,
            scala.seq([]),
            scala.map(properties),
            scala.some(scala.jvm.java.lang.Long(int(time.time() * 1000))),
        )
    return actions.Metadata.apply(
        current.id(),
        current.name(),
        current.description(),
        current.format(),
        schema_json,
        scala.seq([]),
        scala.map(properties),
        current.createdTime(),
    )


def _metadata_update(scala: _Scala, actions, txn, schema: StructType, properties: dict[str, str]):
    """The ``Metadata`` to commit with the files, or None when the table's is already right."""
    from pyspark.sql.types import StructType

    if txn.readVersion() < 0:
        return _new_metadata(scala, actions, schema.json(), properties)
    current = txn.metadata()
    config = _configuration(scala, current)
    if current.partitionColumns().nonEmpty() or config.get("delta.columnMapping.mode", "none") != "none":
        # Files hold the columns under their names, unpartitioned: such a table needs a rewrite.
        raise ValueError("cannot add files by name to a partitioned or column-mapped Delta table")
    same_schema = StructType.fromJson(json.loads(current.schemaString())) == schema
    if same_schema and all(config.get(k) == v for k, v in properties.items()):
        return None
    return _new_metadata(scala, actions, schema.json(), {**config, **properties}, current)


def _nullable(schema: StructType) -> StructType:
    """``schema`` with every column nullable, as Delta's writer stores a frame's schema."""
    from pyspark.sql.types import StructField, StructType

    return StructType([StructField(f.name, f.dataType, True, f.metadata) for f in schema.fields])


def commit_files(
    spark: SparkSession, path: str, files: Sequence[DataFile], schema: StructType, metadata: dict[str, Any]
) -> int:
    """Replace the content of the Delta table at ``path`` (made if missing) by ``files``, already
    inside its folder, in one commit stamped with ``metadata`` (``userMetadata``, as
    :func:`delta_io.write_table` does); return the rows committed. The table keeps its history
    and takes ``schema`` and :func:`delta_io.stats_columns`' properties."""
    schema = _nullable(schema)
    if delta_io._column_mapping(schema.names):
        raise ValueError(f"columns {schema.names} need column mapping: write them with delta_io.write_table")
    scala = _Scala(spark)
    jvm = scala.jvm
    delta = jvm.org.apache.spark.sql.delta
    actions = delta.actions
    txn = delta.DeltaLog.forTable(spark._jsparkSession, path).startTransaction(scala.none, scala.none)
    update = _metadata_update(scala, actions, txn, schema, delta_io.stats_columns(schema))
    if update is not None:
        txn.updateMetadata(update, False)
    removed = txn.filterFiles()
    commit = [removed.apply(i).remove() for i in range(removed.size())]
    for f in files:
        stats = json.dumps({"numRecords": f.rows})
        no_tags, no_dv = None, None
        commit.append(
            actions.AddFile.apply(
                f.path, scala.map({}), f.size, f.modification_time, True, stats, no_tags, no_dv,
                scala.none, scala.none, scala.none,
            )
        )  # fmt: skip
    rows = sum(f.rows for f in files)
    _register_write_metrics(spark, txn, scala, files=len(files), rows=rows, size=sum(f.size for f in files))
    operation = delta.DeltaOperations.Write(
        jvm.org.apache.spark.sql.SaveMode.Overwrite,
        scala.some(scala.seq([])),
        scala.none,
        scala.some(json.dumps(metadata, sort_keys=True, default=str)),
    )
    txn.commit(scala.seq(commit), operation)
    return rows


def _register_write_metrics(
    spark: SparkSession, txn, scala: _Scala, *, files: int, rows: int, size: int
) -> None:
    """The metrics a Delta write records in its commit (``numFiles``, ``numOutputRows``,
    ``numOutputBytes``), so that history and :func:`delta_io.last_commit_rows` read as usual."""
    metrics = {}
    for name, value in (("numFiles", files), ("numOutputRows", rows), ("numOutputBytes", size)):
        metric = scala.jvm.org.apache.spark.sql.execution.metric.SQLMetrics.createMetric(
            spark.sparkContext._jsc.sc(), name
        )
        metric.add(value)
        metrics[name] = metric
    txn.registerSQLMetrics(spark._jsparkSession, scala.map(metrics))


def replace_with_files(
    spark: SparkSession,
    path: str,
    local_folder: str,
    sources: Sequence[str],
    schema: StructType,
    metadata: dict[str, Any],
) -> int:
    """Replace the content of the Delta table at ``path`` (as Spark names it; ``local_folder``
    on the local file system) by the Parquet files under the local folders ``sources`` (moved,
    not copied: the same file system), in one commit; return its rows. The files must hold
    ``schema``'s columns by name. Files moved before a failed commit are removed again (they
    were never part of the table)."""
    # A set: one source folder may hold another (Spark's rows beside the Arrow reader's parts).
    files = sorted({f for folder in sources for f in parquet_files(folder)})
    rows = footer_rows(files, schema)
    moved: list[DataFile] = []
    try:
        move_into(local_folder, files, rows, moved)
        return commit_files(spark, path, moved, schema, metadata)
    except BaseException:
        for f in moved:
            try:
                os.remove(os.path.join(local_folder, f.path))
            except OSError:
                pass
        raise
