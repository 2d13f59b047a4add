"""Raw events csv(.gz) parsed by Apache Arrow inside Spark tasks, unused items dropped there.

Spark's own csv source parses a gzip stream at a few hundred thousand rows per second on one
core; Arrow's streaming reader parses the same stream several times faster. On MIMIC most
chartevents rows are items the benchmark never uses, so the parsing task also drops them (and
only counts them) before a row crosses into the JVM: Spark then types and checks the few that
are left exactly as it does for its own reader (:func:`~spark_jobs.ingest.staging.stage_rows`).

One Spark task per file (a gzip stream cannot be split anyway). The frame has the shape of the
Spark reader's: the declared columns as strings, ``_corrupt_record`` and ``_source``, plus
``__unused``: marker rows (every other column null) that carry the number of rows of unused
items a batch dropped, summed by :func:`~spark_jobs.ingest.staging.keep_wanted`'s observation.

Same outcome as the line-based Spark reader, row for row:
- a line with too few or too many fields is a ``_corrupt_record`` (its text), other columns null;
- a quoted field holding a line break becomes, as in Spark (which reads line by line), one
  malformed record per physical line;
- invalid UTF-8 becomes U+FFFD, as Spark decodes it, so the ``bad_encoding`` check sees it;
- every part's header must equal the first part's (names, order; case-insensitive, as Spark
  checks it), else the error names the part.
Rows whose item id is not a plain decimal number are passed on whatever their item, so that
Spark's typing decides (``' 220045'`` is item 220045; ``'x'`` is a ``bad_long`` reject).
"""

from __future__ import annotations

import csv
import io
import queue
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import closing
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import ParseResult, unquote, urlparse

from botocore.exceptions import BotoCoreError, ClientError
from isal import igzip
from isal.igzip_lib import IsalError

from spark_jobs.ingest import arrow_typing
from spark_jobs.ingest.errors import ARROW_CANNOT_READ, PYTHON_INPUT_ERROR
from spark_jobs.ingest.files import is_compressed
from spark_jobs.ingest.staging import ARROW_STAGED, CORRUPT, SOURCE, UNUSED, header_names

if TYPE_CHECKING:
    import pyarrow as pa
    from pyspark.sql import DataFrame, SparkSession

# Bytes of text per batch the reader parses; read by the driver and handed to the tasks (a test
# that sets it smaller gets many batches in the Python workers too).
_BLOCK_BYTES = 8 << 20
# What reading a damaged file raises: Arrow's and Python's I/O errors, a gzip stream cut short
# (EOFError) and ISA-L's inflate errors (not OSErrors) alike; S3 errors that s3fs passes on as
# botocore's (an endpoint that cannot be reached, say).
_READ_ERRORS: tuple[type[Exception], ...] = (OSError, EOFError, IsalError, BotoCoreError, ClientError)
# The handler takes every malformed line, so Arrow reporting one means the handler failed.
_ROW_HANDLER_FAILED = "columns, got"
_MAX_ID_DIGITS = 18  # fits int64: longer digit strings are left to Spark's typing
_END = object()  # read_ahead: no more results
T = TypeVar("T")


# Where the task can open a file itself: local paths, and S3 (through s3fs, with the settings
# S3A has for the bucket; see :func:`s3_access`). Other schemes keep the Spark reader.
LOCAL_SCHEMES = ("", "file")
S3_SCHEMES = ("s3a", "s3")  # s3:// is S3A too (spark_jobs.session)


def arrow_can_read(path: str) -> bool:
    """Whether the task can open and decompress ``path`` itself (local or S3; plain or gzip)."""
    if urlparse(path).scheme not in (*LOCAL_SCHEMES, *S3_SCHEMES):
        return False
    # Other compressed parts (a Spark-style folder may hold .bz2, .snappy, ... parts) keep the
    # Spark reader, which has Hadoop's codecs and their framing.
    return path.endswith(".gz") or not is_compressed(path)


