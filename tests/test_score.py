"""The leaderboard scorer (scripts/score.py, trainer.leaderboard) on a tiny shard set (no Spark).

Covers: a run's own predictions.parquet scores to exactly the numbers of its metrics.json (against
the shards, against its own labels, whatever the row order); malformed submissions (missing,
duplicate and extra samples, wrong width, NaN and out-of-range scores, predictions of another
task, labels of other data, a LOS row that is not a distribution) each stop with one line that
names the problem and exit status 1; a wide CSV submission; the paired bootstrap test
(identical predictions: no difference, p = 1; a clearly better model: small p).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from shards.tiny import tiny_dataset, tiny_records
from tests.test_trainer import CPU
from tests.test_trainer import TINY as TINY_RUN
from trainer import leaderboard, metrics, train
from trainer.config import load_run_config
from trainer.tasks import task_spec

REPO = Path(__file__).resolve().parents[1]
TINY = [*TINY_RUN, "train.epochs=1", "train.bootstrap=50"]  # the trainer tests' tiny uni_ehr run


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("score-shards") / "ds"
    tiny_dataset(str(root), tasks=("ihm", "pheno", "los"), records=12, records_per_shard=3)
    return root


@pytest.fixture(scope="module")
def run_dir(shards, tmp_path_factory) -> Path:
    runs = tmp_path_factory.mktemp("score-runs")
    cfg = load_run_config([*TINY, "task=ihm", f"data.shards={shards}", f"train.runs_dir={runs}"])
    train.run(cfg, CPU)
    return runs / "ihm" / "uni_ehr" / "0"


def score(*argv: str, capsys) -> tuple[int, str, str]:
    code = leaderboard.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_run_predictions_score_to_the_runs_metrics(run_dir, shards, tmp_path, capsys):
    reported = json.loads((run_dir / "metrics.json").read_text())["test"]
    pred = run_dir / "predictions.parquet"
    out = tmp_path / "scored.json"
    # No --bootstrap / --seed: the run's own (train.bootstrap=50, seed 0) from its config.yaml.
    code, text, _ = score(pred, "--task", "ihm", "--truth", shards, "--json", out, capsys=capsys)
    assert code == 0 and "auroc" in text
    scored = json.loads(out.read_text())
    assert scored["n_samples"] == reported["n_samples"] == 12
    assert scored["metrics"] == reported["metrics"]  # values and CIs, exactly
    # Against its own labels (no --truth), and with its rows shuffled: the same numbers.
    shuffled = tmp_path / "shuffled.parquet"
    pd.read_parquet(pred).sample(frac=1.0, random_state=3).to_parquet(shuffled, index=False)
    for submission, truth in ((pred, None), (shuffled, str(shards))):
        again = leaderboard.score_submission(task_spec("ihm"), str(submission), truth, bootstrap=50)
        assert again["metrics"] == reported["metrics"]


def test_the_script_runs_as_a_command(run_dir, shards):
    pred = run_dir / "predictions.parquet"
    cmd = [
        sys.executable,
        str(REPO / "scripts" / "score.py"),
        str(pred),
        "--task",
        "pheno",
        "--truth",
        str(shards),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=REPO)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert (
        done.stderr.strip()
        .splitlines()[-1]
        .startswith(f"error: {pred}: these are predictions for task 'ihm'")
    )


def _spoil(frame: pd.DataFrame, how: str) -> pd.DataFrame:
    frame = frame.copy()
    if how == "missing":
        return frame.iloc[1:]
    if how == "duplicate":
        return pd.concat([frame, frame.iloc[[2]]])
    if how == "extra":
        extra = frame.iloc[[0]].assign(sample_id="ihm:999999:48")
        return pd.concat([frame, extra])
    if how == "width":
        return frame.assign(score=[[s, 1 - s] for s in frame["score"]])
    if how == "nan":
        return frame.assign(score=frame["score"].where(frame.index != 4, np.nan))
    if how == "range":
        return frame.assign(score=frame["score"].where(frame.index != 5, 1.5))
    if how == "labels":
        return frame.assign(label=1.0 - frame["label"])
    raise AssertionError(how)


@pytest.mark.parametrize(
    ("how", "message"),
    [
        ("missing", r"1 of the 12 samples are missing: 'ihm:"),
        ("duplicate", r"1 sample\(s\) appear more than once: 'ihm:"),
        ("extra", r"1 sample\(s\) are not in .*: 'ihm:999999:48'"),
        ("width", r"score has 2 value\(s\) per sample; task ihm needs 1"),
        ("nan", r"1 sample\(s\) have a NaN or infinite score: 'ihm:"),
        ("range", r"probabilities in \[0, 1\]; 1 sample\(s\) are not"),
        ("labels", r"labels disagree with .* for 12 sample\(s\)"),
    ],
)
def test_malformed_submission_is_one_clear_line(run_dir, shards, tmp_path, capsys, how, message):
    bad = tmp_path / f"{how}.parquet"
    _spoil(pd.read_parquet(run_dir / "predictions.parquet"), how).to_parquet(bad, index=False)
    code, out, err = score(bad, "--task", "ihm", "--truth", shards, "--bootstrap", 5, capsys=capsys)
    lines = err.strip().splitlines()
    assert code == leaderboard.EXIT_INVALID and out == ""
    assert lines[-1].startswith(f"error: {bad}: ")
    assert "Traceback" not in err
    assert re.search(message, lines[-1]), lines[-1]


def test_predictions_of_another_task_are_named_as_such(run_dir, shards, capsys):
    pred = run_dir / "predictions.parquet"
    code, _, err = score(pred, "--task", "los", "--truth", shards, capsys=capsys)
    assert code == 1 and "predictions for task 'ihm'" in err and "not 'los'" in err
    code, _, err = score(pred, "--task", "ihm", "--truth", shards, "--split", "nope", capsys=capsys)
    assert code == 1 and "split 'nope'" in err
    code, _, err = score(pred, "--task", "ihm", "--truth", pred.parent / "nowhere", capsys=capsys)
    assert code == 1 and "no committed shard set" in err


def _truth(shards: Path, task: str) -> leaderboard.Truth:
    return leaderboard.truth_from_shards(str(shards), task)


@pytest.mark.parametrize("task", ["ihm", "pheno", "los"])
def test_truth_from_shards_is_what_was_written(shards, task):
    """Ids, labels and LOS hours of the test split, hourly segments expanded, in shard order."""
    records = tiny_records(task, "test", 12)
    truth = _truth(shards, task)
    assert truth.ids == [sid for rec in records for sid in rec.sample_ids()]
    expected = np.concatenate([rec.y.reshape(rec.n_samples, -1) for rec in records])
    if task == "los":
        assert truth.y.tolist() == expected[:, 0].tolist()
        assert truth.los_hours.tolist() == [h for rec in records for h in rec.meta["los_remaining_hours"]]
    else:
        assert truth.y.shape == (12, task_spec(task).label_width) and (truth.y == expected).all()
        assert truth.los_hours is None


def test_los_needs_distributions_and_reports_mad(shards, tmp_path, capsys):
    truth = _truth(shards, "los")
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(10), size=len(truth.ids))
    frame = pd.DataFrame({"sample_id": truth.ids, "score": probs.tolist()})
    good = tmp_path / "los.parquet"
    frame.to_parquet(good, index=False)
    code, text, _ = score(good, "--task", "los", "--truth", shards, "--bootstrap", 5, capsys=capsys)
    assert code == 0 and "| mad_hours |" in text and "| kappa |" in text
    expected = metrics.compute(task_spec("los"), metrics.EvalArrays(truth.y, probs, truth.los_hours))
    result = leaderboard.score_submission(task_spec("los"), str(good), str(shards), bootstrap=0)
    assert {k: v["value"] for k, v in result["metrics"].items()} == pytest.approx(expected)
    bad = tmp_path / "los-bad.parquet"
    frame.assign(score=(probs * 0.5).tolist()).to_parquet(bad, index=False)
    code, _, err = score(bad, "--task", "los", "--truth", shards, capsys=capsys)
    assert code == 1 and "summing to 1" in err


def test_wide_csv_submission_for_a_multilabel_task(shards, tmp_path, capsys):
    truth = _truth(shards, "pheno")
    rng = np.random.default_rng(1)
    probs = rng.uniform(size=(len(truth.ids), 25))
    frame = pd.DataFrame(probs, columns=[f"score_{j}" for j in range(25)]).assign(sample_id=truth.ids)
    good = tmp_path / "pheno.csv"
    frame.to_csv(good, index=False)
    result = leaderboard.score_submission(task_spec("pheno"), str(good), str(shards), bootstrap=0)
    expected = metrics.compute(task_spec("pheno"), metrics.EvalArrays(truth.y, probs))
    assert {k: v["value"] for k, v in result["metrics"].items()} == pytest.approx(expected)
    narrow = tmp_path / "pheno-narrow.csv"
    frame.drop(columns=["score_24"]).to_csv(narrow, index=False)
    code, _, err = score(narrow, "--task", "pheno", "--truth", shards, capsys=capsys)
    assert code == 1 and "score has 24 value(s) per sample; task pheno needs 25" in err


def _labelled(path: Path, y: np.ndarray, scores: np.ndarray) -> Path:
    ids = [f"ihm:{i}:48" for i in range(len(y))]
    pd.DataFrame({"sample_id": ids, "label": y, "score": scores}).to_parquet(path, index=False)
    return path


def test_paired_bootstrap_identical_and_clearly_better(tmp_path, capsys):
    rng = np.random.default_rng(7)
    y = (rng.uniform(size=300) < 0.3).astype(np.float64)
    noise = rng.uniform(size=300)
    weak = _labelled(tmp_path / "weak.parquet", y, noise)
    strong = _labelled(tmp_path / "strong.parquet", y, np.clip(0.5 * y + 0.5 * rng.uniform(size=300), 0, 1))
    same = leaderboard.score_submission(
        task_spec("ihm"), str(weak), str(weak), against=str(weak), bootstrap=200
    )
    for m in same["against"]["metrics"].values():
        assert m["diff"] == 0 and m["ci_low"] == m["ci_high"] == 0 and m["p_value"] == 1.0
    out = tmp_path / "better.json"
    argv = (strong, "--task", "ihm", "--truth", weak, "--against", weak, "--bootstrap", 200, "--json", out)
    code, text, _ = score(*argv, capsys=capsys)
    assert code == 0 and "paired bootstrap against" in text
    better = json.loads(out.read_text())
    auroc = better["against"]["metrics"]["auroc"]
    assert auroc["diff"] > 0.3 and auroc["ci_low"] > 0 and auroc["p_value"] < 0.02
    # The baseline is validated like the submission: a baseline missing a sample is an error.
    short = _labelled(tmp_path / "short.parquet", y[1:], noise[1:])
    code, _, err = score(strong, "--task", "ihm", "--truth", weak, "--against", short, capsys=capsys)
    assert code == 1 and f"error: {short}: 1 of the 300 samples are missing" in err
