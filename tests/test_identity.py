"""Run identity (trainer.identity): one run per folder, checkpoints checked when rescored.

A tiny uni_ehr on tiny shards (as tests/test_trainer.py): an lr or encoder change into a
finished run is one clear error and leaves config.yaml alone, the same identity resumes and
extends, ``train.run_name`` gives another folder, ``train.resume=false`` starts over, and
``trainer.rescore`` refuses overrides of training keys and other shards unless told.
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
from pathlib import Path

import pytest
import torch
import yaml

from shards.tiny import tiny_dataset
from tests.test_trainer import words
from trainer import checkpoint as ckpt
from trainer import identity as run_id
from trainer import rescore, runtime, train
from trainer.config import load_run_config
from trainer.data import build_data
from trainer.distributed import DistContext

REPO = Path(__file__).resolve().parents[1]
CPU = DistContext(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("identity-shards") / "ds"
    tiny_dataset(str(root), tasks=("ihm",), records=9, records_per_shard=3)
    return root


@pytest.fixture(scope="module")
def finished(shards, tmp_path_factory) -> Path:
    """runs dir holding one finished 1-epoch ihm/uni_ehr run (lr 0.01, LSTM)."""
    runs = tmp_path_factory.mktemp("identity-runs")
    assert train.main(words(shards, runs, "task=ihm", "train.epochs=1")) == 0
    return runs


def identity(shards: Path, *extra: str) -> tuple[dict, str]:
    cfg = load_run_config(["task=ihm", *words(shards, Path("runs")), *extra])
    return run_id.run_identity(cfg, run_id.resolved_model_config(cfg), build_data(cfg, CPU).manifest)


def error_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


def test_identity_ignores_bookkeeping_keys_but_not_what_changes_the_result(shards):
    keys, digest = identity(shards)
    assert (
        keys["optim.lr"] == 0.01 and keys["model.ehr_encoder"] == "lstm" and keys["model.ehr_dropout"] == 0.3
    )
    assert len(keys["data.manifest"]) == 64 and len(digest) == 12
    assert not {"train.runs_dir", "data.shards", "train.progress", "train.epochs", "model.args"} & keys.keys()
    same = ("train.runs_dir=elsewhere", "train.progress=always", "train.log_every=1", "train.resume=false")
    assert identity(shards, *same, "train.epochs=7", "train.device=cpu", "train.bootstrap=5")[1] == digest
    for key in ("optim.lr=0.5", "data.num_workers=1", "model.ehr_encoder=transformer", "train.seed=1"):
        assert identity(shards, key)[1] != digest, key
    cosine, cosine_hash = identity(shards, "optim.scheduler=cosine")
    assert (
        cosine["train.epochs"] == 50
        and identity(shards, "optim.scheduler=cosine", "train.epochs=7")[1] != cosine_hash
    )


def test_manifest_hash_is_the_task_content_not_its_place_or_other_tasks(shards, tmp_path):
    manifest = json.loads((shards / "manifest.json").read_text())
    digest = run_id.manifest_hash(manifest, "ihm")
    other = {**manifest, "sources": {"x": 1}, "tasks": {**manifest["tasks"], "pheno": {"a": 1}}}
    assert run_id.manifest_hash(other, "ihm") == digest
    tampered = json.loads(json.dumps(manifest))
    tampered["tasks"]["ihm"]["splits"]["train"]["shards"][0]["sha256"] = "0" * 64
    assert run_id.manifest_hash(tampered, "ihm") != digest


def test_lr_change_into_a_finished_run_is_one_clear_error_and_config_stays(shards, finished, caplog):
    run_dir = finished / "ihm" / "uni_ehr" / "0"
    before = {name: (run_dir / name).read_bytes() for name in ("config.yaml", "run.json")}
    assert (
        train.main(words(shards, finished, "task=ihm", "train.epochs=1", "optim.lr=0.5"))
        == runtime.EXIT_CONFIG
    )
    (line,) = error_lines(caplog)
    assert f"run dir {run_dir} holds a run with optim.lr=0.01, this config has optim.lr=0.5" in line
    assert "train.run_name" in line and "train.resume=false" in line
    assert {name: (run_dir / name).read_bytes() for name in before} == before
    assert yaml.safe_load(before["config.yaml"])["optim"]["lr"] == 0.01


def test_encoder_change_is_the_same_clear_error_not_a_load_state_dict_traceback(shards, finished, caplog):
    code = train.main(words(shards, finished, "task=ihm", "train.epochs=1", "model.ehr_encoder=transformer"))
    assert code == runtime.EXIT_CONFIG
    (line,) = error_lines(caplog)
    assert "model.ehr_encoder=lstm, this config has model.ehr_encoder=transformer" in line
    assert "state_dict" not in caplog.text and "Traceback" not in caplog.text


def test_same_identity_resumes_and_more_epochs_extend(shards, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    args = words(shards, tmp_path, "task=ihm", "train.epochs=1")
    assert train.main(args) == 0
    last = tmp_path / "ihm" / "uni_ehr" / "0" / "checkpoints" / "last.pt"
    first = ckpt.load(last)
    assert first["identity"]["keys"] == json.loads(last.parent.with_name("run.json").read_text())["identity"]
    measured = json.loads(last.parent.with_name("metrics.json").read_text())["throughput"]
    assert measured["steps"] == 3 and measured["samples_per_s"] > 0
    assert train.main([*args, "train.progress=always", "train.log_every=1"]) == 0
    assert "training already finished" in caplog.text
    # the rerun trained nothing: it reports the training's throughput, not NaN over 0 steps
    assert json.loads(last.parent.with_name("metrics.json").read_text())["throughput"] == measured
    assert train.main([*args, "train.epochs=2"]) == 0
    extended = ckpt.load(last)
    assert (first["step"], extended["step"]) == (3, 6)
    assert extended["identity"]["hash"] == first["identity"]["hash"]


def test_run_name_gives_another_folder_and_resume_false_starts_over(shards, tmp_path):
    args = words(shards, tmp_path, "task=ihm", "train.epochs=1")
    assert train.main(args) == 0
    assert train.main([*args, "optim.lr=0.5", "train.run_name=lr0.5"]) == 0
    named = tmp_path / "ihm" / "uni_ehr" / "lr0.5" / "0"
    assert json.loads((named / "run.json").read_text())["identity"]["optim.lr"] == 0.5
    assert load_run_config(["task=ihm", "train.run_name=lr0.5"]).run_dir() == Path("runs/ihm/uni_ehr/lr0.5/0")
    with pytest.raises(ValueError, match="run_name"):
        load_run_config(["task=ihm", "train.run_name=a/b"])
    default = tmp_path / "ihm" / "uni_ehr" / "0"
    assert yaml.safe_load((default / "config.yaml").read_text())["optim"]["lr"] == 0.01
    assert train.main([*args, "optim.lr=0.5", "train.resume=false"]) == 0
    assert yaml.safe_load((default / "config.yaml").read_text())["optim"]["lr"] == 0.5
    assert ckpt.load(default / "checkpoints" / "best.pt", full=False)["identity"]["keys"]["optim.lr"] == 0.5


def test_rescore_checks_the_checkpoint_identity(shards, finished, tmp_path, caplog):
    best = finished / "ihm" / "uni_ehr" / "0" / "checkpoints" / "best.pt"
    out = f"out={tmp_path / 'out'}"
    assert rescore.evaluate_checkpoint([f"checkpoint={best}", out, "data.eval_batch_size=2"]) == 0
    assert rescore.evaluate_checkpoint([f"checkpoint={best}", out, "optim.lr=0.5"]) == runtime.EXIT_CONFIG
    assert "trained with optim.lr=0.01, this command sets optim.lr=0.5" in error_lines(caplog)[-1]
    copy = tmp_path / "copy"
    shutil.copytree(shards, copy)  # the same content elsewhere: the same shards
    assert rescore.evaluate_checkpoint([f"checkpoint={best}", out, f"data.shards={copy}"]) == 0
    other = tmp_path / "other"
    tiny_dataset(str(other), tasks=("ihm",), records=12, records_per_shard=3)
    assert (
        rescore.evaluate_checkpoint([f"checkpoint={best}", out, f"data.shards={other}"])
        == runtime.EXIT_CONFIG
    )
    assert (
        "data.manifest=" in error_lines(caplog)[-1] and "allow_other_shards=true" in error_lines(caplog)[-1]
    )
    allowed = [f"checkpoint={best}", out, f"data.shards={other}", "allow_other_shards=true"]
    assert rescore.evaluate_checkpoint(allowed) == 0
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["test"]["n_samples"] > 0


def test_checkpoint_from_before_identities_still_rescores_with_one_warning(finished, tmp_path, caplog):
    state = ckpt.load(finished / "ihm" / "uni_ehr" / "0" / "checkpoints" / "best.pt", full=False)
    del state["identity"]
    legacy = tmp_path / "legacy.pt"
    ckpt.save_atomic(state, legacy)
    for _ in range(2):
        assert rescore.evaluate_checkpoint([f"checkpoint={legacy}", f"out={tmp_path / 'out'}"]) == 0
    warnings = [r for r in caplog.records if "written before run identities" in r.getMessage()]
    assert len(warnings) == 1 and str(legacy) in warnings[0].getMessage()
    assert rescore.evaluate_checkpoint([f"checkpoint={legacy}", "optim.lr=0.5"]) == runtime.EXIT_CONFIG


def test_compare_fusion_reuses_only_a_finished_run_of_the_same_identity(shards, finished):
    sys.path.insert(0, str(REPO / "scripts"))
    import compare_fusion

    base = ["task=ihm", *words(shards, finished), "train.epochs=1"]
    metrics, done = compare_fusion.finished_run(base, str(shards))
    assert done and metrics == finished / "ihm" / "uni_ehr" / "0" / "metrics.json"
    assert compare_fusion.finished_run([*base[:-1], "train.epochs=2"], str(shards))[1] is False  # extends
    with pytest.raises(run_id.IdentityError, match="optim.lr=0.01, this config has optim.lr=0.5"):
        compare_fusion.finished_run([*base, "optim.lr=0.5"], str(shards))
    assert compare_fusion.finished_run([*base, "optim.lr=0.5", "train.run_name=x"], str(shards))[1] is False


def test_a_fusion_run_is_identified_by_the_unimodal_runs_it_starts_from(shards, finished, tmp_path):
    uni = json.loads((finished / "ihm" / "uni_ehr" / "0" / "run.json").read_text())["hash"]
    fusion = load_run_config(["task=ihm", *words(shards, finished), "model=medfuse"])
    assert run_id.pretrained_hashes(fusion) == {"ehr_encoder": uni, "cxr_encoder": None}  # no uni_cxr run
    keys, _ = run_id.run_identity(fusion, {}, {}, run_id.pretrained_hashes(fusion))
    assert keys["model.pretrained.ehr_encoder"] == uni
    given = load_run_config(["task=ihm", *words(shards, finished), "model=medfuse", "model.init=random"])
    assert run_id.pretrained_hashes(given) == {}


def test_a_probe_is_identified_by_its_pretraining_run_and_selected_epoch(tmp_path):
    """A retrained encoder (or another selected epoch) in the same folder is another probe run,
    so the benchmark cannot reuse a probe of the old encoder because the path is unchanged."""
    pretrain = tmp_path / "pheno" / "convirt" / "0"
    (pretrain / "checkpoints").mkdir(parents=True)

    def encoder_slot(**files: str) -> str | None:
        for name, text in files.items():
            (pretrain / name).write_text(text)
        probe = load_run_config(["mode=probe", f"encoder={pretrain}", "task=ihm"])
        return run_id.pretrained_hashes(probe)["encoder"]

    assert encoder_slot(**{"run.json": json.dumps({"hash": "aaa", "identity": {}})}) == "aaa"
    (pretrain / "checkpoints" / "selected.pt").write_bytes(b"")
    assert encoder_slot(**{"selection.json": json.dumps({"best": "epoch_0002.pt"})}) == "aaa:epoch_0002.pt"
    assert encoder_slot(**{"selection.json": json.dumps({"best": "epoch_0001.pt"})}) == "aaa:epoch_0001.pt"
    assert encoder_slot(**{"run.json": json.dumps({"hash": "bbb", "identity": {}})}) == "bbb:epoch_0001.pt"
    random_init = load_run_config(["mode=probe", f"encoder={pretrain}", "task=ihm", "model.init=random"])
    assert "encoder" not in run_id.pretrained_hashes(random_init)


def test_compare_fusion_writes_its_table_beside_the_runs(shards, finished, tmp_path):
    """A finished run is reused (nothing trains) and the printed table is also in <runs>/table.md,
    with the run's own test metric and CI."""
    sys.path.insert(0, str(REPO / "scripts"))
    import compare_fusion

    tiny = [w for w in words(shards, finished) if not w.startswith(("data.shards=", "train.runs_dir="))]
    argv = ["--shards", str(shards), "--tasks", "ihm", "--models", "uni_ehr", "--runs", str(finished)]
    assert compare_fusion.main([*argv, "--", *tiny, "train.epochs=1"]) == 0
    auroc = json.loads((finished / "ihm" / "uni_ehr" / "0" / "metrics.json").read_text())["test"]["metrics"][
        "auroc"
    ]
    table = (finished / "table.md").read_text()
    assert f"auroc {auroc['value']:.3f} [{auroc['ci_low']:.3f}, {auroc['ci_high']:.3f}]" in table
