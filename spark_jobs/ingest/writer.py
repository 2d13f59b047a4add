"""Writing bronze: staging copies, bronze tables and the quarantine, several tables at a time.

Every write goes through :mod:`spark_jobs.delta_io` (the Arrow reader's parts, committed as
they are, through :mod:`spark_jobs.delta_files`), so each commit carries the run's
``userMetadata`` like the commits of the other stages.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from functools import reduce
from typing import TYPE_CHECKING, Any, NamedTuple

from spark_jobs import delta_io
from spark_jobs.ingest.errors import IngestError, naming_files
from spark_jobs.ingest.files import HadoopFs, Located, join
from spark_jobs.ingest.staging import ARROW_STAGED, FILTERED_OUT, REASON, RECORD, unstage
from spark_jobs.mimic_schema import RawTable
from spark_jobs.quality import empty_rejects

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, Observation, SparkSession

log = logging.getLogger(__name__)

QUARANTINE = "quarantine"
STAGING = "_staging"


def bronze_path(out: str, table: str) -> str:
    return join(out, f"bronze/{table}")


def staging_path(out: str, table: str) -> str:
    """Where the one pass over ``table``'s raw files lands; it lives for the run only."""
    return join(out, f"bronze/{STAGING}/{table}")


def arrow_parts_path(out: str, table: str) -> str:
    """Where the Arrow reader's tasks write the clean rows they typed themselves (Parquet parts
    in bronze's columns, see ``arrow_typing``), to be moved into the bronze table."""
    return join(out, f"bronze/{STAGING}/{table}.arrow")


class Plan(NamedTuple):
    """One table of the run: where it is and the staged frame its single raw pass writes."""

    name: str
    table: RawTable
    loc: Located
    size: int  # bytes of the input files
    staged: DataFrame  # stage_rows over the raw files (the wanted rows of an events table)
    # Counts the rows of items outside cfg.itemids as the staging write reads them (None: the
    # table is not filtered).
    unused: Observation | None
    rows_per_file: int  # > 0: the staging write cuts its output into files of at most this many rows
    # Counts the staged rows, kept and rejected, as the staging write writes them.
    tally: Observation
    # True: a small input, staged in Spark's cache (memory, spilling to disk) instead of a staging
    # Delta table: a table write, its commit and a read back cost more than its rows.
    in_memory: bool = False
    # The local folder where the Arrow reader's tasks stage the clean rows themselves, in
    # bronze's columns ("": none); their count is the ARROW_STAGED metric of ``unused``.
    arrow_parts: str = ""


def tallied(staged: DataFrame) -> tuple[DataFrame, Observation]:
    """``staged`` with an Observation counting its rows and its kept rows as they are written.

    Exact in the stage that writes (a result stage: each task reports once, retries included),
    and free: no second read of the staging table just to count it.
    """
    from pyspark.sql import Observation
    from pyspark.sql import functions as F

    tally = Observation()
    observed = staged.observe(
        tally, F.count(F.lit(1)).alias("rows"), F.count_if(F.col(REASON).isNull()).alias("kept")
    )
    return observed, tally


def plain_encode_staging(spark: SparkSession, plans: Sequence[Plan]) -> None:
    """Write the staging tables' own columns without Parquet dictionaries: a staging table is
    written once and read once, so the smaller files are not worth building dictionaries for
    (BENCHMARKS.md). It is Parquet's per-column setting (``parquet.enable.dictionary#<column>``)
    in the session's conf, so other tables (no column of theirs has these names) keep theirs."""
    widest = max((len(p.table.columns) for p in plans), default=0)
    for column in (REASON, RECORD, *[f"__v{i}" for i in range(widest)]):
        spark.conf.set(f"parquet.enable.dictionary#{column}", "false")


def write_staging(spark: SparkSession, plan: Plan, out: str, metadata: Mapping[str, Any]) -> None:
    """The one read of ``plan``'s raw files: every row typed and tagged (of a filtered events
    table, the rows of the wanted items; the others only counted), to its staging path, or for
    an ``in_memory`` plan into Spark's cache (by an action that writes nothing), so that input
    problems surface here, before bronze is touched, either way."""
    from pyspark import StorageLevel

    path = staging_path(out, plan.name)
    fs = HadoopFs(spark)
    if not plan.in_memory:
        fs.delete(path)  # left over by a killed run: start clean
    # Also when this plan writes none: an Arrow attempt that gave way to Spark's reader wrote some.
    fs.delete(arrow_parts_path(out, plan.name))
    # File statistics on __reason only (the first column): files without rejects are skipped
    # when the quarantine is read, and the single-task raw pass computes no stats it never uses.
    options: dict[str, Any] = {"delta.dataSkippingNumIndexedCols": "1"}
    if plan.rows_per_file:
        options["maxRecordsPerFile"] = plan.rows_per_file
    start = time.monotonic()
    with naming_files(plan.loc.files, what=f"reading table {plan.name} from", fs=fs):
        if plan.in_memory:
            plan.staged.persist(StorageLevel.MEMORY_AND_DISK).write.format("noop").mode("overwrite").save()
        else:
            delta_io.write_table(plan.staged, path, dict(metadata), options=options)
    where = "cached" if plan.in_memory else "staged"
    log.info("ingest %s: raw files read and %s in %.1fs", plan.name, where, time.monotonic() - start)


def _read_staged(spark: SparkSession, out: str, plan: Plan) -> DataFrame:
    """The rows the staging step typed and tagged (the Arrow reader's parts hold clean rows
    only, in bronze's columns: they are not part of it)."""
    if plan.in_memory:
        return plan.staged  # persisted by the staging step
    return delta_io.read_table(spark, staging_path(out, plan.name))


