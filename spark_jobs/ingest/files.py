"""Where the raw tables are: file-system access and MIMIC-IV layout detection.

Everything goes through the Hadoop FileSystem of Spark's own JVM, so local paths, HDFS and
``s3a://`` / ``s3://`` URLs share one code path and see exactly what Spark will read.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal, NamedTuple

from spark_jobs.ingest.errors import MissingInputError
from spark_jobs.mimic_schema import RawTable, mimic_iv_tables

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

log = logging.getLogger(__name__)


class HadoopFs:
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

    def local_path(self, path: str) -> str:
        """Where the local file system holds ``path`` (a local path or ``file:`` URL) as Spark
        reads and writes it: Hadoop takes a path string as it is, without URL decoding."""
        p, fs = self._path(path)
        return fs.makeQualified(p).toUri().getPath()

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

    def find_damaged(self, files: Sequence[str]) -> str | None:
        """The first compressed file of ``files`` that does not decompress, if any.

        Reads every compressed file through, so it is for the failure path only: Spark's codec
        errors do not say which of a table's parts they came from.
        """
        for f in (f for f in files if is_compressed(f)):
            log.info("checking %s for corruption", f)
            try:
                self.read_through(f)
            except Exception:  # any failure here identifies the damaged file
                return f
        return None


class Located(NamedTuple):
    """Where a raw table was found: the matched path, its format and the data files it holds."""

    path: str
    format: Literal["csv", "parquet"]
    files: tuple[str, ...]


def join(root: str, rel: str) -> str:
    return f"{root.rstrip('/')}/{rel}"


def is_compressed(path: str) -> bool:
    return path.endswith((".gz", ".bz2", ".zst", ".lz4", ".snappy", ".deflate"))


def detect_layout(spark: SparkSession, root: str) -> Literal["v1", "v2"]:
    """``v1`` when patients sit under ``core/`` (MIMIC-IV 1.0), else ``v2``.

    v2 and v3 share their column set and paths, so they cannot (and need not) be told apart;
    say ``layout: v3`` in the config to record which one it is.
    """
    fs = HadoopFs(spark)
    if fs.glob(join(root, "core/patients*")):
        return "v1"
    if fs.glob(join(root, "hosp/patients*")):
        return "v2"
    raise MissingInputError(
        f"no MIMIC-IV patients table under {root}: tried {join(root, 'core/patients*')} (v1.0) "
        f"and {join(root, 'hosp/patients*')} (v2/v3)"
    )


def resolve_layout(spark: SparkSession, root: str, layout: str) -> str:
    """The configured layout, or the detected one for ``auto``."""
    if layout == "auto":
        return detect_layout(spark, root)
    mimic_iv_tables(layout)  # raises on an unknown layout
    return layout


def _parts(fs: HadoopFs, path: str, fmt: str | None) -> tuple[str, list[str]]:
    """(format, data files) of the folder ``path``; ``fmt`` is the format its name implies."""
    files = fs.list_files(path)
    csv_parts = [f for f in files if f.endswith((".csv", ".csv.gz"))]
    parquet_parts = [f for f in files if f.endswith(".parquet")]
    if fmt is None:
        return ("parquet", parquet_parts) if parquet_parts else ("csv", csv_parts)
    # A folder named like a file is a Spark-style output: all its visible files are parts.
    return fmt, (parquet_parts if fmt == "parquet" else csv_parts) or files


def locate(spark: SparkSession, root: str, table: RawTable) -> Located:
    """Find ``table`` under ``root``; the first that exists wins, in this order.

    ``<rel>.csv.gz``, ``<rel>.csv`` (file or folder of parts), folder ``<rel>/`` (csv or parquet
    parts), ``<rel>.parquet`` (file or folder). Fails at once, listing every path tried, because a
    missing table found only at the end of a long job wastes the job.
    """
    fs = HadoopFs(spark)
    base = join(root, table.relpath)
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
            found, parts = _parts(fs, path, fmt)
            if parts:
                return Located(path, found, tuple(parts))
            tried.append(f"{path} (folder without .csv, .csv.gz or .parquet files)")
            continue
        tried.append(path if kind is None else f"{path} (file of unknown format)")
    raise MissingInputError(f"table {table.name!r} not found under {root}; tried:\n  " + "\n  ".join(tried))
