"""Unimodal baselines: one encoder and a linear head (SPEC §10)."""

from __future__ import annotations

import torch
from torch import nn

from trainer.models.base import Batch, MedModel, check_batch
from trainer.models.config import UnimodalConfig
from trainer.models.pretrained import Checkpoints
from trainer.models.registry import register_model
from trainer.tasks import TaskSpec


@register_model("uni_ehr")
class UniEHR(MedModel):
    """EHR LSTM (or causal transformer) -> v_ehr at the last valid hour -> Linear.

    Causal: the encoder is unidirectional / causally masked, so forward_sequence is exact.
    """

    config_class = UnimodalConfig
    causal = True

    def __init__(self, cfg: UnimodalConfig, task: TaskSpec, checkpoints: Checkpoints | None = None):
        super().__init__(cfg, task)
        self._build_ehr()
        self.classifier = nn.Linear(self.ehr_encoder.out_dim, task.num_outputs)

    def encode_cxr(self, batch: Batch) -> None:
        return None

    def fuse(self, v_ehr: torch.Tensor, v_cxr: None, batch: Batch) -> torch.Tensor:
        return v_ehr


@register_model("uni_cxr")
class UniCXR(MedModel):
    """ResNet-34 (or ViT) -> 512-d v_cxr -> Linear. A missing image gets the zero/learned filler.

    Causal: a segment carries one image (shards/FORMAT.md), so every hour gets the same logits.
    """

    config_class = UnimodalConfig
    causal = True

    def __init__(self, cfg: UnimodalConfig, task: TaskSpec, checkpoints: Checkpoints | None = None):
        super().__init__(cfg, task)
        self._build_cxr()
        self.classifier = nn.Linear(self.cxr_encoder.out_dim, task.num_outputs)

    def encode_ehr(self, batch: Batch, sequence: bool = False) -> None:
        return None

    def fuse(self, v_ehr: None, v_cxr: torch.Tensor, batch: Batch) -> torch.Tensor:
        return v_cxr

    def forward_sequence(self, batch: Batch) -> torch.Tensor:
        check_batch(batch, self.config.ehr_input_dim)
        logits = self.forward(batch)
        return logits.unsqueeze(1).expand(-1, batch["ehr"].shape[1], -1)
