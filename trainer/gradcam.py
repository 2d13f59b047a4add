"""Grad-CAM of a run's CXR encoder: where in the image the predicted label's evidence lies.

    python scripts/gradcam.py RUN --samples N [--out DIR] [--target predicted|true]
        [--split test] [--layer layer4] [--shards PATH]

For the ResNet CXR encoder of any model that has one (uni_cxr, early, joint, MedFuse, MMTM,
DAFT; found as the model's ``ResNetEncoder`` submodule, so fusion models need nothing of their
own), on the first N samples with an image of the split, in the order the run scores them. The
map is Grad-CAM (Selvaraju et al.) at the output of a ResNet stage (``layer4``, as usual): the
stage's activations weighted by the spatial mean of the gradient of the *target logit* and
rectified, upsampled to the model's input and scaled to [0, 1] per image. The target label is
chosen per sample: ``predicted`` (default) the label with the highest predicted probability
(binary tasks: the one label; LOS: the predicted bucket), ``true`` the true positive label with
the highest predicted probability (samples without one fall back to ``predicted``; the index
says which). The whole model runs, so a fusion model's map is that of its fused prediction.

Writes ``DIR/<k>_<sample>.png`` (image | heat map overlay, as the paper's Figure 4),
``DIR/gradcam.csv`` (sample, target label, its probability and true value, how it was chosen,
file) and ``DIR/maps.npz`` (the maps and the displayed images, for analysis).
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from trainer.models.encoders import RESNET_STAGES, ResNetEncoder
from trainer.scoring import move, to_probs
from trainer.tasks import TaskSpec

log = logging.getLogger("medmod.trainer.gradcam")

TARGETS = ("predicted", "true")


class GradCAMError(ValueError):
    """A run or model Grad-CAM cannot explain; the message says why."""


@dataclass
class Explained:
    """Grad-CAM maps of the samples with an image, in batch order."""

    sample_ids: list[str]
    images: torch.Tensor  # [n, 3, H, W] model input (normalized)
    maps: torch.Tensor  # [n, H, W] in [0, 1]
    target: torch.Tensor  # [n] label / class index the map explains
    prob: torch.Tensor  # [n] predicted probability of the target
    truth: torch.Tensor  # [n] true value of the target (multiclass: 1 if it is the true class)
    chosen: list[str]  # "predicted" or "true", per sample


def cxr_resnet(model: nn.Module) -> ResNetEncoder:
    """The model's ResNet CXR encoder; GradCAMError when it has none or a ViT."""
    found = [m for m in model.modules() if isinstance(m, ResNetEncoder)]
    if found:
        return found[0]
    name = getattr(model, "name", type(model).__name__)
    if any(n.endswith("cxr_encoder") for n, _ in model.named_modules()):
        raise GradCAMError(
            f"model {name!r} has a ViT CXR encoder; Grad-CAM here needs model.cxr_encoder=resnet34 or resnet18"
        )
    raise GradCAMError(f"model {name!r} has no CXR encoder to explain")


def choose_targets(
    spec: TaskSpec, probs: torch.Tensor, y: torch.Tensor, mode: str
) -> tuple[torch.Tensor, list[str]]:
    """Per sample: the label to explain and how it was chosen (``predicted`` or ``true``)."""
    predicted = probs.argmax(dim=1)
    if mode == "predicted":
        return predicted, ["predicted"] * len(predicted)
    if spec.is_multiclass:
        return y.long(), ["true"] * len(y)
    positive = y.reshape(len(y), -1) > 0.5
    masked = torch.where(positive, probs, torch.full_like(probs, -1.0))
    has = positive.any(dim=1)
    target = torch.where(has, masked.argmax(dim=1), predicted)
    return target, ["true" if h else "predicted" for h in has.tolist()]


