"""Where the ETL's CPU goes: CPU seconds by process and JVM thread kind over one run.

    python scripts/profile_etl_cpu.py raw=PATH out=PATH [key=value ...]
                                      [--interval 2] [--java-options="-XX:... -XX:..."]

Runs ``Pipeline(load_config(words), spark).run()`` in this process and reads, from /proc, the
CPU time (user + system) of every thread of its process tree (driver Python, the JVM, the
Python workers) spent during the run (Spark's start-up not counted), grouped by what the thread
is (its name as Linux keeps it, 15 characters): JIT compilers (``C2 CompilerThre``,
``C1 CompilerThre``), ``Executor task l`` (executor threads running tasks), ``Thread`` (the
driver threads py4j runs the Python calls on: planning, code generation, Delta commits), GC,
and so on. Threads and processes that end during the run are counted up to their last sample,
taken every ``--interval`` seconds; the sampling itself is counted under the driver Python
(``python: python``) and costs more the shorter the interval.
``--java-options`` replaces the JVM options that ``spark_jobs.session`` passes to the driver and
executors (the log4j configuration stays), for trying other JIT settings; write it with ``=``,
as its value starts with a dash. Linux only.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

CLOCK_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def thread_kind(name: str) -> str:
    """A thread's name without its number: ``C2 CompilerThread1`` -> ``C2 CompilerThread``."""
    return re.sub(r"[\s#\-]*\d+$", "", name).strip() or name


def stat_cpu(stat: str) -> tuple[str, float]:
    """(name, CPU seconds) of a ``/proc/<pid>/task/<tid>/stat`` line; the name may hold spaces
    and parentheses, so it is cut at the first '(' and the last ')'."""
    name = stat[stat.index("(") + 1 : stat.rindex(")")]
    fields = stat[stat.rindex(")") + 2 :].split()
    return name, (int(fields[11]) + int(fields[12])) / CLOCK_TICK  # utime + stime


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text()
    except OSError:
        return None


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (children of any of its threads)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            tids = os.listdir(f"/proc/{p}/task")
        except OSError:
            continue
        for tid in tids:
            todo += [int(c) for c in (_read(f"/proc/{p}/task/{tid}/children") or "").split()]
    return out


def sample(root: int, into: dict[tuple[int, str], tuple[str, float]]) -> None:
    """Record the CPU seconds of every thread under ``root`` as (process kind, thread kind)."""
    for pid in process_tree(root):
        comm = (_read(f"/proc/{pid}/comm") or "").strip()
        process = "python worker" if comm.startswith("python") and pid != root else comm
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tids:
            stat = _read(f"/proc/{pid}/task/{tid}/stat")
            if stat:
                name, cpu = stat_cpu(stat)
                kind = "python" if process == "python worker" else thread_kind(name)
                into[(pid, tid)] = (f"{process}: {kind}", cpu)


def by_kind(before: dict, after: dict) -> dict[str, float]:
    """CPU seconds spent between two sets of samples, summed by kind."""
    spent: dict[str, float] = collections.Counter()
    for key, (kind, cpu) in after.items():
        spent[kind] += cpu - before.get(key, (kind, 0.0))[1]
    return dict(spent)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("words", nargs="+", help="ETL config words (raw=..., out=..., key=value)")
    parser.add_argument("--interval", type=float, default=2.0, help="seconds between samples")
    parser.add_argument(
        "--java-options", help="JVM options instead of spark_jobs.session's (--java-options=-XX:...)"
    )
    args = parser.parse_args(argv)
    if not Path("/proc/self/task").is_dir():
        parser.error("needs Linux's /proc")

    from conf import typed
    from spark_jobs import session
    from spark_jobs.ingest import IngestError
    from spark_jobs.pipeline import Pipeline, load_config

    if args.java_options is not None:
        session.JAVA_OPTIONS = f"-Dlog4j.configurationFile=file:{session.LOG4J_CONF} {args.java_options}"
    try:
        cfg = load_config(args.words)
    except typed.ConfigError as err:
        parser.error(str(err))
    spark = session.build_spark(cfg.spark)
    root = os.getpid()
    before: dict = {}
    sample(root, before)
    seen = dict(before)
    stop = threading.Event()

    def sampler() -> None:
        while not stop.wait(args.interval):
            sample(root, seen)

    thread = threading.Thread(target=sampler, daemon=True)
    thread.start()
    start = time.perf_counter()
    try:
        Pipeline(cfg, spark).run()
    except (IngestError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        spark.stop()
        return 1
    finally:
        wall = time.perf_counter() - start
        stop.set()
        thread.join()
    sample(root, seen)
    spent = by_kind(before, seen)
    total = sum(spent.values())
    print(f"ETL {wall:.1f} s wall, {total:.1f} CPU s ({total / wall:.2f} cores busy on average)")
    print(f"| {'process: thread kind':<44} | CPU s | share |\n| --- | ---: | ---: |")
    for kind, cpu in sorted(spent.items(), key=lambda kv: -kv[1]):
        if cpu >= 0.5:
            print(f"| {kind:<44} | {cpu:5.1f} | {cpu / total:4.0%} |")
    spark.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
