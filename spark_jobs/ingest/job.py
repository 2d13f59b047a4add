"""The bronze stage: what to read (:class:`IngestConfig`), how each input is read (its plan), and
:func:`run`, which reads every input once and writes bronze and its quarantine."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlparse

from spark_jobs import delta_io
from spark_jobs.ingest import arrow_csv
from spark_jobs.ingest.errors import NeedsSparkReader
from spark_jobs.ingest.files import HadoopFs, Located, is_compressed, locate, resolve_layout
from spark_jobs.ingest.staging import STAGE, csv_columns, keep_wanted, read_raw, required_ids, stage_rows
from spark_jobs.ingest.writer import (
    Plan,
    arrow_parts_path,
    count_staged,
    drop_staging,
    plain_encode_staging,
    tallied,
    write_bronze,
    write_quarantine,
    write_staging,
)
from spark_jobs.mimic_schema import CXR_TABLES, RawTable, mimic_iv_tables
from spark_jobs.parallel import in_parallel

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

log = logging.getLogger(__name__)

WHAT = "medmod bronze ingest"  # the Spark job description of the stage's jobs
EVENT_TABLES = frozenset({"chartevents", "labevents"})
# How the raw events csv is parsed: by Arrow inside the Spark task (local or S3 files), by Spark's
# csv source, or Arrow where it can and Spark elsewhere.
READERS = ("auto", "arrow", "spark")

DEFAULT_TABLES = (
    "patients",
    "admissions",
    "icustays",
    "chartevents",
    "labevents",
    "diagnoses_icd",
    "metadata",
    "chexpert",
    "split",
)
# Inputs smaller than this stay in the partitions they were read in: spreading them costs more
# than the parallelism saves.
_SPREAD_MIN_BYTES = 8 << 20
# Inputs smaller than this (compressed bytes) are staged in Spark's cache rather than in a staging
# Delta table (see Plan.in_memory); on MIMIC-IV every input but the two events tables is below it.
_IN_MEMORY_MAX_BYTES = 64 << 20
# Files of the staging table of a filtered events table read by a single task: the task cuts its
# output (no shuffle), so that the bronze write and the later stages read it in parallel.
STAGING_ROWS_PER_FILE = 1_000_000


@dataclass
class IngestConfig:
    """What the bronze stage reads.

    ``raw`` is the MIMIC-IV root (the folder holding ``hosp/`` and ``icu/``, or ``core/`` for
    v1.0), ``cxr`` the MIMIC-CXR-JPG root holding ``mimic-cxr-2.0.0-*.csv.gz``. Both may be
    local paths or ``s3a://`` / ``s3://`` URLs. ``itemids``: keep only these items of the events
    tables (None keeps all). ``concurrency``: how many tables are read / written at the same
    time (0: as many as Spark has cores); a ``.csv.gz`` is one Spark task however big it is, so
    reading the tables side by side is what keeps more than one core busy (the Arrow reader's
    task also parses ahead in a second thread: ``arrow_csv.read_ahead``). ``spread``: the rows
    of an input read by fewer tasks than Spark has cores (a ``.csv.gz``) are spread round-robin
    over this many partitions, so that bronze gets as many files for the later stages to read in
    parallel: right after parsing (typing and checking then use every core too); the events
    tables filtered to ``itemids`` are not shuffled but written as files of at most
    ``STAGING_ROWS_PER_FILE`` rows by the parsing task (0: two partitions per core, inputs of
    8 MB and more; 1: off). ``reader``: what parses the raw csv of a filtered events table:
    ``arrow`` (Apache Arrow in the Spark task, which also drops the rows of other items before
    they reach the JVM; local and S3 files, plain or gzip), ``spark`` (Spark's csv
    source) or ``auto`` (arrow where it can, spark for the rest). Both give the same rows, rejects
    and counts.
    """

    raw: str
    cxr: str
    layout: Literal["auto", "v1", "v2", "v3"] = "auto"
    tables: list[str] = field(default_factory=lambda: list(DEFAULT_TABLES))
    itemids: list[int] | None = None
    concurrency: int = 0
    spread: int = 0
    reader: Literal["auto", "arrow", "spark"] = "auto"

    def __post_init__(self) -> None:
        known = set(mimic_iv_tables("v2")) | set(CXR_TABLES)
        unknown = [t for t in self.tables if t not in known]
        if unknown:
            raise ValueError(f"unknown table(s) {unknown}; known: {sorted(known)}")
        if self.concurrency < 0:
            raise ValueError(f"concurrency must be >= 0 (0: one per core), got {self.concurrency}")
        if self.spread < 0:
            raise ValueError(f"spread must be >= 0 (0: two partitions per core), got {self.spread}")
        if self.reader not in READERS:
            raise ValueError(f"reader must be one of {', '.join(READERS)}, got {self.reader!r}")


def _table(cfg: IngestConfig, name: str, layout: str) -> tuple[str, RawTable]:
    if name in CXR_TABLES:
        return cfg.cxr, CXR_TABLES[name]
    return cfg.raw, mimic_iv_tables(layout)[name]


def spread_partitions(cores: int, loc: Located, size: int, spread: int) -> int:
    """Partitions to spread an input of ``size`` bytes over: ``spread`` (0: two per core) for a
    big input read by a single task, else 1 (leave the rows where they were read)."""
    # gzip & co. cannot be split: one task per file, however big (bzip2 can be split).
    unsplittable = all(is_compressed(f) and not f.endswith(".bz2") for f in loc.files)
    single_task = loc.format == "csv" and unsplittable and len(loc.files) < cores
    small = spread == 0 and size < _SPREAD_MIN_BYTES  # auto skips small inputs
    return 1 if not single_task or small else max(spread or 2 * cores, 1)


def _arrow_reads(reader: str, loc: Located, spark: SparkSession | None = None) -> bool:
    """Whether the Arrow reader parses ``loc`` (see ``IngestConfig.reader``); with ``spark``, S3
    buckets are also checked for credential providers the tasks cannot follow."""
    if reader == "spark" or loc.format != "csv":
        return False
    if not all(arrow_csv.arrow_can_read(f) for f in loc.files):
        if reader == "arrow":
            raise ValueError(
                f"ingest reader 'arrow' reads local and S3 files (csv or .gz) only, not "
                f"{loc.path}; use auto or spark"
            )
        return False
    accesses = arrow_csv.s3_accesses(spark, loc.files) if spark else {}
    providers = sorted({p for access in accesses.values() for p in access.unsupported_providers})
    if providers and reader == "arrow":
        raise ValueError(
            f"ingest reader 'arrow' cannot authenticate as S3A's {', '.join(providers)} does for "
            f"{loc.path}; use auto or spark"
        )
    return not providers


def _plan(spark: SparkSession, cfg: IngestConfig, name: str, layout: str, out: str) -> Plan:
    """Locate table ``name``, check its header and build the frame its one raw pass writes."""
    root, table = _table(cfg, name, layout)
    loc = locate(spark, root, table)
    log.info("ingest %s: %s (%s, %d file(s))", name, loc.path, loc.format, len(loc.files))
    size = HadoopFs(spark).size(loc.files)
    partitions = spread_partitions(spark.sparkContext.defaultParallelism, loc, size, cfg.spread)
    unused, filtered = None, name in EVENT_TABLES and cfg.itemids is not None
    # The task that parses a filtered events table also types the few rows worth it (on MIMIC,
    # ~18% of chartevents): spreading every raw row would cost more than it saves. It writes
    # them to several files instead, so that the later reads are parallel.
    rows_per_file = STAGING_ROWS_PER_FILE if filtered and partitions > 1 else 0
    arrow_staging = None
    if filtered and _arrow_reads(cfg.reader, loc, spark):
        header, columns = csv_columns(spark, loc, table)
        time_zone = spark.conf.get("spark.sql.session.timeZone")
        arrow_staging = _arrow_staging(out, table, rows_per_file, time_zone)
        raw = arrow_csv.read_csv(spark, loc.files, header, columns, "itemid", cfg.itemids, arrow_staging)
    else:
        raw = read_raw(spark, loc, table)
    if filtered:
        raw, unused = keep_wanted(raw, cfg.itemids)
    else:
        raw, rows_per_file = raw.repartition(partitions) if partitions > 1 else raw, 0
    staged, tally = tallied(stage_rows(raw, table))
    in_memory = not filtered and size < _IN_MEMORY_MAX_BYTES
    parts = arrow_staging.folder if arrow_staging else ""
    return Plan(name, table, loc, size, staged, unused, rows_per_file, tally, in_memory, parts)


def _arrow_staging(
    out: str, table: RawTable, rows_per_file: int, time_zone: str = "UTC"
) -> arrow_csv.ArrowStaging | None:
    """What the Arrow reader's tasks stage themselves: the clean rows, typed (arrow_typing), to
    Parquet parts in bronze's columns beside the staging table, which the bronze commit adds to
    the table as they are. None when ``out`` is not a local path (the tasks
    write with the local file system) or Spark's session time zone is not UTC (Arrow reads a
    raw time as UTC; Spark as a time of its session's zone): then all rows go on to Spark."""
    if urlparse(out).scheme not in arrow_csv.LOCAL_SCHEMES or time_zone != "UTC":
        return None
    required = set(required_ids(table))
    return arrow_csv.ArrowStaging(
        folder=arrow_csv.local_path(arrow_parts_path(out, table.name)),
        names=tuple(table.column_names),
        logicals=tuple(logical for _, logical in table.columns),
        required=tuple(c in required for c in table.column_names),
        rows_per_file=rows_per_file,
    )


