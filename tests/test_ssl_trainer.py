"""SSL modes of the one trainer (issue #12) on tiny shard sets: pretraining, its optimizer and
augmentations, resume after SIGKILL, and config errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from conf.typed import ConfigError
from shards.tiny import tiny_dataset
from tests.test_trainer import TINY as SUPERVISED_TINY
from tests.test_trainer import manifest_ids, torchrun
from trainer import checkpoint as ckpt
from trainer import runtime, scoring, selection, train
from trainer.config import load_run_config
from trainer.data import build_data
from trainer.distributed import DistContext
from trainer.models.ssl import encoder_checkpoint
from trainer.selfsup.augment import AugmentConfig, ssl_augment
from trainer.selfsup.lars import LARS

REPO = Path(__file__).resolve().parents[1]
CPU = DistContext(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
RECORDS = 9  # per split, every third without an image: 6 paired -> 2 steps of 3 per epoch
# The supervised trainer tests' tiny settings without their model.
TINY = [w for w in SUPERVISED_TINY if not w.startswith("model")]


@pytest.fixture(scope="module")
def shard_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tiny-ssl") / "ds"
    tiny_dataset(str(root), tasks=("pheno", "ihm", "decomp"), records=RECORDS, records_per_shard=3)
    return root


def words(root: Path, runs: Path, *extra: str) -> list[str]:
    return [*TINY, f"data.shards={root}", f"train.runs_dir={runs}", *extra]


def test_modes_pick_their_models_and_refuse_the_wrong_kind(shard_root, tmp_path, caplog):
    cfg = load_run_config(["mode=pretrain", "ssl=vicreg"])
    assert (cfg.mode, cfg.task, cfg.model.name) == ("pretrain", "pheno", "vicreg")  # pheno by default
    probe = load_run_config(["mode=probe", "task=ihm", "encoder=/runs/x", "features=ehr"])
    assert probe.model.name == "ssl_probe" and probe.model.args == {
        "encoder_ckpt": "/runs/x",
        "features": "ehr",
    }
    assert load_run_config(["mode=finetune", "task=los", "encoder=/r"]).model.name == "ssl_finetune"
    with pytest.raises(ConfigError, match="mode='bogus'"):
        load_run_config(["mode=bogus", "task=ihm"])
    with pytest.raises(ConfigError, match="optim.name"):
        load_run_config(["task=ihm", "optim.name=sgd"])
    bad = {
        ("mode=pretrain", "model=uni_ehr"): "'uni_ehr' is a supervised model, mode=pretrain",
        ("task=ihm", "model=convirt"): "'convirt' is a pretrain model, mode=supervised",
        ("mode=probe", "task=ihm", "model=uni_ehr"): "mode=probe uses model 'ssl_probe'",
        ("mode=probe", "task=ihm"): "needs encoder=",
    }
    for command, message in bad.items():
        caplog.clear()
        assert train.main(words(shard_root, tmp_path, *command)) == runtime.EXIT_CONFIG
        assert message in caplog.text, command


def test_pretraining_run_keeps_every_epoch_and_selects_by_val_loss(shard_root, tmp_path):
    results = train.run(
        load_run_config(words(shard_root, tmp_path, "mode=pretrain", "ssl=align", "train.epochs=2")), CPU
    )
    run_dir = tmp_path / "pheno" / "align" / "0"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics == json.loads(json.dumps(results))
    losses = [h["loss"] for h in metrics["history"]]
    assert len(losses) == 2 and all(map(torch.isfinite, torch.tensor(losses)))
    assert metrics["best"]["val_loss"] == min(losses)
    assert metrics["val"]["n_samples"] == 6  # the paired val samples only
    folder = run_dir / "checkpoints"
    kept = [ckpt.load(folder / f"epoch_{e:04d}.pt", full=False) for e in (1, 2)]
    assert [k["step"] for k in kept] == [2, 4] and "optimizer" not in kept[0]  # weights, not resume state
    assert kept[0]["model_name"] == "align" and "objective.log_tau" in kept[0]["model"]
    best = ckpt.load(folder / "best.pt", full=False)
    assert best["round"] == 1 + losses.index(min(losses))


def test_pretraining_resumes_after_sigkill_to_the_uninterrupted_weights(shard_root, tmp_path):
    """ALIGN with LARS and warm-up: the resumed run replays the data stream and restores the RNG
    (augmentations, noisy pairs), so its final weights equal an uninterrupted run's exactly."""
    extra = (
        "mode=pretrain",
        "ssl=align",
        "optim.name=lars",
        "optim.lr=0.5",
        "optim.warmup_steps=2",
        "train.epochs=3",
        "train.ckpt_every=1",
        "train.log_every=1",
    )
    train.run(load_run_config(words(shard_root, tmp_path / "ref", *extra)), CPU)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": str(torch.get_num_threads())}
    cmd = [
        sys.executable,
        str(REPO / "trainer" / "train.py"),
        *words(shard_root, tmp_path / "killed", *extra),
    ]
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True)
    killed = False
    for line in proc.stderr:
        if " step 4 " in line:  # mid epoch 2, checkpoints at every step
            proc.send_signal(signal.SIGKILL)
            killed = True
            break
    proc.wait(timeout=600)
    assert killed and proc.returncode == -signal.SIGKILL
    folder = tmp_path / "killed" / "pheno" / "align" / "0" / "checkpoints"
    assert 3 <= ckpt.load(folder / "last.pt")["step"] < 6
    train.run(load_run_config(words(shard_root, tmp_path / "killed", *extra)), CPU)
    ref = ckpt.load(tmp_path / "ref" / "pheno" / "align" / "0" / "checkpoints" / "last.pt")["model"]
    got = ckpt.load(folder / "last.pt")["model"]
    assert ref.keys() == got.keys()
    for key in ref:
        assert torch.equal(ref[key], got[key]), key