def spark_file_name(path: str) -> str:
    """``path`` as Spark's ``input_file_name()`` writes it (``file:///a/b``), for ``_source``."""
    parsed = urlparse(path)
    if parsed.scheme in LOCAL_SCHEMES:
        return "file://" + (parsed.path if parsed.path.startswith("/") else "/" + parsed.path)
    return path


@dataclass(frozen=True)
class S3Access:
    """How a task reaches one bucket: what S3A is configured with for it (see :func:`s3_access`).
    No keys: s3fs looks for credentials as S3A's default chain does (environment, profile,
    instance role)."""

    endpoint_url: str | None = None
    region: str | None = None
    path_style: bool = False
    anonymous: bool = False
    # S3A credential providers s3fs has no counterpart for (assumed roles, custom classes): the
    # task could not authenticate as Spark does, so the Spark reader reads the bucket.
    unsupported_providers: tuple[str, ...] = ()
    key: str | None = field(default=None, repr=False)
    secret: str | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)

    def filesystem(self):
        import s3fs

        client: dict[str, Any] = {"region_name": self.region} if self.region else {}
        if self.endpoint_url:
            client["endpoint_url"] = self.endpoint_url
        config = {"s3": {"addressing_style": "path"}} if self.path_style else {}
        if self.anonymous:
            return s3fs.S3FileSystem(anon=True, client_kwargs=client, config_kwargs=config)
        return s3fs.S3FileSystem(
            key=self.key, secret=self.secret, token=self.token, client_kwargs=client, config_kwargs=config
        )


# S3A credential providers (AWS SDK v1 and v2 class names) whose credentials s3fs finds the same
# way: keys in the configuration, the environment, the AWS profile, the instance or container role.
_LIKE_S3FS = frozenset(
    {
        "SimpleAWSCredentialsProvider",
        "TemporaryAWSCredentialsProvider",
        "AnonymousAWSCredentialsProvider",
        "EnvironmentVariableCredentialsProvider",
        "ProfileCredentialsProvider",
        "InstanceProfileCredentialsProvider",
        "IAMInstanceCredentialsProvider",
        "ContainerCredentialsProvider",
        "DefaultAWSCredentialsProviderChain",
        "DefaultCredentialsProvider",
    }
)


def s3_access(spark: SparkSession, bucket: str) -> S3Access:
    """The S3A settings of ``bucket`` in the session's Hadoop configuration (a per-bucket
    ``fs.s3a.bucket.<bucket>.<key>`` wins over ``fs.s3a.<key>``), for the tasks that open its
    files with s3fs: the same endpoint, addressing and credentials as Spark's own reads."""
    conf = spark.sparkContext._jsc.hadoopConfiguration()

    def get(key: str) -> str | None:
        value = conf.get(f"fs.s3a.bucket.{bucket}.{key}") or conf.get(f"fs.s3a.{key}")
        return str(value).strip() if value is not None and str(value).strip() else None

    providers = [p.strip() for p in (get("aws.credentials.provider") or "").split(",") if p.strip()]
    endpoint = get("endpoint")
    if endpoint and "://" not in endpoint:
        ssl = (get("connection.ssl.enabled") or "true").lower() == "true"
        endpoint = ("https://" if ssl else "http://") + endpoint
    return S3Access(
        endpoint_url=endpoint,
        region=get("endpoint.region"),
        path_style=(get("path.style.access") or "false").lower() == "true",
        anonymous="AnonymousAWSCredentialsProvider" in providers,
        unsupported_providers=tuple(p for p in providers if p.rsplit(".", 1)[-1] not in _LIKE_S3FS),
        key=get("access.key"),
        secret=get("secret.key"),
        token=get("session.token"),
    )


def s3_accesses(spark: SparkSession, files: Sequence[str]) -> dict[str, S3Access]:
    """{bucket: :func:`s3_access`} of the buckets that ``files`` on S3 are in."""
    buckets = {urlparse(f).netloc for f in files if urlparse(f).scheme in S3_SCHEMES}
    return {bucket: s3_access(spark, bucket) for bucket in sorted(buckets)}


