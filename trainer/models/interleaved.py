"""MMTM and DAFT: fusion blocks between EHR LSTM layer 1 and layer 2 (SPEC §10).

Both squeeze the EHR with a mean over hours. ``ehr_pool=window`` (default, the paper) takes the
mean over the whole sample window, so the score at hour t depends on the window's end: these
models then run hourly tasks in ``sample`` mode only (``causal`` False). ``ehr_pool=running``
takes the mean over hours 0..t at every t, which makes every hour's output depend on hours <= t
only: ``causal`` is True and ``forward_sequence`` is exact (tests/test_models.py checks it on
truncated inputs). ``forward`` always computes per hour when running and reads the last valid
hour, so both modes share one code path.

For these two models ``encode_ehr`` gives the layer-1 states, ``encode_cxr`` the CXR feature map
at the insertion stage, and ``fuse`` applies the block and runs the remaining layers.
"""

from __future__ import annotations

import torch
from torch import nn

from conf.typed import ConfigError
from trainer.models.base import (
    Batch,
    MedModel,
    MissingImage,
    check_batch,
    last_valid,
    running_mean,
    scatter_present,
    window_mean,
)
from trainer.models.config import DAFTConfig, EncoderConfig, MMTMConfig
from trainer.models.encoders import RESNET_CHANNELS, RESNET_STAGES, ResNetEncoder
from trainer.models.pretrained import Checkpoints
from trainer.models.registry import register_model
from trainer.tasks import TaskSpec

Features = dict[str, torch.Tensor]


class CXRMap:
    """A CXR feature map of some batch rows (``rows``) and which rows really have an image.

    ``rows`` is ``has_image`` except for a training batch without any image, where the (zero)
    images are encoded anyway so every weight stays in the graph (see MedModel.encode_cxr).
    """

    def __init__(self, feature_map: torch.Tensor | None, rows: torch.Tensor, has_image: torch.Tensor):
        self.map = feature_map
        self.rows = rows
        self.has_image = has_image

    def pooled(self, filler: torch.Tensor, feature_map: torch.Tensor | None = None) -> torch.Tensor:
        """``[B, C]``: GAP of the map (or of ``feature_map`` over the same rows) where an image is."""
        feature_map = self.map if feature_map is None else feature_map
        if feature_map is None:
            return filler
        feats = scatter_present(feature_map.mean(dim=(2, 3)), self.rows, torch.zeros_like(filler))
        return torch.where(self.has_image.unsqueeze(-1), feats, filler)


