"""Bronze: raw MIMIC-IV / MIMIC-CXR tables -> typed DataFrames, with a quarantine.

Raw files are read as text with an explicit all-string schema and typed afterwards, because a
reader that casts while parsing turns a garbage value into a silent null. Here every non-blank
value that does not parse, every row without the ids the benchmark joins on and every line with
the wrong number of fields goes to the quarantine with a reason (``quality.Checked``), so that
rows in = rows kept + rows rejected holds for every table.

Where the files are is found through the Hadoop FileSystem of Spark's own JVM, so local paths,
HDFS and ``s3a://`` / ``s3://`` URLs go through one code path and see exactly what Spark reads.
Failures about input files (missing table, header without a declared column, truncated gzip)
are raised as :class:`IngestError` subclasses that name the file, not as a Java traceback.
"""

from __future__ import annotations

import csv
import logging
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial, reduce
from typing import TYPE_CHECKING, Literal, NamedTuple, TypeVar

from spark_jobs.mimic_schema import CXR_TABLES, RawTable, mimic_iv_tables
from spark_jobs.quality import Checked, empty_rejects

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, Observation, SparkSession
    from pyspark.sql.types import DataType

log = logging.getLogger(__name__)
T = TypeVar("T")

STAGE = "ingest"
CORRUPT = "_corrupt_record"
SOURCE = "_source"
QUARANTINE = "quarantine"
STAGING = "_staging"
REASON = "__reason"
RECORD = "__record"
WANTED = "__wanted"
FILTERED_OUT = "filtered_out"
EVENT_TABLES = frozenset({"chartevents", "labevents"})
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

# Ids a row is useless without: the joins of the later stages. Everything else may be null
# (labevents.hadm_id often is; chartevents.hadm_id is not needed once stay_id is there).
REQUIRED_IDS: dict[str, tuple[str, ...]] = {
    "patients": ("subject_id",),
    "admissions": ("subject_id", "hadm_id"),
    "icustays": ("subject_id", "hadm_id", "stay_id"),
    "chartevents": ("subject_id", "stay_id", "itemid"),
    "labevents": ("subject_id", "itemid"),
    "diagnoses_icd": ("subject_id", "hadm_id"),
    "d_icd_diagnoses": ("icd_code",),
    "d_items": ("itemid",),
    "d_labitems": ("itemid",),
    "metadata": ("dicom_id", "subject_id", "study_id"),
    "chexpert": ("subject_id", "study_id"),
    "split": ("dicom_id", "study_id", "subject_id"),
}

_SQL_TYPES = {"long": "bigint", "int": "int", "double": "double", "timestamp": "timestamp", "date": "date"}
# The raw formats MIMIC writes (plus 'T' and fractional seconds, as other exports do). Spark's own
# cast is far more lenient ('2180', '2180-01-01', time zones) and would accept garbage silently.
_DATE_RE = "^[0-9]{4}-[0-9]{2}-[0-9]{2}$"
_TIMESTAMP_RE = "^[0-9]{4}-[0-9]{2}-[0-9]{2}[ T][0-9]{2}:[0-9]{2}:[0-9]{2}([.][0-9]{1,9})?$"


class IngestError(Exception):
    """An input problem the user has to fix; the message names the file."""


class MissingInputError(IngestError, FileNotFoundError):
    """A raw table is not where the layout says, under any of the accepted names."""


class HeaderError(IngestError, ValueError):
    """A csv header lacks a declared column (or repeats one)."""


class CorruptInputError(IngestError):
    """A file exists but cannot be read: truncated or corrupt compression, bad parquet, ..."""


class Located(NamedTuple):
    """Where a raw table was found: the matched path, its format and the data files it holds."""

    path: str
    format: Literal["csv", "parquet"]
    files: tuple[str, ...]


@dataclass
class IngestConfig:
    """What the bronze stage reads.

    ``raw`` is the MIMIC-IV root (the folder holding ``hosp/`` and ``icu/``, or ``core/`` for
    v1.0), ``cxr`` the MIMIC-CXR-JPG root holding ``mimic-cxr-2.0.0-*.csv.gz``. Both may be
    local paths or ``s3a://`` / ``s3://`` URLs. ``itemids``: keep only these items of the events
    tables (None keeps all). ``concurrency``: how many tables are read / written at the same
    time (0: as many as Spark has cores); a ``.csv.gz`` is one Spark task however big it is, so
    reading the tables side by side is what keeps more than one core busy. ``spread``: the rows
    of an input read by fewer tasks than Spark has cores (a ``.csv.gz``) are spread round-robin
    over this many partitions, so that bronze gets as many files for the later stages to read in
    parallel: right after parsing (typing and checking then use every core too); the events
    tables filtered to ``itemids`` are not shuffled but written as files of at most
    ``STAGING_ROWS_PER_FILE`` rows by the parsing task (0: two partitions per core, inputs of
    8 MB and more; 1: off).
    """

    raw: str
    cxr: str
    layout: Literal["auto", "v1", "v2", "v3"] = "auto"
    tables: list[str] = field(default_factory=lambda: list(DEFAULT_TABLES))
    itemids: list[int] | None = None
    concurrency: int = 0
    spread: int = 0

    def __post_init__(self) -> None:
        known = set(mimic_iv_tables("v2")) | set(CXR_TABLES)
        unknown = [t for t in self.tables if t not in known]
        if unknown:
            raise ValueError(f"unknown table(s) {unknown}; known: {sorted(known)}")
        if self.concurrency < 0:
            raise ValueError(f"concurrency must be >= 0 (0: one per core), got {self.concurrency}")
        if self.spread < 0:
            raise ValueError(f"spread must be >= 0 (0: two partitions per core), got {self.spread}")