def _open_raw(path: str, access: Mapping[str, S3Access]):
    """``path`` as a binary file object, local or on S3 (compressed bytes as stored)."""
    parsed = urlparse(path)
    if parsed.scheme in S3_SCHEMES:
        fs = access[parsed.netloc].filesystem()
        return fs.open(f"{parsed.netloc}/{unquote(parsed.path.lstrip('/'))}", "rb", block_size=_BLOCK_BYTES)
    return open(_local_path(parsed), "rb")  # noqa: SIM115


def _local_path(parsed: ParseResult) -> str:
    return unquote(parsed.path) if parsed.scheme == "file" else parsed.geturl()


def local_path(path: str) -> str:
    """A local ``path`` or ``file:`` URL as a path of the local file system."""
    return _local_path(urlparse(path))


def _input_stream(path: str, access: Mapping[str, S3Access]):
    """``path`` opened for reading, decompressed by its extension. Gzip (how MIMIC ships) goes
    through ISA-L's inflate rather than the zlib inside Arrow (figures in BENCHMARKS.md): the
    parse of a ``.csv.gz`` is one task that nothing else can share."""
    import pyarrow as pa

    parsed = urlparse(path)
    if parsed.scheme in LOCAL_SCHEMES and not path.endswith(".gz"):
        return pa.input_stream(_local_path(parsed))  # read by Arrow itself
    raw = _open_raw(path, access)
    return pa.PythonFile(igzip.open(raw, "rb") if path.endswith(".gz") else raw, mode="r")


class _Problem(Exception):
    """An input problem found in the task: the message names the file."""

    def __init__(self, path: str, what: str) -> None:
        super().__init__(f"{PYTHON_INPUT_ERROR}{path}: {what}")


def _as_text(column: pa.Array) -> pa.Array:
    """Binary -> UTF-8 string; invalid bytes become U+FFFD (what Spark's decoder does)."""
    import pyarrow as pa

    try:
        return column.cast(pa.string())
    except pa.ArrowInvalid:
        values = [None if v is None else v.decode("utf-8", errors="replace") for v in column.to_pylist()]
        return pa.array(values, pa.string())


def _has_line_break(columns: Sequence[pa.Array]) -> pa.Array | None:
    """Mask of the rows holding a line break in a (quoted) value, or None when no row does."""
    import pyarrow.compute as pc

    mask = None
    for column in (c for c in columns if _may_hold_line_break(c)):
        hit = pc.fill_null(pc.or_(pc.match_substring(column, "\n"), pc.match_substring(column, "\r")), False)
        mask = hit if mask is None else pc.or_(mask, hit)
    if mask is None:
        return None
    return mask if pc.any(mask).as_py() else None


def _may_hold_line_break(column: pa.Array) -> bool:
    """False when no value can hold a line break: none in the column's bytes (a scan of its data
    buffer at memchr speed; the exact per-value check costs more than the parse)."""
    if column.type.num_buffers != 3:
        return True  # not a binary column: check it exactly
    data = column.buffers()[2]  # None: every value is null or empty
    raw = data.to_pybytes() if data is not None else b""
    return b"\n" in raw or b"\r" in raw


def _physical_lines(values: Sequence[bytes | None]) -> list[str]:
    """The lines Spark's line-based reader sees for a record whose values hold line breaks."""
    buf = io.StringIO()
    text = ["" if v is None else v.decode("utf-8", errors="replace") for v in values]
    # The terminator's characters are what makes the writer quote a value holding them.
    csv.writer(buf, lineterminator="\r\n").writerow(text)
    return [
        line for line in buf.getvalue()[:-2].replace("\r\n", "\n").replace("\r", "\n").split("\n") if line
    ]


