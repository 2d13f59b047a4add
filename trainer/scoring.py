"""Scoring: model outputs per sample in both hourly modes, gather to rank 0, metrics, files.

``sample`` mode: the batch holds one window per sample, ``model(batch) -> [B, C]``.
``sequence`` mode: the batch holds stay segments; one causal ``forward_sequence -> [B, T, C]``
is gathered at ``hour_index`` and masked by ``y_mask``, which gives the same ``[N, C]`` rows (and
the same sample ids) as ``sample`` mode would.

A library shared by training (``trainer.train``) and rescoring (``trainer.rescore``); it imports
neither, so both can depend on it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trainer import metrics
from trainer.distributed import DistContext, gather_object
from trainer.tasks import TaskSpec

log = logging.getLogger("medmod.trainer.scoring")


@dataclass
class Outputs:
    """Per-sample logits with their labels and ids, flattened across hours in sequence mode."""

    logits: torch.Tensor  # [N, C]
    y: torch.Tensor  # [N, L] float or [N] int64
    sample_ids: list[str]
    los_hours: torch.Tensor | None = None  # [N]


class ModeForward(torch.nn.Module):
    """The model's sample or sequence path as ``forward``: what DDP wraps, so that its gradient
    hooks see whichever one the run uses (calling ``forward_sequence`` past DDP would skip them)."""

    def __init__(self, model: torch.nn.Module, mode: str):
        super().__init__()
        self.model = model
        self.sequence = mode == "sequence"

    def forward(self, batch: dict[str, Any]) -> torch.Tensor:
        return self.model.forward_sequence(batch) if self.sequence else self.model(batch)


def _rows_sample(raw: torch.Tensor, batch: dict[str, Any]) -> Outputs:
    return Outputs(raw, batch["y"], list(batch["sample_id"]), batch.get("los_hours"))


def _rows_sequence(raw: torch.Tensor, batch: dict[str, Any]) -> Outputs:
    index = batch["hour_index"]  # [B, K]; raw is [B, T, C]
    picked = torch.gather(raw, 1, index.unsqueeze(-1).expand(-1, -1, raw.shape[-1]))  # [B, K, C]
    mask = batch["y_mask"]
    ids = [sid for row, keep in zip(batch["sample_id"], mask.tolist()) for sid, k in zip(row, keep) if k]
    hours = batch.get("los_hours")
    return Outputs(picked[mask], batch["y"][mask], ids, None if hours is None else hours[mask])


ROWS: dict[str, Callable[[torch.Tensor, dict[str, Any]], Outputs]] = {
    "sample": _rows_sample,
    "sequence": _rows_sequence,
}


def rows(mode: str, raw: torch.Tensor, batch: dict[str, Any]) -> Outputs:
    """One row per scored sample from the raw model output of either mode."""
    return ROWS[mode](raw, batch)


def check_mode(model: torch.nn.Module, mode: str) -> None:
    if mode == "sequence" and not getattr(model, "causal", False):
        name = type(model).__name__
        raise ValueError(f"train.hourly_mode=sequence needs a causal model; {name} is not (use sample mode)")


def to_probs(spec: TaskSpec, logits: torch.Tensor) -> torch.Tensor:
    return torch.softmax(logits.float(), dim=-1) if spec.is_multiclass else torch.sigmoid(logits.float())


def move(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


@dataclass
class Predictions:
    sample_ids: list[str]
    y: np.ndarray
    probs: np.ndarray
    los_hours: np.ndarray | None = None

    def arrays(self) -> metrics.EvalArrays:
        return metrics.EvalArrays(self.y, self.probs, self.los_hours)


@torch.no_grad()
def predict(
    model: torch.nn.Module,
    batches: Iterable[dict[str, Any]],
    spec: TaskSpec,
    mode: str,
    device: torch.device,
    amp: bool = False,
) -> Predictions:
    """This rank's predictions over ``batches`` (model in eval mode, restored afterwards)."""
    was_training = model.training
    model.eval()
    forward = ModeForward(model, mode)
    ids: list[str] = []
    ys, probs, hours = [], [], []
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if amp else nullcontext()
    try:
        for batch in batches:
            with autocast:
                batch = move(batch, device)
                out = rows(mode, forward(batch), batch)
            ids.extend(out.sample_ids)
            ys.append(out.y.cpu())
            probs.append(to_probs(spec, out.logits).cpu())
            if out.los_hours is not None:
                hours.append(out.los_hours.float().cpu())
    finally:
        model.train(was_training)
    width = spec.num_outputs
    y = torch.cat(ys).numpy() if ys else np.zeros((0,) if spec.is_multiclass else (0, width))
    p = torch.cat(probs).numpy().astype(np.float64) if probs else np.zeros((0, width))
    return Predictions(ids, y, p, torch.cat(hours).numpy() if hours else None)


def gather_predictions(pred: Predictions, ctx: DistContext) -> Predictions | None:
    """All ranks' predictions on rank 0, checked: no sample scored twice."""
    parts = gather_object(pred, ctx)
    if parts is None:
        return None
    ids = [sid for p in parts for sid in p.sample_ids]
    if len(set(ids)) != len(ids):
        seen: set[str] = set()
        dup = next(s for s in ids if s in seen or seen.add(s))
        raise RuntimeError(
            f"sample {dup!r} was scored more than once across ranks: the shard split is broken"
        )
    has_hours = all(p.los_hours is not None for p in parts) and parts
    return Predictions(
        ids,
        np.concatenate([p.y for p in parts]),
        np.concatenate([p.probs for p in parts]),
        np.concatenate([p.los_hours for p in parts]) if has_hours else None,
    )


def score(spec: TaskSpec, pred: Predictions, bootstrap: int, seed: int) -> dict[str, Any]:
    """Headline metrics with bootstrap CIs, sample count, per-label values for multi-label tasks."""
    arrays = pred.arrays()
    out: dict[str, Any] = {"n_samples": len(pred.sample_ids)}
    if bootstrap > 0:
        out["metrics"] = metrics.bootstrap_ci(spec, arrays, resamples=bootstrap, seed=seed)
    else:
        out["metrics"] = {k: {"value": v} for k, v in metrics.compute(spec, arrays).items()}
    if spec.kind == "multilabel":
        out["per_label"] = metrics.per_label(arrays)
    return out


def write_predictions(pred: Predictions, path: Path) -> None:
    """``sample_id``, ``label`` and ``score`` columns (lists for multi-label / LOS probabilities)."""
    import pandas as pd

    def column(a: np.ndarray) -> list[Any]:
        if a.ndim == 2 and a.shape[1] == 1:
            return a[:, 0].tolist()
        return a.tolist()

    frame = pd.DataFrame({"sample_id": pred.sample_ids, "label": column(pred.y), "score": column(pred.probs)})
    if pred.los_hours is not None:
        frame["los_hours"] = pred.los_hours
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(path, index=False)


def write_json(obj: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=True, allow_nan=True))
    tmp.replace(path)
