"""Where the ingest of one raw events table spends its time: parsing, typing, writing.

Runs four Spark jobs over the same ``chartevents`` file (no output kept except the last two
writes, under ``--work``) and prints the wall time of each: the csv parse alone (a ``noop``
sink, run twice: the first pays the JVM warm-up), the parse plus typing and checking of every
row, the same with only the benchmark's items typed (what ``ingest`` does), and the staged rows
written as Delta. Usage::

    python scripts/bench_ingest_parts.py --raw /tmp/bench/cache/p3000-s0
"""

from __future__ import annotations

import argparse
import tempfile
import time


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--raw", required=True, help="MIMIC-IV root (synthetic or real)")
    parser.add_argument("--table", default="chartevents", choices=["chartevents", "labevents"])
    parser.add_argument("--work", default=None, help="scratch folder (default: a temp dir)")
    args = parser.parse_args()

    from spark_jobs import ingest, resources
    from spark_jobs.mimic_schema import mimic_iv_tables
    from spark_jobs.session import SparkConfig, build_spark

    spark = build_spark(SparkConfig(driver_memory="8g"))
    work = args.work or tempfile.mkdtemp(prefix="medmod-ingest-parts-")
    table = mimic_iv_tables(ingest.resolve_layout(spark, args.raw, "auto"))[args.table]
    loc = ingest.locate(spark, args.raw, table)
    raw = ingest.read_raw(spark, loc, table)
    itemids = sorted(resources.all_itemids(args.table))

    def wanted_staged():
        """What ``ingest`` stages: the benchmark's items typed, the others only counted."""
        kept, _ = ingest.keep_wanted(raw, itemids)
        return ingest.stage_rows(kept, table)

    def timed(what: str, action) -> None:
        start = time.perf_counter()
        action()
        print(f"{what}: {time.perf_counter() - start:.1f} s", flush=True)

    def noop(df) -> None:
        df.write.format("noop").mode("overwrite").save()

    rows = raw.count()
    print(f"{args.table}: {rows:,} rows in {len(loc.files)} file(s)")
    timed("parse only (warm-up)", lambda: noop(raw))
    timed("parse only", lambda: noop(raw))
    timed("parse + type and check every row", lambda: noop(ingest.stage_rows(raw, table)))
    timed("parse + type and check the benchmark's items", lambda: noop(wanted_staged()))
    staged = wanted_staged()
    timed(
        "... and write the staged rows (Delta)", lambda: staged.write.format("delta").save(f"{work}/staged")
    )
    spark.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