def _wanted(items: pa.Array, itemids: pa.Array) -> pa.Array:
    """True for rows to pass on: a wanted item, or an item id that is not a plain number."""
    import pyarrow as pa
    import pyarrow.compute as pc

    plain = pc.fill_null(
        pc.and_(pc.ascii_is_decimal(items), pc.less_equal(pc.utf8_length(items), _MAX_ID_DIGITS)), False
    )
    numbers = pc.cast(pc.if_else(plain, items, pa.scalar("0")), pa.int64())
    return pc.or_(pc.invert(plain), pc.is_in(numbers, value_set=itemids))


@dataclass(frozen=True)
class ArrowStaging:
    """The task's own share of the bronze table (:mod:`~spark_jobs.ingest.arrow_typing`): the
    clean rows, typed, go to Parquet parts in ``folder`` (a local path) in bronze's own columns
    (the declared ones and ``_source``), which the bronze commit adds to the table as they are
    (:mod:`spark_jobs.delta_files`); the other rows go on to Spark."""

    folder: str
    names: tuple[str, ...]  # the declared columns, in order
    logicals: tuple[str, ...]  # their logical types
    required: tuple[bool, ...]  # whether each must be present (the table's required ids)
    rows_per_file: int

    def schema(self) -> pa.Schema:
        import pyarrow as pa

        return pa.schema(
            [
                *[
                    (name, arrow_typing.arrow_type(t))
                    for name, t in zip(self.names, self.logicals, strict=True)
                ],
                (SOURCE, pa.string()),
            ]
        )


class _PartWriter:
    """Parquet parts of at most ``rows_per_file`` rows, named by file index and sequence (a
    retried task writes the same names again); each appears under its name once complete."""

    def __init__(self, staging: ArrowStaging, file_index: int) -> None:
        self.staging, self.file_index = staging, file_index
        self.schema = staging.schema()
        self.writer, self.rows, self.sequence, self.name = None, 0, 0, ""

    def write(self, batch: pa.RecordBatch) -> None:
        offset = 0
        while offset < batch.num_rows:
            if self.writer is None:
                self._open()
            room = self.staging.rows_per_file - self.rows if self.staging.rows_per_file else batch.num_rows
            piece = batch.slice(offset, room)
            self.writer.write_batch(piece)
            self.rows += piece.num_rows
            offset += piece.num_rows
            if self.staging.rows_per_file and self.rows >= self.staging.rows_per_file:
                self.close()

    def _open(self) -> None:
        import os

        import pyarrow.parquet as pq

        os.makedirs(self.staging.folder, exist_ok=True)
        self.name = os.path.join(
            self.staging.folder, f"part-{self.file_index:05d}-{self.sequence:05d}.parquet"
        )
        # Hidden ('.') while written: Spark's reader and the bronze commit skip such names.
        # These become bronze's files: dictionaries, as Spark's writer keeps them for the later
        # stages' reads; no row-group statistics, since nothing filters bronze's events by them
        # (their Delta statistics are row counts only, see delta_files).
        self.writer = pq.ParquetWriter(
            self._partial(), self.schema, compression="snappy", write_statistics=False
        )

    def _partial(self) -> str:
        import os

        return os.path.join(os.path.dirname(self.name), "." + os.path.basename(self.name) + ".partial")

    def close(self) -> None:
        import os

        if self.writer is not None:
            self.writer.close()
            os.replace(self._partial(), self.name)
            self.writer, self.rows, self.sequence = None, 0, self.sequence + 1


