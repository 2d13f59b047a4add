"""Leaderboard scoring of a predictions file: validate it, score it, compare it with a baseline.

    python scripts/score.py PREDICTIONS --task T [--truth SHARDS|LABELLED_PREDICTIONS]
        [--against BASELINE] [--split test] [--bootstrap N] [--seed S] [--json OUT]

A submission is the file a run writes (``predictions.parquet``: ``sample_id``, ``score`` — a
float, or a list of one probability per label / LOS bucket — and optionally ``label`` and, for
LOS, ``los_hours``) or the same as CSV, where a wide score is spread over ``score_0`` ..
``score_{K-1}``. Truth comes from, in this order: ``--truth`` pointing at a shard set (its
``manifest.json`` and the split's shards: sample ids, labels and LOS hours, read without decoding
images), ``--truth`` pointing at a predictions file that carries ``label`` (a reference run's
own predictions), or else the submission's own ``label`` column (a run scoring itself; a
leaderboard always passes ``--truth``). Submission labels, when present, must agree with the
truth: a file scored against other shards is an error, not a silent score.

Rows are scored in the truth's order (the order a one-process run scores the shards in), so the
numbers do not depend on the submission's row order, and a one-process run's
``predictions.parquet`` scores to exactly its ``metrics.json``: the bootstrap count and seed
default to the run's (``train.bootstrap``, ``train.seed`` of the ``config.yaml`` beside the file),
else 1000 and 0.
Metrics and CIs are ``trainer.scoring.score`` (SPEC §9); the comparison is
``trainer.metrics.paired_bootstrap``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from trainer import metrics, scoring
from trainer.tasks import TASKS, TaskSpec, task_spec

log = logging.getLogger("medmod.trainer.leaderboard")

EXIT_INVALID, EXIT_USAGE = 1, 2
SHOWN = 3  # sample ids quoted in a message
PROB_SUM_TOL = 1e-3  # LOS rows are softmax outputs: they sum to 1
LOWER_IS_BETTER = ("ece", "mad_hours")


class SubmissionError(ValueError):
    """A predictions or truth file that cannot be scored; the message names the problem."""


@dataclass
class Table:
    """A predictions file as arrays, rows in file order; ``labels`` and ``los_hours`` if present."""

    path: str
    ids: list[str]
    scores: np.ndarray  # [N, W] float64
    labels: np.ndarray | None = None  # [N, L] float64
    los_hours: np.ndarray | None = None


@dataclass
class Truth:
    """Labels of a split, rows in scoring order: ``y`` as the trainer holds it."""

    source: str
    ids: list[str]
    y: np.ndarray  # [N, L] float labels; multiclass: [N] int64 classes
    los_hours: np.ndarray | None = None


def _quote(ids: list[str]) -> str:
    more = f" and {len(ids) - SHOWN} more" if len(ids) > SHOWN else ""
    return ", ".join(repr(s) for s in ids[:SHOWN]) + more


def read_frame(path: str) -> pd.DataFrame:
    name = path.lower()
    try:
        if name.endswith(".parquet"):
            return pd.read_parquet(path)
        if name.endswith((".csv", ".csv.gz")):
            return pd.read_csv(path, dtype={"sample_id": str})
    except FileNotFoundError:
        raise SubmissionError(f"{path}: no such file") from None
    except Exception as err:  # noqa: BLE001 - any parse failure is a bad file, said in one line
        raise SubmissionError(f"{path}: not a readable {Path(name).suffix[1:]} file ({err})") from None
    raise SubmissionError(f"{path}: expected a .parquet or .csv(.gz) predictions file")


def _wide_columns(frame: pd.DataFrame, name: str) -> list[str]:
    cols = [c for c in frame.columns if str(c).startswith(f"{name}_") and str(c)[len(name) + 1 :].isdigit()]
    return sorted(cols, key=lambda c: int(str(c)[len(name) + 1 :]))


def _matrix(frame: pd.DataFrame, name: str, path: str) -> np.ndarray | None:
    """Column ``name`` (scalars or lists) or ``name_0 .. name_{K-1}`` as a float [N, K] matrix."""
    wide = _wide_columns(frame, name)
    if name in frame.columns:
        values = frame[name].tolist()
    elif wide:
        values = frame[wide].to_numpy().tolist()
    else:
        return None
    try:
        rows = [np.atleast_1d(np.asarray(v, dtype=np.float64)) for v in values]
    except (TypeError, ValueError):
        raise SubmissionError(f"{path}: column {name!r} holds values that are not numbers") from None
    widths = {r.shape for r in rows}
    if len(widths) > 1:
        sizes = sorted(r.size for r in rows)
        raise SubmissionError(
            f"{path}: {name!r} has a different number of values in different rows ({sizes[0]} to {sizes[-1]})"
        )
    width = rows[0].size if rows else 0
    return np.stack(rows).reshape(len(rows), width) if rows else np.zeros((0, 0))


def read_predictions(path: str) -> Table:
    frame = read_frame(path)
    if "sample_id" not in frame.columns:
        raise SubmissionError(
            f"{path}: no 'sample_id' column (columns: {', '.join(map(str, frame.columns))})"
        )
    scores = _matrix(frame, "score", path)
    if scores is None:
        raise SubmissionError(f"{path}: no 'score' column (or score_0 .. score_K-1 columns)")
    hours = frame["los_hours"].to_numpy(dtype=np.float64) if "los_hours" in frame.columns else None
    ids = frame["sample_id"].astype(str).tolist()
    return Table(path, ids, scores, _matrix(frame, "label", path), hours)


def truth_from_shards(root: str, task: str, split: str = "test") -> Truth:
    """Sample ids, labels and LOS hours of a split, in the order one process scores it.

    Reads the records' label and meta members only (images stay undecoded JPEG bytes)."""
    from shards.manifest import ManifestError, read_manifest, split_info
    from shards.reader import ReaderConfig, record_stream
    from shards.record import decode_record

    try:
        manifest = read_manifest(root)
        split_info(manifest, task, split)
    except ManifestError as err:
        raise SubmissionError(f"--truth {root}: {err}") from None
    ids: list[str] = []
    ys: list[np.ndarray] = []
    hours: list[float] = []
    cfg = ReaderConfig(task=task, split=split, mode="sequence" if task_spec(task).hourly else "sample")
    for parts in record_stream(root, cfg, manifest=manifest):
        rec = decode_record({k: v for k, v in parts.items() if not k.startswith("__")})
        meta = rec["meta"]
        if rec.get("hours") is not None:
            ids.extend(str(s) for s in meta["sample_ids"])
            ys.extend(np.asarray(rec["y"]).reshape(len(meta["sample_ids"]), -1))
            hours.extend(meta.get("los_remaining_hours") or [])
        else:
            ids.append(str(meta["sample_id"]))
            ys.append(np.asarray(rec["y"]).reshape(-1))
            if meta.get("los_remaining_hours") is not None:
                hours.append(float(meta["los_remaining_hours"]))
    spec = task_spec(task)
    y = np.stack(ys).astype(np.float64) if ys else np.zeros((0, spec.label_width))
    return Truth(f"{root} ({split})", ids, _trainer_y(spec, y), np.asarray(hours) if hours else None)


