"""The trainer end to end on tiny shard sets (shards.tiny, no Spark) with a tiny uni_ehr model.

Covers: run outputs (config, metrics with CIs that match the predictions, predictions with every
test sample once, loadable checkpoints), 2 gloo ranks with a shard count that does not divide
evenly, chunk-wise training with early stopping in chunks, sample vs sequence predictions of a
trained causal model, a NaN loss stopping the run with the last checkpoint intact, and a run
killed with SIGKILL that resumes to the same metrics as an uninterrupted one.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from sklearn.metrics import roc_auc_score

from conf.typed import ConfigError
from shards.tiny import tiny_dataset, tiny_records
from shards.write import identity_normalizer, write_dataset
from trainer import checkpoint as ckpt
from trainer import rescore, runtime, scoring, train
from trainer.config import load_run_config
from trainer.data import DataError, build_data
from trainer.distributed import DistContext

REPO = Path(__file__).resolve().parents[1]
CPU = DistContext(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
RECORDS = 9  # per split; 3 records per shard -> 3 shards: does not divide over 2 ranks
TINY = [
    "model=uni_ehr",
    "model.ehr_hidden=8",
    "model.ehr_layers=1",
    "data.num_workers=0",
    "data.image_resize=64",
    "data.image_crop=56",
    "data.batch_size=3",
    "data.eval_batch_size=4",
    "train.bootstrap=20",
    "train.progress=never",
    "optim.lr=0.01",
]


@pytest.fixture(scope="module")
def shard_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tiny-shards") / "ds"
    tiny_dataset(str(root), tasks=("ihm", "decomp"), records=RECORDS, records_per_shard=3)
    return root


def words(root: Path, runs: Path, *extra: str) -> list[str]:
    return [*TINY, f"data.shards={root}", f"train.runs_dir={runs}", *extra]


def manifest_ids(task: str, split: str) -> list[str]:
    return [sid for rec in tiny_records(task, split, RECORDS) for sid in rec.sample_ids()]


def test_config_layers_overrides_and_unknown_keys():
    cfg = load_run_config(["task=decomp", "model=uni_ehr", "model.ehr_hidden=8", "train=smoke"])
    assert cfg.train.chunk_steps == 2000 and cfg.train.max_chunks == 3  # task preset, then smoke
    assert cfg.model.args == {"ehr_hidden": 8} and cfg.optim.beta2 == 0.999
    assert load_run_config(["task=ihm"]).train.chunk_steps == 0
    with pytest.raises(ConfigError, match=r"optim.betta"):
        load_run_config(["task=ihm", "optim.betta=0.5"])
    with pytest.raises(ConfigError, match="task=<name> is required"):
        load_run_config(["model=uni_ehr"])
    with pytest.raises(ConfigError, match="no task preset 'nope'"):
        load_run_config(["task=nope"])


def test_rescore_command_answers_help_and_bad_config_also_under_its_old_name(capsys):
    from trainer import evaluate

    assert evaluate.main is rescore.main  # `python -m trainer.evaluate` still runs the command
    assert rescore.main(["--help"]) == 0
    assert rescore.__doc__.strip().splitlines()[0] in capsys.readouterr().out
    assert rescore.main(["task=ihm", "model=uni_ehr", "no_such_key=1"]) == runtime.EXIT_CONFIG
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "no_such_key" in err[0]


def test_single_process_run_writes_consistent_outputs(shard_root, tmp_path):
    cfg = load_run_config(words(shard_root, tmp_path, "task=ihm", "train.epochs=2"))
    results = train.run(cfg, CPU)
    run_dir = tmp_path / "ihm" / "uni_ehr" / "0"
    resolved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert resolved["model"]["resolved"]["ehr_hidden"] == 8 and resolved["train"]["epochs"] == 2
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics == json.loads(json.dumps(results))
    pred = pd.read_parquet(run_dir / "predictions.parquet")
    assert sorted(pred["sample_id"]) == sorted(manifest_ids("ihm", "test"))
    test = metrics["test"]["metrics"]["auroc"]
    assert test["value"] == pytest.approx(roc_auc_score(pred["label"], pred["score"]))
    assert test["ci_low"] <= test["value"] <= test["ci_high"]
    state = ckpt.load(run_dir / "checkpoints" / "best.pt", full=False)
    assert state["model_name"] == "uni_ehr" and state["model_config"]["ehr_hidden"] == 8
    from trainer.models import create_model

    model = create_model(state["model_name"], state["model_config"], cfg.spec)
    model.load_state_dict(state["model"])  # the agreed format rebuilds the model
    assert list((run_dir / "tb").glob("events.out.tfevents.*"))
    rescored = tmp_path / "rescored"
    best = run_dir / "checkpoints" / "best.pt"
    assert rescore.evaluate_checkpoint([f"checkpoint={best}", "split=test", f"out={rescored}"]) == 0
    again = json.loads((rescored / "metrics.json").read_text())["test"]["metrics"]["auroc"]
    assert again == test  # same checkpoint, same samples, same seeded bootstrap
    last = ckpt.load(run_dir / "checkpoints" / "last.pt")
    assert [h["step"] for h in last["history"]] == [3, 6]  # 9 train samples / batch 3, 2 epochs
    assert last["finished"] and state["step"] == state["best"]["step"] <= last["step"]
    # Only last.pt carries what a resume needs; best.pt is read for its weights alone.
    assert {"optimizer", "scheduler", "rng"} <= set(last) and not {"optimizer", "scheduler", "rng"} & set(
        state
    )


def torchrun(*args: str, nproc: int = 2) -> subprocess.CompletedProcess:
    """``trainer/train.py args`` under torchrun: ``nproc`` gloo ranks of one thread each."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    run = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--standalone"]
    return subprocess.run(
        [*run, str(REPO / "trainer" / "train.py"), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_two_gloo_ranks_score_every_sample_once(shard_root, tmp_path):
    proc = torchrun(*words(shard_root, tmp_path, "task=ihm", "train.epochs=1", "data.batch_size=2"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dir = tmp_path / "ihm" / "uni_ehr" / "0"
    for split, name in (("test", "predictions.parquet"), ("val", "predictions_val.parquet")):
        ids = pd.read_parquet(run_dir / name)["sample_id"].tolist()
        assert len(ids) == len(set(ids)) == RECORDS
        assert sorted(ids) == sorted(manifest_ids("ihm", split))
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["test"]["n_samples"] == RECORDS


DECOMP = ("task=decomp", "train.chunk_steps=2", "train.max_chunks=5", "train.val_steps=2")


def _has_dali() -> bool:
    try:
        return importlib.util.find_spec("nvidia.dali") is not None
    except ModuleNotFoundError:
        return False


def _score(shard_root: Path, runs: Path, model, mode: str, loader: str) -> dict[str, float]:
    """{sample_id: probability} of ``model`` over the decomp test split read by ``loader``."""
    cfg = load_run_config(words(shard_root, runs, *DECOMP, f"train.hourly_mode={mode}", loader))
    pred = scoring.predict(model, build_data(cfg, CPU).eval_iter("test"), cfg.spec, mode, CPU.device)
    return dict(zip(pred.sample_ids, pred.probs[:, 0]))


def test_chunks_early_stopping_and_sequence_equals_sample(shard_root, tmp_path):
    cfg = load_run_config(
        words(shard_root, tmp_path, *DECOMP, "train.patience=1", "train.hourly_mode=sequence")
    )
    train.run(cfg, CPU)
    state = ckpt.load(tmp_path / "decomp" / "uni_ehr" / "0" / "checkpoints" / "last.pt")
    history = state["history"]
    assert [h["step"] for h in history] == [2 * (i + 1) for i in range(len(history))]
    # Patience 1 counted in chunks: the run stops at the first chunk that does not improve.
    values = [h["auroc"] for h in history]
    first_bad = next((i for i in range(1, len(values)) if not values[i] > max(values[:i])), None)
    assert len(history) == (5 if first_bad is None else first_bad + 1)

    best = ckpt.load(tmp_path / "decomp" / "uni_ehr" / "0" / "checkpoints" / "best.pt", full=False)
    model = runtime.build_model(cfg)
    model.load_state_dict(best["model"])
    scored = {
        mode: _score(shard_root, tmp_path, model, mode, "data.loader=wds") for mode in ("sample", "sequence")
    }
    assert sorted(scored["sample"]) == sorted(scored["sequence"]) == sorted(manifest_ids("decomp", "test"))
    for sid, p in scored["sample"].items():
        assert scored["sequence"][sid] == pytest.approx(p, abs=1e-5)


@pytest.mark.skipif(
    not _has_dali(),
    reason="DALI is not installed: data.loader=dali would fall back to webdataset and compare it with itself",
)
def test_dali_reader_scores_like_webdataset(shard_root, tmp_path):
    """The DALI (cpu) reader yields the same samples and, through one model, the same scores."""
    model = runtime.build_model(load_run_config(words(shard_root, tmp_path, *DECOMP)))
    wds = _score(shard_root, tmp_path, model, "sequence", "data.loader=wds")
    dali = _score(shard_root, tmp_path, model, "sequence", "data.loader=dali")
    assert sorted(dali) == sorted(wds) == sorted(manifest_ids("decomp", "test"))
    for sid, p in wds.items():
        assert dali[sid] == pytest.approx(p, abs=1e-5)


def test_nan_loss_stops_with_last_checkpoint_intact(shard_root, tmp_path, caplog):
    runs, data = tmp_path / "runs", tmp_path / "ds"
    shutil.copytree(shard_root, data)
    assert train.main(words(data, runs, "task=ihm", "train.epochs=1")) == 0
    last = runs / "ihm" / "uni_ehr" / "0" / "checkpoints" / "last.pt"
    before = hashlib.sha256(last.read_bytes()).hexdigest()
    poisoned = tmp_path / "poisoned"
    recs = {(t, s): tiny_records(t, s, RECORDS) for t in ("ihm",) for s in ("train", "val", "test")}
    for rec in recs[("ihm", "train")]:
        rec.ehr[:] = np.nan
    write_dataset(str(poisoned), recs, {"ihm": identity_normalizer()}, image_size=64, records_per_shard=3)
    # The train shards go bad on disk under the same manifest: the same run identity resumes.
    shutil.copytree(poisoned / "ihm" / "train", data / "ihm" / "train", dirs_exist_ok=True)
    code = train.main(words(data, runs, "task=ihm", "train.epochs=2"))
    assert code == runtime.EXIT_NONFINITE
    assert "non-finite loss at step 4" in caplog.text and str(last) in caplog.text
    assert hashlib.sha256(last.read_bytes()).hexdigest() == before


def test_checkpoint_save_is_atomic(tmp_path):
    path = tmp_path / "c.pt"
    ckpt.save_atomic({"a": 1}, path)
    with pytest.raises(Exception):  # noqa: B017 - any pickling failure must leave the old file
        ckpt.save_atomic({"a": lambda: 0}, path)
    assert torch.load(path, weights_only=False) == {"a": 1}
    assert not list(tmp_path.glob(".*.tmp"))
    with pytest.raises(ckpt.CheckpointError, match="lacks"):
        ckpt.load(path)


@pytest.mark.slow
def test_sigkill_then_resume_matches_uninterrupted_run(tmp_path):
    root = tmp_path / "ds"
    tiny_dataset(str(root), tasks=("ihm",), records=24, records_per_shard=3)
    extra = ("task=ihm", "train.epochs=4", "train.ckpt_every=2", "train.log_every=1", "train.patience=10")
    ref = train.run(load_run_config(words(root, tmp_path / "ref", *extra)), CPU)

    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": str(torch.get_num_threads())}
    cmd = [sys.executable, str(REPO / "trainer" / "train.py"), *words(root, tmp_path / "killed", *extra)]
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True)
    killed_at = None
    for line in proc.stderr:
        if " step 13 " in line:  # mid epoch 2 (8 steps per epoch), after a checkpoint at step 12
            proc.send_signal(signal.SIGKILL)
            killed_at = line
            break
    proc.wait(timeout=600)
    assert killed_at is not None and proc.returncode == -signal.SIGKILL
    run_dir = tmp_path / "killed" / "ihm" / "uni_ehr" / "0"
    assert not (run_dir / "metrics.json").exists()
    state = ckpt.load(run_dir / "checkpoints" / "last.pt")
    assert 12 <= state["step"] < 32 and not state["finished"]

    resumed = train.run(load_run_config(words(root, tmp_path / "killed", *extra)), CPU)
    for split in ("val", "test"):
        for key, value in ref[split]["metrics"].items():
            got = resumed[split]["metrics"][key]
            assert got == value or (math.isnan(got["value"]) and math.isnan(value["value"])), key
    a = pd.read_parquet(tmp_path / "ref" / "ihm" / "uni_ehr" / "0" / "predictions.parquet")
    b = pd.read_parquet(run_dir / "predictions.parquet")
    pd.testing.assert_frame_equal(a, b)
    shutil.rmtree(root)


def test_image_and_feature_sizes_are_checked_where_they_meet(shard_root, tmp_path):
    """Shards (manifest image_size / n_features) -> loader resize / crop -> ViT input size."""
    with pytest.raises(ConfigError, match="image_crop"):
        load_run_config(["task=ihm", "data.image_resize=64", "data.image_crop=96"])
    upscale = load_run_config(["task=ihm", *words(shard_root, tmp_path), "data.image_resize=128"])
    with pytest.raises(DataError, match="would upscale them"):
        build_data(upscale, CPU)
    wide = tmp_path / "wide"
    shutil.copytree(shard_root, wide)
    manifest = json.loads((wide / "manifest.json").read_text())
    (wide / "manifest.json").write_text(json.dumps({**manifest, "n_features": 48}))
    with pytest.raises(DataError, match="48 EHR features"):
        build_data(load_run_config(["task=ihm", *words(wide, tmp_path)]), CPU)
    vit = load_run_config(
        [
            "task=ihm",
            *words(shard_root, tmp_path),
            "model=uni_cxr",
            "model.cxr_encoder=vit",
            "model.vit_image_size=64",
        ]
    )
    with pytest.raises(ConfigError, match="vit_image_size=64 differs from data.image_crop=56"):
        runtime.build_model(vit)
    assert build_data(load_run_config(["task=ihm", *words(shard_root, tmp_path)]), CPU).steps_per_epoch > 0


def test_a_fusion_run_without_its_unimodal_runs_is_one_error_line(shard_root, tmp_path, caplog):
    code = train.main(words(shard_root, tmp_path / "runs", "task=ihm", "model=medfuse"))
    assert code == runtime.EXIT_CONFIG
    assert "PretrainedError: uni_ehr checkpoint not found" in caplog.text and "Traceback" not in caplog.text
