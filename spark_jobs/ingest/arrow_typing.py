"""Typing of raw event rows in the Arrow reader's task, for the rows whose fate is certain.

Spark types every raw value (:func:`~spark_jobs.ingest.staging.stage_rows`), which on the events
tables is the JVM's share of the ingest's longest chain (BENCHMARKS.md). Most raw values are in
the plain forms MIMIC writes: ``12345``, ``72.5``, ``2180-07-23 14:00:00``. For those, the typed
value is certain and the same in Arrow as in Spark, so the parsing task types them itself and
writes such rows straight to Parquet parts of the staging copy.

A row is *clean* when every typed value in it is absent (null or empty) or in its plain form,
every required id is present, and no text holds U+FFFD (the mark of bytes that were not UTF-8):
no check of :func:`~spark_jobs.ingest.staging.stage_rows` can reject it, and its values are
the ones Spark would give. Every other row goes to Spark as before, so the rules of typing and
rejecting stay in one place; this module only has to be right about the rows it accepts.

Plain forms (anything else is left to Spark, whatever it is):
- long / int: ASCII digits only, at most 18 / 9 of them (no sign, no blanks, no ``.0``);
- double: ``-?digits`` or ``-?digits.digits``, at most 30 characters (both Arrow and Java
  round decimal text to the nearest double);
- timestamp: ``YYYY-MM-DD HH:MM:SS``, year 1000-9999, a real calendar date and time of day.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING

from spark_jobs.ingest.staging import REPLACEMENT_CHAR

if TYPE_CHECKING:
    import pyarrow as pa

_MAX_DIGITS = {"long": 18, "int": 9}  # always fits int64 / int32
_DOUBLE_RE = r"^-?[0-9]+(\.[0-9]+)?$"
_MAX_DOUBLE_CHARS = 30
_TIMESTAMP_RE = r"^[1-9][0-9]{3}-[0-9]{2}-[0-9]{2} [0-9]{2}:[0-9]{2}:[0-9]{2}$"
_TIMESTAMP_FORMAT = "%Y-%m-%d %H:%M:%S"
_FIRST_PLAIN_TIME = datetime(1000, 1, 1)  # years 1000-9999, as _TIMESTAMP_RE
_PLAIN_TIME_SHAPE = "YYYY-MM-DD HH:MM:SS"
# The logical types a plain form is defined for (mimic_schema); a present value of another
# type (date) leaves its row to Spark.
TYPED = ("long", "int", "double", "timestamp")


def arrow_type(logical: str) -> pa.DataType:
    """The Arrow type Spark reads back as the logical type's Spark type."""
    import pyarrow as pa

    return {
        "long": pa.int64(),
        "int": pa.int32(),
        "double": pa.float64(),
        # UTC-adjusted micros: Spark's TimestampType (not TIMESTAMP_NTZ).
        "timestamp": pa.timestamp("us", tz="UTC"),
        "date": pa.date32(),
        "string": pa.string(),
    }[logical]


def absent(text: pa.Array) -> pa.Array:
    """True where a raw value is null or empty (Spark: not present; typed null, no reject)."""
    import pyarrow.compute as pc

    return pc.fill_null(pc.equal(pc.binary_length(text), 0), True)


def plain_value(text: pa.Array, logical: str) -> pa.Array:
    """The typed value where ``text`` (UTF-8 strings) is in the plain form of ``logical``,
    else null."""
    if logical in _MAX_DIGITS:
        return _plain_integer(text, logical)
    if logical == "double":
        return _plain_double(text)
    if logical == "timestamp":
        return _plain_timestamp(text)
    raise ValueError(f"no plain form for {logical!r}")


def _plain_integer(text: pa.Array, logical: str) -> pa.Array:
    import pyarrow as pa
    import pyarrow.compute as pc

    plain = pc.fill_null(
        pc.and_(pc.ascii_is_decimal(text), pc.less_equal(pc.binary_length(text), _MAX_DIGITS[logical])), False
    )
    return pc.if_else(plain, pc.cast(pc.if_else(plain, text, pa.scalar("0")), arrow_type(logical)), None)


