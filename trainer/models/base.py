"""The interface every model shares: encode_ehr, encode_cxr, fuse, head; logits out.

``forward(batch) -> [B, C]`` scores one sample per row (shards/FORMAT.md batch). Models with
``causal = True`` also have ``forward_sequence(batch) -> [B, T, C]``: row t only sees hours
<= t, and the trainer gathers rows at ``hour_index``. ``trainable = False`` (late fusion) tells
the trainer to evaluate without an optimisation loop. ``head_names`` lists the outputs of
``forward_heads`` (MMTM adds its unimodal heads for evaluation). ``kind = "pretrain"`` marks the
self-supervised models, whose forward returns loss terms instead of logits. ``pretrained_inputs`` names the
unimodal checkpoints a model starts from; the trainer resolves their paths and passes them as
``checkpoints=`` to the constructor (``checkpoint_inputs`` says which ones a config needs).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from trainer.models.config import EncoderConfig, PretrainedConfig
from trainer.models.encoders import build_cxr_encoder, build_ehr_encoder
from trainer.models.pretrained import PretrainedInput
from trainer.tasks import TaskSpec

Batch = dict[str, Any]


def check_batch(batch: Batch, input_dim: int) -> None:
    """Fail early with the contract's words instead of a shape error deep inside an LSTM."""
    for key in ("ehr", "ehr_len", "image", "has_image"):
        if key not in batch:
            raise KeyError(f"batch lacks {key!r} (shards/FORMAT.md: ehr, ehr_len, image, has_image)")
    ehr, lengths = batch["ehr"], batch["ehr_len"]
    if ehr.dim() != 3 or ehr.shape[-1] != input_dim:
        raise ValueError(f"batch['ehr'] must be [B, T, {input_dim}], got {tuple(ehr.shape)}")
    if lengths.shape != ehr.shape[:1]:
        raise ValueError(f"batch['ehr_len'] must be [B]={ehr.shape[0]}, got {tuple(lengths.shape)}")
    if lengths.numel() and (int(lengths.min()) < 1 or int(lengths.max()) > ehr.shape[1]):
        raise ValueError(f"batch['ehr_len'] must lie in [1, T={ehr.shape[1]}], got {lengths.tolist()}")


