"""DALI's webdataset reader over our shards (CPU operators here) equals the WebDataset reader."""

from __future__ import annotations

import pytest
import torch

from shards.reader import ReaderConfig, shard_dataset
from shards.tiny import tiny_dataset

dali = pytest.importorskip("nvidia.dali")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny-dali")
    manifest = tiny_dataset(str(root), tasks=("pheno", "los"), records=7, records_per_shard=3, image_size=256)
    return str(root), manifest


def _first_id(s):
    return s["sample_id"] if isinstance(s["sample_id"], str) else s["sample_id"][0]


@pytest.mark.parametrize("task,mode", [("pheno", "sample"), ("los", "sequence")])
def test_dali_and_webdataset_give_the_same_samples(tiny, task, mode):
    from shards.dali import dali_samples

    root, manifest = tiny
    cfg = ReaderConfig(task=task, split="test", mode=mode)
    a = {_first_id(s): s for s in dali_samples(root, cfg, batch_size=3, manifest=manifest)}
    b = {_first_id(s): s for s in shard_dataset(root, cfg, manifest=manifest)}
    assert sorted(a) == sorted(b) and len(a) == 7
    for key, x in a.items():
        y = b[key]
        assert x["sample_id"] == y["sample_id"] and x["has_image"] == y["has_image"]
        assert torch.equal(x["ehr"], y["ehr"]) and torch.equal(x["y"], y["y"])
        assert x["image"].shape == y["image"].shape == (3, 224, 224)
        # both decode the same JPEG with libjpeg-turbo; 1/255 of ImageNet std bounds the rounding
        assert (x["image"] - y["image"]).abs().max() <= 1.0 / (255 * 0.224) + 1e-5
        if not x["has_image"]:
            assert x["image"].abs().sum() == 0


def test_dali_exact_eval_covers_every_sample_once_over_ranks(tiny):
    from shards.dali import dali_loader

    root, manifest = tiny
    cfg = ReaderConfig(task="los", split="val")
    ids = [
        sid
        for r in range(2)
        for b in dali_loader(root, cfg, 4, rank=r, world_size=2, manifest=manifest)
        for sid in b["sample_id"]
    ]
    assert len(ids) == len(set(ids)) == manifest["tasks"]["los"]["splits"]["val"]["samples"]


def test_dali_train_pipeline_augments(tiny):
    from shards.dali import dali_loader

    root, manifest = tiny
    batch = next(iter(dali_loader(root, ReaderConfig(task="pheno", split="train"), 4, manifest=manifest)))
    assert batch["image"].shape == (4, 3, 224, 224) and batch["y"].shape == (4, 25)
    assert torch.isfinite(batch["image"]).all()
