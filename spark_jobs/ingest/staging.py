"""Parsing, typing and staging of raw rows: pure DataFrame transforms plus the raw readers.

Raw files are read as text with an explicit all-string schema and typed afterwards, because a
reader that casts while parsing turns a garbage value into a silent null. Here every non-blank
value that does not parse, every row without the ids the benchmark joins on and every line with
the wrong number of fields is tagged with a reason (``quality.Checked``), so that rows in = rows
kept + rows rejected holds for every table.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from typing import TYPE_CHECKING

from spark_jobs.delta_io import quoted
from spark_jobs.ingest.errors import CorruptInputError, HeaderError, naming_files
from spark_jobs.ingest.files import HadoopFs, Located
from spark_jobs.mimic_schema import RawTable
from spark_jobs.quality import Checked

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, Observation, SparkSession
    from pyspark.sql.types import DataType

STAGE = "ingest"
CORRUPT = "_corrupt_record"
SOURCE = "_source"
REASON = "__reason"
RECORD = "__record"
WANTED = "__wanted"
FILTERED_OUT = "filtered_out"
# Marker rows of a reader that drops rows of unused items itself: how many it dropped.
UNUSED = "__unused"
# ... and how many clean rows it typed and wrote to the staging copy itself (arrow_typing).
ARROW_STAGED = "__arrow_staged"
REPLACEMENT_CHAR = "\ufffd"

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


def header_names(line: str) -> list[str]:
    """The column names of a csv header line, a UTF-8 byte-order mark dropped."""
    names = next(csv.reader([line]), [])
    if names:
        names[0] = names[0].lstrip("\ufeff")
    return names


def _csv_header(fs: HadoopFs, files: Sequence[str]) -> tuple[str, list[str]]:
    """(file, column names) of the first part with a header; empty parts are skipped."""
    for path in files:
        with naming_files([path], what="reading the header of", only_inputs=True):
            line = fs.first_line(path)
        if line:
            return path, header_names(line)
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
            f"(found: {', '.join(available)}){_delimiter_hint(available)}"
        )
    repeated = [c for c in table.column_names if len(by_lower[c.lower()]) > 1]
    if repeated:
        raise HeaderError(f"{where}: column(s) {', '.join(repeated)} appear more than once")
    return {c: by_lower[c.lower()][0] for c in table.column_names}


def _delimiter_hint(available: Sequence[str]) -> str:
    """A hint when a one-column header holds another delimiter: the usual cause of 'all missing'."""
    if len(available) != 1:
        return ""
    for name, sep in (("semicolon", ";"), ("tab", "\t"), ("pipe", "|")):
        if sep in available[0]:
            return f"; the header looks {name}-separated, but raw tables must be comma-separated"
    return ""


def csv_columns(spark: SparkSession, loc: Located, table: RawTable) -> tuple[list[str], dict[str, str]]:
    """(the first part's header, {declared column: its name in the header}); raises
    :class:`HeaderError` naming the file when a declared column is missing or a name repeats."""
    header_file, names = _csv_header(HadoopFs(spark), loc.files)
    mapping = _match_columns(table, names, header_file)
    if len(set(names)) != len(names):
        raise HeaderError(f"{header_file}: repeated column names in header {names}")
    return names, mapping


def _read_csv(spark: SparkSession, loc: Located, table: RawTable) -> DataFrame:
    from pyspark.sql import functions as F
    from pyspark.sql.types import StringType, StructField, StructType

    names, mapping = csv_columns(spark, loc, table)
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
        *[F.col(quoted(mapping[c])).alias(c) for c in table.column_names],
        F.col(CORRUPT),
        F.input_file_name().alias(SOURCE),
    )


def _read_parquet(spark: SparkSession, loc: Located, table: RawTable) -> DataFrame:
    from pyspark.sql import functions as F

    with naming_files(loc.files, what="reading the parquet footer of", only_inputs=True):
        df = spark.read.parquet(loc.path)
    mapping = _match_columns(table, df.columns, loc.path)
    return df.select(
        *[F.col(quoted(mapping[c])).alias(c) for c in table.column_names],
        F.input_file_name().alias(SOURCE),
    )


def read_raw(spark: SparkSession, loc: Located, table: RawTable) -> DataFrame:
    """The located table with the declared columns by name (csv: all strings, + ``_corrupt_record``)
    and ``_source``. Missing header columns and unreadable headers fail here, before any job."""
    return _read_csv(spark, loc, table) if loc.format == "csv" else _read_parquet(spark, loc, table)


def _typed(name: str, logical: str, source_type: DataType) -> tuple[Column, Column]:
    """(value in the logical type or null, "a raw value is present") for one column.

    A present value whose typed value is null is bad. ``try_cast`` keeps this independent of
    ``spark.sql.ansi.enabled``; strings are checked against the declared formats first, typed
    (parquet) values must survive a round trip, so 1.5 never becomes the id 1.
    """
    from pyspark.sql import functions as F
    from pyspark.sql.types import BinaryType, DateType, StringType, TimestampNTZType, TimestampType

    col = quoted(name)
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

    ``raw`` may come with ``__unused`` marker rows (a reader that dropped rows of unused items
    while parsing, :mod:`~spark_jobs.ingest.arrow_csv`): their counts join ``filtered_out``;
    their ``__arrow_staged`` counts (rows the reader staged itself) are summed as ``ARROW_STAGED``.

    Read the observation only after an action on the returned frame succeeded (it waits for
    one). Write the frame without a shuffle in between, so that the count is taken in the stage
    that writes (a result stage, whose tasks report once each, retries included): exact. The
    filter cannot move below the observation.
    """
    from pyspark.sql import Observation
    from pyspark.sql import functions as F

    counted = Observation()
    # Marker rows (the Arrow reader's, see arrow_csv) carry counts of rows dropped while parsing.
    marker = F.col(UNUSED).isNotNull() if UNUSED in raw.columns else F.lit(False)
    marked = raw.withColumn(WANTED, ~marker & item_wanted(raw, itemids))
    dropped = F.count_if(~F.col(WANTED) & ~marker)
    metrics = []
    if UNUSED in raw.columns:
        dropped = dropped + F.coalesce(F.sum(F.col(UNUSED)), F.lit(0))
    if ARROW_STAGED in raw.columns:
        metrics.append(F.coalesce(F.sum(F.col(ARROW_STAGED)), F.lit(0)).alias(ARROW_STAGED))
    observed = marked.observe(counted, dropped.alias(FILTERED_OUT), *metrics)
    return observed.where(F.col(WANTED)).drop(WANTED, UNUSED, ARROW_STAGED), counted


def _is_id(column: str) -> bool:
    """MIMIC's identifiers (``subject_id``, ``itemid``, ...) are positive; a negative one is bad."""
    return column.endswith("_id") or column == "itemid"


def required_ids(table: RawTable) -> tuple[str, ...]:
    """The columns a row of ``table`` is rejected without (``null_id``)."""
    default = ("subject_id",) if "subject_id" in table.column_names else ()
    return REQUIRED_IDS.get(table.name, default)


def _tag(raw: DataFrame, table: RawTable) -> DataFrame:
    """``raw`` plus the typed values ``__v<i>`` and the one ``__reason`` (null: keep)."""
    from pyspark.sql import functions as F
    from pyspark.sql.types import StringType

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
    for c in required_ids(table):
        checks.append(F.when(~F.coalesce(F.col(f"__p{index[c]}"), F.lit(False)), F.lit(f"null_id:{c}")))
    for i, (_, logical) in enumerate(table.columns):
        bad = F.coalesce(F.col(f"__p{i}"), F.lit(False)) & F.col(f"__v{i}").isNull()
        checks.append(F.when(bad, F.lit(f"bad_{logical}:{names[i]}")))
    for i, (c, logical) in enumerate(table.columns):
        if logical in ("long", "int") and _is_id(c):
            checks.append(F.when(F.col(f"__v{i}") < 0, F.lit(f"negative_id:{c}")))
        elif logical == "string" and isinstance(source_types[c], StringType):
            # The csv reader decodes UTF-8 and turns every invalid byte into U+FFFD: without this
            # check a latin-1 file would load with its text silently changed.
            checks.append(F.when(F.instr(F.col(quoted(c)), REPLACEMENT_CHAR) > 0, F.lit(f"bad_encoding:{c}")))
    return tagged.withColumn(REASON, F.coalesce(*checks))


def stage_rows(raw: DataFrame, table: RawTable) -> DataFrame:
    """Every raw row once, with its fate decided: ``__reason`` (null: keep), the typed values
    ``__v<i>`` (declared order), ``_source`` and, for rejected rows only, the raw row as JSON in
    ``__record``.

    One reason per rejected row, the first that applies: ``malformed_line`` (csv line with the
    wrong number of fields), ``null_id:<col>`` (a required id is missing, see ``REQUIRED_IDS``),
    ``bad_<type>:<col>`` (a present value does not parse; never silently nulled),
    ``negative_id:<col>`` (an id below 0), ``bad_encoding:<col>`` (text that was not UTF-8). A
    single reason column decides both halves, so rows in = kept + rejected.

    Kept rows, rejected rows and the counts are all projections of this one frame, so the run
    writes it once (the only pass over the raw files) and derives the rest from that copy.
    Columns are positional (``__v<i>``) so names Delta cannot store as-is need no special care.
    """
    from pyspark.sql import functions as F

    tagged = _tag(raw, table)
    record = F.to_json(F.struct(*[F.col(quoted(c)) for c in raw.columns]))
    return tagged.select(
        F.col(REASON),
        *[F.col(f"__v{i}") for i in range(len(table.columns))],
        *([F.col(SOURCE)] if SOURCE in raw.columns else []),
        F.when(F.col(REASON).isNotNull(), record).alias(RECORD),
    )


def unstage(staged: DataFrame, table: RawTable) -> Checked:
    """The kept rows (declared names and types, in declared order, plus ``_source``) and the
    rejected rows (in the quarantine shape, the raw row as read in ``record``) of a
    :func:`stage_rows` frame."""
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