def last_valid(states: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """``states[b, lengths[b] - 1]``: the last real hour of each (end-padded) sequence."""
    index = (lengths.to(states.device).long() - 1).view(-1, 1, 1).expand(-1, 1, states.shape[-1])
    return states.gather(1, index).squeeze(1)


def valid_mask(lengths: torch.Tensor, steps: int, device: torch.device) -> torch.Tensor:
    return torch.arange(steps, device=device)[None, :] < lengths.to(device)[:, None]


def window_mean(states: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Mean over each sample's valid hours (padding excluded)."""
    mask = valid_mask(lengths, states.shape[1], states.device).unsqueeze(-1).to(states.dtype)
    return (states * mask).sum(1) / lengths.to(states.device).to(states.dtype).unsqueeze(-1)


def running_mean(states: torch.Tensor) -> torch.Tensor:
    """Mean of hours 0..t at every t: the causal counterpart of window_mean."""
    counts = torch.arange(1, states.shape[1] + 1, device=states.device, dtype=states.dtype)
    return states.cumsum(1) / counts.view(1, -1, 1)


class MissingImage(nn.Module):
    """What stands in for image features when ``has_image`` is false: zeros or a learned vector."""

    def __init__(self, dim: int, mode: str):
        super().__init__()
        self.token = nn.Parameter(torch.zeros(dim)) if mode == "learned" else None
        self.register_buffer("zero", torch.zeros(dim), persistent=False)

    def fill(self, rows: int) -> torch.Tensor:
        value = self.token if self.token is not None else self.zero
        return value.unsqueeze(0).expand(rows, -1)


def scatter_present(features: torch.Tensor, has_image: torch.Tensor, filler: torch.Tensor) -> torch.Tensor:
    """Rows of ``filler`` [B, D] with the present rows replaced by ``features`` [n_present, D]."""
    index = has_image.nonzero(as_tuple=True)[0]
    return filler.index_put((index,), features.to(filler.dtype))


class MedModel(nn.Module):
    """Base: the encoders, the missing-image filler and the default forward paths."""

    config_class: ClassVar[type] = EncoderConfig
    name: ClassVar[str] = ""
    causal: ClassVar[bool] = False
    trainable: ClassVar[bool] = True
    # "supervised": forward gives logits; "pretrain": forward gives an SSL objective's terms
    # (trainer mode=pretrain, trainer.models.ssl), so logit-based code lists models of one kind.
    kind: ClassVar[str] = "supervised"
    head_names: ClassVar[tuple[str, ...]] = ("fused",)
    pretrained_inputs: ClassVar[dict[str, PretrainedInput]] = {}

    @classmethod
    def checkpoint_inputs(cls, cfg: EncoderConfig) -> dict[str, PretrainedInput]:
        """The checkpoints a model with config ``cfg`` loads, by slot (none under init=random)."""
        if isinstance(cfg, PretrainedConfig) and cfg.init == "pretrained":
            return dict(cls.pretrained_inputs)
        return {}

    def __init__(self, cfg: EncoderConfig, task: TaskSpec):
        super().__init__()
        self.config = cfg
        self.task = task
        self.num_outputs = task.num_outputs
        self._frozen: list[nn.Module] = []

    # building blocks ------------------------------------------------------------------------
    def _build_ehr(self) -> None:
        self.ehr_encoder = build_ehr_encoder(self.config)

    def _build_cxr(self) -> None:
        self.cxr_encoder = build_cxr_encoder(self.config)
        self.missing = MissingImage(self.cxr_encoder.out_dim, self.config.missing_image)

    def freeze(self, *modules: nn.Module) -> None:
        """No gradients and eval-mode forever (BatchNorm statistics and dropout stay fixed too)."""
        for module in modules:
            module.requires_grad_(False)
            module.eval()
            self._frozen.append(module)

    def train(self, mode: bool = True) -> MedModel:
        super().train(mode)
        for module in self._frozen:
            module.eval()
        return self

    # the interface --------------------------------------------------------------------------
    def encode_ehr(self, batch: Batch, sequence: bool = False) -> torch.Tensor:
        """v_ehr ``[B, H]`` (last valid hour), or ``[B, T, H]`` per hour when ``sequence``."""
        states = self.ehr_encoder(batch["ehr"])
        return states if sequence else last_valid(states, batch["ehr_len"])

    def encode_cxr(self, batch: Batch) -> torch.Tensor:
        """v_cxr ``[B, D]``; present images go through the CNN, missing rows get the filler.

        Only present images are encoded (zero images would skew BatchNorm statistics). Every
        weight stays in the autograd graph in training, with a zero gradient where unused (the
        filler when all images are present, the encoder for a batch without any image), so DDP
        sees the same parameters used in every step.
        """
        has_image = batch["has_image"].to(batch["image"].device).bool()
        filler = self.missing.fill(has_image.shape[0])
        if bool(has_image.any()):
            present = self.cxr_encoder(batch["image"][has_image])
            feats = scatter_present(present, has_image, torch.zeros_like(filler))
        elif self.cxr_encoder.training:  # a frozen encoder needs no place in the graph
            feats = self.cxr_encoder(batch["image"])
        else:
            return filler
        return torch.where(has_image.unsqueeze(-1), feats, filler)

    def fuse(self, v_ehr: torch.Tensor | None, v_cxr: torch.Tensor | None, batch: Batch) -> torch.Tensor:
        raise NotImplementedError

    def head(self, fused: torch.Tensor) -> torch.Tensor:
        return self.classifier(fused)

    # forward paths ----------------------------------------------------------------------------
    def forward(self, batch: Batch) -> torch.Tensor:
        check_batch(batch, self.config.ehr_input_dim)
        return self.head(self.fuse(self.encode_ehr(batch), self.encode_cxr(batch), batch))

    def forward_sequence(self, batch: Batch) -> torch.Tensor:
        """Per-hour logits ``[B, T, C]`` (rows past ``ehr_len`` are padding: ignore them)."""
        if not self.causal:
            raise NotImplementedError(f"model {self.name!r} is not causal: run hourly tasks with mode=sample")
        check_batch(batch, self.config.ehr_input_dim)
        return self.head(self.fuse(self.encode_ehr(batch, sequence=True), self.encode_cxr(batch), batch))

    def forward_heads(self, batch: Batch) -> dict[str, torch.Tensor]:
        """All outputs by name (``head_names``); ``fused`` is what ``forward`` returns."""
        return {"fused": self.forward(batch)}


def broadcast_time(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``[B, D]`` -> ``[B, T, D]`` when ``like`` is per hour; unchanged otherwise."""
    if like.dim() == 3:
        return v.unsqueeze(1).expand(-1, like.shape[1], -1)
    return v
