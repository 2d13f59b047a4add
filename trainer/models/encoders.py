"""EHR and CXR encoders (SPEC §10 and the paper's appendix E transformer option).

EHR encoders return per-hour states ``[B, T, H]``: every one is causal (unidirectional LSTM,
masked transformer), so the state at row ``ehr_len - 1`` is the sample embedding and the full
tensor serves sequence mode. Padding sits at the end and never reaches a valid row.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import torch
import torchvision
from torch import nn

from trainer.models.config import EncoderConfig

log = logging.getLogger(__name__)

RESNET_STAGES = ("layer1", "layer2", "layer3", "layer4")
RESNET_CHANNELS = {"layer1": 64, "layer2": 128, "layer3": 256, "layer4": 512}


class LSTMEncoder(nn.Module):
    """Stacked unidirectional LSTMs, one module per layer so fusion blocks can sit between them."""

    def __init__(self, input_dim: int, hidden: int, layers: int, dropout: float):
        super().__init__()
        self.layers = nn.ModuleList(
            nn.LSTM(input_dim if i == 0 else hidden, hidden, batch_first=True) for i in range(layers)
        )
        self.dropout = nn.Dropout(dropout)  # between layers, as nn.LSTM(dropout=...) does
        self.out_dim = hidden

    def run_layer(self, index: int, x: torch.Tensor) -> torch.Tensor:
        if index > 0:
            x = self.dropout(x)
        return self.layers[index](x)[0]

    def forward(self, ehr: torch.Tensor) -> torch.Tensor:
        x = ehr
        for i in range(len(self.layers)):
            x = self.run_layer(i, x)
        return x


def sinusoidal_positions(length: int, dim: int, device: torch.device) -> torch.Tensor:
    """Fixed positions: no maximum stay length baked into the weights."""
    pos = torch.arange(length, device=device, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, dim, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / dim))
    table = torch.zeros(length, dim, device=device)
    table[:, 0::2] = torch.sin(pos * freq)
    table[:, 1::2] = torch.cos(pos * freq[: dim // 2])
    return table


class TransformerEHREncoder(nn.Module):
    """Pre-norm transformer over the hourly rows with a causal mask (so sequence mode is exact)."""

    def __init__(self, input_dim: int, hidden: int, layers: int, heads: int, ff_dim: int, dropout: float):
        super().__init__()
        if hidden % heads:
            raise ValueError(f"ehr_hidden={hidden} must be divisible by ehr_heads={heads}")
        self.proj = nn.Linear(input_dim, hidden)
        layer = nn.TransformerEncoderLayer(hidden, heads, ff_dim, dropout, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(hidden)
        self.out_dim = hidden

    def forward(self, ehr: torch.Tensor) -> torch.Tensor:
        steps = ehr.shape[1]
        x = self.proj(ehr) + sinusoidal_positions(steps, self.out_dim, ehr.device)
        mask = nn.Transformer.generate_square_subsequent_mask(steps, device=ehr.device, dtype=x.dtype)
        return self.norm(self.encoder(x, mask=mask, is_causal=True))


def _load_local_weights(net: nn.Module, path: str, skip_prefix: str) -> None:
    """A torchvision state dict from disk (e.g. ImageNet weights copied in by hand); never downloads."""
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"model.cxr_weights: no such file {file} (weights are never downloaded)")
    state = torch.load(file, map_location="cpu", weights_only=True)
    state = {k: v for k, v in state.items() if not k.startswith(skip_prefix)}
    missing, unexpected = net.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith(skip_prefix)]
    if missing or unexpected:
        raise ValueError(
            f"{file} does not fit this encoder: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    log.info("CXR encoder initialised from %s", file)


class ResNetEncoder(nn.Module):
    """torchvision ResNet-34 (the paper's) or ResNet-18 without fc (512-d either way: the same
    stage widths); stages callable one by one for MMTM / DAFT."""

    ARCHITECTURES = {"resnet34": torchvision.models.resnet34, "resnet18": torchvision.models.resnet18}

    def __init__(self, weights: str | None = None, architecture: str = "resnet34"):
        super().__init__()
        net = self.ARCHITECTURES[architecture](weights=None)
        if weights:
            _load_local_weights(net, weights, skip_prefix="fc.")
        net.fc = nn.Identity()
        self.backbone = net
        self.out_dim = 512

    def stem(self, image: torch.Tensor) -> torch.Tensor:
        b = self.backbone
        return b.maxpool(b.relu(b.bn1(b.conv1(image))))

    def run_stages(self, x: torch.Tensor, first: str, last: str) -> torch.Tensor:
        """Run stages ``first``..``last`` inclusive (names from RESNET_STAGES)."""
        for name in RESNET_STAGES[RESNET_STAGES.index(first) : RESNET_STAGES.index(last) + 1]:
            x = getattr(self.backbone, name)(x)
        return x

    @staticmethod
    def pool(feature_map: torch.Tensor) -> torch.Tensor:
        return feature_map.mean(dim=(2, 3))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.pool(self.run_stages(self.stem(image), "layer1", "layer4"))


class ViTEncoder(nn.Module):
    """torchvision VisionTransformer without its classification head (class-token embedding)."""

    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        net = torchvision.models.VisionTransformer(
            image_size=cfg.vit_image_size,
            patch_size=cfg.vit_patch,
            num_layers=cfg.vit_layers,
            num_heads=cfg.vit_heads,
            hidden_dim=cfg.vit_dim,
            mlp_dim=cfg.vit_mlp_dim,
        )
        if cfg.cxr_weights:
            _load_local_weights(net, cfg.cxr_weights, skip_prefix="heads.")
        net.heads = nn.Identity()
        self.backbone = net
        self.image_size = cfg.vit_image_size
        self.out_dim = cfg.vit_dim

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        if tuple(image.shape[-2:]) != (self.image_size, self.image_size):
            raise ValueError(
                f"ViT built for {self.image_size}x{self.image_size} images, got {tuple(image.shape[-2:])}; "
                "set model.vit_image_size to the loader's crop size"
            )
        return self.backbone(image)


def build_ehr_encoder(cfg: EncoderConfig) -> nn.Module:
    if cfg.ehr_encoder == "lstm":
        return LSTMEncoder(cfg.ehr_input_dim, cfg.ehr_hidden, cfg.ehr_layers, cfg.ehr_dropout)
    return TransformerEHREncoder(
        cfg.ehr_input_dim, cfg.ehr_hidden, cfg.ehr_layers, cfg.ehr_heads, cfg.ehr_ff_dim, cfg.ehr_dropout
    )


def build_cxr_encoder(cfg: EncoderConfig) -> nn.Module:
    if cfg.cxr_encoder in ResNetEncoder.ARCHITECTURES:
        return ResNetEncoder(cfg.cxr_weights, cfg.cxr_encoder)
    return ViTEncoder(cfg)
