"""Unimodal checkpoints as starting points for fusion models.

Checkpoint format (agreed with the trainer): ``torch.save`` of a dict with at least
``{"model": state_dict, "model_name": str, "model_config": dict}``. The trainer's file may hold
more (optimizer, RNG, step); only these three keys are read here, through the trainer's
``weights_only`` loader (``trainer.checkpoint.safe_load``).

A model class declares what it starts from (``pretrained_inputs``: slot -> PretrainedInput) and
loads the files it is handed; finding them by the run layout is the trainer's business
(``trainer.runtime.find_pretrained``), so models know nothing of run folders.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from trainer.checkpoint import safe_load
from trainer.models.config import CXR_ARCH_FIELDS, EHR_ARCH_FIELDS, EncoderConfig, PretrainedConfig

log = logging.getLogger(__name__)

REQUIRED_KEYS = ("model", "model_name", "model_config")
Checkpoints = Mapping[str, "str | Path"]  # input slot -> checkpoint file
WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DDP and torch.compile wrappers


class PretrainedError(RuntimeError):
    """A unimodal checkpoint is missing, of the wrong model, or does not fit this model."""


@dataclass(frozen=True)
class PretrainedInput:
    """One unimodal run a model starts from, and the config fields that steer where it is."""

    model: str  # the registered unimodal model whose checkpoint is read
    path_field: str  # config field with an explicit file, which wins over any run lookup
    task_field: str | None = None  # config field naming another task's run (null: this task)

    def explicit(self, cfg: PretrainedConfig) -> Path | None:
        path = getattr(cfg, self.path_field)
        return Path(path) if path else None

    def source_task(self, cfg: PretrainedConfig, task: str) -> str:
        return (getattr(cfg, self.task_field) if self.task_field else None) or task


def pretrained_paths(
    inputs: Mapping[str, PretrainedInput], cfg: PretrainedConfig, given: Checkpoints | None
) -> dict[str, Path]:
    """The file for each input slot: the config's explicit path, else the one the trainer found."""
    given = given or {}
    paths: dict[str, Path] = {}
    for slot, need in inputs.items():
        path = need.explicit(cfg) or given.get(slot)
        if path is None:
            raise PretrainedError(
                f"no {need.model} checkpoint for {slot}: set model.{need.path_field}=PATH, or train "
                "through trainer/train.py, which finds it under train.runs_dir"
            )
        paths[slot] = Path(path)
    return paths


def read_checkpoint(path: str | Path, expected_model: str | tuple[str, ...]) -> dict[str, Any]:
    """Load and validate a checkpoint of ``expected_model`` (or of one of several names: the SSL
    methods' encoders are interchangeable); clear errors for the usual mistakes."""
    path = Path(path)
    if not path.is_file():
        raise PretrainedError(
            f"{expected_model} checkpoint not found: {path} (train it first: "
            f"trainer/train.py model={expected_model} ..., or point model.*_ckpt at the file)"
        )
    try:
        ckpt = safe_load(path)
    except Exception as err:  # a torn file or a pickle naming code: say which file
        raise PretrainedError(f"cannot read checkpoint {path}: {err}") from err
    if not isinstance(ckpt, dict) or any(k not in ckpt for k in REQUIRED_KEYS):
        keys = sorted(ckpt) if isinstance(ckpt, dict) else type(ckpt).__name__
        raise PretrainedError(f"{path} is not a model checkpoint: needs keys {REQUIRED_KEYS}, has {keys}")
    allowed = (expected_model,) if isinstance(expected_model, str) else expected_model
    if ckpt["model_name"] not in allowed:
        raise PretrainedError(
            f"{path} holds model {ckpt['model_name']!r}, expected {' or '.join(map(repr, allowed))}"
        )
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
    copy_encoder(module, cfg, read_checkpoint(path, expected_model), path, prefix)


def copy_encoder(
    module: nn.Module, cfg: EncoderConfig, ckpt: dict[str, Any], path: Path, prefix: str
) -> None:
    """Copy the ``<prefix>.*`` weights of an already read checkpoint into ``module``."""
    check_architecture(cfg, ckpt, prefix == "ehr_encoder", path)
    state = {k[len(prefix) + 1 :]: v for k, v in ckpt["model"].items() if k.startswith(prefix + ".")}
    if not state:
        raise PretrainedError(f"{path} has no {prefix}.* weights")
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise PretrainedError(f"{path}: {prefix} weights do not fit: {err}") from None
    log.info("%s initialised from %s (%s)", prefix, path, ckpt["model_name"])
