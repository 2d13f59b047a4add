"""The linear probe on a pretrained encoder against the same probe on random encoders, and the
cached-feature probe against the same probe through the frozen encoders (issue #12).

    python scripts/bench_ssl_probe.py --shards data/shards-2000p-seed0 --encoder RUN \\
        --synth data/synth-2000p-seed0 --runs /tmp/probe-bench [--tasks ihm pheno] \\
        [--timing-tasks ihm decomp] [--timing-steps 20] [--write] [-- trainer words]

``RUN`` is a pretraining run folder (``mode=pretrain``; its ``checkpoints/selected.pt`` when
``trainer.selection`` chose an epoch). Every probe is an ordinary ``trainer/train.py mode=probe``
run under ``--runs`` (a finished run of the same identity is reused, so a rerun only redoes the
tables); words after ``--`` go to every run (e.g. ``data.image_resize=72 data.image_crop=64``, which
must match what the encoder was pretrained on).

1. ``--tasks``: per task, ``features=both`` over the pretrained encoders and over randomly
   initialised ones (``model.init=random``), same words otherwise; test AUROC with its bootstrap
   95% CI, and the generator's oracle AUROC on the same test samples (``scripts/learning_check.py``:
   IHM and phenotyping have one).
2. ``--timing-tasks``: per task, training samples/s of the probe on the cached features
   (``train.cache_features=true``, one full epoch or chunk) and through the frozen encoders
   (``train.cache_features=false``, ``--timing-steps`` steps, since a full epoch there is what the
   cache exists to avoid); both from the runs' ``metrics.json`` throughput, so the encoding the
   cache pays once per split is not in either figure (it is reported beside them). Hourly tasks
   are cached in sequence mode (one encoder pass per stay) and timed frozen in both modes
   (sequence; sample: one pass per hourly sample); rows are labelled hours in every run.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "scripts"), str(REPO)]

import bench_common as bc  # noqa: E402
import learning_check as lc  # noqa: E402

from trainer.tasks import task_spec  # noqa: E402

log = logging.getLogger("medmod.bench_ssl_probe")


def probe(args: argparse.Namespace, task: str, name: str, words: list[str]) -> tuple[dict, float]:
    """Train (or reuse) one probe run; its metrics.json and the command's wall seconds."""
    cmd = [
        sys.executable,
        "trainer/train.py",
        "mode=probe",
        f"task={task}",
        f"encoder={args.encoder}",
        "features=both",
        f"data.shards={args.shards}",
        f"train.runs_dir={args.runs}",
        f"train.run_name={name}",
        "train.progress=never",
        *words,
        *args.extra,
    ]
    log.info("%s", " ".join(cmd))
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=REPO, check=False)
    seconds = time.perf_counter() - start
    metrics = args.runs / task / "ssl_probe" / name / "0" / "metrics.json"
    if done.returncode != 0 or not metrics.is_file():
        raise SystemExit(f"{task}/{name} failed (exit {done.returncode}); command: {' '.join(cmd)}")
    return json.loads(metrics.read_text()), seconds


def cell(metric: dict) -> str:
    return f"{metric['value']:.3f} [{metric['ci_low']:.3f}, {metric['ci_high']:.3f}]"


def oracle_auroc(task: str, run_dir: Path, stays: pd.DataFrame) -> float:
    row = lc.check(run_dir, task, stays)
    return float(row["oracle_auroc"])


def versus_random(args: argparse.Namespace, stays: pd.DataFrame) -> list[list[str]]:
    rows = []
    for task in args.tasks:
        metric = task_spec(task).selection_metric
        pretrained, _ = probe(args, task, "pretrained", [])
        random_init, _ = probe(args, task, "random", ["model.init=random"])
        run_dir = args.runs / task / "ssl_probe" / "pretrained" / "0"
        oracle = oracle_auroc(task, run_dir, stays) if stays is not None else np.nan
        a, b = pretrained["test"]["metrics"][metric], random_init["test"]["metrics"][metric]
        separated = (
            "yes" if a["ci_low"] > b["ci_high"] else ("no, reversed" if b["ci_low"] > a["ci_high"] else "no")
        )
        rows.append(
            [
                task,
                metric,
                cell(a),
                cell(b),
                f"{a['value'] - b['value']:+.3f}",
                separated,
                f"{oracle:.3f}",
                str(pretrained["test"]["n_samples"]),
            ]
        )
    return rows


