"""The same shards through NVIDIA DALI: ``fn.readers.webdataset`` with the ``.idx`` files.

    for batch in dali_loader(root, ReaderConfig(task="ihm", split="val"), batch_size=16):
        ...  # FORMAT.md batch dicts, like shards.reader.make_loader

DALI reads the tars (random access through the index files), decodes the JPEGs and runs the
SPEC §10 image transforms; ``device="mixed"`` decodes on the GPU (nvJPEG) and keeps images there,
``"cpu"`` (the default, and the only choice without a GPU) decodes with libjpeg-turbo. The EHR
and labels come out of DALI's numpy decoder and go through the same normalization and collate
as the WebDataset reader, so both readers give the same EHR, labels and ids. A record without
an image takes the ``else`` branch of a DALI conditional and yields zeros (FORMAT.md).

Local files only: DALI's reader opens plain paths (copy S3 shards to local disk first).
Exactly-once evaluation uses the same shard plan as the WebDataset reader (one DALI reader over
the rank's shards from :func:`shards.manifest.eval_assignment`, no padding of the last batch).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any, Literal

import numpy as np
import torch

from conf.tasks import task_spec
from shards.manifest import read_manifest
from shards.reader import (
    ReaderConfig,
    build_sample,
    collate_samples,
    collate_sequences,
    expand_hourly,
    rank_shards,
)
from shards.store import join
from shards.transforms import IMAGENET_MEAN, IMAGENET_STD

Device = Literal["cpu", "mixed"]


def _exts(task: str) -> list[str]:
    hourly = ["hours.npy", "bins.npy"] if task_spec(task).hourly else []
    return ["ehr.npy", "cxr.jpg", "y.npy", *hourly, "meta.json"]


def _image_ops(jpg, cfg: ReaderConfig, device: Device):
    """DALI graph of SPEC §10 on one JPEG (inside the ``has image`` branch)."""
    from nvidia.dali import fn, types

    c = cfg.image
    img = fn.decoders.image(jpg, device=device, output_type=types.GRAY)
    img = fn.resize(img, resize_shorter=c.resize, interp_type=types.INTERP_LINEAR, antialias=True)
    if cfg.is_train:
        img = fn.flip(img, horizontal=fn.random.coin_flip(probability=c.flip_p))
        shape = fn.shapes(img, dtype=types.FLOAT)
        size = fn.stack(shape[1], shape[0])  # (w, h)
        center = size * 0.5
        scale = fn.random.uniform(range=(c.scale_min, c.scale_max))
        mt = fn.transforms.scale(scale=fn.stack(scale, scale), center=center)
        mt = fn.transforms.rotation(mt, angle=fn.random.uniform(range=(-c.degrees, c.degrees)), center=center)
        offset = fn.random.uniform(range=(-c.translate, c.translate), shape=[2]) * size
        mt = fn.transforms.translation(mt, offset=offset)
        img = fn.warp_affine(img, matrix=mt, fill_value=0, inverse_map=False, interp_type=types.INTERP_NN)
    img = fn.cat(img, img, img, axis=2)  # grayscale replicated to 3 channels
    return fn.crop_mirror_normalize(
        img,
        crop=(c.crop, c.crop),
        crop_pos_x=0.5,
        crop_pos_y=0.5,
        mean=[255.0 * m for m in IMAGENET_MEAN],
        std=[255.0 * s for s in IMAGENET_STD],
        dtype=types.FLOAT,
        output_layout="CHW",
    )


def build_pipeline(
    files: list[str],
    index_files: list[str],
    cfg: ReaderConfig,
    batch_size: int,
    device: Device = "cpu",
    num_threads: int = 2,
    seed: int = 0,
):
    """A built DALI pipeline over ``files`` yielding the ``_exts(task)`` outputs + image."""
    from nvidia.dali import fn, pipeline_def, types

    exts = _exts(cfg.task)
    device_id = 0 if device == "mixed" else None

    @pipeline_def(
        batch_size=batch_size,
        num_threads=num_threads,
        device_id=device_id,
        seed=seed,
        enable_conditionals=True,
    )
    def pipe():
        outs = fn.readers.webdataset(
            paths=files,
            index_paths=index_files,
            ext=exts,
            missing_component_behavior="empty",
            random_shuffle=cfg.is_train,
            initial_fill=cfg.shuffle_buffer,
            pad_last_batch=False,
            name="reader",
        )
        parts = {e: outs[i] for i, e in enumerate(exts)}
        jpg = parts["cxr.jpg"]
        has = fn.shapes(jpg)[0] > 0
        if has:
            image = _image_ops(jpg, cfg, device)
        else:
            image = fn.reshape(
                fn.zeros(shape=[3, cfg.image.crop, cfg.image.crop], dtype=types.FLOAT), layout="CHW"
            )
            if device == "mixed":
                image = image.gpu()
        arrays = [fn.decoders.numpy(parts[e]) for e in exts if e.endswith(".npy")]
        return (*arrays, parts["meta.json"], image)

    p = pipe()
    p.build()
    return p


def _epoch_size(pipe) -> int:
    return int(pipe.reader_meta("reader")["epoch_size"])


def dali_samples(
    root: str,
    cfg: ReaderConfig,
    batch_size: int = 16,
    rank: int = 0,
    world_size: int = 1,
    device: Device = "cpu",
    num_threads: int = 2,
    manifest: dict | None = None,
) -> Iterator[dict[str, Any]]:
    """Decoded sequence-level samples (one per record) of this rank's shards, one pass."""
    manifest = manifest or read_manifest(root)
    names = rank_shards(manifest, cfg, rank, world_size)
    if not names:
        return
    if "://" in root and not root.startswith("file://"):
        raise ValueError(f"the DALI reader needs local shards, got {root}")
    shard_by_name = {s["name"]: s for s in manifest["tasks"][cfg.task]["splits"][cfg.split]["shards"]}
    files = [join(root, n) for n in names]
    idx = [join(root, shard_by_name[n]["index"]) for n in names]
    pipe = build_pipeline(files, idx, cfg, batch_size, device, num_threads, cfg.seed * 7919 + rank)
    normalizer = manifest["tasks"][cfg.task]["normalizer"]
    left = _epoch_size(pipe)
    while left > 0:
        outs = pipe.run()
        if device == "mixed":
            outs = (*outs[:-1], outs[-1].as_cpu())
        n = min(len(outs[0]), left)
        for i in range(n):
            yield _sample(cfg.task, [np.array(o.at(i)) for o in outs], normalizer)
        left -= n


