"""Input problems as short Python errors that name the file, instead of a JVM stack trace.

Spark reports a truncated gzip or a header that does not match as a Java exception whose text
is a page of stack frames, often without the file's name. The user has a file to fix, so the
boundary of every read translates such a failure into an :class:`IngestError` naming it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from spark_jobs.ingest.files import HadoopFs


class IngestError(Exception):
    """An input problem the user has to fix; the message names the file."""


class MissingInputError(IngestError, FileNotFoundError):
    """A raw table is not where the layout says, under any of the accepted names."""


class HeaderError(IngestError, ValueError):
    """A csv header lacks a declared column (or repeats one)."""


class CorruptInputError(IngestError):
    """A file exists but cannot be read: truncated or corrupt compression, bad parquet, ..."""


class NeedsSparkReader(IngestError):
    """The Arrow reader met input only Spark's csv reader quarantines (see ``arrow_csv``)."""


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


def _java_exception(exc: BaseException):
    return getattr(exc, "java_exception", None) or getattr(exc, "_origin", None)


# What a Python task (the Arrow reader) puts before its one-line description of a bad input,
# and before an input it cannot read but Spark's csv reader can.
PYTHON_INPUT_ERROR = "medmod-input-error: "
ARROW_CANNOT_READ = "needs the spark reader: "


def _java_cause(exc: BaseException) -> str:
    """The innermost Java exception as 'Class: message' (its first lines), else str(exc); for a
    Python task's input error, its own line instead of the Python traceback around it."""
    text = _full_text(exc)
    if PYTHON_INPUT_ERROR in text:
        return text.split(PYTHON_INPUT_ERROR, 1)[1].splitlines()[0]
    jexc = _java_exception(exc)
    if jexc is None:
        return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    while jexc.getCause() is not None:
        jexc = jexc.getCause()
    lines = str(jexc.toString()).splitlines()
    return "\n".join(lines[:8])


def _full_text(exc: BaseException) -> str:
    jexc = _java_exception(exc)
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


def _culprit(exc: BaseException, files: Sequence[str], fs: HadoopFs | None, only_inputs: bool) -> str | None:
    """The input file ``exc`` is about, or None when it is not about reading an input file."""
    text = _full_text(exc)
    named = [f for f in files if _bare(f) in text]
    if named:
        return named[0]
    if not only_inputs and not any(marker in text for marker in _DAMAGED_INPUT):
        return None
    if len(files) == 1:
        return files[0]
    # Spark does not say which file a codec error came from; find it (failure path only).
    damaged = fs.find_damaged(files) if fs is not None else None
    return damaged or "one of " + ", ".join(files)


@contextmanager
def naming_files(
    files: Sequence[str], what: str = "reading", fs: HadoopFs | None = None, only_inputs: bool = False
) -> Iterator[None]:
    """Turn a Spark/Java failure caused by one of ``files`` into a short :class:`IngestError` that
    names the file and the root cause. Unless the block touches nothing but ``files``
    (``only_inputs``), failures that are not about them (an unwritable output, say) propagate
    unchanged. ``fs`` lets a codec error among several files be pinned on the damaged one."""
    from py4j.protocol import Py4JJavaError
    from pyspark.errors.exceptions.captured import CapturedException

    try:
        yield
    except (Py4JJavaError, CapturedException) as exc:
        culprit = _culprit(exc, files, fs, only_inputs)
        if culprit is None:
            raise
        cause = _java_cause(exc)
        if ARROW_CANNOT_READ in cause:
            raise NeedsSparkReader(f"error {what} {culprit}:\n  {cause}") from None
        if "CSV header does not conform" in cause:
            hint = "\n(every part of a table must have the first part's header, in the same order)"
            raise HeaderError(f"error {what} {culprit}:\n  {cause}{hint}") from None
        raise CorruptInputError(f"error {what} {culprit}:\n  {cause}") from None
