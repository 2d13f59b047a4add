"""The same shards through NVIDIA DALI: ``fn.readers.webdataset`` or an external source.

    for batch in dali_loader(root, ReaderConfig(task="ihm", split="val"), batch_size=16):
        ...  # FORMAT.md batch dicts, like shards.reader.make_loader

DALI decodes the JPEGs and runs the SPEC §10 image transforms; ``device="mixed"`` decodes on the
GPU (nvJPEG) of this rank (``LOCAL_RANK``) and the images reach the batch as a CUDA tensor with
no host round trip; ``"cpu"`` (the default, and the only choice without a GPU) decodes with
libjpeg-turbo. The EHR and labels come out of DALI's numpy decoder and go through the same
normalization and collate as the WebDataset reader, so both readers give the same EHR, labels
and ids. A record without an image takes the ``else`` branch of a DALI conditional and yields
zeros (FORMAT.md).

Where the records come from (:func:`source_kind`): local shards go through DALI's own reader
(random access through the ``.idx`` files); ``s3://`` (any fsspec URL) shards are streamed by
:func:`shards.reader.record_stream` and fed to the same graph through ``fn.external_source`` as
encoded bytes, so streaming and GPU decode combine. Exactly-once evaluation uses the same shard
plan as the WebDataset reader (:func:`shards.manifest.eval_assignment`, no padding).

Eight ranks share a node: each rank's pipeline gets its share of the CPUs
(:func:`size_resources`) and runs on its own GPU (:func:`device_id_for`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
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
    record_stream,
)
from shards.store import join
from shards.transforms import IMAGENET_MEAN, IMAGENET_STD

Device = Literal["cpu", "mixed"]
Source = Literal["reader", "stream"]

log = logging.getLogger("medmod.shards.dali")

MAX_THREADS = 8  # per pipeline: past this, decode threads mostly contend with the other ranks'


@dataclass(frozen=True)
class DaliResources:
    """One rank's pipeline sizing: CPU threads and batches decoded ahead (prefetch queue)."""

    num_threads: int
    prefetch_queue_depth: int = 2


def device_id_for(device: Device, local_rank: int | None = None, gpus: int | None = None) -> int | None:
    """The GPU this rank's pipeline runs on: the rank's local device (``LOCAL_RANK``, as torchrun
    sets it), wrapped by the ``gpus`` visible when ranks share GPUs — the trainer's own
    ``trainer.distributed.cuda_index`` — and none for CPU pipelines. A fixed 0 would put every
    rank of a node on the first GPU."""
    if device == "cpu":
        return None
    rank = int(os.environ.get("LOCAL_RANK", "0")) if local_rank is None else local_rank
    if rank < 0:
        raise ValueError(f"local rank must be >= 0, got {rank}")
    if gpus is None:
        import torch

        gpus = torch.cuda.device_count()
    return rank % gpus if gpus > 0 else rank


