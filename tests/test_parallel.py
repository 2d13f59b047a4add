"""spark_jobs.parallel: independent Spark actions from driver threads."""

from __future__ import annotations

import threading
import time

import pytest

from spark_jobs.parallel import in_parallel


def test_results_in_order_from_several_threads(spark):
    threads = set()

    def count(n: int) -> int:
        threads.add(threading.get_ident())
        return spark.range(n).count()

    assert in_parallel(spark, [lambda n=n: count(n) for n in (5, 1, 3)], 3, "test") == [5, 1, 3]
    assert len(threads) > 1


def test_first_failure_is_raised_and_the_others_cancelled(spark):
    """The failing task's error comes out at once: the other task's running job is cancelled
    (uncancelled, it would run for minutes)."""
    from pyspark.sql import functions as F

    tracker = spark.sparkContext.statusTracker()

    def endless() -> int:
        return spark.range(0, 10**13, 1, 2).select(F.sum("id")).first()[0]

    def fails() -> None:
        deadline = time.monotonic() + 60
        while not tracker.getActiveJobsIds() and time.monotonic() < deadline:
            time.sleep(0.05)
        raise ValueError("bad input")

    start = time.monotonic()
    with pytest.raises(ValueError, match="bad input"):
        in_parallel(spark, [endless, fails], 2, "test")
    assert time.monotonic() - start < 90
