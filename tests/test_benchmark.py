"""The benchmark protocol (trainer.benchmark) and its reports (trainer.report): the trial graph
(supervised and SSL rows), the selection, resumability and the tables, with real trainer runs
on tiny shards."""

from __future__ import annotations

import json
import logging
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conf import typed
from trainer import benchmark as bm
from trainer import report

REPO = Path(__file__).resolve().parents[1]
TINY_WORDS = [
    "train=smoke",
    "train.epochs=1",
    "train.bootstrap=20",
    "data.image_resize=64",
    "data.image_crop=56",
    "data.num_workers=0",
]


def preset(**kw) -> bm.Preset:
    base = {"trials": {"ihm": 2, "radiology": 1}, "seeds": 3, "models": ["uni_ehr", "uni_cxr", "early"]}
    base |= kw
    return typed.build(bm.Preset, base)


def outcome(trial: bm.Trial, val: float, status: str = "done") -> bm.Outcome:
    metric = bm.task_spec(trial.task).selection_metric
    return bm.Outcome(
        trial, status, f"/runs/{trial.key}", 1.0, {"val": {"metrics": {metric: {"value": val}}}}
    )


def test_learning_rates_are_drawn_per_trial_reproducibly_inside_the_range():
    lr = bm.LrRange(low=1e-6, high=1e-2, scale="uniform")
    draws = [bm.draw_lr(lr, "ihm", "uni_ehr", i) for i in range(50)]
    assert draws == [bm.draw_lr(lr, "ihm", "uni_ehr", i) for i in range(50)]  # a rerun asks the same
    assert all(1e-6 <= d <= 1e-2 for d in draws) and len(set(draws)) == 50
    assert bm.draw_lr(lr, "ihm", "medfuse", 0) != draws[0]  # another model, its own draws
    logs = [bm.draw_lr(bm.LrRange(1e-4, 1e-1, "log"), "ihm", "uni_ehr", i) for i in range(200)]
    # log scale: about as many draws per decade; uniform would put ~90% in the top decade
    assert 40 < sum(d < 1e-3 for d in logs) < 100


def test_fusion_trials_wait_for_the_selected_unimodal_runs_of_their_seed(tmp_path):
    cfg = bm.BenchmarkConfig(shards="/shards", out=str(tmp_path), tasks=["ihm", "radiology"])
    p = bm.Protocol(cfg, preset(model_args={"early": ["model.cxr_pretrain_task=radiology"]}), [])
    early = [t for t in p.pending if (t.task, t.model) == ("ihm", "early")]
    assert len(early) == 2 and p.inputs(early[0]) is None  # nothing selected yet
    for t in [t for t in p.pending if t.model != "early"]:
        p.record(outcome(t, val=0.5 + 0.1 * t.index))
    ihm_ehr = p.selected[("ihm", "uni_ehr")]
    assert ihm_ehr.index == 1 and ihm_ehr.lr == bm.draw_lr(p.preset.lr, "ihm", "uni_ehr", 1)  # best val
    seeds = [t for t in p.pending if (t.task, t.model) == ("ihm", "uni_ehr")]
    assert sorted(t.seed for t in seeds) == [1, 2] and {t.lr for t in seeds} == {ihm_ehr.lr}
    # seed 0: the search winners of uni_ehr on ihm and of uni_cxr on radiology (cxr_pretrain_task)
    inputs = p.inputs(early[0])
    assert inputs == {"ehr_ckpt": ihm_ehr, "cxr_ckpt": p.selected[("radiology", "uni_cxr")]}
    # seed 1 waits for the seed-1 reruns
    early_seed1 = bm.Trial("ihm", "early", bm.SEEDS, 1, 1e-3)
    assert p.inputs(early_seed1) is None
    for t in [t for t in p.pending if t.seed == 1 and t.model != "early"]:
        p.record(outcome(t, 0.6))
    words = p.words(early_seed1, p.inputs(early_seed1))
    assert f"model.ehr_ckpt={tmp_path}/runs/ihm/uni_ehr/final/1/checkpoints/best.pt" in words
    assert f"model.cxr_ckpt={tmp_path}/runs/radiology/uni_cxr/final/1/checkpoints/best.pt" in words
    assert "train.seed=1" in words and "optim.lr=0.001" in words


def test_the_runs_most_fusion_trials_wait_for_start_first():
    cfg = bm.BenchmarkConfig(shards="/shards", tasks=["ihm", "pheno", "radiology"])
    p = bm.Protocol(cfg, preset(model_args={"early": ["model.cxr_pretrain_task=radiology"]}), [])
    order = [(t.task, t.model) for t in p.start_order()]
    # radiology's uni_cxr feeds early on all three tasks; each task's uni_ehr only its own early
    assert order[0] == ("radiology", "uni_cxr")
    assert order.index(("radiology", "uni_ehr")) > order.index(("ihm", "uni_ehr"))
    waited_for = {
        ("radiology", "uni_cxr"),
        ("ihm", "uni_ehr"),
        ("pheno", "uni_ehr"),
        ("radiology", "uni_ehr"),
    }
    first = order[: len([o for o in order if o in waited_for])]
    assert set(first) == waited_for  # the unimodal runs nothing waits for come after
    assert len(order) == len(p.pending) and p.pending[0].task == "ihm"  # an order, not a new plan