def size_resources(cpus: int, local_ranks: int, threads: int = 0, prefetch: int = 2) -> DaliResources:
    """Threads for one of ``local_ranks`` pipelines on a node with ``cpus`` usable cores: an equal
    share, less the core the rank's training process keeps busy, between 1 and MAX_THREADS
    (``threads > 0`` is an explicit choice and wins). The prefetch queue costs
    ``prefetch x batch`` decoded images per rank, small next to the model, so 2 (one batch in use,
    one being decoded) is enough unless a user raises it."""
    if prefetch < 1:
        raise ValueError(f"DALI prefetch queue depth must be >= 1, got {prefetch}")
    if threads > 0:
        return DaliResources(threads, prefetch)
    share = max(1, cpus // max(1, local_ranks))
    return DaliResources(max(1, min(share - 1, MAX_THREADS)), prefetch)


def node_resources(threads: int = 0, prefetch: int = 2) -> DaliResources:
    """:func:`size_resources` for this process: the cores it may run on, ``LOCAL_WORLD_SIZE`` ranks."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return size_resources(cpus, int(os.environ.get("LOCAL_WORLD_SIZE", "1")), threads, prefetch)


def source_kind(root: str) -> Source:
    """DALI's reader opens local paths only; anything else is streamed through fsspec."""
    return "stream" if "://" in root and not root.startswith("file://") else "reader"


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


def _reader_inputs(files: list[str], index_files: list[str], exts: list[str], cfg: ReaderConfig):
    from nvidia.dali import fn

    return fn.readers.webdataset(
        paths=files,
        index_paths=index_files,
        ext=exts,
        missing_component_behavior="empty",
        random_shuffle=cfg.is_train,
        initial_fill=cfg.shuffle_buffer,
        pad_last_batch=False,
        name="reader",
    )


def _stream_inputs(batches: Iterator[tuple[list[np.ndarray], ...]], exts: list[str]):
    from nvidia.dali import fn, types

    return fn.external_source(source=batches, num_outputs=len(exts), dtype=types.UINT8, ndim=1)


def external_batches(
    records: Iterable[dict[str, Any]], exts: list[str], batch_size: int
) -> Iterator[tuple[list[np.ndarray], ...]]:
    """Undecoded records -> per-component batches of uint8 arrays, as DALI's reader emits them
    (a missing component is an empty array); the last batch may be short."""
    batch: list[dict[str, Any]] = []
    for rec in records:
        batch.append(rec)
        if len(batch) == batch_size:
            yield _columns(batch, exts)
            batch = []
    if batch:
        yield _columns(batch, exts)


def _columns(batch: list[dict[str, Any]], exts: list[str]) -> tuple[list[np.ndarray], ...]:
    empty = b""
    return tuple([np.frombuffer(rec.get(e) or empty, dtype=np.uint8) for rec in batch] for e in exts)


def build_pipeline(
    files: list[str],
    index_files: list[str],
    cfg: ReaderConfig,
    batch_size: int,
    device: Device = "cpu",
    num_threads: int = 2,
    seed: int = 0,
    *,
    device_id: int | None = None,
    prefetch: int = 2,
    batches: Iterator[tuple[list[np.ndarray], ...]] | None = None,
):
    """A built DALI pipeline yielding the ``_exts(task)`` outputs + image, reading ``files``
    with DALI's reader, or the encoded ``batches`` of an external source when given."""
    from nvidia.dali import fn, pipeline_def, types

    exts = _exts(cfg.task)
    if device == "mixed" and device_id is None:
        device_id = device_id_for(device)

    @pipeline_def(
        batch_size=batch_size,
        num_threads=num_threads,
        device_id=device_id if device == "mixed" else None,
        seed=seed,
        prefetch_queue_depth=prefetch,
        enable_conditionals=True,
    )
    def pipe():
        if batches is None:
            outs = _reader_inputs(files, index_files, exts, cfg)
        else:
            outs = _stream_inputs(batches, exts)
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


def cuda_device(device_id: int | None) -> torch.device:
    return torch.device("cuda", device_id)


def images_to_torch(images, device: Device, device_id: int | None = None) -> list[torch.Tensor]:
    """DALI's image batch -> one ``[3, H, W]`` tensor per sample. CPU pipelines give host tensors;
    ``mixed`` ones copy the batch once, GPU to GPU, into a CUDA tensor (DALI reuses its buffers,
    so a zero-copy view would be overwritten by the next run), never through host memory."""
    if device == "cpu":
        return [
            torch.from_numpy(np.ascontiguousarray(np.array(images.at(i)), dtype=np.float32))
            for i in range(len(images))
        ]
    from nvidia.dali.plugin.pytorch import feed_ndarray

    dense = images.as_tensor()
    target = cuda_device(device_id if device_id is not None else device_id_for(device))
    out = torch.empty(tuple(dense.shape()), dtype=torch.float32, device=target)
    feed_ndarray(dense, out, cuda_stream=torch.cuda.current_stream(target))
    return list(out.unbind(0))


def _pipeline_for(
    root: str,
    cfg: ReaderConfig,
    names: list[str],
    manifest: dict,
    batch_size: int,
    device: Device,
    resources: DaliResources,
    seed: int,
    device_id: int | None,
    rank: int,
    world_size: int,
):
    """(pipeline, samples it will deliver or None for "until the stream ends")."""
    common = {"device_id": device_id, "prefetch": resources.prefetch_queue_depth}
    if source_kind(root) == "stream":
        records = record_stream(root, dataclasses.replace(cfg, repeat=False), rank, world_size, manifest)
        batches = external_batches(records, _exts(cfg.task), batch_size)
        pipe = build_pipeline(
            [], [], cfg, batch_size, device, resources.num_threads, seed, batches=batches, **common
        )
        return pipe, None
    shard_by_name = {s["name"]: s for s in manifest["tasks"][cfg.task]["splits"][cfg.split]["shards"]}
    files = [join(root, n) for n in names]
    idx = [join(root, shard_by_name[n]["index"]) for n in names]
    pipe = build_pipeline(files, idx, cfg, batch_size, device, resources.num_threads, seed, **common)
    return pipe, _epoch_size(pipe)


def _run_batches(pipe, left: int | None) -> Iterator[tuple[Any, int]]:
    """Pipeline outputs and how many of their samples to keep: a reader epoch is ``left``
    samples (DALI's reader wraps around), an external source ends with StopIteration."""
    while left is None or left > 0:
        try:
            outs = pipe.run()
        except StopIteration:
            return
        n = len(outs[0]) if left is None else min(len(outs[0]), left)
        yield outs, n
        if left is not None:
            left -= n


def dali_samples(
    root: str,
    cfg: ReaderConfig,
    batch_size: int = 16,
    rank: int = 0,
    world_size: int = 1,
    device: Device = "cpu",
    num_threads: int = 0,
    manifest: dict | None = None,
    *,
    local_rank: int | None = None,
    prefetch: int = 2,
) -> Iterator[dict[str, Any]]:
    """Decoded sequence-level samples (one per record) of this rank's shards, one pass.
    ``num_threads=0`` sizes the pipeline for the node (:func:`node_resources`)."""
    manifest = manifest or read_manifest(root)
    names = rank_shards(manifest, cfg, rank, world_size)
    if not names:
        return
    resources = node_resources(num_threads, prefetch)
    device_id = device_id_for(device, local_rank)
    seed = cfg.seed * 7919 + rank
    pipe, left = _pipeline_for(
        root, cfg, names, manifest, batch_size, device, resources, seed, device_id, rank, world_size
    )
    normalizer = manifest["tasks"][cfg.task]["normalizer"]
    for outs, n in _run_batches(pipe, left):
        images = images_to_torch(outs[-1], device, device_id)
        for i in range(n):
            yield _sample(cfg.task, [np.array(o.at(i)) for o in outs[:-1]], images[i], normalizer)


def _sample(task: str, arrays: list[np.ndarray], image: torch.Tensor, normalizer: dict) -> dict[str, Any]:
    """DALI outputs of one record -> the same dict as the WebDataset reader's decoder."""
    *npys, meta_bytes = arrays
    rec: dict[str, Any] = {"ehr": npys[0], "y": npys[1], "meta": json.loads(meta_bytes.tobytes())}
    if task_spec(task).hourly:
        rec["hours"], rec["bins"] = npys[2], npys[3]
    return build_sample(task, rec, image, normalizer)


def pin_host_tensors(batch: dict[str, Any]) -> dict[str, Any]:
    """Page-locked copies of a batch's host tensors, so that the trainer's ``non_blocking`` move
    overlaps with compute (CUDA tensors, e.g. DALI's GPU images, pass through)."""
    return {
        k: v.pin_memory() if torch.is_tensor(v) and v.device.type == "cpu" else v for k, v in batch.items()
    }


def dali_loader(
    root: str,
    cfg: ReaderConfig,
    batch_size: int,
    rank: int = 0,
    world_size: int = 1,
    device: Device = "cpu",
    num_threads: int = 0,
    manifest: dict | None = None,
    *,
    local_rank: int | None = None,
    prefetch: int = 2,
    pin: bool = True,
) -> Iterator[dict[str, Any]]:
    """FORMAT.md batches from DALI (sample mode expands hourly segments, like the wds reader).
    With ``device="mixed"`` the image batch is a CUDA tensor and (``pin``) the rest is in
    pinned memory."""
    samples = dali_samples(
        root,
        cfg,
        batch_size,
        rank,
        world_size,
        device,
        num_threads,
        manifest,
        local_rank=local_rank,
        prefetch=prefetch,
    )
    if cfg.paired_only:  # SSL pretraining reads pairs; DALI's pipeline has no record filter
        samples = (s for s in samples if s["has_image"])
    if cfg.mode == "sample":
        samples = (s for seg in samples for s in expand_hourly(seg))
    collate = collate_sequences if cfg.mode == "sequence" else collate_samples
    finish = pin_host_tensors if device == "mixed" and pin else (lambda b: b)
    batch: list[dict[str, Any]] = []
    for s in samples:
        batch.append(s)
        if len(batch) == batch_size:
            yield finish(collate(batch))
            batch = []
    if batch:
        yield finish(collate(batch))