# --- file system -------------------------------------------------------------------------------


class _HadoopFs:
    """The few file-system calls ingest needs, through Spark's JVM (local, hdfs, s3a alike)."""

    def __init__(self, spark: SparkSession) -> None:
        self._jvm = spark._jvm
        self._conf = spark._jsc.hadoopConfiguration()

    def _path(self, path: str):
        p = self._jvm.org.apache.hadoop.fs.Path(path)
        return p, p.getFileSystem(self._conf)

    def kind(self, path: str) -> Literal["file", "dir"] | None:
        p, fs = self._path(path)
        if not fs.exists(p):
            return None
        return "dir" if fs.getFileStatus(p).isDirectory() else "file"

    def list_files(self, path: str) -> list[str]:
        """Data files directly in a folder; ``_SUCCESS``, ``.crc`` and other hidden files skipped."""
        p, fs = self._path(path)
        out = []
        for status in fs.listStatus(p):
            name = status.getPath().getName()
            if status.isFile() and not name.startswith(("_", ".")):
                out.append(status.getPath().toString())
        return sorted(out)

    def size(self, paths: Sequence[str]) -> int:
        """Bytes in ``paths`` (files), to start the biggest inputs first."""
        total = 0
        for path in paths:
            p, fs = self._path(path)
            total += fs.getFileStatus(p).getLen()
        return total

    def delete(self, path: str) -> None:
        """Remove ``path`` and everything under it; nothing there is fine."""
        p, fs = self._path(path)
        if fs.exists(p):
            fs.delete(p, True)

    def delete_if_empty(self, path: str) -> None:
        p, fs = self._path(path)
        if fs.exists(p) and fs.getFileStatus(p).isDirectory() and not fs.listStatus(p):
            fs.delete(p, False)

    def glob(self, pattern: str) -> list[str]:
        p, fs = self._path(pattern)
        return [s.getPath().toString() for s in (fs.globStatus(p) or [])]

    def _open(self, path: str):
        """An input stream, decompressed by the codec its name implies (as Spark would)."""
        p, fs = self._path(path)
        codec = self._jvm.org.apache.hadoop.io.compress.CompressionCodecFactory(self._conf).getCodec(p)
        stream = fs.open(p)
        return codec.createInputStream(stream) if codec is not None else stream

    def first_line(self, path: str) -> str | None:
        stream = self._open(path)
        try:
            reader = self._jvm.java.io.BufferedReader(self._jvm.java.io.InputStreamReader(stream, "UTF-8"))
            return reader.readLine()
        finally:
            stream.close()

    def read_through(self, path: str) -> None:
        """Decompress the whole file and discard it; raises where the data is broken."""
        stream = self._open(path)
        try:
            # DecompressorStream.skip takes a long but counts in an int: skip in int-sized steps.
            step = 2**31 - 1
            while stream.skip(step) == step:
                pass
        finally:
            stream.close()


def _join(root: str, rel: str) -> str:
    return f"{root.rstrip('/')}/{rel}"


def _is_compressed(path: str) -> bool:
    return path.endswith((".gz", ".bz2", ".zst", ".lz4", ".snappy", ".deflate"))


# --- layout and location -----------------------------------------------------------------------


def detect_layout(spark: SparkSession, root: str) -> Literal["v1", "v2"]:
    """``v1`` when patients sit under ``core/`` (MIMIC-IV 1.0), else ``v2``.

    v2 and v3 share their column set and paths, so they cannot (and need not) be told apart;
    say ``layout: v3`` in the config to record which one it is.
    """
    fs = _HadoopFs(spark)
    if fs.glob(_join(root, "core/patients*")):
        return "v1"
    if fs.glob(_join(root, "hosp/patients*")):
        return "v2"
    raise MissingInputError(
        f"no MIMIC-IV patients table under {root}: tried {_join(root, 'core/patients*')} (v1.0) "
        f"and {_join(root, 'hosp/patients*')} (v2/v3)"
    )


def resolve_layout(spark: SparkSession, root: str, layout: str) -> str:
    """The configured layout, or the detected one for ``auto``."""
    if layout == "auto":
        return detect_layout(spark, root)
    mimic_iv_tables(layout)  # raises on an unknown layout
    return layout