def explain(
    model: nn.Module, batch: dict[str, Any], spec: TaskSpec, target: str = "predicted", layer: str = "layer4"
) -> Explained:
    """Grad-CAM maps for the samples of ``batch`` that have an image (model put in eval mode:
    BatchNorm then treats samples independently, so one backward gives every sample's map)."""
    if layer not in RESNET_STAGES:
        raise GradCAMError(f"layer {layer!r}: expected one of {', '.join(RESNET_STAGES)}")
    stage = getattr(cxr_resnet(model).backbone, layer)
    model.eval()
    present = batch["has_image"].bool()
    # Frozen encoders have no parameter needing a gradient: an input that does keeps the graph.
    batch = {**batch, "image": batch["image"].detach().clone().requires_grad_(True)}
    acts: list[torch.Tensor] = []
    handle = stage.register_forward_hook(lambda _m, _i, out: acts.append(out))
    try:
        with torch.enable_grad():
            logits = model(batch)
    finally:
        handle.remove()
    if not acts:
        raise GradCAMError(f"the model never ran its CXR encoder's {layer} on this batch")
    act = acts[-1]  # [n_present, K, h, w]: only present images go through the CNN
    logits = logits[present]
    probs = to_probs(spec, logits.detach())
    y = batch["y"][present]
    chosen_target, chosen = choose_targets(spec, probs, y, target)
    picked = logits.gather(1, chosen_target[:, None]).sum()
    (grads,) = torch.autograd.grad(picked, act)
    weights = grads.mean(dim=(2, 3), keepdim=True)
    cam = F.relu((weights * act).sum(dim=1, keepdim=True)).detach()
    images = batch["image"].detach()[present]
    cam = F.interpolate(cam, size=images.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    cam = cam / cam.amax(dim=(1, 2), keepdim=True).clamp_min(1e-12)
    if spec.is_multiclass:
        truth = (y.long() == chosen_target).float()
    else:
        truth = y.reshape(len(y), -1).gather(1, chosen_target[:, None])[:, 0].float()
    ids = [s for s, keep in zip(batch["sample_id"], present.tolist()) if keep]
    prob = probs.gather(1, chosen_target[:, None])[:, 0]
    return Explained(ids, images, cam, chosen_target, prob, truth, chosen)


def explain_samples(
    model: nn.Module,
    batches: Iterable[dict[str, Any]],
    spec: TaskSpec,
    samples: int,
    target: str = "predicted",
    layer: str = "layer4",
    device: torch.device | None = None,
) -> list[Explained]:
    """The first ``samples`` samples with an image (hourly tasks: one per stay, whose hours share
    the image), explained batch by batch."""
    device = device or torch.device("cpu")
    model = model.to(device)
    out: list[Explained] = []
    seen: set[str] = set()
    need = samples
    for batch in batches:
        keep = []
        for sid in batch["sample_id"]:
            key = _image_key(spec, sid)
            keep.append(key not in seen)
            seen.add(key)
        mask = torch.tensor(keep) & batch["has_image"].bool()
        if not bool(mask.any()):
            continue
        part = _rows(batch, mask, need)
        out.append(explain(model, move(part, device), spec, target, layer))
        need -= len(out[-1].sample_ids)
        if need <= 0:
            break
    return out


def _image_key(spec: TaskSpec, sample_id: str) -> str:
    return sample_id.rsplit(":", 1)[0] if spec.hourly else sample_id


def _rows(batch: dict[str, Any], mask: torch.Tensor, limit: int) -> dict[str, Any]:
    index = mask.nonzero(as_tuple=True)[0][:limit]
    out: dict[str, Any] = {}
    for key, value in batch.items():
        if torch.is_tensor(value):
            out[key] = value[index]
        elif isinstance(value, list):
            out[key] = [value[i] for i in index.tolist()]
        else:
            out[key] = value
    return out


def display_image(image: torch.Tensor) -> np.ndarray:
    """A normalized model input ``[3, H, W]`` back to a grayscale [0, 1] picture."""
    from shards.transforms import IMAGENET_MEAN, IMAGENET_STD

    return (image[0].cpu() * IMAGENET_STD[0] + IMAGENET_MEAN[0]).clamp(0, 1).numpy()


def label_name(spec: TaskSpec, index: int) -> str:
    return f"bucket {index}" if spec.is_multiclass else spec.labels[index]


def save_overlay(path: Path, picture: np.ndarray, cam: np.ndarray, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(6.4, 3.4))
    axes[0].imshow(picture, cmap="gray", vmin=0, vmax=1)
    axes[0].set_title("image", fontsize=8)
    axes[1].imshow(picture, cmap="gray", vmin=0, vmax=1)
    axes[1].imshow(cam, cmap="jet", alpha=0.45, vmin=0, vmax=1)
    axes[1].set_title("Grad-CAM", fontsize=8)
    for ax in axes:
        ax.axis("off")
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _remove_previous(out_dir: Path) -> None:
    """The overlays an earlier run of this command listed here, so that none is left stale."""
    import pandas as pd

    index = out_dir / "gradcam.csv"
    if index.is_file():
        for name in pd.read_csv(index).get("file", []):
            (out_dir / str(name)).unlink(missing_ok=True)


def write_outputs(spec: TaskSpec, parts: list[Explained], out_dir: Path) -> list[Path]:
    """PNG overlays, ``gradcam.csv`` and ``maps.npz`` of the explained samples."""
    import pandas as pd

    out_dir.mkdir(parents=True, exist_ok=True)
    _remove_previous(out_dir)
    rows, pictures, maps, files = [], [], [], []
    k = 0
    for part in parts:
        for i, sid in enumerate(part.sample_ids):
            picture, cam = display_image(part.images[i]), part.maps[i].cpu().numpy()
            name = label_name(spec, int(part.target[i]))
            file = out_dir / f"{k:03d}_{re.sub(r'[^A-Za-z0-9_.-]+', '_', sid)}.png"
            title = (
                f"{sid}: {name} p={float(part.prob[i]):.2f} (true {float(part.truth[i]):g}; {part.chosen[i]})"
            )
            save_overlay(file, picture, cam, title)
            rows.append(
                {
                    "sample_id": sid,
                    "target": name,
                    "target_index": int(part.target[i]),
                    "prob": float(part.prob[i]),
                    "truth": float(part.truth[i]),
                    "chosen_by": part.chosen[i],
                    "file": file.name,
                }
            )
            pictures.append(picture)
            maps.append(cam)
            files.append(file)
            k += 1
    pd.DataFrame(rows).to_csv(out_dir / "gradcam.csv", index=False)
    ids = np.array([r["sample_id"] for r in rows])
    np.savez_compressed(out_dir / "maps.npz", sample_id=ids, maps=np.stack(maps), images=np.stack(pictures))
    return files


def load_run(run: Path, overrides: list[str]) -> tuple[Any, nn.Module]:
    """The run's config (``key=value`` overrides on top) and its best checkpoint's model."""
    from conf import typed
    from trainer import checkpoint as ckpt
    from trainer.config import RunConfig
    from trainer.models import create_model

    path = run / "checkpoints" / "best.pt"
    if not path.is_file():
        hint = " (late fusion is scored as built: explain its uni_cxr run)" if "late" in run.parts else ""
        raise GradCAMError(f"no checkpoint at {path}: not a trained run{hint}")
    try:
        state = ckpt.load(path, full=False)
        cfg = typed.load(RunConfig, state.get("config") or {}, overrides=overrides)
    except (ckpt.CheckpointError, typed.ConfigError) as err:
        raise GradCAMError(str(err)) from None
    args = dict(state["model_config"])
    if "init" in args:
        # The checkpoint holds every weight: a fusion model needs no unimodal runs to rebuild,
        # and the warning about freezing random encoders does not apply to what is loaded next.
        args["init"] = "random"
    fusion_log = logging.getLogger("trainer.models.fusion")
    level = fusion_log.level
    fusion_log.setLevel(logging.ERROR)
    try:
        model = create_model(state["model_name"], args, cfg.spec)
    finally:
        fusion_log.setLevel(level)
    model.load_state_dict(state["model"])
    return cfg, model


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="gradcam.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("run", help="a run directory (runs/<task>/<model>/<seed>) with checkpoints/best.pt")
    p.add_argument("--samples", type=int, required=True, help="how many samples with an image to explain")
    p.add_argument("--out", help="output folder (default: RUN/gradcam)")
    p.add_argument("--target", choices=TARGETS, default="predicted", help="label explained per sample")
    p.add_argument("--split", default="test")
    p.add_argument("--layer", choices=RESNET_STAGES, default="layer4", help="ResNet stage (layer4)")
    p.add_argument("--shards", help="shard set to read (default: the run's data.shards)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Explain a run's first samples; 0 when written, 1 when the run cannot be explained."""
    from shards.manifest import ManifestError
    from trainer.data import DataError, build_data
    from trainer.distributed import DistContext

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    args = parse_args(argv)
    if args.samples < 1:
        print("error: --samples must be >= 1", file=sys.stderr)
        return 2
    run = Path(args.run)
    # Only the eval loader is read (batch_size=1 keeps a small train split from failing its
    # check), one sample per row whatever the run's hourly mode.
    overrides = [
        "data.num_workers=0",
        "data.loader=wds",
        "train.device=cpu",
        "data.batch_size=1",
        "train.hourly_mode=sample",
    ]
    if args.shards:
        overrides.append(f"data.shards={args.shards}")
    try:
        cfg, model = load_run(run, overrides)
        cxr_resnet(model)
        data = build_data(cfg, DistContext(0, 1, 0, torch.device("cpu")))
        batches = data.eval_iter(args.split)
        parts = explain_samples(model, batches, cfg.spec, args.samples, args.target, args.layer)
    except (GradCAMError, DataError, ManifestError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    if not parts:
        print(f"error: no sample of {cfg.task}/{args.split} has an image", file=sys.stderr)
        return 1
    out_dir = Path(args.out) if args.out else run / "gradcam"
    files = write_outputs(cfg.spec, parts, out_dir)
    print(f"{len(files)} Grad-CAM overlays of {run} ({cfg.model.name}, {cfg.task}) in {out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