def _trainer_y(spec: TaskSpec, y: np.ndarray) -> np.ndarray:
    """Labels as the trainer scores them: class indices [N] for multiclass, else float [N, L]."""
    return y[:, 0].astype(np.int64) if spec.is_multiclass else y.astype(np.float64)


def truth_from_table(table: Table, spec: TaskSpec) -> Truth:
    if table.labels is None:
        raise SubmissionError(
            f"{table.path}: no 'label' column to score against; pass --truth SHARDS "
            "(the shard set's split) or a predictions file that carries labels"
        )
    _check_width(table.labels, spec.label_width, "label", table.path, spec)
    _check_unique(table)
    return Truth(f"{table.path} (labels)", list(table.ids), _trainer_y(spec, table.labels), table.los_hours)


def _ids_task(ids: list[str]) -> str | None:
    """The task the sample ids name (``<task>:<stay>:<hour>``), when they all name one."""
    prefixes = {s.split(":", 1)[0] for s in ids if ":" in s}
    return prefixes.pop() if len(prefixes) == 1 and next(iter(prefixes)) in TASKS else None


def _check_width(values: np.ndarray, width: int, what: str, path: str, spec: TaskSpec) -> None:
    if values.shape[1] != width:
        unit = "buckets" if spec.is_multiclass and what == "score" else "labels"
        raise SubmissionError(
            f"{path}: {what} has {values.shape[1]} value(s) per sample; task {spec.name} needs {width} "
            f"(one per {unit[:-1]})"
        )