def test_a_plan_missing_a_needed_unimodal_run_is_refused():
    cfg = bm.BenchmarkConfig(shards="/shards", tasks=["ihm"], models=["uni_ehr", "early"])
    with pytest.raises(typed.ConfigError, match="early on ihm starts from uni_cxr on ihm"):
        bm.Protocol(cfg, preset(), [])
    cfg = bm.BenchmarkConfig(shards="/shards", tasks=["ihm"], models=["uni_ehr", "uni_cxr", "early"])
    with pytest.raises(typed.ConfigError, match="uni_cxr on radiology"):
        bm.Protocol(cfg, preset(model_args={"early": ["model.cxr_pretrain_task=radiology"]}), [])


def test_a_failed_unimodal_run_blocks_its_fusion_trials_and_only_them(tmp_path):
    cfg = bm.BenchmarkConfig(shards="/shards", out=str(tmp_path), tasks=["ihm"])
    p = bm.Protocol(cfg, preset(), [])
    for t in [t for t in p.pending if t.model == "uni_cxr"]:
        p.record(bm.Outcome(t, "failed", error="exit 1"))
    early = next(t for t in p.pending if t.model == "early")
    assert p.blocked_by(early) == "uni_cxr on ihm failed"
    assert p.blocked_by(next(t for t in p.pending if t.model == "uni_ehr")) is None


def test_selection_takes_the_best_finished_trial_and_breaks_ties_by_trial_number():
    t = [bm.Trial("los", "uni_ehr", bm.SEARCH, i, 1e-3 * (i + 1)) for i in range(4)]
    picked = bm.select(
        [outcome(t[0], 0.2), outcome(t[1], 0.4), outcome(t[2], 0.4), outcome(t[3], 0.9, "failed")], "kappa"
    )
    assert picked == t[1]
    assert bm.select([outcome(t[0], math.nan), outcome(t[1], 0.1)], "kappa") == t[1]
    assert bm.select([outcome(t[0], 0.5, "failed")], "kappa") is None


def trials_frame() -> pd.DataFrame:
    rows = []
    values = {"uni_ehr": [0.80, 0.60], "uni_cxr": [0.55, 0.55], "medfuse": [0.85, 0.75]}
    for model, aurocs in values.items():
        for seed, auroc in enumerate(aurocs):
            rows.append(
                {"task": "ihm", "model": model, "stage": "search" if seed == 0 else "seed", "seed": seed,
                 "lr": 1e-3, "status": "done", "selected": True, "run_dir": f"/r/{model}/{seed}",
                 "val_auroc": 0.7, "test_auroc": auroc, "test_auprc": auroc / 2, "test_ece": 0.1}
            )  # fmt: skip
    rows.append(dict(rows[0], selected=False, test_auroc=0.0, run_dir="/r/loser"))  # not a seed run
    rows.append(
        {"task": "los", "model": "uni_ehr", "stage": "search", "seed": 0, "lr": 1e-3, "status": "done",
         "selected": True, "run_dir": "/r/los", "test_kappa": 0.3, "test_mad_hours": 100.0}
    )  # fmt: skip
    rows.append(dict(rows[-1], model="medfuse", test_kappa=0.36, test_mad_hours=80.0))
    return pd.DataFrame(rows)


def test_tables_average_the_seed_runs_and_compare_best_multimodal_to_best_unimodal(tmp_path):
    tables = report.build_tables(trials_frame())
    t3 = tables["table3"][1]
    assert t3.loc["uni_ehr", "ihm AUROC"] == "0.700 ± 0.141 (2)"  # the unselected 0.0 is left out
    assert t3.loc["medfuse", "ihm AUROC"] == "0.800 ± 0.071 (2)"
    assert t3.loc["uni_ehr", "los Kappa"] == "0.300 (1)" and t3.loc["uni_cxr", "los Kappa"] == "—"
    assert list(t3.index) == ["uni_ehr", "uni_cxr", "medfuse"]
    gain = tables["table11_gain"][1].set_index(["task", "metric"])
    assert gain.loc[("ihm", "AUROC"), "relative gain %"] == "+14.3"  # (0.8 - 0.7) / 0.7
    assert gain.loc[("los", "MAD (h)"), "relative gain %"] == "+20.0"  # 100 h -> 80 h, lower is better
    constant = trials_frame()
    constant.loc[constant.task == "los", "test_kappa"] = [0.0, 0.1]  # uni_ehr predicts one bucket
    gain = report.build_tables(constant, timing=False)["table11_gain"][1].set_index(["task", "metric"])
    assert gain.loc[("los", "Kappa"), "relative gain %"] == "—"  # no ratio to a zero baseline
    (tmp_path / "res").mkdir()
    trials_frame().to_parquet(tmp_path / "res" / "trials.parquet")
    paths = report.write_reports(tmp_path / "res", timing=False)
    tex = (tmp_path / "res" / "tables" / "table3.tex").read_text()
    assert "0.700 $\\pm$ 0.141 (2)" in tex and "\\begin{tabular}" in tex
    assert pd.read_csv(tmp_path / "res" / "tables" / "table3.csv", index_col=0).loc[
        "medfuse", "ihm AUPRC"
    ] == ("0.400 ± 0.035 (2)")
    assert paths[0].name == "README.md" and "relative gain" in paths[0].read_text()


