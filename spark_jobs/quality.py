"""Rows kept and rows rejected, with reasons: the bookkeeping every stage shares.

A transform that can drop rows returns a :class:`Checked` pair instead of one DataFrame: the
rows it keeps and the rows it rejects, the latter in one common shape (``REJECT_COLUMNS``) so
that the pipeline can union them into the quarantine table and count them by reason. The rule
the tests hold every stage to: rows in = rows kept + rows rejected.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame

REJECT_COLUMNS = ("stage", "source", "reason", "record")


@dataclass
class Checked:
    kept: DataFrame
    rejected: DataFrame
    # Frames both halves are computed from, persisted so that writing the kept rows and then the
    # rejected ones does not run the whole plan twice; :meth:`release` frees them.
    persisted: tuple[DataFrame, ...] = field(default=(), repr=False)

    def union(self, other: Checked) -> Checked:
        return Checked(self.kept, self.rejected.unionByName(other.rejected), self.persisted + other.persisted)

    def release(self) -> None:
        for df in self.persisted:
            df.unpersist()


def rejects(
    df: DataFrame,
    stage: str,
    source: str | Column,
    reason: str | Column,
    record_columns: list[str] | None = None,
) -> DataFrame:
    """``df``'s rows in the common reject shape; ``record`` holds the original row as JSON.
    ``source`` and ``reason``: a string, or a column of ``df`` when they differ by row."""
    from pyspark.sql import functions as F

    reason_col = F.lit(reason) if isinstance(reason, str) else reason
    source_col = F.lit(source) if isinstance(source, str) else source
    cols = record_columns if record_columns is not None else df.columns
    return df.select(
        F.lit(stage).alias("stage"),
        source_col.cast("string").alias("source"),
        reason_col.cast("string").alias("reason"),
        F.to_json(F.struct(*[F.col(f"`{c}`") for c in cols])).alias("record"),
    )


def empty_rejects(spark) -> DataFrame:
    return spark.createDataFrame([], "stage string, source string, reason string, record string")


def split_by(df: DataFrame, reason: Column, stage: str, source: str) -> Checked:
    """Keep rows whose ``reason`` expression is null; reject the others with that reason.

    ``reason`` is a string Column such as ``F.when(cond, "why")`` — one expression gives both
    halves, so a row can never be both kept and rejected, nor neither.
    """
    from pyspark.sql import functions as F

    tagged = df.withColumn("__reason", reason)
    kept = tagged.where(F.col("__reason").isNull()).drop("__reason")
    bad = tagged.where(F.col("__reason").isNotNull())
    rejected = rejects(bad, stage, source, F.col("__reason"), record_columns=df.columns)
    return Checked(kept, rejected)