def _plain_double(text: pa.Array) -> pa.Array:
    import pyarrow as pa
    import pyarrow.compute as pc

    plain = pc.fill_null(
        pc.and_(
            pc.match_substring_regex(text, _DOUBLE_RE),
            pc.less_equal(pc.binary_length(text), _MAX_DOUBLE_CHARS),
        ),
        False,
    )
    return pc.if_else(plain, pc.cast(pc.if_else(plain, text, pa.scalar("0")), pa.float64()), None)


def _plain_timestamp(text: pa.Array) -> pa.Array:
    import pyarrow as pa
    import pyarrow.compute as pc

    # Arrow's ISO 8601 cast is several times faster than the checks of _checked_timestamp. Given
    # 19 bytes with the first blank at byte 10, the only form it accepts is the plain one, with a
    # real calendar date and second (it parses digits, '-' and ':' at their places; a zone suffix
    # does not parse into a zone-less type). It fails the whole array on one value it cannot
    # parse: an array holding such a candidate is checked value by value instead.
    candidate = pc.and_(
        pc.equal(pc.binary_length(text), len(_PLAIN_TIME_SHAPE)),
        pc.equal(pc.find_substring(text, " "), _PLAIN_TIME_SHAPE.index(" ")),
    )
    try:
        parsed = pc.cast(pc.if_else(pc.fill_null(candidate, False), text, None), pa.timestamp("us"))
    except pa.ArrowInvalid:
        return _checked_timestamp(text)
    after_999 = pc.greater_equal(parsed, pa.scalar(_FIRST_PLAIN_TIME, pa.timestamp("us")))
    return pc.if_else(after_999, parsed, None).cast(arrow_type("timestamp"))


def _checked_timestamp(text: pa.Array) -> pa.Array:
    """:func:`_plain_timestamp` value by value: every text is checked on its own."""
    import pyarrow.compute as pc

    shaped = pc.if_else(pc.fill_null(pc.match_substring_regex(text, _TIMESTAMP_RE), False), text, None)
    parsed = pc.strptime(shaped, format=_TIMESTAMP_FORMAT, unit="us", error_is_null=True)
    # strptime checks the ranges of month (1-12), day (1-31), hour and minute, but rolls a day
    # past the end of its month into the next (02-30 -> 03-02) and a leap second (:60) into the
    # next minute; Spark rejects both: the day and the second must come back unchanged.
    real = pc.and_(_same(pc.day(parsed), shaped, 8), _same(pc.second(parsed), shaped, 17))
    # A naive timestamp cast to a UTC one keeps its micros: the wall time read as UTC, as Spark
    # (session time zone UTC) reads it.
    return pc.if_else(real, parsed, None).cast(arrow_type("timestamp"))


def _same(field: pa.Array, text: pa.Array, start: int) -> pa.Array:
    """True where ``field`` equals the two digits of ``text`` at ``start``."""
    import pyarrow.compute as pc

    digits = pc.cast(pc.utf8_slice_codeunits(text, start, start + 2), "int64")
    return pc.fill_null(pc.equal(pc.cast(field, "int64"), digits), False)


def clean_rows(
    columns: Sequence[pa.Array], logicals: Sequence[str], required: Sequence[bool]
) -> tuple[pa.Array | None, list[pa.Array]]:
    """(mask of the clean rows, or None when no row is clean; the typed columns, values of the
    other rows undefined) of UTF-8 ``columns`` of the given logical types; ``required``: the
    columns whose value must be present (the table's required ids)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    mask = pa.scalar(True)
    typed = []
    for text, logical, must in zip(columns, logicals, required, strict=True):
        missing = absent(text)
        if logical == "string":
            value = text
            ok = pc.invert(pc.fill_null(pc.match_substring(text, REPLACEMENT_CHAR), False))
            if must:  # Spark's test of presence trims blanks first
                ok = pc.and_(ok, pc.fill_null(pc.greater(pc.utf8_length(pc.utf8_trim(text, " ")), 0), False))
        elif logical in TYPED:
            value = plain_value(text, logical)
            ok = pc.is_valid(value) if must else pc.or_(missing, pc.is_valid(value))
        else:
            value, ok = pa.nulls(len(text), arrow_type(logical)), missing
        typed.append(value)
        mask = pc.and_(mask, ok)
    if isinstance(mask, pa.Scalar) or not pc.any(mask).as_py():
        return None, typed
    return mask, typed