def test_table8_counts_each_model_as_its_ihm_run_built_it(tmp_path):
    import yaml

    from conf.tasks import task_spec
    from trainer.models import create_model
    from trainer.models.timing import trainable_parameters

    frame = trials_frame()
    for model, resolved in (("uni_ehr", {}), ("uni_cxr", {"cxr_encoder": "resnet18"})):
        run = tmp_path / model
        run.mkdir()
        (run / "config.yaml").write_text(
            yaml.safe_dump({"task": "ihm", "model": {"name": model, "resolved": resolved}})
        )
        frame.loc[(frame.model == model) & (frame.seed == 0), "run_dir"] = str(run)
    table = report.build_tables(frame, timing=False)["table8_cost"][1].set_index("model")
    built = create_model("uni_cxr", {"cxr_encoder": "resnet18"}, task_spec("ihm"))
    assert table.loc["uni_cxr", "trainable (M)"] == f"{trainable_parameters(built) / 1e6:.3f}"
    assert table.loc["uni_cxr", "CXR encoder"] == "resnet18" and table.loc["uni_ehr", "CXR encoder"] == "—"
    assert table.loc["medfuse", "trainable (M)"] == "—"  # no run folder left: nothing to count


def test_bad_benchmark_commands_are_one_error_line(tmp_path):
    def run(*words: str) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-m", "trainer.benchmark", *words]
        return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)

    for words, message in [
        ((f"out={tmp_path}",), "shards=DIR"),
        (("shards=/x", "tasks=ihm,sepsis"), "unknown task(s) ['sepsis']"),
        (("shards=/x", "models=uni_ehr,gpt"), "unknown model(s) ['gpt']"),
        (("shards=/x", "parallel=0"), "parallel must be >= 1"),
        (("shards=/x", "preset=nope"), "no benchmark preset 'nope'"),
    ]:
        out = run(*words)
        assert out.returncode == 2 and message in out.stderr and "Traceback" not in out.stderr, out.stderr
    missing = subprocess.run(
        [sys.executable, "scripts/report.py", str(tmp_path)], cwd=REPO, capture_output=True, text=True
    )
    assert missing.returncode == 2 and "trials.parquet not found" in missing.stderr


def test_a_finished_run_loses_only_its_resume_state(tmp_path):
    both, only_last = tmp_path / "a" / "checkpoints", tmp_path / "b" / "checkpoints"
    for folder in (both, only_last):
        folder.mkdir(parents=True)
        (folder / "last.pt").write_bytes(b"x" * 300)
    (both / "best.pt").write_bytes(b"x" * 100)
    assert bm.drop_resume_state(both.parent) == 300 and sorted(p.name for p in both.iterdir()) == ["best.pt"]
    assert bm.drop_resume_state(only_last.parent) == 0  # the only weights there: scoring reads them
    assert (only_last / "last.pt").is_file()
    assert bm.drop_resume_state(tmp_path / "late-fusion-run") == 0  # no checkpoints folder at all


def test_a_reused_run_left_by_a_killed_benchmark_loses_its_resume_state(tmp_path, monkeypatch):
    """A benchmark killed after a trainer exited but before it tidied that run up leaves
    ``last.pt``; the rerun reuses the run and removes it then (keep_last keeps it)."""
    for keep_last in (False, True):
        out = tmp_path / str(keep_last)

        def reuse(trial, words, run_dir, logs, env):
            folder = Path(run_dir) / "checkpoints"
            folder.mkdir(parents=True, exist_ok=True)
            for name in ("best.pt", "last.pt"):
                (folder / name).write_bytes(b"x")
            return bm.Outcome(trial, "reused", str(run_dir), 0.0, outcome(trial, 0.5).metrics)

        monkeypatch.setattr(bm, "run_trial", reuse)
        cfg = bm.BenchmarkConfig(shards="/shards", out=str(out), tasks=["ihm"], keep_last=keep_last)
        p = bm.Protocol(cfg, preset(trials={"ihm": 1}, seeds=1, models=["uni_ehr"]), [])
        assert bm.execute(p) == 0
        kept = sorted(path.name for path in out.rglob("*.pt"))
        assert kept == (["best.pt", "last.pt"] if keep_last else ["best.pt"])


