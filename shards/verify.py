"""Check a shard set against its manifest and (optionally) against the gold Delta tables.

    python -m shards.verify PATH                 # manifest vs files, and vs the gold tables it names
    python -m shards.verify PATH tables=PATH     # gold tables somewhere else
    python -m shards.verify PATH tables=none     # files only (no Spark)

Checks: every listed shard and index exists with the listed size and sha256; each index equals
the one rebuilt from its tar; record/sample/image counts per shard and per split add up; no
sample id appears twice; and every gold sample of each task/split is in the shards exactly once,
except those dropped for a bad image (counted in the manifest). Exit 0 when all hold, 1 with one
line per problem otherwise, 2 for a bad command line.
"""

from __future__ import annotations

import json
import logging
import sys
import tarfile
from collections import Counter
from collections.abc import Iterator
from typing import Any

import fsspec

from shards.manifest import ManifestError, read_manifest
from shards.record import HOURLY_TASKS
from shards.store import IDX_VERSION, join, sha256_url

log = logging.getLogger("medmod.shards.verify")
MAX_LISTED = 5


def _records(url: str) -> Iterator[tuple[str, dict[str, bytes], list[str]]]:
    """(key, {ext: bytes}, index entries) per record of a tar, streamed."""
    with fsspec.open(url, "rb") as fh, tarfile.open(fileobj=fh, mode="r|") as tf:
        key, parts, entries = None, {}, []
        for m in tf:
            if not m.isfile():
                continue
            base = m.name.rsplit("/", 1)[-1]
            k, ext = base.split(".", 1)
            if key is not None and k != key:
                yield key, parts, entries
                parts, entries = {}, []
            key = k
            parts[ext] = tf.extractfile(m).read()
            entries.append(f"{ext} {m.offset_data} {m.size} {m.name}")
        if key is not None:
            yield key, parts, entries


def check_shard(root: str, shard: dict[str, Any], hourly: bool) -> tuple[list[str], list[str]]:
    """(problems, sample ids) of one shard."""
    problems: list[str] = []
    url = join(root, shard["name"])
    fs, path = fsspec.core.url_to_fs(url)
    if not fs.exists(path):
        return [f"{shard['name']}: listed in the manifest but missing"], []
    if fs.size(path) != shard["size"]:
        problems.append(f"{shard['name']}: size {fs.size(path)} != manifest {shard['size']}")
    if sha256_url(url) != shard["sha256"]:
        return [
            *problems,
            f"{shard['name']}: sha256 differs from the manifest (modified or half-written)",
        ], []
    ids: list[str] = []
    lines, n_rec, n_img = [], 0, 0
    try:
        for _, parts, entries in _records(url):
            meta = json.loads(parts["meta.json"])
            sids = meta["sample_ids"] if hourly else [meta["sample_id"]]
            ids += sids
            n_rec += 1
            n_img += len(sids) * int("cxr.jpg" in parts)
            lines.append(" ".join(entries))
    except (tarfile.TarError, KeyError, ValueError) as err:
        return [*problems, f"{shard['name']}: unreadable record: {err!r}"], ids
    for what, got in (("records", n_rec), ("samples", len(ids)), ("with_image", n_img)):
        if got != shard[what]:
            problems.append(f"{shard['name']}: {what} {got} != manifest {shard[what]}")
    index = f"{IDX_VERSION} {len(lines)}\n" + "\n".join(lines) + "\n"
    idx_url = join(root, shard["index"])
    try:
        with fsspec.open(idx_url, "rb") as fh:
            if fh.read().decode() != index:
                problems.append(f"{shard['index']}: does not match its tar")
    except FileNotFoundError:
        problems.append(f"{shard['index']}: missing")
    return problems, ids


def check_files(root: str, manifest: dict[str, Any]) -> tuple[list[str], dict[tuple[str, str], list[str]]]:
    """Problems and the sample ids per (task, split) found in the shards."""
    problems: list[str] = []
    found: dict[tuple[str, str], list[str]] = {}
    for task, info in sorted(manifest["tasks"].items()):
        for split, entry in sorted(info["splits"].items()):
            ids: list[str] = []
            for shard in entry["shards"]:
                p, sids = check_shard(root, shard, task in HOURLY_TASKS)
                problems += p
                ids += sids
            found[(task, split)] = ids
            for what in ("records", "samples", "with_image"):
                total = sum(s[what] for s in entry["shards"])
                if total != entry[what]:
                    problems.append(f"{task}/{split}: {what} {entry[what]} != sum over shards {total}")
            dup = [s for s, c in Counter(ids).items() if c > 1]
            if dup:
                problems.append(
                    f"{task}/{split}: {len(dup)} sample ids more than once, e.g. {dup[:MAX_LISTED]}"
                )
    return problems, found


def check_gold(
    spark, tables: str, manifest: dict[str, Any], found: dict[tuple[str, str], list[str]]
) -> list[str]:
    """Every gold sample in the shards exactly once (dropped for a bad image: counted)."""
    from pyspark.sql import functions as F

    from shards.spark_write import read_delta, spark_path

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


def verify(root: str, tables: str | None = None, spark=None) -> list[str]:
    """All problems found (empty: the shard set is complete and intact)."""
    try:
        manifest = read_manifest(root)
    except ManifestError as err:
        return [str(err)]
    problems, found = check_files(root, manifest)
    tables = manifest.get("sources", {}).get("tables") if tables is None else tables
    if tables and tables != "none":
        if spark is None:
            from spark_jobs.session import SparkConfig, build_spark

            spark = build_spark(
                SparkConfig(master="local[2]", app_name="shards-verify", shuffle_partitions=4)
            )
        problems += check_gold(spark, tables, manifest, found)
    return problems


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s", stream=sys.stderr)
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if args else 2
    root, rest = args[0], args[1:]
    tables = None
    for word in rest:
        if not word.startswith("tables="):
            print(f"error: unknown argument {word!r} (expected tables=PATH|none)", file=sys.stderr)
            return 2
        tables = word.split("=", 1)[1]
    problems = verify(root, tables)
    if problems:
        print(f"shards.verify: {root}: {len(problems)} problem(s)", file=sys.stderr)
        for p in problems:
            print(f"  - {p}", file=sys.stderr)
        return 1
    manifest = read_manifest(root)
    n = sum(e["samples"] for t in manifest["tasks"].values() for e in t["splits"].values())
    print(f"shards.verify: {root}: OK ({len(manifest['tasks'])} tasks, {n:,} samples)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