def _stage(
    spark: SparkSession, cfg: IngestConfig, plan: Plan, out: str, metadata: Mapping[str, Any], layout: str
) -> Plan:
    """Write ``plan``'s staging table; the plan that wrote it (Spark's csv reader when the Arrow
    reader met a line only Spark's quarantines: a malformed line that is not UTF-8)."""
    try:
        write_staging(spark, plan, out, metadata)
        return plan
    except NeedsSparkReader as err:
        log.warning("%s\n-> reading %s again with Spark's csv reader", err, plan.name)
        plan = _plan(spark, dataclasses.replace(cfg, reader="spark"), plan.name, layout, out)
        write_staging(spark, plan, out, metadata)
        return plan


def default_metadata(cfg: IngestConfig) -> dict[str, Any]:
    """Commit metadata of a run outside the pipeline (which passes its own, with its run id)."""
    return {"stage": STAGE, "code_version": delta_io.code_version(), "config": dataclasses.asdict(cfg)}


def run(
    spark: SparkSession, cfg: IngestConfig, out: str, metadata: Mapping[str, Any] | None = None
) -> dict[str, dict[str, int]]:
    """Write ``<out>/bronze/<table>`` for every configured table and ``<out>/bronze/quarantine``.

    Returns {table: {rows_in, kept, rejected, filtered_out}} with rows_in = kept + rejected +
    filtered_out (filtered_out: events of items outside ``cfg.itemids``), checked here against
    the rows read and written. Each raw input is read once: its rows, typed and tagged with
    their reason (:func:`stage_rows`), go to a staging table ``bronze/_staging/<table>`` (an
    input under 64 MB: to Spark's cache, memory spilling to disk); kept rows, counts and
    quarantine are cheap columnar reads of that copy, which is dropped at the end (also when
    the run fails). The clean rows the Arrow reader's tasks typed themselves are Parquet files
    in bronze's columns already: the bronze commit moves them into the table as they are
    (:mod:`spark_jobs.delta_files`). All inputs are located and their headers checked before the
    first write, and all of them are read before the first bronze table is touched, so a
    damaged input leaves the whole bronze layer as it was. Each table is replaced atomically
    (Delta overwrite; the quarantine by ``replaceWhere`` on the tables of this run), so a re-run
    never appends and a failed one leaves the last version readable. Every commit carries
    ``metadata`` (default: :func:`default_metadata`) as its Delta ``userMetadata``.
    """
    metadata = dict(metadata) if metadata is not None else default_metadata(cfg)
    needs_mimic = any(t not in CXR_TABLES for t in cfg.tables)
    layout = resolve_layout(spark, cfg.raw, cfg.layout) if needs_mimic else "v2"
    # Locating files and reading headers is driver-side waiting on the file system: all at once.
    plans = in_parallel(
        spark, [partial(_plan, spark, cfg, name, layout, out) for name in cfg.tables], len(cfg.tables), WHAT
    )
    workers = cfg.concurrency or spark.sparkContext.defaultParallelism
    # Biggest inputs first: the longest single-task read starts at once, small tables fill in.
    by_size = sorted(plans, key=lambda p: -p.size)
    plain_encode_staging(spark, plans)
    try:
        # A .csv.gz is one Spark task: one table at a time would leave all cores but one idle.
        staged = in_parallel(
            spark, [partial(_stage, spark, cfg, p, out, metadata, layout) for p in by_size], workers, WHAT
        )
        # A plan that gave way to Spark's reader is replaced by the one that staged the table.
        plans = [next(s for s in staged if s.name == p.name) for p in plans]
        by_size = sorted(plans, key=lambda p: -p.size)
        staged_counts = count_staged(spark, plans, out)
        for name, (c, by_reason) in staged_counts.items():
            log.info("ingest %s: %s; rejected by reason: %s", name, c, by_reason)
        counts = {name: c for name, (c, _) in staged_counts.items()}
        in_parallel(
            spark,
            [partial(write_bronze, spark, p, out, counts[p.name], metadata) for p in by_size],
            workers,
            WHAT,
        )
        write_quarantine(spark, plans, counts, out, metadata)
    finally:
        drop_staging(spark, plans, out)
    return {name: counts[name] for name in cfg.tables}
