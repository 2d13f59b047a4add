"""Batches for the trainer from the shard set named in the config (``data.loader=wds|dali``).

The trainer asks for two things:

- ``train_iter(epoch, skip)``: exactly ``steps_per_epoch - skip`` batches, the same number on
  every rank. Each rank cycles over its own shards (``repeat``), and an epoch is a fixed number
  of steps computed from the manifest (``train samples // (batch * world)``), so no rank waits in
  an all-reduce for a rank that ran out of data. The stream of epoch ``e`` depends only on
  ``(seed, e, rank)``: a resumed run rebuilds it and skips ``skip`` batches to land on the batch
  the killed run would have trained on next.
- ``eval_iter(split, max_batches)``: this rank's share of the split, whole shards assigned by
  the manifest (``shards.manifest.eval_assignment``), so that across ranks every sample is read
  exactly once whatever the shard count; ``max_batches > 0`` is the fixed validation window of
  chunk-wise training.

Record decoding, normalization, image transforms and collation belong to ``shards.reader``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from itertools import count, islice
from typing import Any

import torch

from trainer.config import RunConfig
from trainer.distributed import DistContext

log = logging.getLogger("medmod.trainer.data")

Batch = dict[str, Any]


class DataError(RuntimeError):
    """The shard set does not fit the run (missing split, too few samples for one step, ...)."""


@dataclass
class ShardData:
    """Train/eval batch streams of one task for one rank."""

    cfg: RunConfig
    ctx: DistContext
    manifest: dict[str, Any]
    loader: Callable[..., Iterable[Batch]]
    mode: str
    steps_per_epoch: int

    def train_iter(self, epoch: int, skip: int = 0) -> Iterator[Batch]:
        """This epoch's remaining training batches; the ``skip`` first ones are consumed now."""
        seed = (self.cfg.train.seed * 1_000_003 + epoch) % (2**31)
        loader = self.loader("train", train=True, seed=seed, batch_size=self.cfg.data.batch_size)
        it = islice(iter(loader), self.steps_per_epoch)
        for _ in range(skip):
            if next(it, None) is None:
                raise DataError("the training stream ended early while replaying to the resume position")
        return it

    def eval_iter(self, split: str, max_batches: int = 0) -> Iterator[Batch]:
        loader = self.loader(
            split, train=False, seed=self.cfg.train.seed, batch_size=self.cfg.data.eval_batch_size
        )
        return islice(iter(loader), max_batches) if max_batches > 0 else iter(loader)

    def count(self, split: str) -> int:
        """Samples in a split (hourly tasks: hourly samples), as the manifest says."""
        from shards.manifest import num_samples

        return num_samples(self.manifest, self.cfg.task, split)


def _unit(cfg: RunConfig, mode: str) -> str:
    if cfg.mode == "pretrain":  # paired samples only
        return "with_image"
    return "records" if mode == "sequence" else "samples"


def steps_per_epoch(manifest: dict[str, Any], cfg: RunConfig, world: int, mode: str) -> int:
    from shards.manifest import split_info

    n = int(split_info(manifest, cfg.task, "train")[_unit(cfg, mode)])
    steps = n // (cfg.data.batch_size * world)
    if steps < 1:
        raise DataError(
            f"{cfg.task}/train has {n} {_unit(cfg, mode)}: fewer than one batch of {cfg.data.batch_size} "
            f"per rank for {world} rank(s); lower data.batch_size"
        )
    return steps


def _wds_loader(cfg: RunConfig, ctx: DistContext, manifest: dict[str, Any], mode: str):
    from shards.reader import collate_samples, collate_sequences, shard_dataset

    collate = collate_sequences if mode == "sequence" else collate_samples
    cache: dict[tuple[str, int, int], torch.utils.data.DataLoader] = {}

    def build(split: str, train: bool, seed: int, batch_size: int) -> torch.utils.data.DataLoader:
        opts = loader_options(cfg, ctx, train)
        key = (split, seed, batch_size)
        if opts["persistent_workers"] and key in cache:
            return cache[key]
        reader = _reader_config(cfg, mode, split, train, seed)
        ds = shard_dataset(cfg.data.shards, reader, ctx.rank, ctx.world_size, manifest)
        loader = torch.utils.data.DataLoader(
            ds,
            batch_size=batch_size,
            collate_fn=collate,
            # Our own generator: building a loader must not draw from the global torch RNG,
            # whose state a checkpoint restores.
            generator=torch.Generator().manual_seed(seed),
            **opts,
        )
        if opts["persistent_workers"]:
            cache[key] = loader
        return loader

    return build


