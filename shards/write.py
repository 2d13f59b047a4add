"""Write shard sets from records: a small pure-Python API (no Spark).

Stable, used by other packages' tests to build tiny shard sets::

    from shards.write import Record, encode_image, write_shard_files, write_dataset
    infos = write_shard_files(records, "/tmp/ds", task="ihm", split="train", records_per_shard=4)
    write_dataset("/tmp/ds", {("ihm", "train"): records}, normalizers={"ihm": norm})

``write_dataset`` writes the shards of every (task, split) and then ``manifest.json`` (the commit
point). The Spark job ``python -m spark_jobs.write_shards`` writes the same files from the gold
Delta tables.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from itertools import islice

from shards.manifest import build_manifest, normalizer_entry, split_entry, write_manifest
from shards.record import Record, encode_image, tar_key
from shards.store import ShardInfo, write_shard

__all__ = [
    "Record",
    "ShardInfo",
    "encode_image",
    "identity_normalizer",
    "tar_key",
    "write_dataset",
    "write_manifest",
    "write_shard_files",
]


def _chunks(records: Iterable[Record], size: int) -> Iterator[list[Record]]:
    it = iter(records)
    while chunk := list(islice(it, size)):
        yield chunk


def write_shard_files(
    records: Iterable[Record],
    root: str,
    *,
    task: str,
    split: str,
    records_per_shard: int = 1000,
    start_index: int = 0,
) -> list[ShardInfo]:
    """Write ``records`` (in order) as shards ``<task>-<split>-<start_index + i>.tar`` (+ ``.idx``).

    ``root`` is a local path or an fsspec URL (``s3://bucket/prefix``). Each shard is committed
    on its own (temp name + move); no manifest is written — see :func:`write_dataset`.
    """
    if records_per_shard < 1:
        raise ValueError(f"records_per_shard must be >= 1, got {records_per_shard}")
    return [
        write_shard(chunk, root, task, split, start_index + i)
        for i, chunk in enumerate(_chunks(records, records_per_shard))
    ]


def identity_normalizer(columns: Iterable[int] = (2, 3, *range(49, 59))) -> dict:
    """A normalizer that changes nothing (mean 0, std 1): for hand-made test shard sets."""
    cols = list(columns)
    return normalizer_entry(cols, [0.0] * len(cols), [1.0] * len(cols))


def write_dataset(
    root: str,
    records: Mapping[tuple[str, str], Iterable[Record]],
    normalizers: Mapping[str, dict],
    *,
    image_size: int = 256,
    records_per_shard: int = 1000,
    paired: Mapping[str, bool] | None = None,
    sources: dict | None = None,
) -> dict:
    """Shards for every ``(task, split)`` of ``records``, then the manifest; returns the manifest.

    ``normalizers``: task -> :func:`shards.manifest.normalizer_entry` (or :func:`identity_normalizer`).
    """
    entries: dict[str, dict[str, dict]] = {}
    for (task, split), recs in sorted(records.items()):
        infos = write_shard_files(recs, root, task=task, split=split, records_per_shard=records_per_shard)
        entries.setdefault(task, {})[split] = split_entry(infos, task)
    manifest = build_manifest(entries, normalizers, image_size=image_size, paired=paired, sources=sources)
    write_manifest(root, manifest)
    return manifest