def processes_mentioning(text: str) -> list[int]:
    """Live processes whose command line contains ``text`` (Linux /proc)."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if text in cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                found.append(int(cmdline.parent.name))
        except OSError:
            continue
    return found


@pytest.mark.slow
def test_benchmark_killed_midway_resumes_and_a_lost_run_is_redone(tmp_path):
    """uni_ehr and uni_cxr (2 rate trials, 2 seeds) and late fusion over them, on tiny IHM
    shards. SIGKILL after its first finished trial leaves no trainer running; the rerun finishes
    everything; then one finished run is lost and the rerun trains only that run again and
    writes the same tables."""
    import signal
    import time

    from shards.tiny import tiny_dataset

    tiny_dataset(str(tmp_path / "shards"), tasks=("ihm",), records=16, records_per_shard=8, image_size=64)
    (tmp_path / "p.yaml").write_text(
        "trials: {ihm: 2}\nseeds: 2\nmodels: [uni_ehr, uni_cxr, late]\nlr: {low: 1.0e-4, high: 1.0e-2, scale: log}\n"
    )
    out = tmp_path / "res"
    cmd = [sys.executable, "-m", "trainer.benchmark", f"shards={tmp_path / 'shards'}", f"out={out}"]
    cmd += [f"preset={tmp_path / 'p.yaml'}", "tasks=ihm", "parallel=2", "--", *TINY_WORDS]

    first = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not (out / "trials.parquet").exists() and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.5)
    first.send_signal(signal.SIGKILL)
    first.wait()
    time.sleep(3)
    assert processes_mentioning(str(out)) == []  # its trainers died with it
    resumed = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    trials = pd.read_parquet(out / "trials.parquet")
    assert len(trials) == 2 + 1 + 2 + 1 + 1 + 1 and set(trials.status) <= {"done", "reused"}
    assert "reused" in set(trials.status)  # what finished before the kill was not trained again
    assert trials.selected.sum() == 6  # per model: the search winner and seed 1
    trained = sorted((out / "runs" / "ihm").glob("uni_*/*/*/checkpoints"))
    assert len(trained) == 6  # 2 models x (2 search trials + seed 1)
    for folder in trained:  # a finished trial keeps its weights, not its resume state
        assert (folder / "best.pt").is_file() and not (folder / "last.pt").exists(), folder
    table = (out / "tables" / "table3.md").read_text()
    for model in ("uni_ehr", "uni_cxr", "late"):
        assert any(line.startswith(f"| {model} |") and "(2)" in line for line in table.splitlines())

    lost = out / "runs" / "ihm" / "uni_cxr" / "final" / "1"
    (lost / "metrics.json").unlink()
    again = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    redo = pd.read_parquet(out / "trials.parquet").set_index("run_dir")
    assert redo.loc[str(lost), "status"] == "done"
    assert (redo.drop(index=str(lost)).status == "reused").all()
    assert (out / "tables" / "table3.md").read_text() == table


@pytest.mark.parametrize("name", sorted(p.stem for p in (REPO / "conf" / "benchmark").glob("*.yaml")))
def test_every_shipped_preset_plans_all_tasks(name):
    from trainer.models import list_models

    p = bm.load_preset(name)
    assert set(p.models) <= set(list_models()) and p.seeds >= 1
    protocol = bm.Protocol(bm.BenchmarkConfig(shards="/shards"), p, [])
    assert {t.task for t in protocol.pending} == set(bm.TASK_NAMES)
    for words in [p.train, *p.task_train.values(), *p.model_args.values()]:
        assert all("=" in w for w in words)


@pytest.mark.parametrize("name", sorted(p.stem for p in (REPO / "conf" / "benchmark").glob("*.yaml")))
def test_every_shipped_preset_gives_each_model_a_config_it_can_run(name):
    from trainer.config import load_run_config
    from trainer.models import model_class

    p = bm.load_preset(name)
    protocol = bm.Protocol(bm.BenchmarkConfig(shards="/shards"), p, [])
    for task in bm.TASK_NAMES:
        for model in p.models:
            words = [f"task={task}", f"model={model}", *protocol.common_words(task)]
            cfg = load_run_config(words + p.model_args.get(model, []))
            if cfg.spec.mode(cfg.train.hourly_mode) == "sequence":  # else every trial would fail
                assert model_class(model).causal, f"{name}: {model} on {task} in sequence mode"


def test_reliability_bins_and_figures_from_run_predictions(tmp_path):
    from trainer import figures

    y = [0, 0, 1, 1, 1]
    conf, freq, counts = figures.reliability(np.array(y, float), np.array([0.05, 0.15, 0.12, 0.95, 0.91]))
    assert counts.tolist() == [1, 2, 0, 0, 0, 0, 0, 0, 0, 2]
    assert conf[1] == pytest.approx(0.135) and freq[1] == 0.5 and math.isnan(freq[2]) and freq[9] == 1.0
    rng = np.random.default_rng(0)
    for task, label, score in [
        ("ihm", rng.integers(0, 2, 40).astype(float).tolist(), rng.random(40).tolist()),
        ("los", rng.integers(0, 10, 40).tolist(), rng.dirichlet(np.ones(10), 40).tolist()),
    ]:
        run = tmp_path / task
        run.mkdir()
        pd.DataFrame({"sample_id": range(40), "label": label, "score": score}).to_parquet(
            run / "predictions.parquet"
        )
    runs = pd.DataFrame(
        {
            "task": ["ihm", "los"],
            "model": ["uni_ehr"] * 2,
            "seed": [0, 0],
            "run_dir": [str(tmp_path / "ihm"), str(tmp_path / "los")],
        }
    )
    paths = figures.write_figures(runs, tmp_path / "fig")
    # LOS (ten buckets) gets only its top-label reliability diagram
    assert sorted(p.name for p in paths) == [
        "ihm_pr.png",
        "ihm_reliability.png",
        "ihm_roc.png",
        "los_reliability.png",
    ]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 5000 for p in paths)


def test_label_distribution_figures_cover_each_task_of_the_manifest(tmp_path):
    from shards.tiny import tiny_dataset
    from trainer import figures

    manifest = tiny_dataset(
        str(tmp_path / "s"), tasks=("los", "pheno"), records=6, records_per_shard=3, image_size=32
    )
    manifest["tasks"]["pheno"]["splits"] = {}  # a task without split statistics gets no figure
    paths = figures.write_label_distributions(manifest, tmp_path / "fig")
    assert [p.name for p in paths] == ["los_labels.png"] and paths[0].read_bytes()[:4] == b"\x89PNG"


def test_paired_vs_partial_and_table9_put_two_benchmarks_side_by_side(tmp_path):
    paired = trials_frame()
    partial = paired.assign(test_auroc=paired.test_auroc - 0.1)
    for name, frame in (("paired", paired), ("partial", partial)):
        (tmp_path / name).mkdir()
        frame.to_parquet(tmp_path / name / "trials.parquet")
    (tmp_path / "tf").mkdir()
    paired[paired.task == "ihm"].assign(test_auroc=0.5).to_parquet(tmp_path / "tf" / "trials.parquet")
    tables = tmp_path / "paired" / "tables"
    report.write_reports(
        tmp_path / "paired",
        timing=False,
        figures=False,
        partial=tmp_path / "partial",
        transformer=tmp_path / "tf",
    )
    table = pd.read_csv(tables / "paired_vs_partial.csv").set_index("model")
    assert table.loc["uni_ehr", "ihm AUROC paired"] == "0.700 ± 0.141 (2)"
    assert table.loc["uni_ehr", "ihm AUROC partial"] == "0.600 ± 0.141 (2)"
    assert table.loc["medfuse", "los Kappa partial"] == "0.360 (1)"
    table9 = pd.read_csv(tables / "table9_transformer.csv").set_index("model")
    assert table9.loc["medfuse", "ihm AUROC transformer"] == "0.500 ± 0.000 (2)"
    assert not any(c.startswith("los") for c in table9.columns)  # only the tasks both benchmarks ran


def test_training_curves_read_what_the_run_logged(tmp_path, caplog):
    from torch.utils.tensorboard import SummaryWriter

    from trainer import figures

    run = tmp_path / "run"
    with SummaryWriter(str(run / "tb")) as writer:  # what trainer.components.MetricsLogger writes
        for step, loss in [(10, 0.9), (20, 0.7), (30, 0.65)]:
            writer.add_scalar("train/loss", loss, step)
        writer.add_scalar("val/auroc", 0.61, 30)
    with caplog.at_level(logging.INFO):
        steps, values = figures.scalar_series(run, "train/loss")
    assert steps == [10, 20, 30] and values == pytest.approx([0.9, 0.7, 0.65])
    # TensorBoard's reader says "No path found after <file>" at INFO: not in the benchmark's log.
    assert not [r for r in caplog.records if r.name.startswith("tensorboard")]
    assert figures.scalar_series(run, "val/kappa") == ([], []) and figures.scalar_series(tmp_path, "x") == (
        [],
        [],
    )
    runs = pd.DataFrame(
        {
            "task": ["ihm", "pheno"],
            "model": ["uni_ehr"] * 2,
            "seed": [0, 0],
            "run_dir": [str(run), str(tmp_path)],
        }
    )
    paths = figures.write_training_curves(runs, tmp_path / "fig")
    assert [p.name for p in paths] == ["ihm_curves.png"]  # pheno's run logged nothing


# ---------------------------------------------------------------- SSL rows (Tables 4-6)


def ssl_preset(**ssl) -> bm.Preset:
    base = {
        "methods": ["convirt", "vicreg"],
        "pretrain_trials": 2,
        "probe_trials": 2,
        "finetune_trials": 1,
        "features": ["both", "ehr"],
    }
    return preset(models=["uni_ehr"], ssl=base | ssl)


def ssl_outcome(trial: bm.Trial, value: float, status: str = "done") -> bm.Outcome:
    """A pretraining run with val loss ``value``, or a probe / fine-tune with val metric ``value``."""
    if trial.mode == bm.PRETRAIN:
        return bm.Outcome(
            trial, status, f"/runs/{trial.key}", 1.0, {"val": {"metrics": {"loss": {"value": value}}}}
        )
    return outcome(trial, value, status)


def test_ssl_probes_wait_for_the_epoch_selection_of_the_kept_pretraining_run(tmp_path):
    cfg = bm.BenchmarkConfig(shards="/shards", out=str(tmp_path), tasks=["ihm"])
    p = bm.Protocol(cfg, ssl_preset(), [])
    modes = [t.mode for t in p.pending]
    assert modes[:4] == [bm.PRETRAIN] * 4  # pretraining starts first
    # per method: 2 pretraining trials; on ihm, 2 probe + 1 fine-tune trials per feature set
    assert modes.count(bm.PROBE) == 2 * 2 * 2 and modes.count(bm.FINETUNE) == 2 * 1 * 2
    probes = [t for t in p.pending if (t.model, t.mode, t.features) == ("convirt", bm.PROBE, "ehr")]
    assert p.inputs(probes[0]) is None and p.blocked_by(probes[0]) is None
    convirt = [t for t in p.pending if t.mode == bm.PRETRAIN and t.model == "convirt"]
    assert all(1e-2 <= t.lr <= 1e-1 for t in convirt)  # the SSL pretraining range
    p.record(ssl_outcome(convirt[0], 2.0))
    assert not any(t.mode == bm.SELECT for t in p.pending)  # the search is not complete yet
    p.record(ssl_outcome(convirt[1], 1.5))  # the lower val loss is kept
    kept = p.selected[("pheno", "convirt", bm.PRETRAIN, "")]
    assert kept == convirt[1]
    selection = next(t for t in p.pending if t.mode == bm.SELECT)
    assert selection.model == "convirt" and p.inputs(selection) == {"encoder": kept}
    run = tmp_path / "runs" / "pheno" / "convirt" / "search1" / "0"
    assert p.run_dir(kept) == p.run_dir(selection) == run
    words = p.words(selection, p.inputs(selection))
    assert words[:3] == [f"encoder={run}", "task=pheno", f"train.runs_dir={run / 'selection'}"]
    assert bm.trial_program(selection)[1:] == ["-m", "trainer.selection"]
    assert p.inputs(probes[0]) is None  # a kept run, but its epochs are not selected yet
    p.record(bm.Outcome(selection, "done", str(run), 1.0, {}))
    assert p.inputs(probes[0]) == {"encoder": kept}
    words = p.words(probes[1], p.inputs(probes[1]))
    for word in [
        "mode=probe",
        "task=ihm",
        f"encoder={run}",
        "features=ehr",
        "train.run_name=convirt-ehr-search1",
    ]:
        assert word in words
    assert p.run_dir(probes[1]) == tmp_path / "runs" / "ihm" / "ssl_probe" / "convirt-ehr-search1" / "0"
    assert probes[1].key == "ihm/convirt-probe-ehr/search1/0"
    # vicreg's probes still wait for vicreg's own pretraining
    vicreg = next(t for t in p.pending if (t.model, t.mode) == ("vicreg", bm.PROBE))
    assert p.inputs(vicreg) is None
    # the probe search selects by the task's val metric and reruns the seeds at its rate
    for t, v in zip(probes, (0.7, 0.6)):
        p.record(ssl_outcome(t, v))
    seeds = [t for t in p.pending if t.stage == bm.SEEDS]
    assert sorted(t.seed for t in seeds) == [1, 2]
    assert {(t.model, t.mode, t.features, t.lr) for t in seeds} == {
        ("convirt", bm.PROBE, "ehr", probes[0].lr)
    }
    final = p.words(seeds[0], p.inputs(seeds[0]))
    assert "train.run_name=convirt-ehr-final" in final and f"train.seed={seeds[0].seed}" in final
    tune = next(t for t in p.pending if (t.model, t.mode, t.features) == ("convirt", bm.FINETUNE, "both"))
    assert p.run_dir(tune) == tmp_path / "runs" / "ihm" / "ssl_finetune" / "convirt-both-search0" / "0"


def run_ssl_graph(tmp_path, monkeypatch, failing: set[int]):
    """The whole graph through execute() with a fake trainer in which convirt's pretraining
    trials ``failing`` fail; returns the protocol, the number failed or blocked, the start order."""
    started: list[bm.Trial] = []

    def fake_run(trial, words, run_dir, logs, env):
        started.append(trial)
        if trial.mode == bm.PRETRAIN and trial.model == "convirt" and trial.index in failing:
            return bm.Outcome(trial, "failed", str(run_dir), error="exit 3: NonFiniteLoss")
        if trial.mode == bm.PRETRAIN:
            return ssl_outcome(trial, 1.0 + trial.index)
        return outcome(trial, 0.5 + 0.01 * trial.index)

    monkeypatch.setattr(bm, "run_trial", fake_run)
    cfg = bm.BenchmarkConfig(shards="/shards", out=str(tmp_path), tasks=["ihm"], parallel=2)
    p = bm.Protocol(cfg, ssl_preset(), [])
    return p, bm.execute(p), started


def test_a_failed_pretraining_trial_leaves_the_best_finished_one(tmp_path, monkeypatch):
    """As in a supervised search: convirt's first pretraining trial fails, the second is kept,
    and every convirt row still comes out; the failure is counted and recorded."""
    p, failed, started = run_ssl_graph(tmp_path, monkeypatch, failing={0})
    assert failed == 1
    status = {t: o.status for t, o in p.outcomes.items()}
    assert {
        s for t, s in status.items() if not (t.mode == bm.PRETRAIN and t.index == 0 and t.model == "convirt")
    } == {"done"}
    assert p.selected[(p.ssl.pretrain_task, "convirt", bm.PRETRAIN, "")].index == 1
    select = p.words(bm.select_trial(p.ssl, "convirt"), p.inputs(bm.select_trial(p.ssl, "convirt")))
    assert any(w.startswith("encoder=") and "convirt/search1/0" in w for w in select)
    trials = pd.read_parquet(tmp_path / "trials.parquet")
    assert (
        trials[(trials.model == "convirt") & (trials["mode"] == "pretrain")].status.tolist().count("failed")
        == 1
    )


def test_a_method_whose_pretraining_trials_all_fail_blocks_only_what_starts_from_it(tmp_path, monkeypatch):
    """Both convirt pretraining trials fail, so its epoch selection and every convirt probe /
    fine-tune are blocked; vicreg and the supervised rows run to the end, each probe after its
    method's selection."""
    p, failed, started = run_ssl_graph(tmp_path, monkeypatch, failing={0, 1})
    # the failures, its selection and convirt's evaluation searches (2 probe + 1 fine-tune trials, 2 feature sets)
    assert failed == 2 + 1 + (2 + 1) * 2
    status = {t: o.status for t, o in p.outcomes.items()}
    assert {s for t, s in status.items() if t.model == "convirt" and t.mode in (bm.PROBE, bm.FINETUNE)} == {
        "blocked"
    }
    assert status[bm.select_trial(p.ssl, "convirt")] == "blocked"
    assert "every convirt pretraining trial failed" in p.outcomes[bm.select_trial(p.ssl, "convirt")].error
    assert {s for t, s in status.items() if t.model != "convirt"} == {"done"}
    assert not any(t.model == "convirt" and t.mode in (bm.SELECT, bm.PROBE, bm.FINETUNE) for t in started)
    selection_at = started.index(bm.select_trial(p.ssl, "vicreg"))
    vicreg_evals = [
        i for i, t in enumerate(started) if t.model == "vicreg" and t.mode in (bm.PROBE, bm.FINETUNE)
    ]
    assert len(vicreg_evals) == (2 + 1) * 2 + 2 * 2 * 2 and min(vicreg_evals) > selection_at  # search + seeds
    trials = pd.read_parquet(tmp_path / "trials.parquet")
    assert {"mode", "features"} <= set(trials.columns)
    vicreg = trials[(trials.model == "vicreg") & trials.selected]
    assert len(vicreg[vicreg["mode"] == "pretrain"]) == 1  # the kept pretraining run
    probes = vicreg[(vicreg["mode"] == "probe") & (vicreg.features == "ehr")]
    assert sorted(probes.seed) == [0, 1, 2]
    assert sorted(trials[trials["mode"] == "supervised"].status) == ["done"] * 4  # 2 trials + 2 seeds