def locate(spark: SparkSession, root: str, table: RawTable) -> Located:
    """Find ``table`` under ``root``; the first that exists wins, in this order.

    ``<rel>.csv.gz``, ``<rel>.csv`` (file or folder of parts), folder ``<rel>/`` (csv or parquet
    parts), ``<rel>.parquet`` (file or folder). Fails at once, listing every path tried, because a
    missing table found only at the end of a long job wastes the job.
    """
    fs = _HadoopFs(spark)
    base = _join(root, table.relpath)
    tried: list[str] = []
    candidates: tuple[tuple[str, str | None], ...] = (
        (f"{base}.csv.gz", "csv"),
        (f"{base}.csv", "csv"),
        (base, None),
        (f"{base}.parquet", "parquet"),
    )
    for path, fmt in candidates:
        kind = fs.kind(path)
        if kind == "file" and fmt is not None:
            return Located(path, fmt, (path,))
        if kind == "dir":
            files = fs.list_files(path)
            csv_parts = [f for f in files if f.endswith((".csv", ".csv.gz"))]
            parquet_parts = [f for f in files if f.endswith(".parquet")]
            if fmt is None:
                fmt = "parquet" if parquet_parts else "csv"
                parts = parquet_parts or csv_parts
            else:
                # A folder named like a file is a Spark-style output: all its visible files are parts.
                parts = (parquet_parts if fmt == "parquet" else csv_parts) or files
            if parts:
                return Located(path, fmt, tuple(parts))
            tried.append(f"{path} (folder without .csv, .csv.gz or .parquet files)")
            continue
        tried.append(path if kind is None else f"{path} (file of unknown format)")
    raise MissingInputError(f"table {table.name!r} not found under {root}; tried:\n  " + "\n  ".join(tried))


# --- reading ------------------------------------------------------------------------------------


