"""Independent Spark writes side by side, from driver threads.

On a few cores many of the ETL's writes are small: their time goes to planning, Delta commits
and short jobs rather than to the executors, so one after the other they leave cores idle. Run
from threads, their jobs share the executors while each thread waits on its own commit.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

T = TypeVar("T")


def in_parallel(
    spark: SparkSession, tasks: Sequence[Callable[[], T]], workers: int, what: str = "medmod"
) -> list[T]:
    """Run ``tasks`` (each one or more Spark actions) from ``workers`` threads; results in order.

    The first failure cancels the other tasks' jobs (a corrupt input is reported without waiting
    for the others to finish) and is raised as is. ``what`` names the jobs in Spark's UI / logs.
    """
    if workers <= 1 or len(tasks) <= 1:
        return [task() for task in tasks]
    sc = spark.sparkContext
    group = f"{what.replace(' ', '-')}-{uuid.uuid4().hex[:12]}"

    stopped = threading.Event()

    def call(task: Callable[[], T]) -> T:
        if stopped.is_set():  # another task failed while this one waited for a thread
            raise RuntimeError("cancelled: another task failed")
        sc.setJobGroup(group, what, interruptOnCancel=True)
        return task()

    with ThreadPoolExecutor(max_workers=min(workers, len(tasks)), thread_name_prefix="medmod") as pool:
        futures = [pool.submit(call, task) for task in tasks]
        try:
            wait(futures, return_when=FIRST_EXCEPTION)
            failed = [f for f in futures if f.done() and not f.cancelled() and f.exception() is not None]
            if failed:
                raise failed[0].exception()  # type: ignore[misc]
            return [f.result() for f in futures]
        except BaseException:
            stopped.set()
            for f in futures:
                f.cancel()
            sc.cancelJobGroup(group)
            raise