class LayerwiseFusion(MedModel):
    """Shared skeleton: LSTM layer 1, a block conditioned on both modalities, the other layers."""

    def __init__(self, cfg: EncoderConfig, task: TaskSpec):
        super().__init__(cfg, task)
        if cfg.ehr_encoder != "lstm" or cfg.ehr_layers < 2:
            raise ConfigError(
                f"{self.name} sits between EHR LSTM layers 1 and 2: needs ehr_encoder=lstm, ehr_layers>=2"
            )
        self.causal = cfg.ehr_pool == "running"
        self._build_ehr()
        self._build_cxr()

    def encode_ehr(self, batch: Batch, sequence: bool = False) -> torch.Tensor:
        return self.ehr_encoder.run_layer(0, batch["ehr"])

    def _upper_layers(self, h1: torch.Tensor) -> torch.Tensor:
        for i in range(1, len(self.ehr_encoder.layers)):
            h1 = self.ehr_encoder.run_layer(i, h1)
        return h1

    def _ehr_summary(self, h1: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """``[B, H]`` window mean, or ``[B, T, H]`` running mean."""
        return running_mean(h1) if self.causal else window_mean(h1, lengths)

    def _outputs(self, batch: Batch, sequence: bool) -> dict[str, torch.Tensor]:
        check_batch(batch, self.config.ehr_input_dim)
        if sequence and not self.causal:
            raise NotImplementedError(f"{self.name} with ehr_pool=window is not causal: use mode=sample")
        logits = self.head(self.fuse(self.encode_ehr(batch), self.encode_cxr(batch), batch))
        if self.causal and not sequence:
            return {k: last_valid(v, batch["ehr_len"]) for k, v in logits.items()}
        return logits

    def forward(self, batch: Batch) -> torch.Tensor:
        return self._outputs(batch, sequence=False)["fused"]

    def forward_sequence(self, batch: Batch) -> torch.Tensor:
        return self._outputs(batch, sequence=True)["fused"]

    def forward_heads(self, batch: Batch) -> dict[str, torch.Tensor]:
        return self._outputs(batch, sequence=False)


@register_model("mmtm")
class MMTM(LayerwiseFusion):
    """Multimodal transfer module (Joze et al. 2020).

    squeeze = [GAP(CXR map at ``mmtm_stage``); mean_t(h1)] -> Linear(d -> 2d/ratio) -> ReLU ->
    two Linear gates -> sigmoid; the gates rescale the EHR layer-1 channels and the CXR map's
    channels. Each branch has its own head (``ehr``, ``cxr``: exposed by forward_heads); the
    fused logits are their mean, or the EHR logits alone when the image is missing. A missing
    image's squeeze input is the ``missing_image`` filler. ``ehr_pool=running`` needs the block
    after layer4, where GAP(map * gate) = GAP(map) * gate lets every hour have its own CXR gate.
    """

    config_class = MMTMConfig
    head_names = ("fused", "ehr", "cxr")

    def __init__(self, cfg: MMTMConfig, task: TaskSpec, checkpoints: Checkpoints | None = None):
        super().__init__(cfg, task)
        if cfg.cxr_encoder not in ResNetEncoder.ARCHITECTURES:
            names = " or ".join(ResNetEncoder.ARCHITECTURES)
            raise ConfigError(f"mmtm inserts into ResNet stages: needs cxr_encoder={names}")
        if self.causal and cfg.mmtm_stage != "layer4":
            raise ConfigError("mmtm with ehr_pool=running needs mmtm_stage=layer4")
        hidden, channels = self.ehr_encoder.out_dim, RESNET_CHANNELS[cfg.mmtm_stage]
        width = hidden + channels
        self.squeeze = nn.Linear(width, int(2 * width / cfg.mmtm_ratio))
        self.gate_ehr = nn.Linear(self.squeeze.out_features, hidden)
        self.gate_cxr = nn.Linear(self.squeeze.out_features, channels)
        self.missing = MissingImage(channels, cfg.missing_image)
        self.register_buffer("no_image", torch.zeros(self.cxr_encoder.out_dim), persistent=False)
        self.ehr_head = nn.Linear(hidden, task.num_outputs)
        self.cxr_head = nn.Linear(self.cxr_encoder.out_dim, task.num_outputs)

    def encode_cxr(self, batch: Batch) -> CXRMap:
        has_image = batch["has_image"].to(batch["image"].device).bool()
        rows = (
            has_image
            if bool(has_image.any()) or not self.cxr_encoder.training
            else torch.ones_like(has_image)
        )
        if not bool(rows.any()):
            return CXRMap(None, rows, has_image)
        stem = self.cxr_encoder.stem(batch["image"][rows])
        return CXRMap(self.cxr_encoder.run_stages(stem, "layer1", self.config.mmtm_stage), rows, has_image)

    def _gates(self, s_ehr: torch.Tensor, s_cxr: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = torch.relu(self.squeeze(torch.cat([s_ehr, s_cxr], dim=-1)))
        return torch.sigmoid(self.gate_ehr(z)), torch.sigmoid(self.gate_cxr(z))

    def _cxr_rest(self, cxr: CXRMap, gate: torch.Tensor) -> torch.Tensor:
        """Gated map through the stages after the block, pooled: ``[B, 512]`` (zeros if missing)."""
        filler = self.no_image.unsqueeze(0).expand(cxr.has_image.shape[0], -1)
        if cxr.map is None:
            return filler
        gated = cxr.map * gate[cxr.rows][:, :, None, None]
        stage = self.config.mmtm_stage
        if stage != "layer4":
            gated = self.cxr_encoder.run_stages(
                gated, RESNET_STAGES[RESNET_STAGES.index(stage) + 1], "layer4"
            )
        return cxr.pooled(filler, gated)

    def fuse(self, h1: torch.Tensor, cxr: CXRMap, batch: Batch) -> Features:
        s_ehr = self._ehr_summary(h1, batch["ehr_len"])
        s_cxr = cxr.pooled(self.missing.fill(h1.shape[0]))
        if self.causal:  # per hour: [B, T, .]; the CXR gate is applied after pooling (layer4 only)
            g_ehr, g_cxr = self._gates(s_ehr, s_cxr.unsqueeze(1).expand(-1, h1.shape[1], -1))
            v_cxr = self._cxr_rest(cxr, torch.ones_like(g_cxr[:, 0])).unsqueeze(1) * g_cxr
            return {"ehr": self._upper_layers(h1 * g_ehr), "cxr": v_cxr, "has_image": cxr.has_image}
        g_ehr, g_cxr = self._gates(s_ehr, s_cxr)
        v_ehr = last_valid(self._upper_layers(h1 * g_ehr.unsqueeze(1)), batch["ehr_len"])
        return {"ehr": v_ehr, "cxr": self._cxr_rest(cxr, g_cxr), "has_image": cxr.has_image}

    def head(self, feats: Features) -> Features:
        ehr, cxr = self.ehr_head(feats["ehr"]), self.cxr_head(feats["cxr"])
        has_image = batch_has_image(ehr, feats["has_image"])
        return {"fused": torch.where(has_image, (ehr + cxr) / 2, ehr), "ehr": ehr, "cxr": cxr}


def batch_has_image(like: torch.Tensor, has_image: torch.Tensor) -> torch.Tensor:
    """``has_image`` [B] shaped to broadcast against ``like`` ([B, C] or [B, T, C])."""
    return has_image.to(like.device).bool().view(-1, *([1] * (like.dim() - 1)))


@register_model("daft")
class DAFT(LayerwiseFusion):
    """Dynamic affine feature-map transform (Poelsterl et al. 2021) on the EHR.

    cond = [GAP(CXR map); mean_t(h1)] -> Linear(C + H -> b) -> ReLU -> Linear(b -> 2H) ->
    (gamma, beta); h1 <- (1 + gamma) * h1 + beta (FiLM written around the identity so a fresh
    block passes h1 through), then LSTM layer 2 and a linear head on v_ehr. A missing image's
    GAP is the ``missing_image`` filler. b = int((16 + C) / 7) with C the CXR channels (512).
    """

    config_class = DAFTConfig

    def __init__(self, cfg: DAFTConfig, task: TaskSpec, checkpoints: Checkpoints | None = None):
        super().__init__(cfg, task)
        hidden, channels = self.ehr_encoder.out_dim, self.cxr_encoder.out_dim
        bottleneck = cfg.daft_bottleneck or int((16 + channels) / 7)
        self.film = nn.Sequential(
            nn.Linear(channels + hidden, bottleneck), nn.ReLU(), nn.Linear(bottleneck, 2 * hidden)
        )
        self.classifier = nn.Linear(hidden, task.num_outputs)

    def fuse(self, h1: torch.Tensor, v_cxr: torch.Tensor, batch: Batch) -> Features:
        s_ehr = self._ehr_summary(h1, batch["ehr_len"])
        if self.causal:
            v_cxr = v_cxr.unsqueeze(1).expand(-1, h1.shape[1], -1)
        gamma, beta = self.film(torch.cat([v_cxr, s_ehr], dim=-1)).chunk(2, dim=-1)
        if not self.causal:
            gamma, beta = gamma.unsqueeze(1), beta.unsqueeze(1)
        states = self._upper_layers((1 + gamma) * h1 + beta)
        return {"fused": states if self.causal else last_valid(states, batch["ehr_len"])}

    def head(self, feats: Features) -> Features:
        return {"fused": self.classifier(feats["fused"])}
