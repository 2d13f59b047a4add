"""Typed model configs (filled from ``conf/model/<name>.yaml`` plus ``model.<key>=value`` words).

Flat dataclasses, so every field is one command-line word (``model.ehr_encoder=transformer``).
Fusion configs extend the encoder config: the encoder fields of a fusion model must match the
unimodal checkpoint it starts from, and sharing the field names lets the loader compare them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

EHR_ARCH_FIELDS = ("ehr_encoder", "ehr_input_dim", "ehr_hidden", "ehr_layers", "ehr_heads", "ehr_ff_dim")
CXR_ARCH_FIELDS = (
    "cxr_encoder",
    "vit_image_size",
    "vit_patch",
    "vit_layers",
    "vit_heads",
    "vit_dim",
    "vit_mlp_dim",
)


@dataclass
class EncoderConfig:
    """Both encoders (SPEC §10) and how a missing image is represented.

    ``missing_image``: ``zero`` puts a zero vector where the image features would be,
    ``learned`` a trained vector of the same size (MedFuse ignores it: it shortens its sequence).
    """

    ehr_encoder: Literal["lstm", "transformer"] = "lstm"
    ehr_input_dim: int = 76
    ehr_hidden: int = 256
    ehr_layers: int = 2
    ehr_dropout: float = 0.3
    ehr_heads: int = 4  # transformer only
    ehr_ff_dim: int = 512  # transformer only
    cxr_encoder: Literal["resnet34", "resnet18", "vit"] = (
        "resnet34"  # resnet18: the quick preset, ~2x less arithmetic
    )
    cxr_weights: str | None = None  # local torchvision state dict (e.g. ImageNet); never downloaded
    vit_image_size: int = 224
    vit_patch: int = 16
    vit_layers: int = 12
    vit_heads: int = 12
    vit_dim: int = 768
    vit_mlp_dim: int = 3072
    missing_image: Literal["zero", "learned"] = "learned"


@dataclass
class UnimodalConfig(EncoderConfig):
    """``uni_ehr`` / ``uni_cxr``: one encoder + a linear head."""


@dataclass
class PretrainedConfig(EncoderConfig):
    """Models that may start from unimodal checkpoints (early, joint, late, MedFuse).

    ``init=pretrained`` loads ``ehr_ckpt`` / ``cxr_ckpt`` when given. When null, the trainer
    finds them by its run layout: ``<runs_dir>/<task>/uni_ehr/<seed>/checkpoints/best.pt``
    (uni_cxr likewise), where ``runs_dir`` null means the run's ``train.runs_dir`` and
    ``pretrained_seed`` null the run's seed. The model itself only loads the paths it is given.
    """

    init: Literal["pretrained", "random"] = "pretrained"
    ehr_ckpt: str | None = None
    cxr_ckpt: str | None = None
    runs_dir: str | None = None
    pretrained_seed: int | None = None


@dataclass
class PretrainedFusionConfig(PretrainedConfig):
    """Both encoders from unimodal checkpoints, optionally frozen; the CXR one from the
    ``cxr_pretrain_task`` run when set (e.g. ``radiology``, as in the paper)."""

    cxr_pretrain_task: str | None = None
    freeze_encoders: bool = False
    fusion_dim: int = 256  # v_cxr is projected to this size before fusion


@dataclass
class MedFuseConfig(PretrainedFusionConfig):
    fusion_hidden: int = 512  # LSTM(256 -> 512) over [v_ehr, v_cxr']


@dataclass
class LateConfig(PretrainedConfig):
    """Late fusion loads two whole unimodal models; the encoder fields only matter for init=random."""


@dataclass
class MMTMConfig(EncoderConfig):
    """MMTM between EHR LSTM layers 1 and 2 and a ResNet stage (Joze et al. 2020).

    ``ehr_pool=window`` squeezes the EHR with the mean over the whole window (the paper; sample
    mode only); ``running`` uses the mean up to each hour, which makes the model causal.
    """

    mmtm_stage: Literal["layer1", "layer2", "layer3", "layer4"] = "layer4"
    mmtm_ratio: float = 4.0  # squeeze width = int(2 * (C_cxr + H_ehr) / ratio)
    ehr_pool: Literal["window", "running"] = "window"


@dataclass
class DAFTConfig(EncoderConfig):
    """DAFT: FiLM on EHR LSTM layer-1 states, conditioned on [GAP(CXR map); mean_t(h_ehr)].

    ``daft_bottleneck`` null: b = int((16 + C_cxr) / 7) as SPEC §10. ``ehr_pool`` as MMTMConfig.
    """

    daft_bottleneck: int | None = None
    ehr_pool: Literal["window", "running"] = "window"


@dataclass
class SSLConfig(EncoderConfig):
    """Self-supervised pretraining (SPEC §10): both encoders, each with a 3-layer projection
    head to ``proj_dim`` (Linear-ReLU-Linear-ReLU-Linear without bias)."""

    proj_dim: int = 128


@dataclass
class ContrastiveConfig(SSLConfig):
    """ConVIRT (fixed ``temperature``) and ALIGN (learned, starting at ``temperature``).
    ``noisy_fraction``: share of each batch's EHR rows swapped among themselves (ALIGN's noisy
    pairs; 0 for ConVIRT)."""

    temperature: float = 0.1
    noisy_fraction: float = 0.0


@dataclass
class VICRegConfig(SSLConfig):
    invariance: float = 25.0
    variance: float = 25.0
    covariance: float = 1.0


@dataclass
class SSLEvalConfig(EncoderConfig):
    """Linear probe (frozen encoders) and fine-tuning of SSL-pretrained encoders: a linear head
    on ``features`` (both: [v_ehr; v_cxr]). ``encoder_ckpt``: the pretraining run folder (its
    ``checkpoints/best.pt``) or a checkpoint file; ``init=random`` skips it (the baseline probe)."""

    init: Literal["pretrained", "random"] = "pretrained"
    encoder_ckpt: str | None = None
    features: Literal["both", "ehr", "cxr"] = "both"
    freeze_encoders: bool = True