class _FileParser:
    """Turns one raw file into output batches (see the module docstring)."""

    def __init__(
        self,
        path: str,
        header: Sequence[str],
        names: Sequence[str],
        positions: Sequence[int],
        item_column: int | None,
        itemids: pa.Array | None,
        access: Mapping[str, S3Access],
        block_bytes: int = _BLOCK_BYTES,
        staging: ArrowStaging | None = None,
        file_index: int = 0,
    ) -> None:
        self.block_bytes = block_bytes
        self.path, self.header, self.names, self.positions = path, list(header), list(names), list(positions)
        self.item_column, self.itemids, self.access = item_column, itemids, access
        self.source = spark_file_name(path)
        self.bad_lines: list[str] = []
        # Malformed lines the parser met in the block it is parsing (the read-ahead thread's).
        self.parsed_bad_lines: list[str] = []
        self.staging = staging
        self.parts = _PartWriter(staging, file_index) if staging is not None else None

    def _on_invalid_row(self, row) -> str:
        self.parsed_bad_lines.append(row.text)
        return "skip"

    def _open(self):
        try:
            return _input_stream(self.path, self.access)
        except _READ_ERRORS as err:
            raise _Problem(self.path, str(err)) from None

    def _file_header(self) -> list[str] | None:
        """The file's header line (None: an empty file), read on its own: the parser is then
        given positional names, so that a part with other names is an error, not a guess."""
        stream, head = self._open(), b""
        try:
            while b"\n" not in head:
                chunk = stream.read(1 << 16)
                if not chunk:
                    break
                head += chunk
        except _READ_ERRORS as err:
            raise _Problem(self.path, str(err)) from None
        finally:
            stream.close()
        line = head.split(b"\n", 1)[0].decode("utf-8", errors="replace").rstrip("\r")
        if not line.strip():
            return None
        return header_names(line)

    def _reader(self):
        import pyarrow as pa
        import pyarrow.csv as pcsv

        positional = [f"c{i}" for i in range(len(self.header))]
        try:
            return pcsv.open_csv(
                self._open(),
                read_options=pcsv.ReadOptions(
                    block_size=self.block_bytes, use_threads=False, column_names=positional, skip_rows=1
                ),
                parse_options=pcsv.ParseOptions(
                    double_quote=True, newlines_in_values=True, invalid_row_handler=self._on_invalid_row
                ),
                convert_options=pcsv.ConvertOptions(
                    # Every column as raw bytes: typing happens after the item filter (the
                    # clean rows', arrow_typing; Spark's for the rest), and a failed decode must
                    # not fail the file (see _as_text).
                    column_types={name: pa.binary() for name in positional},
                    strings_can_be_null=True,
                    quoted_strings_can_be_null=False,
                    null_values=[""],
                ),
            )
        except pa.ArrowInvalid as err:
            if "Empty CSV file" in str(err):
                return None
            raise self._problem(err) from None
        except _READ_ERRORS as err:
            raise self._problem(err) from None

    def _problem(self, err: Exception) -> _Problem:
        if _ROW_HANDLER_FAILED in str(err):
            # Arrow hands a malformed line to the handler as text: one that is not UTF-8 fails
            # before it gets there. Rare; the driver reads the table again with Spark's reader,
            # which quarantines such a line.
            return _Problem(self.path, f"{ARROW_CANNOT_READ}{err}")
        return _Problem(self.path, str(err))

    def batches(self) -> Iterator[pa.RecordBatch]:
        import pyarrow as pa

        names = self._file_header()
        if names is None:
            return
        self._check_header(names)
        reader = self._reader()
        if reader is None:
            return

        def parse_next() -> tuple[pa.RecordBatch, list[str]]:
            try:
                batch = reader.read_next_batch()
            except (pa.ArrowInvalid, *_READ_ERRORS) as err:
                raise self._problem(err) from None
            lines, self.parsed_bad_lines = self.parsed_bad_lines, []
            return batch, lines

        # The next block is inflated and parsed while this one is filtered, typed and written:
        # on a .gz, one task that nothing else can share, the two halves then use two cores.
        # closing: the thread stops when this task fails or stops early, not when collected.
        with closing(read_ahead(parse_next)) as parsed:
            for batch, lines in parsed:
                self.bad_lines.extend(lines)
                yield from self._convert(batch)
                yield from self._flush_bad_lines()
        self.bad_lines.extend(self.parsed_bad_lines)
        yield from self._flush_bad_lines()
        if self.parts is not None:
            self.parts.close()

    def _check_header(self, found: Sequence[str]) -> None:
        if [n.lower() for n in found] != [n.lower() for n in self.header]:
            raise _Problem(
                self.path,
                f"CSV header does not conform to the schema: expected {self.header}, found {list(found)}",
            )

    def _convert(self, batch: pa.RecordBatch) -> Iterator[pa.RecordBatch]:
        import pyarrow.compute as pc

        broken = _has_line_break(batch.columns)
        if broken is not None:
            self._split_records(batch.columns, broken)
            batch = batch.filter(pc.invert(broken))
        columns = [batch.column(i) for i in self.positions]
        unused = 0
        if self.itemids is not None and self.item_column is not None and len(columns[0]):
            # The other columns are decoded after the filter: most rows are unused items, and
            # decoding is the dearer part. (_as_text of the decoded item column is then a no-op.)
            columns[self.item_column] = _as_text(columns[self.item_column])
            wanted = _wanted(columns[self.item_column], self.itemids)
            before = len(columns[0])
            columns = [pc.filter(c, wanted) for c in columns]
            unused = before - len(columns[0])
        staged = 0
        if len(columns[0]):
            texts = [_as_text(c) for c in columns]
            texts, staged = self._stage_clean(texts)
            if len(texts[0]):
                yield self._out(texts, corrupt=None)
        if unused or staged:
            yield self._marker(unused, staged)

    def _stage_clean(self, texts: list[pa.Array]) -> tuple[list[pa.Array], int]:
        """Write the clean rows of ``texts`` to the parts (typed); (the other rows, how many
        were written)."""
        import pyarrow as pa
        import pyarrow.compute as pc

        if self.staging is None:
            return texts, 0
        mask, typed = arrow_typing.clean_rows(texts, self.staging.logicals, self.staging.required)
        if mask is None:
            return texts, 0
        every = pc.all(mask).as_py()
        if not every:
            typed = [pc.filter(c, mask) for c in typed]
        n = len(typed[0])
        self.parts.write(
            pa.RecordBatch.from_arrays(
                [*typed, pa.repeat(pa.scalar(self.source, pa.string()), n)],
                schema=self.parts.schema,
            )
        )
        if every:
            return [c.slice(0, 0) for c in texts], n
        return [pc.filter(c, pc.invert(mask)) for c in texts], n

    def _split_records(self, columns: Sequence[pa.Array], broken: pa.Array) -> None:
        import pyarrow.compute as pc

        rows = zip(*[pc.filter(c, broken).to_pylist() for c in columns], strict=True)
        self.bad_lines.extend(line for row in rows for line in _physical_lines(row))

    def _flush_bad_lines(self) -> Iterator[pa.RecordBatch]:
        if self.bad_lines:
            lines, self.bad_lines = self.bad_lines, []
            yield self._corrupt(lines)

    def _out(self, columns: Sequence[pa.Array], corrupt: pa.Array | None) -> pa.RecordBatch:
        import pyarrow as pa

        n = len(columns[0])
        return pa.RecordBatch.from_arrays(
            [
                *columns,
                corrupt if corrupt is not None else pa.nulls(n, pa.string()),
                pa.repeat(pa.scalar(self.source, pa.string()), n),
                pa.nulls(n, pa.int64()),
                pa.nulls(n, pa.int64()),
            ],
            names=output_names(self.names),
        )

    def _corrupt(self, lines: Sequence[str]) -> pa.RecordBatch:
        import pyarrow as pa

        n = len(lines)
        empty = [pa.nulls(n, pa.string()) for _ in self.positions]
        return self._out(empty, corrupt=pa.array(list(lines), pa.string()))

    def _marker(self, unused: int, staged: int) -> pa.RecordBatch:
        import pyarrow as pa

        empty = [pa.nulls(1, pa.string()) for _ in (*self.positions, CORRUPT, SOURCE)]
        return pa.RecordBatch.from_arrays(
            [*empty, pa.array([unused], pa.int64()), pa.array([staged], pa.int64())],
            names=output_names(self.names),
        )


