"""The GPU throughput settings, checked where a CPU can: gradient accumulation, channels-last,
DataLoader options, and the DALI device rule at the trainer's boundary."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from conf.typed import ConfigError
from tests.test_models import make_batch
from trainer.config import load_run_config
from trainer.data import LOADERS, DataError, loader_options
from trainer.distributed import DistContext
from trainer.train import Trainer, accumulation_rounds, apply_throughput_settings, to_channels_last

CPU = DistContext(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
GPU = DistContext(rank=0, world_size=1, local_rank=0, device=torch.device("cuda", 0))  # never used to run


def _cfg(tmp_path, *extra: str):
    return load_run_config(
        [
            "task=ihm",
            "model=uni_ehr",
            "model.ehr_hidden=8",
            "model.ehr_layers=1",
            "model.ehr_dropout=0",
            "data.shards=unused",
            f"train.runs_dir={tmp_path}",
            "optim.lr=0.01",
            *extra,
        ]
    )


def _trainer(tmp_path, accum: int) -> Trainer:
    from trainer.runtime import build_model

    cfg = _cfg(tmp_path / str(accum), f"train.grad_accum_steps={accum}")
    torch.manual_seed(0)
    return Trainer(
        cfg, CPU, build_model(cfg), SimpleNamespace(steps_per_epoch=8, manifest={"tasks": {}}, mode="sample")
    )


def _rows(batch: dict, rows: slice) -> dict:
    return {k: v[rows] for k, v in batch.items()}


def test_two_accumulated_batches_of_4_equal_one_batch_of_8(tmp_path):
    task = load_run_config(["task=ihm"]).spec
    batch = make_batch(task, lengths=(5, 3, 1, 4, 2, 5, 5, 1), has_image=(True,) * 8, seed=1)
    batch["sample_id"] = [f"s{i}" for i in range(8)]
    one, two = _trainer(tmp_path, 1), _trainer(tmp_path, 2)
    assert two.steps_per_round == 4 and one.steps_per_round == 8
    loss1, rows1 = one.train_step([batch])
    loss2, rows2 = two.train_step([_rows(batch, slice(0, 4)), _rows(batch, slice(4, 8))])
    assert rows1 == rows2 == 8 and loss1 == pytest.approx(loss2, rel=1e-5)
    for (name, p1), p2 in zip(one.model.named_parameters(), two.model.parameters()):
        assert torch.allclose(p1.grad, p2.grad, atol=1e-6), name
        assert torch.allclose(p1, p2, atol=1e-6), name
    assert one.state_dict()["data"]["batch"] == 1 and two.state_dict()["data"]["batch"] == 2


def test_accumulation_must_fit_an_epoch():
    assert accumulation_rounds(10, 3) == 3
    with pytest.raises(ConfigError, match="grad_accum_steps"):
        accumulation_rounds(2, 3)
    with pytest.raises(ConfigError, match=">= 1"):
        accumulation_rounds(2, 0)


def test_channels_last_cnn_gives_the_same_logits(tmp_path):
    from trainer.runtime import build_model

    cfg = load_run_config(["task=ihm", "model=uni_cxr", "train.channels_last=false"])
    torch.manual_seed(0)
    plain = build_model(cfg).eval()
    nhwc = apply_throughput_settings(build_model(cfg).eval(), _cfg(tmp_path, "train.channels_last=true"), CPU)
    nhwc.load_state_dict(plain.state_dict())
    conv = nhwc.cxr_encoder.backbone.conv1.weight
    assert conv.is_contiguous(memory_format=torch.channels_last)
    batch = make_batch(cfg.spec, has_image=(True, False, True))
    moved = to_channels_last(batch)
    assert moved["image"].is_contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        assert torch.allclose(plain(batch), nhwc(moved), atol=1e-4)


def test_throughput_keys_have_gpu_friendly_defaults(tmp_path):
    cfg = _cfg(tmp_path)
    assert (cfg.train.channels_last, cfg.train.cudnn_benchmark, cfg.train.grad_accum_steps) == (True, True, 1)
    assert (cfg.data.pin_memory, cfg.data.persistent_workers) == (True, True)
    assert (cfg.data.dali_threads, cfg.data.dali_prefetch) == (0, 2)
    assert (cfg.train.amp, cfg.train.compile) == (False, False)


def test_loader_options_pin_for_cuda_and_keep_eval_workers(tmp_path):
    cfg = _cfg(tmp_path, "data.num_workers=2")
    assert loader_options(cfg, CPU, train=False)["pin_memory"] is False
    assert loader_options(cfg, GPU, train=False)["pin_memory"] is True
    assert loader_options(cfg, GPU, train=False)["persistent_workers"] is True
    assert loader_options(cfg, GPU, train=True)["persistent_workers"] is False
    off = _cfg(tmp_path, "data.num_workers=0", "data.pin_memory=false")
    assert loader_options(off, GPU, train=False) == {
        "num_workers": 0,
        "pin_memory": False,
        "persistent_workers": False,
        "prefetch_factor": None,
    }


def test_dali_mixed_needs_a_cuda_run(tmp_path):
    pytest.importorskip("nvidia.dali")
    cfg = _cfg(tmp_path, "data.loader=dali", "data.dali_device=mixed")
    with pytest.raises(DataError, match="dali_device=mixed"):
        LOADERS["dali"](cfg, CPU, {}, "sample")
