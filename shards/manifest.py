"""``manifest.json``: the commit point of a shard set and the reader's table of contents.

Layout (FORMAT.md "Manifest")::

    {"format_version": 1, "image_size": 256, "ehr_dtype": "float16", "n_features": 76,
     "sources": {...}, "image_errors": {"<dicom_id>": "missing" | "corrupt"},
     "tasks": {"<task>": {"hourly": bool, "paired": bool,
                          "normalizer": {"columns": [...], "mean": [...], "std": [...]},
                          "splits": {"<split>": {"samples": n, "records": n, "with_image": n,
                                                 "dropped_samples": n, "prevalence": [...],
                                                 "shards": [ShardInfo, ...]}}}}}

Also the exactly-once evaluation assignment: shards go to ranks whole, so a rank's share of the
samples is known in advance (:func:`eval_assignment`) and no sample is read twice or skipped,
whatever the shard count and world size.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import fsspec

from conf.tasks import task_spec
from shards.record import N_FEATURES
from shards.store import ShardInfo, commit_bytes, join

FORMAT_VERSION = 1
MANIFEST = "manifest.json"


class ManifestError(ValueError):
    """A manifest that is missing, malformed, or lacks the task/split asked for."""


def split_entry(shards: Sequence[ShardInfo], task: str, dropped_samples: int = 0) -> dict[str, Any]:
    """Counts, prevalence and shard list of one (task, split) from its written shards."""
    shards = sorted(shards, key=lambda s: s.name)
    samples = sum(s.samples for s in shards)
    width = max((len(s.label_sum) for s in shards), default=0)
    sums = [sum(s.label_sum[i] for s in shards if i < len(s.label_sum)) for i in range(width)]
    return {
        "samples": samples,
        "records": sum(s.records for s in shards),
        "with_image": sum(s.with_image for s in shards),
        "dropped_samples": dropped_samples,
        "prevalence": [v / samples if samples else 0.0 for v in sums],
        "prevalence_kind": "bucket_frequency" if task_spec(task).is_multiclass else "label_mean",
        "shards": [s.to_json() for s in shards],
    }


def normalizer_entry(columns: Sequence[int], mean: Sequence[float], std: Sequence[float]) -> dict:
    if not (len(columns) == len(mean) == len(std)):
        raise ValueError("normalizer columns, mean and std must have the same length")
    return {
        "columns": [int(c) for c in columns],
        "mean": [float(m) for m in mean],
        "std": [float(s) for s in std],
    }


def build_manifest(
    tasks: Mapping[str, Mapping[str, dict[str, Any]]],
    normalizers: Mapping[str, dict],
    *,
    image_size: int,
    paired: Mapping[str, bool] | None = None,
    sources: dict[str, Any] | None = None,
    image_errors: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Assemble the manifest from :func:`split_entry` results per task and split."""
    out_tasks = {}
    for task in sorted(tasks):
        if task not in normalizers:
            raise ValueError(f"no normalizer for task {task!r}")
        out_tasks[task] = {
            "hourly": task_spec(task).hourly,
            "paired": bool((paired or {}).get(task, True)),
            "normalizer": normalizers[task],
            "splits": {split: tasks[task][split] for split in sorted(tasks[task])},
        }
    return {
        "format_version": FORMAT_VERSION,
        "image_size": int(image_size),
        "ehr_dtype": "float16",
        "n_features": N_FEATURES,
        "sources": sources or {},
        "image_errors": dict(sorted((image_errors or {}).items())),
        "tasks": out_tasks,
    }


def write_manifest(root: str, manifest: dict[str, Any]) -> bool:
    """Write ``<root>/manifest.json`` last (temp name, then moved): the shard set's commit point."""
    return commit_bytes(json.dumps(manifest, indent=1, sort_keys=True).encode(), join(root, MANIFEST))


def read_manifest(root: str) -> dict[str, Any]:
    url = join(root, MANIFEST)
    fs, path = fsspec.core.url_to_fs(url)
    fs.invalidate_cache(path.rsplit("/", 1)[0])  # a cached listing from before the commit is stale
    try:
        with fs.open(path, "rb") as fh:
            manifest = json.loads(fh.read())
    except FileNotFoundError:
        raise ManifestError(f"{url} not found: no committed shard set at {root} (run shards.write)") from None
    except json.JSONDecodeError as err:
        raise ManifestError(f"{url} is not valid JSON: {err}") from None
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ManifestError(
            f"{url}: format_version {manifest.get('format_version')!r}, expected {FORMAT_VERSION}"
        )
    return manifest


def split_info(manifest: dict[str, Any], task: str, split: str) -> dict[str, Any]:
    tasks = manifest.get("tasks", {})
    if task not in tasks:
        raise ManifestError(f"task {task!r} not in the manifest; it has {sorted(tasks)}")
    splits = tasks[task]["splits"]
    if split not in splits:
        raise ManifestError(f"split {split!r} of {task!r} not in the manifest; it has {sorted(splits)}")
    return splits[split]


def num_samples(manifest: dict[str, Any], task: str, split: str) -> int:
    """Samples (hourly tasks: hourly samples, not segments) of a task/split."""
    return int(split_info(manifest, task, split)["samples"])


def num_records(manifest: dict[str, Any], task: str, split: str) -> int:
    """Records (hourly tasks: stay segments) of a task/split."""
    return int(split_info(manifest, task, split)["records"])


def eval_assignment(
    manifest: dict[str, Any], task: str, split: str, world_size: int, unit: str = "samples"
) -> list[list[dict[str, Any]]]:
    """Shards per rank for exactly-once evaluation: whole shards, balanced greedily by ``unit``.

    Largest shard first to the currently lightest rank (ties: lowest rank), shards ordered by
    name within a rank: deterministic, so every rank computes the same plan without talking.
    A rank may get no shard at all when there are fewer shards than ranks.
    """
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    shards = split_info(manifest, task, split)["shards"]
    plan: list[list[dict[str, Any]]] = [[] for _ in range(world_size)]
    load = [0] * world_size
    for shard in sorted(shards, key=lambda s: (-int(s[unit]), s["name"])):
        rank = min(range(world_size), key=lambda r: (load[r], r))
        plan[rank].append(shard)
        load[rank] += int(shard[unit])
    return [sorted(p, key=lambda s: s["name"]) for p in plan]


def rank_counts(
    manifest: dict[str, Any], task: str, split: str, world_size: int, unit: str = "samples"
) -> list[int]:
    """How many samples (or records) each rank yields under :func:`eval_assignment`."""
    return [sum(int(s[unit]) for s in p) for p in eval_assignment(manifest, task, split, world_size, unit)]
