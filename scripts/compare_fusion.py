"""Unimodal vs fusion on one shard set: train every model per task, then one table with CIs.

    python scripts/compare_fusion.py --shards data/shards-2000p-seed0 --tasks ihm pheno \\
        [--models uni_ehr uni_cxr early joint late medfuse mmtm daft] [--runs runs/compare] \\
        [--write] [-- train=smoke data.num_workers=0 ...]

The unimodal models are trained first; early, MedFuse and late then start from their
checkpoints by convention (``<runs>/<task>/uni_{ehr,cxr}/<seed>/checkpoints/best.pt``); late is
only scored. A finished run (``metrics.json``) of the same identity (``trainer.identity``: the
resolved config and the shards' manifest) is not repeated, so an interrupted comparison resumes;
a run folder holding another identity is an error that names the differing keys (pass another
``--runs``, or ``-- train.run_name=NAME`` for a folder of its own per run). Words after ``--``
go to every ``trainer/train.py`` call. The table gives each model's test metrics with bootstrap
95% CIs and, per task, the gap between each fusion model and the best unimodal model on the
selection metric (the CI columns say whether it is clear). The table is printed and written to
``<runs>/table.md``.
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "scripts"), str(REPO)]

import bench_common as bc  # noqa: E402

from shards.manifest import read_manifest  # noqa: E402
from trainer import identity as run_id  # noqa: E402
from trainer.config import load_run_config  # noqa: E402
from trainer.models import model_class  # noqa: E402
from trainer.tasks import task_spec  # noqa: E402

log = logging.getLogger("medmod.compare_fusion")
UNIMODAL = ("uni_ehr", "uni_cxr")
FUSION = ("early", "joint", "late", "medfuse", "mmtm", "daft")
EXTENT = ("epochs", "max_chunks", "max_steps")


def finished_run(words: list[str], shards: str) -> tuple[Path, bool]:
    """The run dir of these trainer words, and whether it holds this very run finished.

    Another identity there is an error (IdentityError) before anything runs, as in the trainer."""
    cfg = load_run_config(words)
    keys = run_id.training_identity(cfg, read_manifest(shards))
    run_dir = cfg.run_dir()
    start_over = run_id.check_run_dir(run_dir, keys, cfg.train.resume)
    metrics, config = run_dir / "metrics.json", run_dir / "config.yaml"
    if start_over or not (run_id.run_file(run_dir).is_file() and metrics.is_file()):
        return metrics, False
    if not config.is_file():  # scored as built (late fusion): nothing trained, nothing to extend
        return metrics, True
    # Epochs and step caps are not identity keys (a rerun extends a run): a longer run is not done.
    trained = yaml.safe_load(config.read_text())["train"]
    return metrics, all(trained.get(key) == getattr(cfg.train, key) for key in EXTENT)


def train(task: str, model: str, args: argparse.Namespace) -> Path:
    """One trainer run (skipped when it finished with the same identity); returns its metrics.json."""
    words = [f"task={task}", f"model={model}", f"data.shards={args.shards}"]
    words += [f"train.runs_dir={args.runs}", f"train.seed={args.seed}"]
    try:
        metrics, done = finished_run([*words, *args.extra], args.shards)
    except run_id.IdentityError as err:
        raise SystemExit(f"{task}/{model}: {err}") from None
    if done:
        log.info("%s/%s: done already (%s)", task, model, metrics)
        return metrics
    if model_class(model).trainable:
        cmd = [sys.executable, str(REPO / "trainer" / "train.py"), *words, *args.extra]
    else:  # late fusion: nothing to train, scored as built (trainer.rescore writes metrics.json)
        cmd = [sys.executable, "-m", "trainer.rescore", *words, *args.extra, "split=val,test"]
    log.info("%s/%s: %s", task, model, " ".join(cmd[1:]))
    done = subprocess.run(cmd, cwd=REPO, check=False)
    if done.returncode != 0 or not metrics.is_file():
        raise SystemExit(f"{task}/{model} failed (exit {done.returncode}); command: {' '.join(cmd)}")
    return metrics


def cell(metric: dict | None) -> str:
    if not metric:
        return "-"
    low, high = metric.get("ci_low"), metric.get("ci_high")
    ci = f" [{low:.3f}, {high:.3f}]" if low is not None and high is not None else ""
    return f"{metric['value']:.3f}{ci}"


def task_rows(task: str, results: dict[str, dict]) -> list[list[str]]:
    """One row per model: headline metric, AUPRC when the task has one, gap to the best unimodal."""
    key = task_spec(task).selection_metric
    second = "auprc_macro" if key.endswith("_macro") else ("auprc" if key == "auroc" else "mad_hours")
    test = {m: r["test"]["metrics"] for m, r in results.items()}
    best_uni = max((m for m in UNIMODAL if m in test), key=lambda m: test[m][key]["value"], default=None)
    rows = []
    for model, metrics in test.items():
        gap = (
            ""
            if model in UNIMODAL or best_uni is None
            else f"{metrics[key]['value'] - test[best_uni][key]['value']:+.3f}"
        )
        rows.append(
            [task, model, f"{key} {cell(metrics.get(key))}", f"{second} {cell(metrics.get(second))}", gap]
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    argv, extra = bc.split_trainer_words(argv)
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--shards", required=True)
    parser.add_argument("--tasks", nargs="+", default=["ihm"])
    parser.add_argument("--models", nargs="+", default=[*UNIMODAL, *FUSION])
    parser.add_argument("--runs", type=Path, default=Path("runs/compare"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--write", action="store_true", help="append the table to BENCHMARKS.md")
    args = parser.parse_args(argv)
    args.extra = extra
    bc.setup_logging()
    order = [m for m in (*UNIMODAL, *FUSION) if m in args.models]
    rows = []
    for task in args.tasks:
        results = {m: json.loads(train(task, m, args).read_text()) for m in order}
        rows += task_rows(task, results)
    text = "\n".join(
        [
            f"## Unimodal vs fusion — {bc.now_utc()}",
            "",
            f"Command: `{bc.command_line()}`. Test metrics with bootstrap 95% CIs; gap = fusion minus",
            "the best unimodal model on the task's selection metric.",
            "",
            bc.table(["task", "model", "selection metric", "second metric", "gap"], rows, numbers=False),
        ]
    )
    sys.stdout.write(text + "\n")
    table = args.runs / "table.md"
    table.parent.mkdir(parents=True, exist_ok=True)
    table.write_text(text + "\n")
    log.info("table written to %s", table)
    if args.write:
        bc.append_section(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
