"""SSL image augmentations as batched tensor ops on the trainer's device (issue #12).

They run after the loader, on ``[B, 3, H, W]`` ImageNet-normalized batches wherever those come
from (webdataset CPU batches, DALI GPU batches), so no reader needs to know about SSL. One
affine warp per image does random resized crop, horizontal flip and a random affine in a single
``grid_sample``; colour jitter (brightness, contrast) acts on the grayscale intensities, the same
factors on the three replicated channels. Random draws come from the global CPU torch RNG (then
move to the device), which the checkpoint restores: a resumed run draws what the killed one would.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from shards.transforms import IMAGENET_MEAN, IMAGENET_STD


@dataclass
class AugmentConfig:
    """``augment.<key>=value``. Used by ``mode=pretrain`` only; all off: images pass unchanged."""

    enabled: bool = True
    crop_scale: float = 0.5  # random resized crop: smallest kept area fraction (largest: 1)
    crop_ratio: float = 4 / 3  # aspect ratio in [1/ratio, ratio]
    flip_p: float = 0.5
    degrees: float = 10.0
    translate: float = 0.1  # fraction of the side, each way
    brightness: float = 0.4  # factor in [1 - b, 1 + b]
    contrast: float = 0.4


def _uniform(n: int, low: float, high: float) -> torch.Tensor:
    return low + (high - low) * torch.rand(n)


def affine_matrices(n: int, cfg: AugmentConfig) -> torch.Tensor:
    """``[n, 2, 3]`` output -> input coordinate maps (``affine_grid``'s [-1, 1] convention)."""
    area = _uniform(n, cfg.crop_scale, 1.0)
    log_ratio = _uniform(n, -math.log(cfg.crop_ratio), math.log(cfg.crop_ratio))
    sx = (area * log_ratio.exp()).sqrt().clamp(max=1.0)
    sy = (area / log_ratio.exp()).sqrt().clamp(max=1.0)
    cx = _uniform(n, -1.0, 1.0) * (1 - sx) + _uniform(n, -2 * cfg.translate, 2 * cfg.translate)
    cy = _uniform(n, -1.0, 1.0) * (1 - sy) + _uniform(n, -2 * cfg.translate, 2 * cfg.translate)
    flip = torch.where(torch.rand(n) < cfg.flip_p, -1.0, 1.0)
    angle = _uniform(n, -cfg.degrees, cfg.degrees) * math.pi / 180
    cos, sin = angle.cos(), angle.sin()
    return torch.stack(
        [
            torch.stack([flip * sx * cos, -sy * sin, cx], dim=-1),
            torch.stack([flip * sx * sin, sy * cos, cy], dim=-1),
        ],
        dim=1,
    )


def color_jitter(images: torch.Tensor, cfg: AugmentConfig) -> torch.Tensor:
    """Brightness and contrast on intensities in [0, 1] (undo and redo the normalization)."""
    n = images.shape[0]
    mean = torch.tensor(IMAGENET_MEAN, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=images.device).view(1, 3, 1, 1)
    x = images * std + mean
    bright = _uniform(n, 1 - cfg.brightness, 1 + cfg.brightness).to(images.device).view(n, 1, 1, 1)
    contrast = _uniform(n, 1 - cfg.contrast, 1 + cfg.contrast).to(images.device).view(n, 1, 1, 1)
    x = x * bright
    level = x.mean(dim=(1, 2, 3), keepdim=True)
    x = ((x - level) * contrast + level).clamp(0.0, 1.0)
    return (x - mean) / std


def ssl_augment(images: torch.Tensor, cfg: AugmentConfig) -> torch.Tensor:
    """A randomly augmented copy of a normalized image batch (``images`` itself when disabled)."""
    if not cfg.enabled or images.shape[0] == 0:
        return images
    theta = affine_matrices(images.shape[0], cfg).to(images.device, images.dtype)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    warped = F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return color_jitter(warped, cfg)
