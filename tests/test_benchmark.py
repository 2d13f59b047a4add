"""The benchmark protocol (trainer.benchmark) and its reports (trainer.report): the trial graph,
the selection, resumability and the tables, with real trainer runs on tiny shards."""

from __future__ import annotations

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
    (tmp_path / "res").mkdir()
    trials_frame().to_parquet(tmp_path / "res" / "trials.parquet")
    paths = report.write_reports(tmp_path / "res", timing=False)
    tex = (tmp_path / "res" / "tables" / "table3.tex").read_text()
    assert "0.700 $\\pm$ 0.141 (2)" in tex and "\\begin{tabular}" in tex
    assert pd.read_csv(tmp_path / "res" / "tables" / "table3.csv", index_col=0).loc[
        "medfuse", "ihm AUPRC"
    ] == ("0.400 ± 0.035 (2)")
    assert paths[0].name == "README.md" and "relative gain" in paths[0].read_text()


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


def test_training_curves_read_what_the_run_logged(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    from trainer import figures

    run = tmp_path / "run"
    with SummaryWriter(str(run / "tb")) as writer:  # what trainer.components.MetricsLogger writes
        for step, loss in [(10, 0.9), (20, 0.7), (30, 0.65)]:
            writer.add_scalar("train/loss", loss, step)
        writer.add_scalar("val/auroc", 0.61, 30)
    steps, values = figures.scalar_series(run, "train/loss")
    assert steps == [10, 20, 30] and values == pytest.approx([0.9, 0.7, 0.65])
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