def loader_options(cfg: RunConfig, ctx: DistContext, train: bool) -> dict[str, Any]:
    """DataLoader settings from the config. Pinned memory only helps host-to-GPU copies.
    Persistent workers only for evaluation: its loaders are rebuilt identically every
    validation, so their workers can live on, while each training epoch has its own stream
    (seeded by epoch) and a kept loader per epoch would only pile up idle workers."""
    workers = cfg.data.num_workers
    return {
        "num_workers": workers,
        "pin_memory": cfg.data.pin_memory and ctx.device.type == "cuda",
        "persistent_workers": cfg.data.persistent_workers and workers > 0 and not train,
        "prefetch_factor": 4 if workers else None,
    }


def _reader_config(cfg: RunConfig, mode: str, split: str, train: bool, seed: int) -> Any:
    from shards.reader import ReaderConfig
    from shards.transforms import ImageTransformConfig

    return ReaderConfig(
        task=cfg.task,
        split=split,
        mode=mode,
        train=train,
        exact=not train,
        repeat=train,
        shuffle_buffer=cfg.data.shuffle_buffer,
        seed=seed,
        image=ImageTransformConfig(resize=cfg.data.image_resize, crop=cfg.data.image_crop),
        paired_only=cfg.mode == "pretrain",
    )


def _dali_loader(cfg: RunConfig, ctx: DistContext, manifest: dict[str, Any], mode: str):
    """DALI passes over the rank's shards; training chains passes (new seed each) like ``repeat``."""
    try:
        from shards.dali import dali_loader
    except ImportError as err:
        raise DataError(f"data.loader=dali needs shards.dali and nvidia-dali ({err})") from err

    if cfg.data.dali_device == "mixed" and ctx.device.type != "cuda":
        raise DataError(f"data.dali_device=mixed decodes on the GPU, but this run trains on {ctx.device}")

    def passes(split: str, train: bool, seed: int, batch_size: int) -> Iterator[Batch]:
        for n in count() if train else range(1):
            reader = _reader_config(cfg, mode, split, train, seed + 7 * n)
            yield from dali_loader(
                cfg.data.shards,
                reader,
                batch_size,
                ctx.rank,
                ctx.world_size,
                device=cfg.data.dali_device,
                num_threads=cfg.data.dali_threads,
                manifest=manifest,
                local_rank=ctx.local_rank,
                prefetch=cfg.data.dali_prefetch,
                pin=cfg.data.pin_memory,
            )

    return passes


LOADERS = {"wds": _wds_loader, "dali": _dali_loader}


def check_manifest(manifest: dict[str, Any], cfg: RunConfig) -> None:
    """The shards' sizes against what this run reads: the EHR width the readers and models use,
    and the stored image side against the resize (upscaling stored JPEGs would blur silently)."""
    from shards.record import N_FEATURES

    where = cfg.data.shards
    n_features = manifest.get("n_features")
    if n_features != N_FEATURES:
        raise DataError(
            f"{where}: shards hold {n_features} EHR features per bin, the trainer reads {N_FEATURES}"
        )
    stored = manifest.get("image_size")
    if not isinstance(stored, int) or stored < 1:
        raise DataError(f"{where}: manifest has no valid image_size ({stored!r})")
    if cfg.data.image_resize > stored:
        raise DataError(
            f"{where}: images are stored with a short side of {stored} px, data.image_resize="
            f"{cfg.data.image_resize} would upscale them; use data.image_resize<={stored} "
            f"(and data.image_crop<=image_resize) or write the shards with image_size>={cfg.data.image_resize}"
        )


def build_data(cfg: RunConfig, ctx: DistContext) -> ShardData:
    """The run's data streams; fails early, with the reason, when the shards do not fit."""
    from shards.manifest import ManifestError, read_manifest

    if not cfg.data.shards:
        raise DataError("data.shards=PATH (or s3://...) is required: the root holding manifest.json")
    try:
        manifest = read_manifest(cfg.data.shards)
    except ManifestError as err:
        raise DataError(str(err)) from None
    if cfg.task not in manifest.get("tasks", {}):
        raise DataError(f"task {cfg.task!r} is not in {cfg.data.shards} (it has {sorted(manifest['tasks'])})")
    check_manifest(manifest, cfg)
    # Pretraining pairs one window with one image: sample mode whatever the task.
    mode = "sample" if cfg.mode == "pretrain" else cfg.spec.mode(cfg.train.hourly_mode)
    steps = steps_per_epoch(manifest, cfg, ctx.world_size, mode)
    loader = LOADERS[cfg.data.loader](cfg, ctx, manifest, mode)
    return ShardData(cfg, ctx, manifest, loader, mode, steps)