def test_two_gloo_ranks_pretrain_over_the_global_batch_and_validate_every_pair_once(shard_root, tmp_path):
    """torchrun with 2 processes: 6 paired train samples = one global batch of 2 x 3 per step
    (the gather in the loss), and the val loss counts each of the 6 paired val samples once."""
    proc = torchrun(
        *words(shard_root, tmp_path, "mode=pretrain", "ssl=vicreg", "train.epochs=2", "model.ehr_hidden=8")
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((tmp_path / "pheno" / "vicreg" / "0" / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["steps"] == 2 and metrics["val"]["n_samples"] == 6


def test_ssl_augment_is_a_batched_warp_and_jitter():
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    torch.manual_seed(0)
    images = (torch.rand(4, 3, 16, 16) - mean) / std  # normalized intensities in [0, 1]
    off = AugmentConfig(
        crop_scale=1.0, crop_ratio=1.0, flip_p=0.0, degrees=0, translate=0, brightness=0, contrast=0
    )
    assert torch.allclose(ssl_augment(images, off), images, atol=1e-5)  # identity warp, no jitter
    flip = AugmentConfig(**{**off.__dict__, "flip_p": 1.0})
    assert torch.allclose(ssl_augment(images, flip), images.flip(-1), atol=1e-5)
    assert ssl_augment(images, AugmentConfig(enabled=False)) is images
    torch.manual_seed(1)
    a = ssl_augment(images, AugmentConfig())
    torch.manual_seed(1)
    b = ssl_augment(images, AugmentConfig())
    assert a.shape == images.shape and torch.equal(a, b) and not torch.allclose(a, images)
    # grayscale jitter: the three replicated channels stay one intensity image
    gray = torch.rand(2, 1, 8, 8).expand(-1, 3, -1, -1)
    out = ssl_augment((gray - mean) / std, AugmentConfig()) * std + mean
    assert torch.allclose(out[:, 0], out[:, 1], atol=1e-5) and torch.allclose(out[:, 1], out[:, 2], atol=1e-5)


def test_lars_scales_matrix_steps_by_the_trust_ratio_and_leaves_biases_plain():
    """w = [[3, 4]] (norm 5), g = [[0.6, 0.8]] (norm 1), eta 0.001, lr 1: step 0.005 g;
    the bias takes a plain SGD step."""
    w = torch.nn.Parameter(torch.tensor([[3.0, 4.0]]))
    b = torch.nn.Parameter(torch.tensor([1.0]))
    w.grad, b.grad = torch.tensor([[0.6, 0.8]]), torch.tensor([0.5])
    opt = LARS([w, b], lr=1.0, momentum=0.0, eta=0.001)
    opt.step()
    assert torch.allclose(w.detach(), torch.tensor([[3.0 - 0.003, 4.0 - 0.004]]))
    assert torch.allclose(b.detach(), torch.tensor([0.5]))
    with pytest.raises(ValueError, match="eta"):
        LARS([w], lr=1.0, eta=0.0)


# ---------------------------------------------------------------- probe and fine-tune

SMALL_EHR = ("model.ehr_hidden=8",)  # the pretraining run's LSTM; probes read it from the checkpoint


@pytest.fixture(scope="module")
def pretrained(shard_root, tmp_path_factory) -> Path:
    runs = tmp_path_factory.mktemp("pretrain-runs")
    cfg = load_run_config(
        words(shard_root, runs, "mode=pretrain", "ssl=convirt", "train.epochs=1", *SMALL_EHR)
    )
    train.run(cfg, CPU)
    return runs / "pheno" / "convirt" / "0"


def probe_words(shard_root: Path, runs: Path, encoder: Path, *extra: str) -> list[str]:
    return words(shard_root, runs, "mode=probe", f"encoder={encoder}", *SMALL_EHR, *extra)


def test_probe_trains_on_cached_features_and_scores_like_the_frozen_encoders(
    shard_root, pretrained, tmp_path
):
    """The head trained on the cache, applied through the frozen encoders to the test split,
    gives the probabilities the cached run wrote: the cache is those encoders' features."""
    cfg = load_run_config(probe_words(shard_root, tmp_path, pretrained, "task=ihm", "train.epochs=2"))
    train.run(cfg, CPU)
    run_dir = tmp_path / "ihm" / "ssl_probe" / "0"
    cache = {split: run_dir / "features" / f"{split}.rank0-of-1.pt" for split in ("train", "val", "test")}
    train_cache = torch.load(cache["train"], weights_only=False)
    assert train_cache["features"].shape == (RECORDS, 8 + 512)  # every sample, images or not
    model = runtime.build_model(cfg)
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 8 + 512 + 1
    model.load_state_dict(ckpt.load(run_dir / "checkpoints" / "best.pt", full=False)["model"])
    pred = scoring.predict(model, build_data(cfg, CPU).eval_iter("test"), cfg.spec, "sample", CPU.device)
    written = pd.read_parquet(run_dir / "predictions.parquet").set_index("sample_id")["score"]
    assert sorted(written.index) == sorted(pred.sample_ids)
    for sid, p in zip(pred.sample_ids, pred.probs[:, 0]):
        assert written[sid] == pytest.approx(p, abs=1e-5)
    # A rerun from scratch reuses the cache (same encoder file); another encoder file would not.
    stamps = {split: path.stat().st_mtime_ns for split, path in cache.items()}
    again = probe_words(shard_root, tmp_path, pretrained, "task=ihm", "train.epochs=2", "train.resume=false")
    train.run(load_run_config(again), CPU)
    assert {split: path.stat().st_mtime_ns for split, path in cache.items()} == stamps


def test_probe_of_an_hourly_task_caches_one_row_per_scored_hour(shard_root, pretrained, tmp_path):
    extra = ("task=decomp", "train.hourly_mode=sequence", "train.chunk_steps=2", "train.max_chunks=2")
    results = train.run(
        load_run_config(probe_words(shard_root, tmp_path, pretrained, *extra, "features=cxr")), CPU
    )
    test = torch.load(
        tmp_path / "decomp" / "ssl_probe" / "0" / "features" / "test.rank0-of-1.pt", weights_only=False
    )
    assert test["features"].shape[1] == 512  # features=cxr
    assert len(test["sample_id"]) == len(set(test["sample_id"])) == results["test"]["n_samples"]
    assert sorted(test["sample_id"]) == sorted(manifest_ids("decomp", "test"))


def test_finetune_trains_the_encoders_without_projection_heads(shard_root, pretrained, tmp_path):
    cfg = load_run_config(
        words(
            shard_root,
            tmp_path,
            "mode=finetune",
            "task=ihm",
            f"encoder={pretrained}",
            *SMALL_EHR,
            "train.epochs=1",
        )
    )
    train.run(cfg, CPU)
    tuned = ckpt.load(tmp_path / "ihm" / "ssl_finetune" / "0" / "checkpoints" / "last.pt")["model"]
    start = ckpt.load(pretrained / "checkpoints" / "best.pt", full=False)["model"]
    assert not any(k.startswith(("ehr_head", "cxr_head")) for k in tuned)
    assert not torch.equal(
        tuned["ehr_encoder.layers.0.weight_ih_l0"], start["ehr_encoder.layers.0.weight_ih_l0"]
    )


def test_model_selection_probes_every_kept_epoch_and_the_run_folder_then_means_the_best(shard_root, tmp_path):
    runs = tmp_path / "runs"
    train.run(
        load_run_config(words(shard_root, runs, "mode=pretrain", "ssl=vicreg", "train.epochs=2", *SMALL_EHR)),
        CPU,
    )
    run = runs / "pheno" / "vicreg" / "0"
    assert encoder_checkpoint(run) == run / "checkpoints" / "best.pt"  # before selection
    probe = words(shard_root, runs, "task=ihm", "train.epochs=1", *SMALL_EHR)
    assert selection.main([f"encoder={run}", *probe]) == 0
    picked = json.loads((run / "selection.json").read_text())
    scores = picked["scores"]
    assert sorted(scores) == ["epoch_0001.pt", "epoch_0002.pt"] and picked["metric"] == "auroc"
    for epoch, value in scores.items():  # each score is that epoch's own probe run
        probe_run = runs / "ihm" / "ssl_probe" / f"select-vicreg-0-{epoch[:-3]}" / "0"
        assert (
            json.loads((probe_run / "metrics.json").read_text())["val"]["metrics"]["auroc"]["value"] == value
        )
    assert picked["best"] == max(scores, key=scores.get)
    chosen = ckpt.load(run / "checkpoints" / picked["best"], full=False)["model"]
    selected = ckpt.load(run / "checkpoints" / "selected.pt", full=False)["model"]
    assert all(torch.equal(chosen[k], selected[k]) for k in chosen)
    assert encoder_checkpoint(run) == run / "checkpoints" / "selected.pt"
    assert selection.main([*probe]) == runtime.EXIT_CONFIG  # no encoder=
