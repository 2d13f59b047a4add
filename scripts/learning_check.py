"""Learning check: a run's test AUROC next to the oracle AUROC from the generator's truth.

    .venv/bin/python scripts/learning_check.py --synth data/synth-2000p-seed0 --runs runs [--write]

For every ``runs/<task>/<model>/<seed>/predictions.parquet`` of a task with an oracle, the oracle
scores the *same* test samples (sample ids ``<task>:<stay_id>:<hour>``) with the generator's
true probabilities from ``<synth>/_truth/stays.csv.gz``: ``p_mortality`` for ihm (the planted
in-hospital mortality probability) and ``pheno_oracle`` (25 planted group probabilities) for
pheno. The model's AUROC is computed from the same file, against the same labels, so the two
numbers differ only by the scores. Tasks without an oracle column here (decomp, los, radiology)
are reported without one.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from trainer.metrics import auroc_per_label  # noqa: E402


def stay_of(sample_ids: pd.Series) -> pd.Series:
    return sample_ids.str.split(":").str[1].astype("int64")


def oracle_scores(task: str, stays: pd.DataFrame, stay_ids: pd.Series) -> np.ndarray | None:
    truth = stays.set_index("stay_id")
    if task == "ihm":
        return truth.loc[stay_ids, "p_mortality"].to_numpy(dtype=np.float64)[:, None]
    if task == "pheno":
        rows = truth.loc[stay_ids, "pheno_oracle"].str.split(";")
        return np.array([[float(v) for v in r] for r in rows], dtype=np.float64)
    return None


def check(run_dir: Path, task: str, stays: pd.DataFrame) -> dict:
    pred = pd.read_parquet(run_dir / "predictions.parquet")
    y = np.array(pred["label"].tolist(), dtype=np.float64)
    scores = np.array(pred["score"].tolist(), dtype=np.float64)
    y2 = y if y.ndim == 2 else y[:, None]
    s2 = scores if scores.ndim == 2 else scores[:, None]
    row = {
        "run": str(run_dir),
        "task": task,
        "n_test": len(pred),
        "model_auroc": np.nan,
        "oracle_auroc": np.nan,
    }
    if task in ("ihm", "pheno"):
        row["model_auroc"] = float(np.nanmean(auroc_per_label(y2, s2)))
        oracle = oracle_scores(task, stays, stay_of(pred["sample_id"]))
        if oracle is not None:
            row["oracle_auroc"] = float(np.nanmean(auroc_per_label(y2, oracle)))
    return row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--synth", required=True, help="synthetic MIMIC root (holding _truth/)")
    p.add_argument("--runs", default="runs")
    p.add_argument("--write", action="store_true", help="append the table to BENCHMARKS.md")
    args = p.parse_args(argv)
    stays = pd.read_csv(Path(args.synth) / "_truth" / "stays.csv.gz")
    rows = [
        check(path.parent, path.relative_to(args.runs).parts[0], stays)
        for path in sorted(Path(args.runs).glob("*/*/*/predictions.parquet"))
    ]
    if not rows:
        print(f"no runs with predictions.parquet under {args.runs}", file=sys.stderr)
        return 1
    lines = ["| run | task | test samples | model AUROC | oracle AUROC |", "|---|---|---:|---:|---:|"]
    for r in rows:
        lines.append(
            f"| {r['run']} | {r['task']} | {r['n_test']} | {r['model_auroc']:.3f} | {r['oracle_auroc']:.3f} |"
        )
    text = "\n".join(lines)
    print(text)
    if args.write:
        command = "python scripts/learning_check.py " + " ".join(argv if argv is not None else sys.argv[1:])
        with open(REPO / "BENCHMARKS.md", "a") as fh:
            fh.write(f"\n### Learning check: test AUROC vs oracle\n\n`{command}`\n\n{text}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
