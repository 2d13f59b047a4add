"""Unimodal checkpoints as starting points for fusion models.

Checkpoint format (agreed with the trainer): ``torch.save`` of a dict with at least
``{"model": state_dict, "model_name": str, "model_config": dict}``. The trainer's file may hold
more (optimizer, RNG, step); only these three keys are read here. These are this project's own
run outputs, so they are unpickled in full (RNG states are not plain tensors).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from trainer.models.config import CXR_ARCH_FIELDS, EHR_ARCH_FIELDS, EncoderConfig

log = logging.getLogger(__name__)

REQUIRED_KEYS = ("model", "model_name", "model_config")
WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DDP and torch.compile wrappers


class PretrainedError(RuntimeError):
    """A unimodal checkpoint is missing, of the wrong model, or does not fit this model."""


def convention_path(runs_dir: str, task: str, model_name: str, seed: int | None) -> Path:
    """``<runs_dir>/<task>/<model_name>/<seed>/checkpoints/best.pt``; seed None: the only seed there."""
    root = Path(runs_dir) / task / model_name
    if seed is None:
        seeds = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
        if len(seeds) != 1:
            raise PretrainedError(
                f"cannot pick a {model_name} checkpoint under {root}: seeds found {seeds}; "
                "set model.pretrained_seed or give the file with model.ehr_ckpt / model.cxr_ckpt"
            )
        seed_dir = seeds[0]
    else:
        seed_dir = str(seed)
    return root / seed_dir / "checkpoints" / "best.pt"


def read_checkpoint(path: str | Path, expected_model: str) -> dict[str, Any]:
    """Load and validate a unimodal checkpoint; clear errors for the usual mistakes."""
    path = Path(path)
    if not path.is_file():
        raise PretrainedError(
            f"{expected_model} checkpoint not found: {path} (train it first: "
            f"trainer/train.py model={expected_model} ..., or point model.*_ckpt at the file)"
        )
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(ckpt, dict) or any(k not in ckpt for k in REQUIRED_KEYS):
        keys = sorted(ckpt) if isinstance(ckpt, dict) else type(ckpt).__name__
        raise PretrainedError(f"{path} is not a model checkpoint: needs keys {REQUIRED_KEYS}, has {keys}")
    if ckpt["model_name"] != expected_model:
        raise PretrainedError(f"{path} holds model {ckpt['model_name']!r}, expected {expected_model!r}")
    ckpt["model"] = strip_wrappers(ckpt["model"])
    return ckpt


def strip_wrappers(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state.items():
        for prefix in WRAPPER_PREFIXES:
            while key.startswith(prefix):
                key = key[len(prefix) :]
        out[key] = value
    return out


def architecture_fields(cfg: dict[str, Any], ehr: bool) -> tuple[str, ...]:
    """The config fields that decide an encoder's weight shapes (the rest, e.g. dropout, may differ)."""
    if ehr:
        return EHR_ARCH_FIELDS if cfg.get("ehr_encoder") == "transformer" else EHR_ARCH_FIELDS[:4]
    return CXR_ARCH_FIELDS if cfg.get("cxr_encoder") == "vit" else CXR_ARCH_FIELDS[:1]


def check_architecture(cfg: EncoderConfig, ckpt: dict[str, Any], ehr: bool, path: Path) -> None:
    """The fusion model's encoder fields must equal the checkpoint's (else weights cannot fit)."""
    theirs = ckpt["model_config"]
    fields = architecture_fields(theirs, ehr)
    diff = {f: (getattr(cfg, f), theirs[f]) for f in fields if f in theirs and theirs[f] != getattr(cfg, f)}
    if diff:
        hint = " ".join(f"model.{f}={theirs[f]}" for f in diff)
        raise PretrainedError(
            f"{path} was trained with other encoder settings (this, checkpoint) {diff}; set {hint}"
        )


def load_encoder(
    module: nn.Module, cfg: EncoderConfig, path: str | Path, expected_model: str, prefix: str
) -> None:
    """Copy ``<prefix>.*`` weights of a ``expected_model`` checkpoint into ``module``."""
    path = Path(path)
    ckpt = read_checkpoint(path, expected_model)
    check_architecture(cfg, ckpt, prefix == "ehr_encoder", path)
    state = {k[len(prefix) + 1 :]: v for k, v in ckpt["model"].items() if k.startswith(prefix + ".")}
    if not state:
        raise PretrainedError(f"{path} has no {prefix}.* weights")
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise PretrainedError(f"{path}: {prefix} weights do not fit: {err}") from None
    log.info("%s initialised from %s (%s)", prefix, path, expected_model)
