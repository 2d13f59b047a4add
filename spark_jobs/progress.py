"""Progress of long Spark jobs on the console: tasks done / total, from Spark's status tracker.

On a terminal a single line is redrawn; otherwise (CI, log files) one plain line is logged every
``every_s`` seconds, so long runs show life without flooding logs.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
import time

log = logging.getLogger("medmod.progress")


def _task_counts(tracker) -> tuple[int, int]:
    done = total = 0
    for stage_id in tracker.getActiveStageIds():
        info = tracker.getStageInfo(stage_id)
        if info is not None:
            done += info.numCompletedTasks
            total += info.numTasks
    return done, total


@contextlib.contextmanager
def spark_progress(spark, label: str, every_s: float = 10.0, enabled: bool = True):
    """Report active-stage task progress while the body runs."""
    if not enabled:
        yield
        return
    tty = sys.stderr.isatty()
    stop = threading.Event()
    start = time.time()

    def report() -> None:
        tracker = spark.sparkContext.statusTracker()
        last_log = start
        while not stop.wait(1.0 if tty else every_s):
            done, total = _task_counts(tracker)
            elapsed = time.time() - start
            if tty:
                print(f"\r{label}: {done}/{total} tasks, {elapsed:.0f}s", end="", file=sys.stderr, flush=True)
            elif total and time.time() - last_log >= every_s:
                log.info("%s: %d/%d tasks, %.0fs", label, done, total, elapsed)
                last_log = time.time()

    thread = threading.Thread(target=report, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=2)
        if tty:
            print(f"\r{label}: done in {time.time() - start:.0f}s" + " " * 20, file=sys.stderr)