def _sample(task: str, arrays: list[np.ndarray], normalizer: dict) -> dict[str, Any]:
    """DALI outputs of one record -> the same dict as the WebDataset reader's decoder."""
    *npys, meta_bytes, image = arrays
    rec: dict[str, Any] = {"ehr": npys[0], "y": npys[1], "meta": json.loads(meta_bytes.tobytes())}
    if task_spec(task).hourly:
        rec["hours"], rec["bins"] = npys[2], npys[3]
    img = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))
    return build_sample(task, rec, img, normalizer)


def dali_loader(
    root: str,
    cfg: ReaderConfig,
    batch_size: int,
    rank: int = 0,
    world_size: int = 1,
    device: Device = "cpu",
    num_threads: int = 2,
    manifest: dict | None = None,
) -> Iterator[dict[str, Any]]:
    """FORMAT.md batches from DALI (sample mode expands hourly segments, like the wds reader)."""
    samples = dali_samples(root, cfg, batch_size, rank, world_size, device, num_threads, manifest)
    if cfg.mode == "sample":
        samples = (s for seg in samples for s in expand_hourly(seg))
    collate = collate_sequences if cfg.mode == "sequence" else collate_samples
    batch: list[dict[str, Any]] = []
    for s in samples:
        batch.append(s)
        if len(batch) == batch_size:
            yield collate(batch)
            batch = []
    if batch:
        yield collate(batch)
