"""Compare two ETL outputs (and their shard sets) row for row: the check of a refactoring.

    python scripts/diff_outputs.py --tables A B [--shards SA SB] [--ignore TABLE ...]

Every Delta table under ``<tables>/{bronze,silver,gold}`` of either side (and ``_quality``
without its run ids) is compared as a multiset of rows (``exceptAll`` both ways), so a different
file layout or row order does not count, a changed value does. Shard sets are compared by the
sha256 and size of every shard and index file their manifests list. Prints one line per table
and exits 1 when anything differs, or when a table exists on one side only.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO)]

from spark_jobs import delta_io  # noqa: E402
from spark_jobs.session import SparkConfig, build_spark  # noqa: E402

LAYERS = ("bronze", "silver", "gold")


def delta_tables(root: Path) -> set[str]:
    """``layer/table`` of every Delta table under ``root`` (and ``_quality``)."""
    found = {
        f"{p.parent.parent.parent.name}/{p.parent.parent.name}" for p in root.glob("*/*/_delta_log/*.json")
    }
    found = {t for t in found if t.split("/")[0] in LAYERS}
    return found | ({"_quality"} if (root / "_quality" / "_delta_log").is_dir() else set())


def diff_table(spark, a: str, b: str, name: str) -> tuple[int, int, int]:
    """(rows in a, rows only in a, rows only in b)."""
    left, right = delta_io.read_table(spark, a), delta_io.read_table(spark, b)
    if name == "_quality":  # the run id differs by construction
        left, right = left.drop("run_id"), right.drop("run_id")
    if left.columns != right.columns:
        raise ValueError(f"{name}: columns differ: {left.columns} vs {right.columns}")
    return left.count(), left.exceptAll(right).count(), right.exceptAll(left).count()


def shard_files(root: Path) -> dict[str, tuple[str, int]]:
    manifest = json.loads((root / "manifest.json").read_text())
    out = {}
    for task in manifest["tasks"].values():
        for split in task["splits"].values():
            for shard in split["shards"]:
                out[shard["name"]] = (shard["sha256"], shard["size"])
                out[shard["index"]] = (shard["index_sha256"], 0)
    return out


def compare_tables(spark, a: Path, b: Path, ignore: set[str]) -> int:
    names_a, names_b = delta_tables(a), delta_tables(b)
    problems = 0
    for name in sorted((names_a | names_b) - ignore):
        if name not in names_a or name not in names_b:
            print(f"{name:<28} only in {'A' if name in names_a else 'B'}")
            problems += 1
            continue
        rows, only_a, only_b = diff_table(spark, str(a / name), str(b / name), name)
        same = only_a == 0 and only_b == 0
        problems += not same
        print(
            f"{name:<28} {rows:>9,} rows  {'equal' if same else f'DIFFER: {only_a} only in A, {only_b} only in B'}"
        )
    return problems


def compare_shards(a: Path, b: Path) -> int:
    files_a, files_b = shard_files(a), shard_files(b)
    differ = sorted(k for k in files_a.keys() | files_b.keys() if files_a.get(k) != files_b.get(k))
    print(f"shards: {len(files_a)} files in A, {len(files_b)} in B, {len(differ)} differ {differ[:5]}")
    return len(differ)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tables", nargs=2, type=Path, metavar=("A", "B"), required=True)
    p.add_argument("--shards", nargs=2, type=Path, metavar=("SA", "SB"))
    p.add_argument("--ignore", nargs="*", default=[], help="layer/table names to skip (e.g. new tables)")
    args = p.parse_args(argv)
    spark = build_spark(SparkConfig(master="local[2]", app_name="diff-outputs", shuffle_partitions=4))
    try:
        problems = compare_tables(spark, *args.tables, set(args.ignore))
    finally:
        spark.stop()
    if args.shards:
        problems += compare_shards(*args.shards)
    print("no differences" if not problems else f"{problems} difference(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