def test_ssl_rows_switch_off_and_a_bad_ssl_section_is_refused(tmp_path):
    cfg = bm.BenchmarkConfig(shards="/shards", tasks=["ihm"])
    for p in (
        bm.Protocol(cfg, preset(models=["uni_ehr"]), []),  # no ssl section
        bm.Protocol(cfg, ssl_preset(methods=[]), []),
        bm.Protocol(bm.BenchmarkConfig(shards="/shards", tasks=["ihm"], ssl=False), ssl_preset(), []),
    ):
        assert p.ssl is None and {t.mode for t in p.pending} == {bm.SUPERVISED}
    assert bm.load_preset("quick").ssl.methods == ["convirt"]
    for ssl, message in [
        ({"methods": ["uni_ehr"]}, "not pretraining models"),
        ({"features": ["both", "text"]}, "ssl.features"),
        ({"pretrain_task": "sepsis"}, "unknown task 'sepsis'"),
    ]:
        with pytest.raises(typed.ConfigError, match=message):
            bm.Protocol(cfg, ssl_preset(**ssl), [])


def ssl_trials_frame() -> pd.DataFrame:
    """trials_frame's supervised rows and SSL rows of ConVIRT and VICReg with known test values."""
    sup = trials_frame().assign(mode="supervised", features="")
    rows = [
        {"task": "pheno", "model": "convirt", "mode": "pretrain", "features": "", "stage": "search", "seed": 0,
         "lr": 0.05, "status": "done", "selected": True, "run_dir": "/r/pre", "val_loss": 1.25},
        {"task": "pheno", "model": "convirt", "mode": "select", "features": "", "stage": "select", "seed": 0,
         "status": "done", "selected": False, "run_dir": "/r/pre", "val_auroc_macro": 0.6},
    ]  # fmt: skip
    values = {
        ("convirt", "probe", "both"): [0.84, 0.86],
        ("convirt", "finetune", "both"): [0.80],
        ("vicreg", "probe", "both"): [0.81, 0.83],
        ("convirt", "probe", "ehr"): [0.78, 0.80],
        ("convirt", "probe", "cxr"): [0.68, 0.70],
    }
    for (method, mode, features), aurocs in values.items():
        for seed, auroc in enumerate(aurocs):
            rows.append(
                {"task": "ihm", "model": method, "mode": mode, "features": features,
                 "stage": "search" if seed == 0 else "seed", "seed": seed, "lr": 1e-3, "status": "done",
                 "selected": True, "run_dir": f"/r/{method}-{mode}-{features}/{seed}", "val_auroc": 0.7,
                 "test_auroc": auroc, "test_auprc": auroc / 2}
            )  # fmt: skip
    rows.append(dict(rows[2], selected=False, test_auroc=0.1, run_dir="/r/loser"))  # an unselected trial
    rows.append(
        {"task": "los", "model": "convirt", "mode": "probe", "features": "both", "stage": "search", "seed": 0,
         "lr": 1e-3, "status": "done", "selected": True, "run_dir": "/r/los", "test_kappa": 0.37,
         "test_mad_hours": 140.0}
    )  # fmt: skip
    return pd.concat([sup, pd.DataFrame(rows)], ignore_index=True)


