"""Self-supervised models (SPEC §10, issue #12): pretraining and its two evaluations.

- ``convirt`` / ``align`` / ``vicreg`` (``kind = "pretrain"``): EHR LSTM (hidden 128, 1 layer)
  and ResNet-34, each with a projection head to 128; ``forward`` returns the method's loss terms
  over the batch, gathered over ranks while training (``trainer.selfsup.gather``) so negatives and
  batch statistics are global. Trained by ``trainer/train.py mode=pretrain ssl=<method>``.
- ``ssl_probe`` / ``ssl_finetune``: the pretrained encoders without projection heads and a
  linear head on [v_ehr; v_cxr] (or one of them, ``features``); frozen for the probe.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import torch
from torch import nn

from conf import typed
from trainer.models.base import Batch, MedModel, broadcast_time, check_batch
from trainer.models.config import ContrastiveConfig, SSLConfig, SSLEvalConfig, VICRegConfig
from trainer.models.encoders import build_cxr_encoder
from trainer.models.pretrained import Checkpoints, PretrainedError, copy_encoder, read_checkpoint
from trainer.models.registry import list_models, register_model
from trainer.selfsup.gather import gather_with_grad
from trainer.selfsup.losses import ALIGNLoss, ConVIRTLoss, Terms, VICRegLoss, swap_rows
from trainer.tasks import TaskSpec

FEATURES = "features"  # batch key of cached encoder features (trainer mode=probe)


def projection_head(in_dim: int, dim: int) -> nn.Sequential:
    """SPEC §10: Linear(d -> 128)-ReLU-Linear(128 -> 128)-ReLU-Linear(128 -> 128, no bias)."""
    return nn.Sequential(
        nn.Linear(in_dim, dim), nn.ReLU(), nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, dim, bias=False)
    )


class SSLPretrain(MedModel):
    """Both encoders and projection heads; the objective is the subclass's."""

    config_class: ClassVar[type] = SSLConfig
    kind = "pretrain"

    def __init__(self, cfg: SSLConfig, task: TaskSpec, checkpoints: Checkpoints | None = None):
        super().__init__(cfg, task)
        self._build_ehr()
        # No missing-image filler: pretraining reads paired samples only, and an unused weight
        # would break DDP without find_unused_parameters.
        self.cxr_encoder = build_cxr_encoder(cfg)
        self.ehr_head = projection_head(self.ehr_encoder.out_dim, cfg.proj_dim)
        self.cxr_head = projection_head(self.cxr_encoder.out_dim, cfg.proj_dim)
        self.objective = self.build_objective(cfg)

    def build_objective(self, cfg: SSLConfig) -> nn.Module:
        raise NotImplementedError

    def embed(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Projected (z_ehr, z_cxr) of this rank's rows."""
        check_batch(batch, self.config.ehr_input_dim)
        if not bool(batch["has_image"].all()):
            raise ValueError("SSL pretraining needs paired samples (every has_image true)")
        z_ehr = self.ehr_head(self.encode_ehr(batch))
        return z_ehr, self.cxr_head(self.cxr_encoder(batch["image"]))

    def corrupt(self, z_ehr: torch.Tensor) -> torch.Tensor:
        """Noisy pairs made on purpose (ALIGN); none by default."""
        return z_ehr

    def forward(self, batch: Batch) -> Terms:  # type: ignore[override]
        """Loss terms (``loss`` is the total). Training: over the global batch; evaluation: over
        this rank's rows (eval batches differ in size across ranks; no collective there)."""
        z_ehr, z_cxr = self.embed(batch)
        if self.training:
            z_ehr = gather_with_grad(self.corrupt(z_ehr))
            z_cxr = gather_with_grad(z_cxr)
        return self.objective(z_ehr, z_cxr)


def _check_fraction(cfg: ContrastiveConfig) -> None:
    if not 0.0 <= cfg.noisy_fraction < 1.0:
        raise typed.ConfigError(f"model.noisy_fraction must be in [0, 1), got {cfg.noisy_fraction}")
    if cfg.temperature <= 0:
        raise typed.ConfigError(f"model.temperature must be > 0, got {cfg.temperature}")


@register_model("convirt")
class ConVIRT(SSLPretrain):
    config_class = ContrastiveConfig

    def build_objective(self, cfg: ContrastiveConfig) -> nn.Module:
        _check_fraction(cfg)
        return ConVIRTLoss(cfg.temperature)

    def corrupt(self, z_ehr: torch.Tensor) -> torch.Tensor:
        return swap_rows(z_ehr, self.config.noisy_fraction)


@register_model("align")
class ALIGN(ConVIRT):
    """ConVIRT with the temperature learned (conf/model/align.yaml: 15% noisy pairs)."""

    def build_objective(self, cfg: ContrastiveConfig) -> nn.Module:
        _check_fraction(cfg)
        return ALIGNLoss(cfg.temperature)


@register_model("vicreg")
class VICReg(SSLPretrain):
    config_class = VICRegConfig

    def build_objective(self, cfg: VICRegConfig) -> nn.Module:
        return VICRegLoss(cfg.invariance, cfg.variance, cfg.covariance)


SELECTED = Path("checkpoints") / "selected.pt"  # written by trainer.selection (model selection)


def encoder_checkpoint(path: str | Path) -> Path:
    """A pretraining run folder means the epoch model selection chose (``trainer.selection``), else
    its best checkpoint (lowest val loss); a file is itself."""
    path = Path(path)
    if not path.is_dir():
        return path
    return path / SELECTED if (path / SELECTED).is_file() else path / "checkpoints" / "best.pt"


class SSLEval(MedModel):
    """Pretrained encoders (no projection heads) and a linear head on the chosen features."""

    config_class = SSLEvalConfig
    causal = True

    def __init__(self, cfg: SSLEvalConfig, task: TaskSpec, checkpoints: Checkpoints | None = None):
        super().__init__(cfg, task)
        self.use_ehr, self.use_cxr = cfg.features in ("both", "ehr"), cfg.features in ("both", "cxr")
        encoders = []
        if self.use_ehr:
            self._build_ehr()
            encoders.append("ehr_encoder")
        if self.use_cxr:
            self._build_cxr()
            encoders.append("cxr_encoder")
        if cfg.init == "pretrained":
            self._load(cfg, encoders)
        if cfg.freeze_encoders:
            self.freeze(*(getattr(self, name) for name in encoders))
        width = sum(getattr(self, name).out_dim for name in encoders)
        self.classifier = nn.Linear(width, task.num_outputs)

    def _load(self, cfg: SSLEvalConfig, encoders: list[str]) -> None:
        if not cfg.encoder_ckpt:
            raise typed.ConfigError(
                f"model {self.name!r} needs encoder=<pretraining run folder or checkpoint>"
            )
        path = encoder_checkpoint(cfg.encoder_ckpt)
        if not path.is_file():
            raise PretrainedError(f"no pretraining checkpoint at {path} (run mode=pretrain first)")
        ckpt = read_checkpoint(path, tuple(list_models("pretrain")))
        for name in encoders:
            copy_encoder(getattr(self, name), cfg, ckpt, path, name)

    def encode_ehr(self, batch: Batch, sequence: bool = False) -> torch.Tensor | None:
        return super().encode_ehr(batch, sequence) if self.use_ehr else None

    def encode_cxr(self, batch: Batch) -> torch.Tensor | None:
        return super().encode_cxr(batch) if self.use_cxr else None

    def features(self, batch: Batch, sequence: bool = False) -> torch.Tensor:
        """What the head sees: ``[B, D]``, or ``[B, T, D]`` per hour (the probe caches these)."""
        check_batch(batch, self.config.ehr_input_dim)
        v_ehr, v_cxr = self.encode_ehr(batch, sequence), self.encode_cxr(batch)
        if v_ehr is None:  # one image per segment: the same features at every hour
            return v_cxr.unsqueeze(1).expand(-1, batch["ehr"].shape[1], -1) if sequence else v_cxr
        return v_ehr if v_cxr is None else torch.cat([v_ehr, broadcast_time(v_cxr, v_ehr)], dim=-1)

    def forward(self, batch: Batch) -> torch.Tensor:
        if FEATURES in batch:  # cached features (trainer mode=probe): the head alone
            return self.head(batch[FEATURES])
        return self.head(self.features(batch))

    def forward_sequence(self, batch: Batch) -> torch.Tensor:
        return self.head(self.features(batch, sequence=True))


@register_model("ssl_probe")
class SSLProbe(SSLEval):
    """Frozen pretrained encoders + Linear (conf/model/ssl_probe.yaml)."""


@register_model("ssl_finetune")
class SSLFinetune(SSLEval):
    """Trainable pretrained encoders + Linear (conf/model/ssl_finetune.yaml)."""