def _q(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


def _csv_header(fs: _HadoopFs, files: Sequence[str]) -> tuple[str, list[str]]:
    """(file, column names) of the first part with a header; empty parts are skipped."""
    for path in files:
        with _naming_files([path], what="reading the header of", only_inputs=True):
            line = fs.first_line(path)
        if line:
            names = next(csv.reader([line]))
            if names:
                names[0] = names[0].lstrip("\ufeff")
            return path, names
    raise CorruptInputError(f"no header line in any of: {', '.join(files)}")


def _match_columns(table: RawTable, available: Sequence[str], where: str) -> dict[str, str]:
    """{declared name: name in the file}, matched case-insensitively like Spark resolves names."""
    by_lower: dict[str, list[str]] = {}
    for name in available:
        by_lower.setdefault(name.strip().lower(), []).append(name)
    missing = [c for c in table.column_names if c.lower() not in by_lower]
    if missing:
        raise HeaderError(
            f"{where}: missing column(s) {', '.join(missing)} of table {table.name!r} "
            f"(found: {', '.join(available)})"
        )
    repeated = [c for c in table.column_names if len(by_lower[c.lower()]) > 1]
    if repeated:
        raise HeaderError(f"{where}: column(s) {', '.join(repeated)} appear more than once")
    return {c: by_lower[c.lower()][0] for c in table.column_names}


def _read_csv(spark: SparkSession, loc: Located, table: RawTable) -> DataFrame:
    from pyspark.sql import functions as F
    from pyspark.sql.types import StringType, StructField, StructType

    header_file, names = _csv_header(_HadoopFs(spark), loc.files)
    mapping = _match_columns(table, names, header_file)
    if len(set(names)) != len(names):
        raise HeaderError(f"{header_file}: repeated column names in header {names}")
    schema = StructType([StructField(n, StringType()) for n in names] + [StructField(CORRUPT, StringType())])
    df = (
        spark.read.schema(schema)
        .option("header", True)
        # Every part's header is checked against the first one's, by Spark, by name and order.
        .option("enforceSchema", False)
        .option("mode", "PERMISSIVE")
        .option("columnNameOfCorruptRecord", CORRUPT)
        # With pruning on, Spark tokenizes only the referenced columns and no longer notices a
        # line with too few / too many fields: _corrupt_record would depend on the query.
        .option("columnPruning", False)
        # RFC 4180 as PostgreSQL (MIMIC's source) writes it: a quote inside a field is doubled.
        .option("escape", '"')
        .csv(list(loc.files))
    )
    return df.select(
        *[F.col(_q(mapping[c])).alias(c) for c in table.column_names],
        F.col(CORRUPT),
        F.input_file_name().alias(SOURCE),
    )


def _read_parquet(spark: SparkSession, loc: Located, table: RawTable) -> DataFrame:
    from pyspark.sql import functions as F

    with _naming_files(loc.files, what="reading the parquet footer of", only_inputs=True):
        df = spark.read.parquet(loc.path)
    mapping = _match_columns(table, df.columns, loc.path)
    return df.select(
        *[F.col(_q(mapping[c])).alias(c) for c in table.column_names],
        F.input_file_name().alias(SOURCE),
    )


def read_raw(
    spark: SparkSession, loc: Located, table: RawTable, source_filter: Column | None = None
) -> DataFrame:
    """The located table with the declared columns by name (csv: all strings, + ``_corrupt_record``)
    and ``_source``; ``source_filter`` (over these raw columns) is applied before any check."""
    raw = _read_csv(spark, loc, table) if loc.format == "csv" else _read_parquet(spark, loc, table)
    return raw if source_filter is None else raw.where(source_filter)


def read_table(
    spark: SparkSession, root: str, table: RawTable, source_filter: Column | None = None
) -> Checked:
    """``table`` under ``root``, typed, with its unparseable rows rejected (see :func:`apply_types`).

    ``source_filter`` is a predicate over the raw columns (strings for csv) to read a subset, e.g.
    some subjects; rows it drops are outside the bookkeeping (rows in = kept + rejected after it).
    Missing table, missing header columns and unreadable headers fail here, before any job.
    """
    loc = locate(spark, root, table)
    log.info("ingest %s: %s (%s, %d file(s))", table.name, loc.path, loc.format, len(loc.files))
    return apply_types(read_raw(spark, loc, table, source_filter), table)


# --- typing (pure) ------------------------------------------------------------------------------


def _typed(name: str, logical: str, source_type: DataType) -> tuple[Column, Column]:
    """(value in the logical type or null, "a raw value is present") for one column.

    A present value whose typed value is null is bad. ``try_cast`` keeps this independent of
    ``spark.sql.ansi.enabled``; strings are checked against the declared formats first, typed
    (parquet) values must survive a round trip, so 1.5 never becomes the id 1.
    """
    from pyspark.sql import functions as F
    from pyspark.sql.types import BinaryType, DateType, StringType, TimestampNTZType, TimestampType

    col = _q(name)
    if isinstance(source_type, StringType | BinaryType):
        s = f"trim(cast({col} as string))"
        present = F.expr(f"{s} <> ''")
        if logical == "string":
            return F.col(col).cast("string"), present
        sql_type = _SQL_TYPES[logical]
        if logical in ("long", "int"):
            # '12.0' (pandas writes integer columns with nulls as floats) is 12; '12.5' is not.
            # try_cast alone rejects any '.', so trying it first gives the same values and leaves
            # the regex (the dearest part of typing an id column) to the rare '12.0'.
            value = (
                f"coalesce(try_cast({s} as {sql_type}), "
                f"try_cast(regexp_replace({s}, '[.]0+$', '') as {sql_type}))"
            )
        elif logical == "timestamp":
            value = f"CASE WHEN {s} RLIKE '{_TIMESTAMP_RE}' THEN try_cast({s} as timestamp) END"
        elif logical == "date":
            value = (
                f"CASE WHEN {s} RLIKE '{_DATE_RE}' THEN try_cast({s} as date) "
                f"WHEN {s} RLIKE '{_TIMESTAMP_RE}' AND try_cast({s} as timestamp) IS NOT NULL "
                f"THEN try_cast(substr({s}, 1, 10) as date) END"
            )
        else:
            value = f"try_cast({s} as {sql_type})"
        return F.expr(value), present
    present = F.col(col).isNotNull()
    if logical == "string":
        return F.col(col).cast("string"), present
    if logical == "date" and isinstance(source_type, DateType | TimestampType | TimestampNTZType):
        return F.to_date(F.col(col)), present
    cast = F.expr(f"try_cast({col} as {_SQL_TYPES[logical]})")
    return F.when(cast.cast(source_type).eqNullSafe(F.col(col)), cast), present


def item_wanted(raw: DataFrame, itemids: Sequence[int]) -> Column:
    """True for the raw event rows worth typing: items in ``itemids``, and rows whose item cannot
    be read (malformed line, missing or bad itemid: they are checked and rejected with their
    reason). False for well-formed rows of other items, which are only counted (``filtered_out``):
    on MIMIC-IV most chartevents rows are items the benchmark never uses, and typing them (the
    timestamp checks above all) would be most of the ingest's work.
    """
    from pyspark.sql import functions as F

    source_types = {f.name: f.dataType for f in raw.schema.fields}
    item, _ = _typed("itemid", "long", source_types["itemid"])
    wanted = item.isNull() | item.isin([int(i) for i in itemids])
    return F.col(CORRUPT).isNotNull() | wanted if CORRUPT in raw.columns else wanted


def keep_wanted(raw: DataFrame, itemids: Sequence[int]) -> tuple[DataFrame, Observation]:
    """The rows of ``raw`` worth typing (:func:`item_wanted`), and an Observation that counts the
    others (``filtered_out``) as the rows go by: they are neither typed nor written anywhere.

    Read the observation only after an action on the returned frame succeeded (it waits for
    one). Write the frame without a shuffle in between, so that the count is taken in the stage
    that writes (a result stage, whose tasks report once each, retries included): exact. The
    filter cannot move below the observation.
    """
    from pyspark.sql import Observation
    from pyspark.sql import functions as F

    counted = Observation()
    marked = raw.withColumn(WANTED, item_wanted(raw, itemids))
    observed = marked.observe(counted, F.count_if(~F.col(WANTED)).alias(FILTERED_OUT))
    return observed.where(F.col(WANTED)).drop(WANTED), counted


def _tag(raw: DataFrame, table: RawTable) -> DataFrame:
    """``raw`` plus the typed values ``__v<i>`` and the one ``__reason`` (null: keep)."""
    from pyspark.sql import functions as F

    source_types = {f.name: f.dataType for f in raw.schema.fields}
    names = table.column_names
    parsed = [_typed(c, logical, source_types[c]) for c, logical in table.columns]
    tagged = raw.select(
        "*",
        *[value.alias(f"__v{i}") for i, (value, _) in enumerate(parsed)],
        *[present.alias(f"__p{i}") for i, (_, present) in enumerate(parsed)],
    )
    index = {c: i for i, c in enumerate(names)}
    checks: list[Column] = []
    if CORRUPT in source_types:
        checks.append(F.when(F.col(CORRUPT).isNotNull(), F.lit("malformed_line")))
    default_ids = ("subject_id",) if "subject_id" in index else ()
    for c in REQUIRED_IDS.get(table.name, default_ids):
        checks.append(F.when(~F.coalesce(F.col(f"__p{index[c]}"), F.lit(False)), F.lit(f"null_id:{c}")))
    for i, (_, logical) in enumerate(table.columns):
        bad = F.coalesce(F.col(f"__p{i}"), F.lit(False)) & F.col(f"__v{i}").isNull()
        checks.append(F.when(bad, F.lit(f"bad_{logical}:{names[i]}")))
    return tagged.withColumn(REASON, F.coalesce(*checks))


def stage_rows(raw: DataFrame, table: RawTable) -> DataFrame:
    """Every raw row once, with its fate decided: ``__reason`` (null: keep), the typed values
    ``__v<i>`` (declared order), ``_source`` and, for rejected rows only, the raw row as JSON in
    ``__record``.

    Kept rows, rejected rows and the counts are all projections of this one frame, so the run
    writes it once (the only pass over the raw files) and derives the rest from that copy.
    Columns are positional (``__v<i>``) so names Delta cannot store as-is need no special care.
    """
    from pyspark.sql import functions as F

    tagged = _tag(raw, table)
    record = F.to_json(F.struct(*[F.col(_q(c)) for c in raw.columns]))
    return tagged.select(
        F.col(REASON),
        *[F.col(f"__v{i}") for i in range(len(table.columns))],
        *([F.col(SOURCE)] if SOURCE in raw.columns else []),
        F.when(F.col(REASON).isNotNull(), record).alias(RECORD),
    )


def unstage(staged: DataFrame, table: RawTable) -> Checked:
    """The kept rows (declared names and types, plus ``_source``) and the rejected rows (in the
    quarantine shape) of a :func:`stage_rows` frame."""
    from pyspark.sql import functions as F

    kept = staged.where(F.col(REASON).isNull()).select(
        *[F.col(f"__v{i}").alias(c) for i, c in enumerate(table.column_names)],
        *([F.col(SOURCE)] if SOURCE in staged.columns else []),
    )
    rejected = staged.where(F.col(REASON).isNotNull()).select(
        F.lit(STAGE).alias("stage"),
        F.lit(table.name).alias("source"),
        F.col(REASON).alias("reason"),
        F.col(RECORD).alias("record"),
    )
    return Checked(kept, rejected)


def apply_types(raw: DataFrame, table: RawTable) -> Checked:
    """Cast ``raw``'s declared columns to their logical types; reject what does not parse.

    One reason per rejected row, the first that applies: ``malformed_line`` (csv line with the
    wrong number of fields), ``null_id:<col>`` (a required id is missing, see ``REQUIRED_IDS``),
    ``bad_<type>:<col>`` (a present value does not parse; never silently nulled). A single reason
    column decides both halves, so rows in = kept + rejected. Kept rows have the declared columns
    in declared order plus ``_source``; rejected ones carry the raw row (as read) as JSON.
    """
    return unstage(stage_rows(raw, table), table)


# --- errors at the boundary ---------------------------------------------------------------------


def _java_cause(exc: BaseException) -> str:
    """The innermost Java exception as 'Class: message' (its first lines), else str(exc)."""
    jexc = getattr(exc, "java_exception", None) or getattr(exc, "_origin", None)
    if jexc is None:
        return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    while jexc.getCause() is not None:
        jexc = jexc.getCause()
    lines = str(jexc.toString()).splitlines()
    return "\n".join(lines[:8])


def _full_text(exc: BaseException) -> str:
    jexc = getattr(exc, "java_exception", None) or getattr(exc, "_origin", None)
    parts = [str(exc)]
    while jexc is not None:
        parts.append(str(jexc.toString()))
        jexc = jexc.getCause()
    return "\n".join(parts)


def _bare(path: str) -> str:
    """'file:/a/b' / 'file:///a/b' / 's3a://bkt/k' -> 'a/b' / 'bkt/k', to find a path in a message."""
    return (
        path.split(":", 1)[-1].lstrip("/") if "://" in path or path.startswith("file:") else path.lstrip("/")
    )


# Root causes that mean "this input file is damaged", whichever file Spark was on.
_DAMAGED_INPUT = (
    "java.io.EOFException",
    "java.util.zip.ZipException",
    "Not in GZIP format",
    "incorrect header check",
    "invalid block type",
    "org.apache.parquet",
    "is not a Parquet file",
    "CSV header does not conform",
)


def _culprit(
    exc: BaseException, files: Sequence[str], spark: SparkSession | None, only_inputs: bool
) -> str | None:
    """The input file ``exc`` is about, or None when it is not about reading an input file."""
    text = _full_text(exc)
    named = [f for f in files if _bare(f) in text]
    if named:
        return named[0]
    if not only_inputs and not any(marker in text for marker in _DAMAGED_INPUT):
        return None
    if len(files) == 1:
        return files[0]
    if spark is not None:
        # Spark does not say which file a codec error came from; find it (failure path only).
        fs = _HadoopFs(spark)
        for f in (f for f in files if _is_compressed(f)):
            log.info("checking %s for corruption", f)
            try:
                fs.read_through(f)
            except Exception:  # any failure here identifies the damaged file
                return f
    return "one of " + ", ".join(files)


@contextmanager
def _naming_files(
    files: Sequence[str], what: str = "reading", spark: SparkSession | None = None, only_inputs: bool = False
) -> Iterator[None]:
    """Turn a Spark/Java failure caused by one of ``files`` into a short :class:`IngestError` that
    names the file and the root cause, instead of a JVM stack trace. Unless the block touches
    nothing but ``files`` (``only_inputs``), failures that are not about them (an unwritable
    output, say) propagate unchanged."""
    from py4j.protocol import Py4JJavaError
    from pyspark.errors.exceptions.captured import CapturedException

    try:
        yield
    except (Py4JJavaError, CapturedException) as exc:
        culprit = _culprit(exc, files, spark, only_inputs)
        if culprit is None:
            raise
        cause = _java_cause(exc)
        if "CSV header does not conform" in cause:
            hint = "\n(every part of a table must have the first part's header, in the same order)"
            raise HeaderError(f"error {what} {culprit}:\n  {cause}{hint}") from None
        raise CorruptInputError(f"error {what} {culprit}:\n  {cause}") from None


# --- stage --------------------------------------------------------------------------------------


def bronze_path(out: str, table: str) -> str:
    return _join(out, f"bronze/{table}")


def staging_path(out: str, table: str) -> str:
    """Where the one pass over ``table``'s raw files lands; it lives for the run only."""
    return _join(out, f"bronze/{STAGING}/{table}")


_DELTA_INVALID_NAME_CHARS = frozenset(" ,;{}()\n\t=")


def _write_delta(df: DataFrame, path: str) -> None:
    """Replace the table at ``path``. Raw names Delta cannot store as-is (CheXpert's
    ``Lung Lesion``) are kept, through column mapping, so bronze has exactly the declared names;
    other tables stay on the basic protocol that every Delta reader understands."""
    writer = df.write.format("delta").mode("overwrite").option("overwriteSchema", "true")
    if any(_DELTA_INVALID_NAME_CHARS & set(c) for c in df.columns):
        writer = (
            writer.option("delta.columnMapping.mode", "name")
            .option("delta.minReaderVersion", "2")
            .option("delta.minWriterVersion", "5")
        )
    writer.save(path)


def _table(cfg: IngestConfig, name: str, layout: str) -> tuple[str, RawTable]:
    if name in CXR_TABLES:
        return cfg.cxr, CXR_TABLES[name]
    return cfg.raw, mimic_iv_tables(layout)[name]


def _rows_written(spark: SparkSession, path: str) -> int:
    """Rows of the last write, from the Delta commit metrics (no scan of the table)."""
    from delta.tables import DeltaTable

    (commit,) = DeltaTable.forPath(spark, path).history(1).select("operationMetrics").collect()
    return int(commit["operationMetrics"]["numOutputRows"])


class _Plan(NamedTuple):
    name: str
    table: RawTable
    loc: Located
    size: int  # bytes of the input files
    staged: DataFrame  # stage_rows over the raw files (the wanted rows of an events table)
    # Counts the rows of items outside cfg.itemids as the staging write reads them (None: the
    # table is not filtered).
    unused: Observation | None
    rows_per_file: int  # > 0: the staging write cuts its output into files of at most this many rows


def _in_parallel(spark: SparkSession, tasks: Sequence[Callable[[], T]], workers: int) -> list[T]:
    """Run ``tasks`` (each one or more Spark actions) from ``workers`` threads; results in order.

    A ``.csv.gz`` is one Spark task, so one table at a time leaves all cores but one idle; side
    by side, chartevents and labevents (and the small tables) share the machine. The first
    failure cancels the other tables' jobs (a corrupt labevents is reported without waiting for
    chartevents) and is raised as is.
    """
    if workers <= 1 or len(tasks) <= 1:
        return [task() for task in tasks]
    sc = spark.sparkContext
    group = f"medmod-ingest-{uuid.uuid4().hex[:12]}"

    def call(task: Callable[[], T]) -> T:
        sc.setJobGroup(group, "medmod bronze ingest", interruptOnCancel=True)
        return task()

    with ThreadPoolExecutor(max_workers=min(workers, len(tasks)), thread_name_prefix="ingest") as pool:
        futures = [pool.submit(call, task) for task in tasks]
        try:
            wait(futures, return_when=FIRST_EXCEPTION)
            failed = [f for f in futures if f.done() and not f.cancelled() and f.exception() is not None]
            if failed:
                raise failed[0].exception()  # type: ignore[misc]
            return [f.result() for f in futures]
        except BaseException:
            for f in futures:
                f.cancel()
            sc.cancelJobGroup(group)
            raise


# Inputs smaller than this stay in the partitions they were read in: spreading them costs more
# than the parallelism saves.
_SPREAD_MIN_BYTES = 8 << 20
# Files of the staging table of a filtered events table read by a single task: the task cuts its
# output (no shuffle), so that the bronze write and the later stages read it in parallel.
STAGING_ROWS_PER_FILE = 1_000_000


def _spread_partitions(spark: SparkSession, loc: Located, size: int, cfg: IngestConfig) -> int:
    """Partitions to spread an input of ``size`` bytes over: ``cfg.spread`` for a big input read
    by a single task, else 1 (leave the rows where they were read)."""
    cores = spark.sparkContext.defaultParallelism
    # gzip & co. cannot be split: one task per file, however big (bzip2 can be split).
    unsplittable = all(_is_compressed(f) and not f.endswith(".bz2") for f in loc.files)
    single_task = loc.format == "csv" and unsplittable and len(loc.files) < cores
    small = cfg.spread == 0 and size < _SPREAD_MIN_BYTES  # auto skips small inputs
    return 1 if not single_task or small else max(cfg.spread or 2 * cores, 1)


def _write_staging(spark: SparkSession, plan: _Plan, path: str) -> None:
    """The one read of ``plan``'s raw files: every row typed and tagged (of a filtered events
    table, the rows of the wanted items; the others only counted), to ``path``."""
    _HadoopFs(spark).delete(path)  # left over by a killed run: start clean
    writer = (
        plan.staged.write.format("delta")
        .mode("overwrite")
        # File statistics on __reason only (the first column): files without rejects are skipped
        # when the quarantine is read, and the single-task raw pass computes no stats it never uses.
        .option("delta.dataSkippingNumIndexedCols", "1")
    )
    if plan.rows_per_file:
        writer = writer.option("maxRecordsPerFile", plan.rows_per_file)
    start = time.monotonic()
    with _naming_files(plan.loc.files, what=f"reading table {plan.name} from", spark=spark):
        writer.save(path)
    log.info("ingest %s: raw files read and staged in %.1fs", plan.name, time.monotonic() - start)


def _count_staged(
    spark: SparkSession, plans: Sequence[_Plan], out: str
) -> dict[str, tuple[dict[str, int], dict[str, int]]]:
    """{table: (rows_in / kept / rejected / filtered_out, rejected by reason)} of the staged rows
    and the rows of unused items counted on the way (call after the staging writes).

    One Spark job for all tables (reading one column of each staging table), not one per table.
    """
    from pyspark.sql import functions as F

    parts = [
        spark.read.format("delta")
        .load(staging_path(out, p.name))
        .select(F.lit(p.name).alias("table"), REASON)
        for p in plans
    ]
    groups = reduce(lambda a, b: a.unionByName(b), parts).groupBy("table", REASON).count().collect()
    out_counts = {}
    for p in plans:
        mine = [r for r in groups if r["table"] == p.name]
        by_reason: dict[str, int] = {}
        for r in mine:
            if r[REASON] is not None:
                by_reason[r[REASON]] = by_reason.get(r[REASON], 0) + r["count"]
        kept = sum(r["count"] for r in mine if r[REASON] is None)
        filtered_out = int(p.unused.get.get(FILTERED_OUT) or 0) if p.unused is not None else 0
        c = {
            "rows_in": kept + sum(by_reason.values()) + filtered_out,
            "kept": kept,
            "rejected": sum(by_reason.values()),
            "filtered_out": filtered_out,
        }
        out_counts[p.name] = (c, by_reason)
    return out_counts


def _write_bronze(spark: SparkSession, plan: _Plan, out: str, expected: dict[str, int]) -> None:
    """The kept rows of the staged table to ``bronze/<table>``; checks that the rows written are
    the rows counted as kept (``rows_in = kept + rejected + filtered_out`` then holds for what
    is really in the table)."""
    start = time.monotonic()
    kept = unstage(spark.read.format("delta").load(staging_path(out, plan.name)), plan.table).kept
    _write_delta(kept, bronze_path(out, plan.name))
    written = _rows_written(spark, bronze_path(out, plan.name))
    if written != expected["kept"]:
        raise IngestError(
            f"bookkeeping does not add up for {plan.name}: {expected}, but {written} rows written"
        )
    log.info("ingest %s: bronze table written in %.1fs", plan.name, time.monotonic() - start)


def run(spark: SparkSession, cfg: IngestConfig, out: str) -> dict[str, dict[str, int]]:
    """Write ``<out>/bronze/<table>`` for every configured table and ``<out>/bronze/quarantine``.

    Returns {table: {rows_in, kept, rejected, filtered_out}} with rows_in = kept + rejected +
    filtered_out (filtered_out: events of items outside ``cfg.itemids``), checked here against
    the rows read and written. Each raw input is read once: its rows, typed and tagged with
    their reason (:func:`stage_rows`), go to a staging table ``bronze/_staging/<table>``; kept
    rows, counts and quarantine are cheap columnar reads of that copy, which is deleted at the
    end (also when the run fails). All inputs are located and their headers checked before the
    first write, and all of them are read before the first bronze table is touched, so a
    damaged input leaves the whole bronze layer as it was. Each table is replaced atomically
    (Delta overwrite; the quarantine by ``replaceWhere`` on the tables of this run), so a re-run
    never appends and a failed one leaves the last version readable.
    """
    needs_mimic = any(t not in CXR_TABLES for t in cfg.tables)
    layout = resolve_layout(spark, cfg.raw, cfg.layout) if needs_mimic else "v2"
    fs = _HadoopFs(spark)
    plans: list[_Plan] = []
    for name in cfg.tables:
        root, table = _table(cfg, name, layout)
        loc = locate(spark, root, table)
        log.info("ingest %s: %s (%s, %d file(s))", name, loc.path, loc.format, len(loc.files))
        size = fs.size(loc.files)
        raw, unused = read_raw(spark, loc, table), None
        partitions = _spread_partitions(spark, loc, size, cfg)
        if name in EVENT_TABLES and cfg.itemids is not None:
            # The task that parses also types the few rows worth it (on MIMIC, ~18% of
            # chartevents): spreading every raw row would cost more than it saves. It writes
            # them to several files instead, so that the later reads are parallel.
            raw, unused = keep_wanted(raw, cfg.itemids)
            rows_per_file = STAGING_ROWS_PER_FILE if partitions > 1 else 0
        else:
            raw, rows_per_file = raw.repartition(partitions) if partitions > 1 else raw, 0
        plans.append(_Plan(name, table, loc, size, stage_rows(raw, table), unused, rows_per_file))

    workers = cfg.concurrency or spark.sparkContext.defaultParallelism
    # Biggest inputs first: the longest single-task read starts at once, small tables fill in.
    by_size = sorted(plans, key=lambda p: -p.size)
    try:
        _in_parallel(
            spark, [partial(_write_staging, spark, p, staging_path(out, p.name)) for p in by_size], workers
        )
        staged_counts = _count_staged(spark, plans, out)
        for p in plans:
            c, by_reason = staged_counts[p.name]
            log.info("ingest %s: %s; rejected by reason: %s", p.name, c, by_reason)
        counts = {name: c for name, (c, _) in staged_counts.items()}
        _in_parallel(spark, [partial(_write_bronze, spark, p, out, counts[p.name]) for p in by_size], workers)
        # Tables without rejects add nothing (but stay in replaceWhere: their old rejects go).
        quarantine = reduce(
            lambda acc, p: acc.unionByName(
                unstage(spark.read.format("delta").load(staging_path(out, p.name)), p.table).rejected
            ),
            [p for p in plans if counts[p.name]["rejected"]],
            empty_rejects(spark),
        )
        # Replace only this run's tables: ingesting one table again keeps the others' rejects.
        this_run = "source IN (" + ", ".join(f"'{name}'" for name in cfg.tables) + ")"
        quarantine.write.format("delta").mode("overwrite").option("replaceWhere", this_run).save(
            bronze_path(out, QUARANTINE)
        )
    finally:
        for p in plans:
            fs.delete(staging_path(out, p.name))
        fs.delete_if_empty(_join(out, f"bronze/{STAGING}"))
    return {name: counts[name] for name in cfg.tables}