def timing_words(task: str, cached: bool, steps: int, hourly_mode: str = "sequence") -> list[str]:
    words = [f"train.cache_features={str(cached).lower()}", "train.epochs=1", "train.bootstrap=50"]
    if task_spec(task).hourly:  # rows are labelled hours in either mode
        words += ["train.max_chunks=1", f"train.hourly_mode={hourly_mode}"]
    if not cached:
        words += [f"train.max_steps={steps}", f"train.val_steps={max(1, steps // 4)}"]
    return words


def cached_versus_frozen(args: argparse.Namespace) -> list[list[str]]:
    """One row per task; an hourly task gets a second frozen row in sample mode (one encoder pass
    per hourly sample over its whole history, the reference's way), against the same cache."""
    rows = []
    for task in args.timing_tasks:
        cached, cached_s = probe(args, task, "timing-cached", timing_words(task, True, args.timing_steps))
        fast = cached["throughput"]["samples_per_s"]
        modes = ("sequence", "sample") if task_spec(task).hourly else ("",)
        for mode in modes:
            name = f"timing-frozen-{mode}" if mode else "timing-frozen"
            words = timing_words(task, False, args.timing_steps, mode or "sequence")
            frozen, frozen_s = probe(args, task, name, words)
            slow = frozen["throughput"]["samples_per_s"]
            label = f"{task} ({mode} mode)" if mode else task
            rows.append(
                [
                    label,
                    f"{fast:.1f}",
                    f"{slow:.2f}",
                    f"{fast / slow:.0f}x",
                    f"{cached_s:.0f}",
                    f"{frozen_s:.0f}",
                ]
            )
    return rows


def loadavg() -> str:
    return ", ".join(f"{x:.2f}" for x in os.getloadavg())


def render(args: argparse.Namespace, vs: list, timing: list, load: str) -> str:
    lines = [
        f"## SSL linear probe: pretrained vs random encoders, cached vs frozen — {bc.now_utc()}",
        "",
        f"Command: `{bc.command_line()}`; encoder `{args.encoder}`. Machine: {bc.machine_facts()['cpu']};",
        f"load average (1/5/15 min) at the start {load}, at the end {loadavg()}.",
        "",
    ]
    if vs:
        lines += [
            "Test AUROC (bootstrap 95% CI) of the linear probe on both modalities' features; the oracle",
            "scores the same test samples with the generator's true probabilities.",
            "",
            bc.table(
                [
                    "task",
                    "metric",
                    "pretrained encoders",
                    "random encoders",
                    "gap",
                    "CIs separate",
                    "oracle",
                    "n",
                ],
                vs,
                numbers=False,
            ),
            "",
        ]
    if timing:
        lines += [
            "Training samples/s of the probe (metrics.json throughput; encoding excluded), and each",
            "command's wall seconds (the cached run's includes encoding train / val / test once).",
            "",
            bc.table(
                ["task", "cached samples/s", "frozen samples/s", "ratio", "cached run s", "frozen run s"],
                timing,
            ),
            "",
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv, extra = bc.split_trainer_words(argv)
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--shards", required=True)
    parser.add_argument("--encoder", required=True, type=Path, help="pretraining run folder")
    parser.add_argument("--synth", type=Path, help="synthetic MIMIC root with _truth/ (oracle AUROC)")
    parser.add_argument("--runs", type=Path, required=True)
    parser.add_argument("--tasks", nargs="*", default=["ihm", "pheno"])
    parser.add_argument("--timing-tasks", nargs="*", default=["ihm", "decomp"])
    parser.add_argument("--timing-steps", type=int, default=20)
    parser.add_argument("--write", action="store_true", help="append the tables to BENCHMARKS.md")
    args = parser.parse_args(argv)
    args.extra = extra
    bc.setup_logging()
    if not args.encoder.is_dir():
        parser.error(f"--encoder {args.encoder} is not a pretraining run folder")
    stays = pd.read_csv(args.synth / "_truth" / "stays.csv.gz") if args.synth else None
    load = loadavg()
    vs = versus_random(args, stays)
    timing = cached_versus_frozen(args)
    text = render(args, vs, timing, load)
    sys.stdout.write(text + "\n")
    if args.write:
        bc.append_section(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