def _check_unique(table: Table) -> None:
    seen: set[str] = set()
    dups = [s for s in table.ids if s in seen or seen.add(s)]
    if dups:
        unique = list(dict.fromkeys(dups))
        raise SubmissionError(
            f"{table.path}: {len(unique)} sample(s) appear more than once: {_quote(unique)}"
        )


def _reject_rows(path: str, ids: list[str], bad: np.ndarray, message: str) -> None:
    """SubmissionError when any row is ``bad``: ``message`` with ``{n}`` rows quoted as ``{rows}``."""
    if bad.any():
        rows = [ids[i] for i in np.flatnonzero(bad)]
        raise SubmissionError(f"{path}: " + message.format(n=len(rows), rows=_quote(rows)))


def _check_values(table: Table, spec: TaskSpec) -> None:
    scores, path, ids = table.scores, table.path, table.ids
    _reject_rows(
        path, ids, ~np.isfinite(scores).all(axis=1), "{n} sample(s) have a NaN or infinite score: {rows}"
    )
    outside = ((scores < 0) | (scores > 1)).any(axis=1)
    _reject_rows(path, ids, outside, "scores must be probabilities in [0, 1]; {n} sample(s) are not: {rows}")
    if spec.is_multiclass:
        off = np.abs(scores.sum(axis=1) - 1) > PROB_SUM_TOL
        what = f"task {spec.name} scores are a distribution over {spec.num_outputs} buckets summing to 1"
        _reject_rows(path, ids, off, what + "; {n} sample(s) do not: {rows}")


def _check_ids(table: Table, truth: Truth, spec: TaskSpec) -> np.ndarray:
    """Row of ``table`` for each truth sample: every one exactly once, no extras."""
    named = _ids_task(table.ids)
    if named is not None and named != spec.name and _ids_task(truth.ids) == spec.name:
        raise SubmissionError(
            f"{table.path}: these are predictions for task {named!r} (sample ids like {table.ids[0]!r}), "
            f"not {spec.name!r}"
        )
    _check_unique(table)
    where = {s: i for i, s in enumerate(table.ids)}
    missing = [s for s in truth.ids if s not in where]
    wanted = set(truth.ids)
    extra = [s for s in table.ids if s not in wanted]
    problems = []
    if missing:
        problems.append(f"{len(missing)} of the {len(truth.ids)} samples are missing: {_quote(missing)}")
    if extra:
        problems.append(f"{len(extra)} sample(s) are not in {truth.source}: {_quote(extra)}")
    if problems:
        raise SubmissionError(f"{table.path}: " + "; ".join(problems))
    return np.array([where[s] for s in truth.ids], dtype=np.int64)


def _check_labels(table: Table, truth: Truth, order: np.ndarray, spec: TaskSpec) -> None:
    if table.labels is None:
        return
    _check_width(table.labels, spec.label_width, "label", table.path, spec)
    mine = _trainer_y(spec, table.labels[order])
    differ = ~np.isclose(mine.reshape(len(order), -1), truth.y.reshape(len(order), -1)).all(axis=1)
    message = (
        f"its labels disagree with {truth.source} for {{n}} sample(s) ({{rows}}): scored against other data?"
    )
    _reject_rows(table.path, truth.ids, differ, message)


def validate(table: Table, truth: Truth, spec: TaskSpec) -> scoring.Predictions:
    """The submission as the trainer's Predictions, in the truth's order; SubmissionError if it
    does not cover the truth's samples exactly once with probabilities of the task's width."""
    order = _check_ids(table, truth, spec)
    _check_width(table.scores, spec.num_outputs, "score", table.path, spec)
    _check_values(table, spec)
    _check_labels(table, truth, order, spec)
    if spec.is_multiclass and truth.los_hours is None:
        log.warning("no LOS hours in %s: mad_hours is not reported", truth.source)
    return scoring.Predictions(list(truth.ids), truth.y, table.scores[order], truth.los_hours)


def load_truth(spec: TaskSpec, truth: str | None, submission: Table, split: str) -> Truth:
    if truth is None:
        log.warning("no --truth: scoring against the labels in %s itself", submission.path)
        return truth_from_table(submission, spec)
    if truth.lower().endswith((".parquet", ".csv", ".csv.gz")):
        return truth_from_table(read_predictions(truth), spec)
    return truth_from_shards(truth, spec.name, split)


