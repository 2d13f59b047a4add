"""SPEC §10 image transforms on tensors (torchvision.transforms.v2.functional), one image at a time.

Train: resize short side 256, random horizontal flip, random affine (degrees 45, translate 0.15,
scale 0.85-1.15), center crop 224, ImageNet normalize. Eval: resize 256, center crop 224,
normalize. Images are stored grayscale; the single channel is replicated to 3 before
normalizing, as the references do with ``convert("RGB")``. Randomness comes from a
``torch.Generator`` the caller owns (one per worker), so a run is reproducible.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ImageTransformConfig:
    resize: int = 256
    crop: int = 224
    flip_p: float = 0.5
    degrees: float = 45.0
    translate: float = 0.15
    scale_min: float = 0.85
    scale_max: float = 1.15


def _uniform(gen: torch.Generator, low: float, high: float) -> float:
    return float(low + (high - low) * torch.rand((), generator=gen).item())


def to_three_channels(img: torch.Tensor) -> torch.Tensor:
    """``[H, W]`` / ``[1, H, W]`` / ``[3, H, W]`` uint8 -> ``[3, H, W]``."""
    if img.ndim == 2:
        img = img.unsqueeze(0)
    if img.shape[0] == 1:
        img = img.expand(3, -1, -1)
    return img


class ImageTransform:
    """Callable ``uint8 [C, H, W] -> float32 [3, crop, crop]``; ``train`` adds the random parts."""

    def __init__(self, train: bool, cfg: ImageTransformConfig | None = None, seed: int = 0):
        self.train = train
        self.cfg = cfg or ImageTransformConfig()
        self.gen = torch.Generator().manual_seed(seed)

    def reseed(self, seed: int) -> None:
        self.gen.manual_seed(seed)

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        c = self.cfg
        img = TF.resize(img, [c.resize], interpolation=InterpolationMode.BILINEAR, antialias=True)
        if self.train:
            img = self._augment(img)
        img = center_crop(img, c.crop)
        img = to_three_channels(img).float().div_(255.0)
        return TF.normalize(img, list(IMAGENET_MEAN), list(IMAGENET_STD))

    def _augment(self, img: torch.Tensor) -> torch.Tensor:
        c, gen = self.cfg, self.gen
        if torch.rand((), generator=gen).item() < c.flip_p:
            img = TF.horizontal_flip(img)
        h, w = img.shape[-2:]
        angle = _uniform(gen, -c.degrees, c.degrees)
        # torchvision's RandomAffine: integer pixel shifts up to translate * size each way
        tx = round(_uniform(gen, -c.translate * w, c.translate * w))
        ty = round(_uniform(gen, -c.translate * h, c.translate * h))
        scale = _uniform(gen, c.scale_min, c.scale_max)
        return TF.affine(
            img,
            angle=angle,
            translate=[tx, ty],
            scale=scale,
            shear=[0.0, 0.0],
            interpolation=InterpolationMode.NEAREST,
            fill=0,
        )


def center_crop(img: torch.Tensor, size: int) -> torch.Tensor:
    """Center crop with the offset rounded half up, as DALI's ``crop_pos=0.5`` does (torchvision
    rounds half to even), so that the WebDataset and DALI readers cut the same pixels."""
    h, w = img.shape[-2:]
    if h < size or w < size:
        img = TF.center_crop(img, [size, size])  # pads, as torchvision does
        h, w = img.shape[-2:]
    top, left = (h - size + 1) // 2, (w - size + 1) // 2
    return img[..., top : top + size, left : left + size]


def blank_image(cfg: ImageTransformConfig | None = None) -> torch.Tensor:
    """The zeros image of a sample without one (FORMAT.md: zeros when absent, not normalized)."""
    c = cfg or ImageTransformConfig()
    return torch.zeros(3, c.crop, c.crop, dtype=torch.float32)
