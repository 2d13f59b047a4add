"""A Spark job that a test can kill a worker into, deterministically (not a test module itself).

    scripts/submit.sh --master URL tests/cluster_blocking_job.py --out DIR --markers DIR [--parts N]

``--parts`` tasks each write ``<markers>/started-<partition>-<attempt>.json`` (partition, attempt,
pid, process group, working directory: where the task runs) and then wait until
``<markers>/release`` exists before producing their rows. A test can therefore see that tasks run
and on which worker, kill that worker while they are certainly mid-job, and only then let the job
go on; a job released beforehand runs straight through (the undisturbed run). A task still waiting
after ``--wait-s`` fails, so a test that never releases cannot hang the job.

The rows (a pure function of the partition) go to a Delta table at ``--out`` through the project's
``delta_io.write_table`` (one overwrite commit); the job then reads the committed table back through
Delta and writes its rows, sorted, to ``<out>.rows.json`` for the test to compare.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

ROWS_PER_PART = 250


def _rows_waiting_for_release(markers: str, wait_s: float):
    """The task body (mapPartitionsWithIndex): say where it runs, wait for release, emit rows.
    Defined in the submitted file (``__main__``), so it reaches the executors by value."""

    def run(index, _items):
        from pyspark import TaskContext

        attempt = TaskContext.get().attemptNumber()
        where = {
            "partition": index,
            "attempt": attempt,
            "pid": os.getpid(),
            "pgid": os.getpgid(0),
            "cwd": os.getcwd(),
        }
        marker = Path(markers) / f"started-{index}-{attempt}.json"
        tmp = marker.with_name(f".{marker.name}.tmp")
        tmp.write_text(json.dumps(where))
        tmp.replace(marker)  # the test never reads half a marker
        deadline = time.monotonic() + wait_s
        while not (Path(markers) / "release").exists():
            if time.monotonic() > deadline:
                raise RuntimeError(f"task {index} attempt {attempt}: no {markers}/release within {wait_s}s")
            time.sleep(0.1)
        for i in range(ROWS_PER_PART):
            key = index * ROWS_PER_PART + i
            yield (index, key, f"row-{key}", (key * 2654435761 % 1000003) / 7.0)

    return run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--markers", required=True)
    parser.add_argument("--parts", type=int, default=4)
    parser.add_argument("--wait-s", type=float, default=180.0)
    args = parser.parse_args(argv)

    from pyspark.sql.types import DoubleType, IntegerType, LongType, StringType, StructField, StructType

    from spark_jobs import delta_io, jars
    from spark_jobs.session import SparkConfig, build_spark

    # Local paths only, no S3: the executors get the Delta jars alone. Each would otherwise fetch
    # and copy the 280 MB AWS SDK bundle before its first task, most of a minute on 2 shared cores.
    delta_jars = ",".join(str(p) for p in jars.local_paths(jars.DELTA))
    spark = build_spark(
        SparkConfig(app_name="medmod-blocking-job", shuffle_partitions=2, extra={"spark.jars": delta_jars})
    )
    schema = StructType(
        [
            StructField("part", IntegerType(), False),
            StructField("key", LongType(), False),
            StructField("name", StringType(), False),
            StructField("value", DoubleType(), False),
        ]
    )
    sc = spark.sparkContext
    rows = sc.parallelize(range(args.parts), args.parts).mapPartitionsWithIndex(
        _rows_waiting_for_release(str(Path(args.markers).resolve()), args.wait_s)
    )
    written = delta_io.write_table(
        spark.createDataFrame(rows, schema), args.out, {"job": "cluster_blocking_job", "parts": args.parts}
    )
    # Sorted here, not with orderBy: a sort in Spark would add a sampling job and a shuffle.
    back = sorted(list(r) for r in spark.read.format("delta").load(args.out).collect())
    Path(f"{args.out}.rows.json").write_text(json.dumps(back))
    print(f"blocking job: {written} rows written, {len(back)} read back, master={sc.master}", flush=True)
    spark.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