def read_ahead(step: Callable[[], T], depth: int = 2) -> Iterator[T]:
    """The results of calling ``step`` until it raises StopIteration, computed by a thread up to
    ``depth`` results ahead of the caller. What ``step`` raises is raised here, in order; closing
    the iterator early stops the thread (after the call under way)."""
    results: queue.Queue = queue.Queue(depth)
    stop = threading.Event()

    def put(item: tuple[Any, BaseException | None]) -> bool:
        while not stop.is_set():
            try:
                results.put(item, timeout=0.1)
                return True
            except queue.Full:
                pass
        return False

    def run() -> None:
        while True:
            try:
                item = (step(), None)
            except StopIteration:
                put((_END, None))
                return
            except BaseException as err:  # noqa: BLE001 - handed to the caller, raised there
                put((_END, err))
                return
            if not put(item):
                return

    thread = threading.Thread(target=run, name="medmod-read-ahead", daemon=True)
    thread.start()
    try:
        while True:
            value, err = results.get()
            if err is not None:
                raise err
            if value is _END:
                return
            yield value
    finally:
        stop.set()
        thread.join()


def output_names(header: Sequence[str]) -> list[str]:
    return [*header, CORRUPT, SOURCE, UNUSED, ARROW_STAGED]


def _parse_partition(
    batches: Iterator[pa.RecordBatch],
    files: Sequence[str],
    header: Sequence[str],
    names: Sequence[str],
    positions: Sequence[int],
    item_column: int | None,
    itemids: Sequence[int] | None,
    access: Mapping[str, S3Access],
    block_bytes: int,
    staging: ArrowStaging | None,
) -> Iterator[pa.RecordBatch]:
    """The task: parse the files whose indices arrive in ``batches`` (a ``spark.range``)."""
    import pyarrow as pa

    wanted = pa.array(sorted(itemids), pa.int64()) if itemids is not None else None
    for batch in batches:
        for index in batch.column(0).to_pylist():
            path = files[index]
            parser = _FileParser(
                path, header, names, positions, item_column, wanted, access, block_bytes, staging, index
            )
            yield from parser.batches()


