"""Where the ETL's CPU goes: CPU seconds by process and JVM thread kind over one run.

    python scripts/profile_etl_cpu.py raw=PATH out=PATH [key=value ...]
                                      [--interval 2] [--java-options="-XX:... -XX:..."]

Runs ``Pipeline(load_config(words), spark).run()`` in this process under
``bench_common.TreeMonitor(threads=True)`` and prints the CPU time (user + system) that every
thread of its process tree (driver Python, the JVM, the Python workers) spent during the run
(Spark's start-up not counted), grouped by process kind and by what the thread is (its name as
Linux keeps it, 15 characters): JIT compilers (``jvm: C2 CompilerThre``, ``jvm: C1 CompilerThre``),
``jvm: Executor task l`` (executor threads running tasks), ``jvm: Thread`` (the driver threads
py4j runs the Python calls on: planning, code generation, Delta commits), GC, and so on. Threads
and processes that end during the run are counted up to their last sample, taken every
``--interval`` seconds; the sampling itself is counted under ``driver_python`` and costs more
the shorter the interval.
``--java-options`` replaces the JVM options that ``spark_jobs.session`` passes to the driver and
executors (the log4j configuration stays), for trying other JIT settings; write it with ``=``,
as its value starts with a dash. Linux only.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_common import TreeMonitor  # noqa: E402


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
    start = time.perf_counter()
    try:
        with TreeMonitor(os.getpid(), args.interval, threads=True) as monitor:
            Pipeline(cfg, spark).run()
    except (IngestError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        spark.stop()
        return 1
    wall = time.perf_counter() - start
    spent = monitor.usage.thread_cpu_by_kind()
    total = sum(spent.values())
    print(f"ETL {wall:.1f} s wall, {total:.1f} CPU s ({total / wall:.2f} cores busy on average)")
    print(f"| {'process kind: thread kind':<44} | CPU s | share |\n| --- | ---: | ---: |")
    for kind, cpu in sorted(spent.items(), key=lambda kv: -kv[1]):
        if cpu >= 0.5:
            print(f"| {kind:<44} | {cpu:5.1f} | {cpu / total:4.0%} |")
    spark.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