def test_ssl_tables_4_5_6_put_probe_and_finetune_under_the_best_supervised_model(tmp_path):
    tables = report.build_tables(ssl_trials_frame(), timing=False)
    t3 = tables["table3"][1]
    assert list(t3.index) == ["uni_ehr", "uni_cxr", "medfuse"]  # no SSL row in the supervised table
    assert list(t3.columns) == ["ihm AUROC", "ihm AUPRC", "los Kappa", "los MAD (h)"]  # pheno only pretrained
    t4 = tables["table4_ssl_multimodal"][1]
    assert list(t4.index) == [
        "supervised (best)",
        "supervised model",
        "linear probe convirt",
        "linear probe vicreg",
        "fine-tune convirt",
    ]
    assert t4.loc["supervised (best)", "ihm AUROC"] == "0.800 ± 0.071 (2)"  # medfuse, the only multimodal
    assert t4.loc["supervised model", "ihm AUROC"] == "medfuse"
    assert t4.loc["linear probe convirt", "ihm AUROC"] == "0.850 ± 0.014 (2)"  # the 0.1 loser left out
    assert t4.loc["linear probe convirt", "ihm AUPRC"] == "0.425 ± 0.007 (2)"
    assert t4.loc["linear probe vicreg", "ihm AUROC"] == "0.820 ± 0.014 (2)"
    assert t4.loc["fine-tune convirt", "ihm AUROC"] == "0.800 (1)"
    assert t4.loc["linear probe convirt", "los Kappa"] == "0.370 (1)"
    assert t4.loc["fine-tune convirt", "los Kappa"] == "—"
    t5 = tables["table5_ssl_ehr"][1]
    assert t5.loc["supervised model", "ihm AUROC"] == "uni_ehr" and "los Kappa" in t5.columns
    assert t5.loc["supervised (best)", "ihm AUROC"] == "0.700 ± 0.141 (2)"
    assert t5.loc["linear probe convirt", "ihm AUROC"] == "0.790 ± 0.014 (2)"
    assert "fine-tune convirt" not in t5.index
    t6 = tables["table6_ssl_cxr"][1]
    assert t6.loc["supervised model", "ihm AUROC"] == "uni_cxr" and "los Kappa" not in t6.columns
    assert t6.loc["linear probe convirt", "ihm AUROC"] == "0.690 ± 0.014 (2)"
    chosen = tables["ssl_selection"][1].set_index(["task", "model"])
    assert chosen.loc[("pheno", "convirt pretrain"), "val selection metric"] == "loss 1.2500"
    assert chosen.loc[("ihm", "convirt probe both"), "val selection metric"] == "auroc 0.7000"
    (tmp_path / "res").mkdir()
    ssl_trials_frame().to_parquet(tmp_path / "res" / "trials.parquet")
    out = subprocess.run(
        [sys.executable, "scripts/report.py", str(tmp_path / "res"), "--no-timing"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    folder = tmp_path / "res" / "tables"
    for name in ("table4_ssl_multimodal", "table5_ssl_ehr", "table6_ssl_cxr", "ssl_selection"):
        assert all((folder / f"{name}.{ext}").is_file() for ext in ("md", "csv", "tex")), name
    assert "0.850 $\\pm$ 0.014 (2)" in (folder / "table4_ssl_multimodal.tex").read_text()
    csv = pd.read_csv(folder / "table5_ssl_ehr.csv", index_col=0)
    assert csv.loc["linear probe convirt", "ihm AUROC"] == "0.790 ± 0.014 (2)"
    assert "SSL with CXR data" in (folder / "README.md").read_text()


@pytest.mark.slow
def test_ssl_rows_end_to_end_on_tiny_shards_and_a_rerun_reuses_every_run(tmp_path):
    """ConVIRT pretraining (2 epochs), its epoch selection, a linear-probe search of one trial
    on IHM and its seed-1 rerun: real trainer processes; Table 4 from them; a rerun trains
    nothing again."""
    from shards.tiny import tiny_dataset

    tiny_dataset(
        str(tmp_path / "shards"), tasks=("pheno", "ihm"), records=9, records_per_shard=3, image_size=64
    )
    (tmp_path / "p.yaml").write_text(
        "trials: {ihm: 1}\nseeds: 2\nmodels: []\ntrain: [train=smoke]\n"
        "ssl: {methods: [convirt], pretrain_trials: 1, pretrain_train: [train.epochs=2],\n"
        "  encoder: [model.ehr_hidden=8], probe_trials: 1, finetune_trials: 0, features: [both],\n"
        "  eval_train: [train.epochs=1], select_train: [train.epochs=1]}\n"
    )
    out = tmp_path / "res"
    cmd = [sys.executable, "-m", "trainer.benchmark", f"shards={tmp_path / 'shards'}", f"out={out}"]
    cmd += [f"preset={tmp_path / 'p.yaml'}", "tasks=ihm", "--"]
    cmd += [w for w in TINY_WORDS if w not in ("train=smoke", "train.epochs=1")]
    cmd += ["data.batch_size=3", "data.eval_batch_size=4"]
    first = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    trials = pd.read_parquet(out / "trials.parquet")
    assert sorted(zip(trials["mode"], trials.stage, trials.seed)) == [
        ("pretrain", "search", 0),
        ("probe", "search", 0),
        ("probe", "seed", 1),
        ("select", "select", 0),
    ]
    assert set(trials.status) == {"done"}
    pretrain_run = out / "runs" / "pheno" / "convirt" / "search0" / "0"
    picked = json.loads((pretrain_run / "selection.json").read_text())
    assert sorted(picked["scores"]) == ["epoch_0001.pt", "epoch_0002.pt"]
    probes = trials[trials["mode"] == "probe"].sort_values("seed")
    assert list(probes.run_dir) == [
        str(out / "runs" / "ihm" / "ssl_probe" / "convirt-both-search0" / "0"),
        str(out / "runs" / "ihm" / "ssl_probe" / "convirt-both-final" / "1"),
    ]
    config = (Path(probes.run_dir.iloc[0]) / "config.yaml").read_text()
    assert str(pretrain_run) in config  # the probe's encoder is the selected pretraining run
    table = pd.read_csv(out / "tables" / "table4_ssl_multimodal.csv", index_col=0)
    assert table.loc["linear probe convirt", "ihm AUROC"].endswith("(2)")
    again = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert set(pd.read_parquet(out / "trials.parquet").status) == {"reused"}