def read_csv(
    spark: SparkSession,
    files: Sequence[str],
    header: Sequence[str],
    columns: Mapping[str, str],
    item_column: str | None,
    itemids: Sequence[int] | None,
    staging: ArrowStaging | None = None,
) -> DataFrame:
    """The files (local or S3, csv or compressed csv that :func:`arrow_can_read`, each with
    ``header``) as the Spark reader's frame plus ``__unused`` / ``__arrow_staged`` markers:
    ``columns`` is {declared name: name in the header}, in declared order; rows of items outside
    ``itemids`` (of column ``item_column``) are only counted. With ``staging``, the clean rows
    are typed and written to its parts by the tasks, and only counted in the frame. The tasks
    open S3 files with the buckets' S3A settings."""
    declared = list(columns)
    from pyspark.sql.types import LongType, StringType, StructField, StructType

    schema = StructType(
        [StructField(n, StringType()) for n in (*declared, CORRUPT, SOURCE)]
        + [StructField(UNUSED, LongType()), StructField(ARROW_STAGED, LongType())]
    )
    task = partial(
        _parse_partition,
        files=list(files),
        header=list(header),
        names=declared,
        positions=[list(header).index(columns[c]) for c in declared],
        item_column=None if item_column is None else declared.index(item_column),
        itemids=None if itemids is None else [int(i) for i in itemids],
        access=s3_accesses(spark, files),
        block_bytes=_BLOCK_BYTES,
        staging=staging,
    )
    # One partition per file: a partition's single id says which file its task parses.
    return spark.range(0, len(files), 1, len(files)).mapInArrow(task, schema)
