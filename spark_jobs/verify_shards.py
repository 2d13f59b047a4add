"""Check a shard set against its manifest and against the gold Delta tables it was written from.

    python -m spark_jobs.verify_shards PATH                 # vs the gold tables the manifest names
    python -m spark_jobs.verify_shards PATH tables=PATH     # gold tables somewhere else

First the file checks of ``python -m shards.verify`` (sizes, sha256, index files, counts, no
sample twice), then: every gold sample of each task/split is in the shards exactly once, except
those dropped for a bad image (counted in the manifest). Exit 0 when all hold, 1 with one line per
problem otherwise, 2 for a bad command line.
"""

from __future__ import annotations

import sys
from typing import Any

from shards.store import join
from shards.verify import MAX_LISTED, command_words, inspect, report
from spark_jobs.session import SparkConfig, build_spark
from spark_jobs.write_shards import read_delta, spark_path


def check_gold(
    spark, tables: str, manifest: dict[str, Any], found: dict[tuple[str, str], list[str]]
) -> list[str]:
    """Every gold sample in the shards exactly once (dropped for a bad image: counted)."""
    from pyspark.sql import functions as F

    problems: list[str] = []
    bad_images = set(manifest.get("image_errors", {}))
    for task, info in sorted(manifest["tasks"].items()):
        gold = read_delta(spark, spark_path(join(tables, "gold", f"samples_{task}"))).select(
            "sample_id", "split", "dicom_id"
        )
        shard_ids = spark.createDataFrame(
            [(sid, split) for (t, split), ids in found.items() if t == task for sid in ids],
            "sample_id string, split string",
        )
        missing = gold.join(shard_ids, ["sample_id", "split"], "left_anti")
        extra = shard_ids.join(gold, ["sample_id", "split"], "left_anti")
        lost = (
            missing.where(~F.col("dicom_id").isin(list(bad_images)) | F.col("dicom_id").isNull())
            if bad_images
            else missing
        )
        dropped = missing.groupBy("split").count().collect()
        for row in dropped:
            listed = (
                info["splits"].get(row["split"], {}).get("dropped_samples", 0) if info.get("paired") else 0
            )
            n_lost = lost.where(F.col("split") == row["split"]).count()
            if n_lost or row["count"] != listed:
                example = [
                    r["sample_id"]
                    for r in lost.where(F.col("split") == row["split"]).limit(MAX_LISTED).collect()
                ]
                problems.append(
                    f"{task}/{row['split']}: {row['count']} gold samples not in the shards "
                    f"(manifest drops {listed} for bad images); e.g. {example}"
                )
        n_extra = extra.count()
        if n_extra:
            example = [r["sample_id"] for r in extra.limit(MAX_LISTED).collect()]
            problems.append(f"{task}: {n_extra} shard samples not in gold samples_{task}, e.g. {example}")
        gold_splits = {r["split"] for r in gold.select("split").distinct().collect()}
        for split in sorted(gold_splits - set(info["splits"])):
            problems.append(f"{task}/{split}: in the gold table but not in the manifest")
    return problems


def verify_with_tables(root: str, tables: str | None = None, spark=None) -> list[str]:
    """All problems found by the file checks and the gold-table check (empty: all good).

    ``tables``: the ETL's out; None: the one the manifest names.
    """
    return _check(root, tables, spark)[0]


def _check(root: str, tables: str | None, spark) -> tuple[list[str], dict[str, Any] | None]:
    """(problems, the manifest or None when it could not be read)."""
    problems, manifest, found = inspect(root)
    if manifest is None:
        return problems, None
    tables = tables or manifest.get("sources", {}).get("tables")
    if not tables:
        return [*problems, f"{root}: the manifest names no gold tables; give tables=PATH"], manifest
    from pyspark.sql import SparkSession

    # A session this call did not start (a caller's, a test's) is used and left running.
    spark = spark or SparkSession.getActiveSession()
    own = spark is None
    if own:
        spark = build_spark(SparkConfig(master="local[2]", app_name="verify-shards", shuffle_partitions=4))
    try:
        return problems + check_gold(spark, tables, manifest, found), manifest
    finally:
        if own:
            spark.stop()


def main(argv: list[str] | None = None) -> int:
    args = command_words(argv, __doc__)
    if isinstance(args, int):
        return args
    root, tables = args[0], None
    for word in args[1:]:
        if not word.startswith("tables="):
            print(f"error: unknown argument {word!r} (expected tables=PATH)", file=sys.stderr)
            return 2
        tables = word.split("=", 1)[1]
    try:
        problems, manifest = _check(root, tables, None)
    except FileNotFoundError as err:
        problems, manifest = [str(err)], None
    return report(root, problems, manifest, "verify_shards")


if __name__ == "__main__":
    raise SystemExit(main())
