"""Early, joint, late and MedFuse fusion (SPEC §10).

Missing images (partial mode):
- early / joint: v_cxr of a missing image is the ``missing_image`` filler (default: learned vector).
- MedFuse: the fusion LSTM sees the length-1 sequence [v_ehr] (no filler is used).
- late: the EHR model's probability alone.
All four are causal (EHR encoder causal, one image per segment): forward_sequence is exact.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import torch
from torch import nn

from trainer.models.base import Batch, MedModel, MissingImage, broadcast_time
from trainer.models.config import LateConfig, MedFuseConfig, PretrainedFusionConfig
from trainer.models.pretrained import (
    Checkpoints,
    PretrainedInput,
    load_encoder,
    pretrained_paths,
    read_checkpoint,
)
from trainer.models.registry import register_model
from trainer.models.unimodal import UniCXR, UniEHR
from trainer.tasks import TaskSpec

log = logging.getLogger(__name__)

PROB_EPS = 1e-6


class PretrainedFusion(MedModel):
    """Both encoders, optionally initialised from unimodal checkpoints and optionally frozen."""

    config_class = PretrainedFusionConfig
    causal = True
    # Slots are the encoder attributes and the prefixes of their weights in the unimodal models.
    pretrained_inputs = {
        "ehr_encoder": PretrainedInput("uni_ehr", "ehr_ckpt"),
        "cxr_encoder": PretrainedInput("uni_cxr", "cxr_ckpt", task_field="cxr_pretrain_task"),
    }

    def __init__(self, cfg: PretrainedFusionConfig, task: TaskSpec, checkpoints: Checkpoints | None):
        super().__init__(cfg, task)
        self._build_ehr()
        self._build_cxr()
        for slot, path in pretrained_paths(self.checkpoint_inputs(cfg), cfg, checkpoints).items():
            load_encoder(getattr(self, slot), cfg, path, self.pretrained_inputs[slot].model, slot)
        if cfg.freeze_encoders and cfg.init != "pretrained":
            log.warning("%s: freezing randomly initialised encoders (init=random)", self.name)
        if cfg.freeze_encoders:
            self.freeze(self.ehr_encoder, self.cxr_encoder)


class ConcatFusion(PretrainedFusion):
    """[v_ehr; Linear(512 -> 256) v_cxr] -> Linear -> C."""

    def __init__(self, cfg: PretrainedFusionConfig, task: TaskSpec, checkpoints: Checkpoints | None = None):
        super().__init__(cfg, task, checkpoints)
        self.cxr_proj = nn.Linear(self.cxr_encoder.out_dim, cfg.fusion_dim)
        self.classifier = nn.Linear(self.ehr_encoder.out_dim + cfg.fusion_dim, task.num_outputs)

    def fuse(self, v_ehr: torch.Tensor, v_cxr: torch.Tensor, batch: Batch) -> torch.Tensor:
        return torch.cat([v_ehr, broadcast_time(self.cxr_proj(v_cxr), v_ehr)], dim=-1)


@register_model("early")
class EarlyFusion(ConcatFusion):
    """Frozen pretrained encoders (conf/model/early.yaml); only the projection and head train."""


@register_model("joint")
class JointFusion(ConcatFusion):
    """The early-fusion architecture trained end to end from random init (conf/model/joint.yaml)."""


@register_model("medfuse")
class MedFuse(PretrainedFusion):
    """LSTM(256 -> 512) over [v_ehr, proj(v_cxr)]; [v_ehr] alone when the image is missing."""

    config_class = MedFuseConfig

    def __init__(self, cfg: MedFuseConfig, task: TaskSpec, checkpoints: Checkpoints | None = None):
        super().__init__(cfg, task, checkpoints)
        self.missing = MissingImage(self.cxr_encoder.out_dim, "zero")  # never read: see fuse()
        self.cxr_proj = nn.Linear(self.cxr_encoder.out_dim, self.ehr_encoder.out_dim)
        self.fusion_lstm = nn.LSTM(self.ehr_encoder.out_dim, cfg.fusion_hidden, batch_first=True)
        self.classifier = nn.Linear(cfg.fusion_hidden, task.num_outputs)

    def fuse(self, v_ehr: torch.Tensor, v_cxr: torch.Tensor, batch: Batch) -> torch.Tensor:
        v_cxr = broadcast_time(self.cxr_proj(v_cxr), v_ehr)
        has_image = batch["has_image"].to(v_ehr.device).bool()
        tokens = torch.stack([v_ehr, v_cxr], dim=-2)  # [..., 2, 256]
        lead = tokens.shape[:-2]
        out = self.fusion_lstm(tokens.reshape(-1, 2, tokens.shape[-1]))[0].reshape(*lead, 2, -1)
        # A unidirectional LSTM's output after token 1 is exactly the length-1 sequence's result.
        if v_ehr.dim() == 3:
            has_image = has_image[:, None].expand(-1, v_ehr.shape[1])
        return torch.where(has_image.unsqueeze(-1), out[..., 1, :], out[..., 0, :])


@register_model("late")
class LateFusion(MedModel):
    """Average of the unimodal models' probabilities; logits of that average out.

    ``trainable = False``: the trainer evaluates it without training (it has no free
    parameters). Binary / multi-label: logit(mean of sigmoids); LOS: log(mean of softmaxes),
    valid logits for softmax / cross entropy. A missing image: the EHR probability alone.
    """

    config_class = LateConfig
    causal = True
    trainable = False

    pretrained_inputs = {
        "ehr_model": PretrainedInput("uni_ehr", "ehr_ckpt"),
        "cxr_model": PretrainedInput("uni_cxr", "cxr_ckpt"),
    }

    def __init__(self, cfg: LateConfig, task: TaskSpec, checkpoints: Checkpoints | None = None):
        super().__init__(cfg, task)
        paths = pretrained_paths(self.checkpoint_inputs(cfg), cfg, checkpoints)
        self.ehr_model = self._unimodal(UniEHR, paths.get("ehr_model"))
        self.cxr_model = self._unimodal(UniCXR, paths.get("cxr_model"))
        self.freeze(self.ehr_model, self.cxr_model)

    def _unimodal(self, cls: type, path: Path | None) -> MedModel:
        """The whole unimodal model, rebuilt from its checkpoint's own config (init=random: ours)."""
        if path is None:
            fields = {f.name: getattr(self.config, f.name) for f in dataclasses.fields(cls.config_class)}
            return cls(cls.config_class(**fields), self.task)
        ckpt = read_checkpoint(path, cls.name)
        model = cls(cls.config_class(**ckpt["model_config"]), self.task)
        model.load_state_dict(ckpt["model"], strict=True)
        log.info("late fusion: %s from %s", cls.name, path)
        return model

    def _probs(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.softmax(-1) if self.task.is_multiclass else logits.sigmoid()

    def encode_ehr(self, batch: Batch, sequence: bool = False) -> torch.Tensor:
        return self._probs(self.ehr_model.forward_sequence(batch) if sequence else self.ehr_model(batch))

    def encode_cxr(self, batch: Batch) -> torch.Tensor:
        return self._probs(self.cxr_model(batch))

    def fuse(self, p_ehr: torch.Tensor, p_cxr: torch.Tensor, batch: Batch) -> torch.Tensor:
        has_image = batch["has_image"].to(p_ehr.device).bool().view(-1, *([1] * (p_ehr.dim() - 1)))
        return torch.where(has_image, (p_ehr + broadcast_time(p_cxr, p_ehr)) / 2, p_ehr)

    def head(self, probs: torch.Tensor) -> torch.Tensor:
        probs = probs.clamp(PROB_EPS, 1 - PROB_EPS)
        return probs.log() if self.task.is_multiclass else torch.logit(probs)
