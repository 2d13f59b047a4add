"""Grad-CAM (scripts/gradcam.py, trainer.gradcam) on synthetic radiographs with a planted lesion.

The model is a ``uni_cxr`` (the registry's ResNet-34) whose dependency on the lesion is
*constructed*, not trained. Training the ResNet-34 to find the lesion does not fit a test on
2 CPU cores: measured on this machine (shared, load ~7), one step of batch 32 at 96 px took
~8 s for the whole network, 100 steps of layer4 + head on cached layer3 features took 250 s
(test AUROC 0.85), and training only the stem and head behind pass-through blocks did not learn
at all in 300 steps. So the weights are set by hand (``_lesion_detector``): the stem blurs
the image, the first residual branch of layer1 is a centre-surround filter thresholded by its
BatchNorm bias (a bright round spot on a darker background: what the generator's
``_lung_lesion`` draws), the down-sampling blocks pass it on as 3x3 box filters, every other
block is the identity (its residual branch switched off), and the head reads only that
channel, for the "Lung Lesion" label. The network is the real one: Grad-CAM runs on its
forward pass through the run's checkpoint, shards and loader, as for any run.

What the test proves: the maps the command writes are computed from the gradients of the chosen
label at layer4 and land on the lesion: for every image with a planted lesion, the mean map
inside the lesion region is above the mean outside it (and a model reading a non-local feature,
overall brightness, does not give that), and the chosen target and PNG overlays are written.

The lesion region: ``_truth/images.csv.gz`` records each image's finding severities, but neither
where a lesion lies nor the seed the image was rendered with. The generator renders the anatomy
and noise of a seed identically whatever the findings (tests/test_cxr_render.py), so the region
is the set of pixels that change when the same image is rendered again without the lesion.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from torch import nn
from torchvision.transforms.v2 import functional as TF

from conf import typed
from conf.tasks import CHEXPERT_LABELS
from shards.record import N_FEATURES, Record, encode_image, tar_key
from shards.transforms import center_crop
from shards.write import identity_normalizer, write_dataset
from spark_jobs.synth.cxr_render import render_cxr
from tests.test_models import IMAGE, TINY_VIT, build, make_batch
from trainer import checkpoint as ckpt
from trainer import gradcam
from trainer.config import load_run_config
from trainer.metrics import auroc_per_label
from trainer.models import create_model, list_models
from trainer.tasks import task_spec

SIZE = 128  # stored short side = model input (resize and crop to the same size)
LESION = CHEXPERT_LABELS.index("Lung Lesion")
IMAGES = 12  # even: with a lesion, odd: without
THRESHOLD = 0.4  # centre-surround response (normalized intensity units) a lesion clears


def _render(i: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Image ``i`` (a lesion when even) and, for a lesion, the pixels it changes."""
    seed = 5000 + i
    long_side = int(SIZE * 1.3)
    if i % 2:
        return render_cxr({}, seed, long_side), None
    severity = 0.6 + 0.4 * ((i // 2) % 3) / 2
    image = render_cxr({"lung_lesion": severity}, seed, long_side)
    without = render_cxr({}, seed, long_side)
    return image, np.abs(image.astype(np.int16) - without) > 8


def _model_geometry(mask: np.ndarray) -> np.ndarray:
    """The region as the model sees its image: short side resized to SIZE, centre crop SIZE."""
    resized = TF.resize(torch.from_numpy(mask.astype(np.float32))[None], [SIZE], antialias=True)
    return (center_crop(resized, SIZE)[0] > 0.5).numpy()


def _record(i: int, image: np.ndarray) -> Record:
    png = io.BytesIO()
    Image.fromarray(image).save(png, format="PNG")
    sid = f"radiology:{9000 + i}:24"
    y = np.zeros(len(CHEXPERT_LABELS), np.float32)
    y[LESION] = float(i % 2 == 0)
    meta = {"stay_id": 9000 + i, "subject_id": 900 + i, "sample_id": sid, "dicom_id": f"d{i}"}
    ehr = np.zeros((1, N_FEATURES), np.float32)
    return Record(tar_key(i, sid), ehr, y, meta, encode_image(png.getvalue(), SIZE))


@pytest.fixture(scope="module")
def lesions(tmp_path_factory) -> tuple[Path, dict[str, np.ndarray | None]]:
    """A radiology shard set of rendered images; the lesion region of each sample id."""
    root = tmp_path_factory.mktemp("gradcam") / "shards"
    records, regions = [], {}
    for i in range(IMAGES):
        image, mask = _render(i)
        rec = _record(i, image)
        records.append(rec)
        regions[rec.meta["sample_id"]] = None if mask is None else _model_geometry(mask)
    splits = {("radiology", s): records for s in ("train", "val", "test")}
    write_dataset(
        str(root), splits, {"radiology": identity_normalizer()}, image_size=SIZE, records_per_shard=4
    )
    return root, regions


def _identity_bn(bn: nn.BatchNorm2d, on: bool = True, bias: torch.Tensor | float = 0.0) -> None:
    bn.weight.fill_(1.0 if on else 0.0)
    bn.bias.zero_()
    bn.bias += bias
    bn.running_mean.zero_()
    bn.running_var.fill_(1.0)


@torch.no_grad()
def _lesion_detector(model: nn.Module, read_channel: int = 1) -> None:
    """Set a uni_cxr's ResNet-34 so that its channel 1 is a thresholded bright-spot detector
    (channel 0: the bright part of the blurred image) carried to layer4, and its Lung Lesion logit reads
    ``read_channel`` of layer4 (0 for the non-local control)."""
    net = model.cxr_encoder.backbone
    for p in net.parameters():
        p.zero_()
    ticks = torch.arange(7, dtype=torch.float32) - 3
    blur = torch.exp(-(ticks**2) / (2 * 1.5**2))
    # Channels 0 and 2: the bright and dark parts of the blurred (normalized) intensity, so that
    # their difference is the intensity and zero padding reads as mid-grey, not as a dark rim.
    net.conv1.weight[0, 0] = blur[:, None] * blur[None] / blur.sum() ** 2
    net.conv1.weight[2, 0] = -net.conv1.weight[0, 0]
    _identity_bn(net.bn1)
    for name in ("layer1", "layer2", "layer3", "layer4"):
        for block in getattr(net, name):
            if block.downsample is not None:  # 3x3 box filter, stride 2, on channels 0 and 1
                for c in (0, 1):
                    block.conv1.weight[c, c] = 1 / 9
                    block.conv2.weight[c, c, 1, 1] = 1
                _identity_bn(block.bn1)
                _identity_bn(block.bn2)
                _identity_bn(block.downsample[1], on=False)
            else:  # residual branch off: the block passes its (non-negative) input on
                _identity_bn(block.bn1)
                _identity_bn(block.bn2, on=False)
    first = net.layer1[0]  # its branch: centre minus the mean of the 8 neighbours, thresholded
    first.conv1.weight[1, 0] = -1 / 8
    first.conv1.weight[1, 0, 1, 1] = 1
    first.conv1.weight[1, 2] = -first.conv1.weight[1, 0]
    threshold = torch.zeros(64)
    threshold[1] = -THRESHOLD
    _identity_bn(first.bn1, bias=threshold)
    first.conv2.weight[1, 1, 1, 1] = 1
    first.bn2.weight[1] = 1.0
    model.classifier.weight.zero_()
    model.classifier.bias.fill_(-10.0)
    model.classifier.weight[LESION, read_channel] = 1500.0 if read_channel == 1 else 20.0
    model.classifier.bias[LESION] = -4.0 if read_channel == 1 else -60.0


def _run(tmp_path: Path, shards: Path, name: str, read_channel: int = 1) -> Path:
    """A run directory with a checkpoint of the constructed model, as the trainer lays it out."""
    cfg = load_run_config(
        [
            "task=radiology",
            "model=uni_cxr",
            f"data.shards={shards}",
            f"data.image_resize={SIZE}",
            f"data.image_crop={SIZE}",
            "data.eval_batch_size=5",
            f"train.runs_dir={tmp_path / name}",
        ]
    )
    model = create_model("uni_cxr", dict(cfg.model.args), cfg.spec)
    _lesion_detector(model, read_channel)
    state = {
        "model": model.state_dict(),
        "model_name": "uni_cxr",
        "model_config": typed.to_dict(model.config),
        "config": typed.to_dict(cfg),
    }
    ckpt.save_atomic(state, cfg.run_dir() / "checkpoints" / "best.pt")
    return cfg.run_dir()


def _energy(out: Path, regions: dict[str, np.ndarray | None]) -> tuple[np.ndarray, np.ndarray]:
    maps = np.load(out / "maps.npz")
    inside, outside = [], []
    for sid, cam in zip(maps["sample_id"], maps["maps"]):
        region = regions[str(sid)]
        if region is not None:
            assert cam.shape == region.shape and 0 < region.mean() < 0.2
            inside.append(cam[region].mean())
            outside.append(cam[~region].mean())
    return np.array(inside), np.array(outside)


def test_gradcam_lands_on_the_planted_lesion(lesions, tmp_path, capsys):
    shards, regions = lesions
    run = _run(tmp_path, shards, "detector")
    out = tmp_path / "cam"
    assert gradcam.main([str(run), "--samples", str(IMAGES), "--out", str(out)]) == 0
    assert f"{IMAGES} Grad-CAM overlays" in capsys.readouterr().out
    index = pd.read_csv(out / "gradcam.csv")
    assert len(index) == IMAGES and (index["target"] == "Lung Lesion").all()
    assert (index["chosen_by"] == "predicted").all()
    assert all((out / f).stat().st_size > 1000 for f in index["file"])  # the PNG overlays
    auroc = auroc_per_label(index["truth"].to_numpy(), index["prob"].to_numpy())[0]
    assert auroc > 0.9  # the constructed model does detect lesions
    inside, outside = _energy(out, regions)
    assert len(inside) == IMAGES // 2
    assert (inside > outside).all(), (inside, outside)
    assert inside.mean() > 1.4 * outside.mean()


def test_a_model_reading_brightness_does_not_point_at_the_lesion(lesions, tmp_path):
    """The control: the same maps for a head that reads overall brightness are spread out."""
    shards, regions = lesions
    run = _run(tmp_path, shards, "brightness", read_channel=0)
    out = tmp_path / "cam"
    assert gradcam.main([str(run), "--samples", str(IMAGES), "--out", str(out), "--target", "true"]) == 0
    inside, outside = _energy(out, regions)
    assert not (inside > outside).all() and inside.mean() < 1.4 * outside.mean(), (inside, outside)


def test_runs_without_a_cxr_encoder_or_checkpoint_are_clear_errors(lesions, tmp_path, capsys):
    shards, _ = lesions
    assert gradcam.main([str(tmp_path / "nowhere"), "--samples", "2"]) == 1
    assert "no checkpoint at" in capsys.readouterr().err
    cfg = load_run_config(
        ["task=radiology", "model=uni_ehr", f"data.shards={shards}", f"train.runs_dir={tmp_path}"]
    )
    model = create_model("uni_ehr", {}, cfg.spec)
    state = {
        "model": model.state_dict(),
        "model_name": "uni_ehr",
        "model_config": typed.to_dict(model.config),
    }
    ckpt.save_atomic({**state, "config": typed.to_dict(cfg)}, cfg.run_dir() / "checkpoints" / "best.pt")
    assert gradcam.main([str(cfg.run_dir()), "--samples", "2"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == "error: model 'uni_ehr' has no CXR encoder to explain"


@pytest.mark.parametrize("name", list_models("supervised"))  # SSL pretraining models have no head to explain
def test_every_model_with_a_resnet_gets_maps_of_its_images(name):
    """Registry-driven: fusion models included (early's frozen encoder too), samples without an
    image skipped, maps in [0, 1] at the input size; a model without a ResNet is an error."""
    spec = task_spec("pheno")
    model = build(name, spec)
    batch = {**make_batch(spec), "sample_id": ["a", "b", "c"]}  # b has no image
    if name == "uni_ehr":
        with pytest.raises(gradcam.GradCAMError, match="no CXR encoder"):
            gradcam.explain(model, batch, spec)
        return
    explained = gradcam.explain(model, batch, spec, target="true")
    assert explained.sample_ids == ["a", "c"] and explained.maps.shape == (2, IMAGE, IMAGE)
    assert torch.isfinite(explained.maps).all() and 0 <= explained.maps.min() <= explained.maps.max() <= 1
    y = batch["y"][[0, 2]]
    for row, target, chosen in zip(y, explained.target, explained.chosen):
        assert (chosen == "true") == bool(row.any()) and (chosen == "predicted" or row[target] == 1)


def test_multiclass_targets_and_vit_encoders():
    spec = task_spec("los")
    batch = {**make_batch(spec), "sample_id": ["a", "b", "c"]}
    explained = gradcam.explain(build("uni_cxr", spec), batch, spec, target="true")
    assert explained.target.tolist() == batch["y"][[0, 2]].tolist() and explained.truth.tolist() == [1.0, 1.0]
    with pytest.raises(gradcam.GradCAMError, match="ViT"):
        gradcam.explain(build("uni_cxr", spec, **TINY_VIT), batch, spec)


def test_hourly_samples_of_one_stay_share_one_overlay():
    spec = task_spec("decomp")
    model = build("uni_cxr", spec)
    first = {
        **make_batch(spec, has_image=(True, True, True)),
        "sample_id": ["decomp:1:5", "decomp:1:6", "decomp:2:5"],
    }
    second = {**make_batch(spec, seed=1), "sample_id": ["decomp:2:6", "decomp:3:5", "decomp:4:5"]}
    parts = gradcam.explain_samples(model, [first, second], spec, samples=10)
    assert [sid for p in parts for sid in p.sample_ids] == ["decomp:1:5", "decomp:2:5", "decomp:4:5"]
    parts = gradcam.explain_samples(model, [first, second], spec, samples=1)
    assert [sid for p in parts for sid in p.sample_ids] == ["decomp:1:5"]