def score_submission(
    spec: TaskSpec,
    submission: str,
    truth: str | None = None,
    against: str | None = None,
    split: str = "test",
    bootstrap: int = metrics.BOOTSTRAP_RESAMPLES,
    seed: int = 0,
) -> dict[str, Any]:
    """Validated metrics with bootstrap CIs (``trainer.scoring.score``) and, with ``against``,
    the paired bootstrap comparison with the baseline's predictions on the same samples."""
    table = read_predictions(submission)
    gold = load_truth(spec, truth, table, split)
    pred = validate(table, gold, spec)
    out: dict[str, Any] = {"task": spec.name, "submission": submission, "truth": gold.source}
    out.update(scoring.score(spec, pred, bootstrap, seed))
    if against is not None:
        base = validate(read_predictions(against), gold, spec)
        out["against"] = {
            "baseline": against,
            "metrics": metrics.paired_bootstrap(spec, pred.arrays(), base.arrays(), bootstrap, seed),
        }
    return out


def format_report(result: dict[str, Any]) -> str:
    lines = [
        f"task {result['task']}: {result['submission']} against {result['truth']}, n={result['n_samples']}",
        "",
        "| metric | value | 95% CI |",
        "|---|---:|---|",
    ]
    for name, m in result["metrics"].items():
        ci = f"[{m['ci_low']:.4f}, {m['ci_high']:.4f}]" if "ci_low" in m else "-"
        lines.append(f"| {name} | {m['value']:.4f} | {ci} |")
    if "against" in result:
        lines += [
            "",
            f"paired bootstrap against {result['against']['baseline']} (difference = submission - baseline):",
            "",
            "| metric | submission | baseline | difference | 95% CI | p |",
            "|---|---:|---:|---:|---|---:|",
        ]
        for name, m in result["against"]["metrics"].items():
            note = " (lower is better)" if name in LOWER_IS_BETTER else ""
            lines.append(
                f"| {name}{note} | {m['value']:.4f} | {m['baseline']:.4f} | {m['diff']:+.4f} "
                f"| [{m['ci_low']:+.4f}, {m['ci_high']:+.4f}] | {m['p_value']:.4f} |"
            )
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="score.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("predictions", help="the submission: .parquet (as a run writes it) or .csv")
    p.add_argument("--task", required=True, choices=sorted(TASKS))
    p.add_argument("--truth", help="shard set root (its manifest.json), or a predictions file with labels")
    p.add_argument("--against", help="a baseline's predictions file, compared by paired bootstrap")
    p.add_argument("--split", default="test", help="split of the shard set to score against (test)")
    p.add_argument("--bootstrap", type=int, help="resamples (default: the run's train.bootstrap, else 1000)")
    p.add_argument("--seed", type=int, help="bootstrap seed (default: the run's train.seed, else 0)")
    p.add_argument("--json", help="also write the results here as JSON")
    return p.parse_args(argv)


def bootstrap_settings(predictions: str, bootstrap: int | None, seed: int | None) -> tuple[int, int]:
    """Resamples and seed: as given, else those of the run whose ``config.yaml`` sits beside the
    predictions file (so a run's file scores to its ``metrics.json``), else 1000 and 0."""
    config = Path(predictions).parent / "config.yaml"
    run: dict[str, Any] = {}
    if (bootstrap is None or seed is None) and config.is_file():
        import yaml

        try:
            run = (yaml.safe_load(config.read_text()) or {}).get("train") or {}
        except (yaml.YAMLError, AttributeError):
            run = {}
    chosen = (
        bootstrap if bootstrap is not None else int(run.get("bootstrap", metrics.BOOTSTRAP_RESAMPLES)),
        seed if seed is not None else int(run.get("seed", 0)),
    )
    if run:
        log.info("bootstrap %d resamples, seed %d (the run's %s where not given)", *chosen, config)
    return chosen


def main(argv: list[str] | None = None) -> int:
    """Score one predictions file; 0 when scored, 1 when the submission (or truth) is invalid."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    args = parse_args(argv)
    bootstrap, seed = bootstrap_settings(args.predictions, args.bootstrap, args.seed)
    if bootstrap < 0:
        print("error: --bootstrap must be >= 0", file=sys.stderr)
        return EXIT_USAGE
    try:
        spec = task_spec(args.task)
        result = score_submission(
            spec, args.predictions, args.truth, args.against, args.split, bootstrap, seed
        )
    except SubmissionError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_INVALID
    print(format_report(result))
    if args.json:
        scoring.write_json(result, Path(args.json))
    return 0


if __name__ == "__main__":
    sys.exit(main())
