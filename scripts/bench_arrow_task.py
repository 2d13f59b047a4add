"""The Arrow reader's task on one raw events file, alone in this process: wall and CPU seconds.

What a Spark task of ``ingest.reader=arrow`` runs for one ``.csv.gz`` (inflate, parse, drop the
rows of unused items, type the clean rows and write them as Parquet parts), without Spark, in
three variants run in turn (``--repeat`` rounds):

- ``in turn, checked times``: each block parsed, then filtered, typed and written, before the
  next is read; plain timestamps typed by the value-by-value checks (regex, strptime, day and
  second compared back): the task before the read-ahead and the ISO cast;
- ``in turn``: the same with plain timestamps typed by Arrow's ISO cast;
- ``read ahead``: the next block parsed in a thread while the current one is filtered, typed
  and written (what the task does). Usage::

    python scripts/bench_arrow_task.py --raw /tmp/bench/cache/p5000-s3-u13 [--table labevents]
"""

from __future__ import annotations

import argparse
import gzip
import os
import shutil
import tempfile
import time
from contextlib import contextmanager


def _sequential(step, depth: int = 2):
    """``arrow_csv.read_ahead`` without the thread: each step when its result is wanted."""
    while True:
        try:
            yield step()
        except StopIteration:
            return


@contextmanager
def _variant(name: str):
    from spark_jobs.ingest import arrow_csv, arrow_typing

    read_ahead, plain_timestamp = arrow_csv.read_ahead, arrow_typing._plain_timestamp
    if name != "read ahead":
        arrow_csv.read_ahead = _sequential
    if name == "in turn, checked times":
        arrow_typing._plain_timestamp = arrow_typing._checked_timestamp
    try:
        yield
    finally:
        arrow_csv.read_ahead, arrow_typing._plain_timestamp = read_ahead, plain_timestamp


def _run_task(path: str, table, parts: str) -> tuple[int, int]:
    """(rows passed on to Spark, clean rows staged) of one parse of ``path``."""
    import pyarrow as pa

    from spark_jobs import resources
    from spark_jobs.ingest import arrow_csv
    from spark_jobs.ingest.staging import ARROW_STAGED, UNUSED, header_names, required_ids

    shutil.rmtree(parts, ignore_errors=True)
    with gzip.open(path, "rt") if path.endswith(".gz") else open(path) as f:
        header = header_names(f.readline().rstrip("\r\n"))
    declared = list(table.column_names)
    required = set(required_ids(table))
    staging = arrow_csv.ArrowStaging(
        folder=parts,
        names=tuple(declared),
        logicals=tuple(logical for _, logical in table.columns),
        required=tuple(c in required for c in declared),
        rows_per_file=1_000_000,
    )
    itemids = pa.array(sorted(resources.all_itemids(table.name)), pa.int64())
    parser = arrow_csv._FileParser(
        path,
        header,
        declared,
        [header.index(c) for c in declared],
        declared.index("itemid"),
        itemids,
        {},
        staging=staging,
    )
    passed = staged = 0
    for batch in parser.batches():
        markers = batch.column(UNUSED).is_valid()
        passed += batch.num_rows - markers.true_count
        staged += sum(v for v in batch.column(ARROW_STAGED).to_pylist() if v is not None)
    return passed, staged


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--raw", required=True, help="MIMIC-IV root (synthetic or real)")
    parser.add_argument("--table", default="chartevents", choices=["chartevents", "labevents"])
    parser.add_argument("--repeat", type=int, default=2, help="rounds of the three variants")
    parser.add_argument("--work", default=None, help="scratch folder for the parts (default: temp)")
    args = parser.parse_args()

    from spark_jobs.mimic_schema import mimic_iv_tables

    table = mimic_iv_tables("v2")[args.table]
    folder = "icu" if args.table == "chartevents" else "hosp"
    path = os.path.join(args.raw, folder, f"{args.table}.csv.gz")
    work = args.work or tempfile.mkdtemp(prefix="medmod-arrow-task-")
    print(f"{path}: {os.path.getsize(path) / 2**20:,.0f} MiB; load average {os.getloadavg()}")
    for round_ in range(1, args.repeat + 1):
        for name in ("in turn, checked times", "in turn", "read ahead"):
            with _variant(name):
                wall, cpu = time.perf_counter(), time.process_time()
                passed, staged = _run_task(path, table, os.path.join(work, "parts"))
                wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            print(
                f"round {round_}, {name:<22}: {wall:6.2f} s wall, {cpu:6.2f} s CPU "
                f"({staged:,} rows staged, {passed:,} passed on)",
                flush=True,
            )
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
