"""Tiny hand-made records of every task, for tests here and in other packages (no Spark, no ETL).

    from shards.tiny import tiny_dataset
    manifest = tiny_dataset("/tmp/ds", tasks=("ihm", "decomp"), records=6, records_per_shard=2)

Values are random but seeded; labels follow each task's shape (FORMAT.md), some records have no
image (partial mode), hourly tasks get segments of 1..4 hours.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np

from conf.tasks import task_spec
from shards.record import N_FEATURES, Record, encode_image, tar_key
from shards.write import identity_normalizer, write_dataset

SPLITS = ("train", "val", "test")


def tiny_jpeg(rng: np.random.Generator, image_size: int = 64) -> bytes:
    from PIL import Image

    h, w = int(rng.integers(image_size, 2 * image_size)), int(rng.integers(image_size, 2 * image_size))
    img = Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return encode_image(buf.getvalue(), image_size)


def tiny_record(task: str, split: str, i: int, rng: np.random.Generator, image_size: int = 64) -> Record:
    """Record ``i`` of a (task, split); every third one without an image."""
    stay = 1000 + i + 100000 * SPLITS.index(split) if split in SPLITS else 1000 + i
    image = tiny_jpeg(rng, image_size) if i % 3 != 2 else None
    meta = {
        "stay_id": stay,
        "subject_id": stay // 10,
        "split": split,
        "dicom_id": f"d{stay}" if image else None,
    }
    if task_spec(task).hourly:
        k = int(rng.integers(1, 5))
        hours = np.arange(5, 5 + k, dtype=np.float32)
        bins = hours.astype(np.int32)
        ehr = rng.normal(size=(int(bins.max()), N_FEATURES)).astype(np.float32)
        if task_spec(task).is_multiclass:
            y = rng.integers(0, 10, size=k).astype(np.int64)
            meta["los_remaining_hours"] = [float(30 - h) for h in hours]
        else:
            y = rng.integers(0, 2, size=(k, 1)).astype(np.float32)
        meta["sample_ids"] = [f"{task}:{stay}:{int(h)}" for h in hours]
        return Record(tar_key(i, f"{task}_{stay}"), ehr, y, meta, image, hours, bins)
    t = int(rng.integers(0 if task_spec(task).window == "image_time" else 1, 12))
    ehr = rng.normal(size=(t, N_FEATURES)).astype(np.float32)
    y = rng.integers(0, 2, size=task_spec(task).label_width).astype(np.float32)
    meta["sample_id"] = f"{task}:{stay}:{t}"
    return Record(tar_key(i, meta["sample_id"]), ehr, y, meta, image)


def tiny_records(task: str, split: str, n: int, seed: int = 0, image_size: int = 64) -> list[Record]:
    rng = np.random.default_rng(
        [seed, task_spec(task).label_width, SPLITS.index(split) if split in SPLITS else 9]
    )
    return [tiny_record(task, split, i, rng, image_size) for i in range(n)]


def tiny_dataset(
    root: str,
    tasks: Sequence[str] = ("ihm",),
    splits: Sequence[str] = SPLITS,
    records: int = 6,
    records_per_shard: int = 2,
    seed: int = 0,
    image_size: int = 64,
) -> dict:
    """Write a small shard set (identity normalizer) for ``tasks`` x ``splits``; returns the manifest."""
    recs = {(t, s): tiny_records(t, s, records, seed, image_size) for t in tasks for s in splits}
    norms = {t: identity_normalizer() for t in tasks}
    return write_dataset(
        root,
        recs,
        norms,
        image_size=image_size,
        records_per_shard=records_per_shard,
        paired={t: False for t in tasks},
        sources={"kind": "tiny"},
    )