def _arrow_staged(plan: Plan) -> int:
    """Rows the Arrow reader's tasks typed and staged themselves (0 for other plans)."""
    if not plan.arrow_parts or plan.unused is None:
        return 0
    return int(plan.unused.get.get(ARROW_STAGED) or 0)


def count_staged(
    spark: SparkSession, plans: Sequence[Plan], out: str
) -> dict[str, tuple[dict[str, int], dict[str, int]]]:
    """{table: (rows_in / kept / rejected / filtered_out, rejected by reason)} of the staged rows
    and the rows of unused items counted on the way (call after the staging writes).

    The counts come from the Observations of the staging writes; only the tables with rejects
    are read again (one Spark job for all of them, the reason column only) to count by reason.
    """
    from pyspark.sql import functions as F

    totals = {}
    for p in plans:
        tally = p.tally.get
        # Rows the Arrow reader staged itself are clean: kept.
        kept, rejected = int(tally["kept"]) + _arrow_staged(p), int(tally["rows"]) - int(tally["kept"])
        filtered_out = int(p.unused.get.get(FILTERED_OUT) or 0) if p.unused is not None else 0
        totals[p.name] = {
            "rows_in": kept + rejected + filtered_out,
            "kept": kept,
            "rejected": rejected,
            "filtered_out": filtered_out,
        }
    with_rejects = [p for p in plans if totals[p.name]["rejected"]]
    by_reason: dict[str, dict[str, int]] = {p.name: {} for p in plans}
    if with_rejects:
        parts = [
            _read_staged(spark, out, p)
            .where(F.col(REASON).isNotNull())
            .select(F.lit(p.name).alias("table"), REASON)
            for p in with_rejects
        ]
        for r in reduce(lambda a, b: a.unionByName(b), parts).groupBy("table", REASON).count().collect():
            by_reason[r["table"]][r[REASON]] = r["count"]
    for p in with_rejects:
        if sum(by_reason[p.name].values()) != totals[p.name]["rejected"]:
            raise IngestError(
                f"bookkeeping does not add up for {p.name}: {totals[p.name]}, but the staging table "
                f"holds {by_reason[p.name]} rejects"
            )
    return {p.name: (totals[p.name], by_reason[p.name]) for p in plans}


def write_bronze(
    spark: SparkSession, plan: Plan, out: str, expected: Mapping[str, int], metadata: Mapping[str, Any]
) -> None:
    """The kept rows of the staged table to ``bronze/<table>``; checks that the rows written are
    the rows counted as kept (``rows_in = kept + rejected + filtered_out`` then holds for what
    is really in the table)."""
    start = time.monotonic()
    kept = unstage(_read_staged(spark, out, plan), plan.table).kept
    if plan.arrow_parts:
        written = _commit_parts(spark, plan, out, kept, expected["kept"] - _arrow_staged(plan), metadata)
    else:
        written = delta_io.write_table(kept, bronze_path(out, plan.name), dict(metadata))
    if written != expected["kept"]:
        raise IngestError(
            f"bookkeeping does not add up for {plan.name}: {dict(expected)}, but {written} rows written"
        )
    log.info("ingest %s: bronze table written in %.1fs", plan.name, time.monotonic() - start)


def _commit_parts(
    spark: SparkSession, plan: Plan, out: str, kept: DataFrame, spark_kept: int, metadata: Mapping[str, Any]
) -> int:
    """Bronze made of the Arrow reader's parts as they are, plus the ``spark_kept`` rows that
    Spark typed (written as Parquet beside the parts), in one commit; the rows committed."""
    from spark_jobs import delta_files

    log.info(
        "ingest %s: %d kept rows typed by Arrow, %d by Spark", plan.name, _arrow_staged(plan), spark_kept
    )
    fs = HadoopFs(spark)
    # The folder the tasks wrote to, and Spark's own for its rows.
    folders = [plan.arrow_parts]
    if spark_kept:
        typed_by_spark = join(arrow_parts_path(out, plan.name), "spark")
        kept.write.mode("overwrite").parquet(typed_by_spark)
        folders.append(fs.local_path(typed_by_spark))
    table = bronze_path(out, plan.name)
    return delta_files.replace_with_files(
        spark, table, fs.local_path(table), folders, kept.schema, dict(metadata)
    )


def write_quarantine(
    spark: SparkSession,
    plans: Sequence[Plan],
    counts: Mapping[str, Mapping[str, int]],
    out: str,
    metadata: Mapping[str, Any],
) -> None:
    """Replace the rejects of this run's tables in ``bronze/quarantine``; ingesting one table
    again keeps the other tables' rejects."""
    # Tables without rejects add nothing (but stay in replaceWhere: their old rejects go).
    quarantine = reduce(
        lambda acc, p: acc.unionByName(unstage(_read_staged(spark, out, p), p.table).rejected),
        [p for p in plans if counts[p.name]["rejected"]],
        empty_rejects(spark),
    )
    this_run = "source IN (" + ", ".join(f"'{p.name}'" for p in plans) + ")"
    delta_io.write_table(quarantine, bronze_path(out, QUARANTINE), dict(metadata), replace_where=this_run)


def drop_staging(spark: SparkSession, plans: Sequence[Plan], out: str) -> None:
    fs = HadoopFs(spark)
    for p in plans:
        if p.in_memory:
            p.staged.unpersist()
        else:
            fs.delete(staging_path(out, p.name))
        fs.delete(arrow_parts_path(out, p.name))
    fs.delete_if_empty(join(out, f"bronze/{STAGING}"))
