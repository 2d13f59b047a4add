"""Linear probing on cached features (``mode=probe``, issue #12).

A frozen encoder gives the same features every epoch, so each split is encoded once: every rank
encodes its exactly-once share of the split (no augmentation), flattened to one row per scored
sample by the scoring module's row logic (hourly tasks in sequence mode: one row per labelled
hour, as the supervised trainer scores them), and saves it as
``<run>/features/<split>.rank<r>-of-<w>.pt``. The head then trains on those tensors; the trainer
loop, chunking, validation and scoring are unchanged (the model's head reads ``features``).
A cache is reused when its key (the encoder checkpoint file, its size and mtime, the features
and image settings) matches, and rebuilt otherwise.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from trainer import checkpoint as ckpt
from trainer import scoring
from trainer.config import RunConfig
from trainer.data import DataError, ShardData
from trainer.distributed import DistContext, all_gather_object
from trainer.models.ssl import FEATURES, encoder_checkpoint

log = logging.getLogger("medmod.trainer.features")

SPLITS = ("train", "val", "test")
FOLDER = "features"


def cache_key(cfg: RunConfig, model_cfg: dict[str, Any]) -> dict[str, Any]:
    """What the cached features depend on: the encoder weights (file, size, mtime), which
    features, the image preprocessing and the hourly mode."""
    source = model_cfg.get("encoder_ckpt")
    key: dict[str, Any] = {"encoder": None, "init": model_cfg.get("init"), "seed": cfg.train.seed}
    if model_cfg.get("init") == "pretrained" and source:
        path = encoder_checkpoint(source).resolve()
        stat = path.stat()
        key["encoder"] = {"path": str(path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    key |= {
        "features": model_cfg.get("features"),
        "image": (cfg.data.image_resize, cfg.data.image_crop),
        "hourly_mode": cfg.train.hourly_mode,
    }
    return key


@torch.no_grad()
def encode_split(model: torch.nn.Module, data: ShardData, split: str, device: torch.device) -> dict[str, Any]:
    """This rank's share of ``split`` as feature rows with labels, ids and LOS hours."""
    model.eval()
    sequence = data.mode == "sequence"
    feats, ys, ids, hours = [], [], [], []
    for batch in data.eval_iter(split):
        batch = scoring.move(batch, device)
        out = scoring.rows(data.mode, model.features(batch, sequence=sequence), batch)
        feats.append(out.logits.float().cpu())
        ys.append(out.y.cpu())
        ids += out.sample_ids
        if out.los_hours is not None:
            hours.append(out.los_hours.float().cpu())
    if not feats:
        raise DataError(f"{split}: this rank has no samples to encode")
    return {
        "features": torch.cat(feats),
        "y": torch.cat(ys),
        "sample_id": ids,
        "los_hours": torch.cat(hours) if hours else None,
    }


@dataclass
class CachedData:
    """The ShardData interface (train_iter / eval_iter / steps_per_epoch) over cached rows."""

    cfg: RunConfig
    ctx: DistContext
    manifest: dict[str, Any]
    splits: dict[str, dict[str, Any]]
    steps_per_epoch: int
    mode: str = "sample"

    def _batches(self, split: str, order: torch.Tensor, size: int) -> Iterator[dict[str, Any]]:
        part = self.splits[split]
        for start in range(0, len(order), size):
            idx = order[start : start + size]
            batch = {FEATURES: part["features"][idx], "y": part["y"][idx]}
            batch["sample_id"] = [part["sample_id"][i] for i in idx.tolist()]
            if part["los_hours"] is not None:
                batch["los_hours"] = part["los_hours"][idx]
            yield batch

    def train_iter(self, epoch: int, skip: int = 0) -> Iterator[dict[str, Any]]:
        """A fresh shuffle per (seed, epoch, rank); the same step count on every rank."""
        rows = len(self.splits["train"]["sample_id"])
        gen = torch.Generator().manual_seed((self.cfg.train.seed * 1_000_003 + epoch) * 131 + self.ctx.rank)
        order = torch.randperm(rows, generator=gen)[: self.steps_per_epoch * self.cfg.data.batch_size]
        batches = self._batches("train", order, self.cfg.data.batch_size)
        for _ in range(skip):
            next(batches)
        return batches

    def eval_iter(self, split: str, max_batches: int = 0) -> Iterator[dict[str, Any]]:
        rows = len(self.splits[split]["sample_id"])
        batches = self._batches(split, torch.arange(rows), self.cfg.data.eval_batch_size)
        if max_batches > 0:
            return (b for _, b in zip(range(max_batches), batches))
        return batches


def _load_or_encode(
    path: Path, key: dict[str, Any], model: torch.nn.Module, data: ShardData, split: str, ctx: DistContext
) -> dict[str, Any]:
    if path.is_file():
        cached = ckpt.safe_load(path, map_location="cpu")
        if cached.get("key") == key:
            return cached
        log.info("%s was cached for other encoder settings; encoding %s again", path, split)
    part = encode_split(model, data, split, ctx.device)
    ckpt.save_atomic({**part, "key": key}, path)
    return part


def cached_data(cfg: RunConfig, ctx: DistContext, model: torch.nn.Module, data: ShardData) -> CachedData:
    """Every split encoded once by the frozen encoders (or read back), as a CachedData."""
    from conf import typed

    if any(p.requires_grad for name, p in model.named_parameters() if not name.startswith("classifier.")):
        raise typed.ConfigError("train.cache_features needs frozen encoders (model.freeze_encoders=true)")
    key = cache_key(cfg, typed.to_dict(model.config))
    folder = cfg.run_dir() / FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    model.to(ctx.device)
    splits = {
        split: _load_or_encode(
            folder / f"{split}.rank{ctx.rank}-of-{ctx.world_size}.pt", key, model, data, split, ctx
        )
        for split in SPLITS
    }
    rows = min(all_gather_object(len(splits["train"]["sample_id"]), ctx))
    steps = rows // cfg.data.batch_size
    if steps < 1:
        raise DataError(
            f"cached train features: {rows} rows on the smallest rank, fewer than data.batch_size"
        )
    log.info(
        "probe on cached features in %s: %d train rows per rank, %d steps per epoch", folder, rows, steps
    )
    return CachedData(cfg, ctx, data.manifest, splits, steps)
