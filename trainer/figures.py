"""The benchmark's figures (PNG, matplotlib): per task, ROC and precision-recall curves and a
reliability diagram of each model's seed-0 run on the test set, from the run's
``predictions.parquet``. Multi-label tasks pool every (sample, label) pair (micro average);
LOS has no ROC / PR curve (ten buckets) and its reliability diagram is top-label."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from conf.tasks import task_spec

BINS = 10


def pyplot():
    """matplotlib's pyplot on the file-only backend (no display on servers and in CI)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def test_predictions(run_dir: str | Path) -> tuple[np.ndarray, np.ndarray] | None:
    """(labels, scores) of a run's test predictions, flattened over labels; None if absent."""
    path = Path(run_dir) / "predictions.parquet"
    if not path.is_file():
        return None
    frame = pd.read_parquet(path)
    y = np.asarray(frame["label"].tolist(), dtype=np.float64)
    p = np.asarray(frame["score"].tolist(), dtype=np.float64)
    if p.ndim == 2 and y.ndim == 1:  # multiclass (LOS): top-label correctness and confidence
        top = p.argmax(axis=1)
        return (top == y.astype(int)).astype(np.float64), p.max(axis=1)
    return y.reshape(-1), p.reshape(-1)


def reliability(y: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per equal-width bin: mean confidence, observed frequency and count (empty bins: NaN)."""
    edges = np.linspace(0, 1, BINS + 1)
    which = np.clip(np.digitize(p, edges[1:-1]), 0, BINS - 1)
    counts = np.bincount(which, minlength=BINS)
    with np.errstate(invalid="ignore"):
        conf = np.bincount(which, weights=p, minlength=BINS) / counts
        freq = np.bincount(which, weights=y, minlength=BINS) / counts
    return conf, freq, counts


def write_figures(runs: pd.DataFrame, folder: Path) -> list[Path]:
    """One PNG per task and kind (``<task>_roc.png``, ``<task>_pr.png``,
    ``<task>_reliability.png``) over the models' seed-0 runs."""
    plt = pyplot()
    from sklearn.metrics import precision_recall_curve, roc_curve

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for task in runs.task.unique():
        curves = {}
        for row in runs[(runs.task == task) & (runs.seed == 0)].itertuples():
            pred = test_predictions(row.run_dir)
            if pred is not None and len(np.unique(pred[0])) == 2:
                curves[row.model] = pred
        if not curves:
            continue
        kinds = ["reliability"] if task_spec(task).kind == "multiclass" else ["roc", "pr", "reliability"]
        for kind in kinds:
            fig, ax = plt.subplots(figsize=(4.5, 4.5))
            for model, (y, p) in curves.items():
                if kind == "roc":
                    fpr, tpr, _ = roc_curve(y, p)
                    ax.plot(fpr, tpr, label=model)
                elif kind == "pr":
                    precision, recall, _ = precision_recall_curve(y, p)
                    ax.plot(recall, precision, label=model)
                else:
                    conf, freq, _ = reliability(y, p)
                    ax.plot(conf, freq, marker="o", label=model)
            diagonal = {"roc": ([0, 1], [0, 1]), "reliability": ([0, 1], [0, 1])}.get(kind)
            if diagonal:
                ax.plot(*diagonal, color="grey", linestyle=":", linewidth=1)
            xlabel, ylabel = {
                "roc": ("false positive rate", "true positive rate"),
                "pr": ("recall", "precision"),
                "reliability": ("mean predicted probability", "observed frequency"),
            }[kind]
            ax.set(xlabel=xlabel, ylabel=ylabel, xlim=(0, 1), ylim=(0, 1), title=f"{task}: {kind} (test)")
            ax.legend(fontsize=8)
            paths.append(save(fig, folder / f"{task}_{kind}.png"))
    return paths


def write_label_distributions(manifest: dict, folder: Path) -> list[Path]:
    """The paper's Figure 3 from the shard manifest: per task, each label's prevalence (LOS:
    each bucket's share) in train / val / test, one bar group per label."""
    plt = pyplot()

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for task, entry in manifest.get("tasks", {}).items():
        given = entry.get("splits", {})
        splits = {s: given[s] for s in ("train", "val", "test") if (given.get(s) or {}).get("prevalence")}
        if not splits:
            continue
        labels = task_spec(task).labels if task_spec(task).kind == "multilabel" else ()
        names = [n if len(n) <= 30 else n[:28] + "…" for n in labels]
        width = 0.8 / len(splits)
        count = len(next(iter(splits.values()))["prevalence"])
        fig, ax = plt.subplots(figsize=(max(4.5, 0.4 * count + 2), 6 if names else 4))
        for i, (split, info) in enumerate(splits.items()):
            values = info["prevalence"]
            ax.bar(
                np.arange(len(values)) + i * width, values, width, label=f"{split} (n={info.get('samples')})"
            )
        ax.set_xticks(np.arange(count) + width * (len(splits) - 1) / 2)
        if names and len(names) == count:
            ax.set_xticklabels(names, rotation=75, ha="right", fontsize=7)
        kind = next(iter(splits.values())).get("prevalence_kind", "")
        ax.set(
            ylabel="share of samples" if kind == "bucket_frequency" else "prevalence", title=f"{task}: labels"
        )
        ax.legend(fontsize=8)
        paths.append(save(fig, folder / f"{task}_labels.png"))
    return paths


def scalar_series(run_dir: str | Path, tag: str) -> tuple[list[int], list[float]]:
    """(steps, values) of one scalar a run logged to its TensorBoard folder (``tb/``)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    folder = Path(run_dir) / "tb"
    if not folder.is_dir():
        return [], []
    # Its reader logs "No path found after ..." at INFO for every event file it finishes.
    logging.getLogger("tensorboard").setLevel(logging.WARNING)
    events = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    events.Reload()
    if tag not in events.Tags().get("scalars", []):
        return [], []
    points = events.Scalars(tag)
    return [p.step for p in points], [p.value for p in points]


def write_training_curves(runs: pd.DataFrame, folder: Path) -> list[Path]:
    """Per task, the training loss and the validation selection metric of each model's seed-0
    run against the step (``<task>_curves.png``)."""
    plt = pyplot()

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for task in runs.task.unique():
        metric = task_spec(task).selection_metric
        fig, (loss_ax, val_ax) = plt.subplots(1, 2, figsize=(9, 4))
        drawn = False
        for row in runs[(runs.task == task) & (runs.seed == 0)].itertuples():
            for ax, tag in ((loss_ax, "train/loss"), (val_ax, f"val/{metric}")):
                steps, values = scalar_series(row.run_dir, tag)
                if steps:
                    ax.plot(steps, values, marker="." if len(steps) < 20 else None, label=row.model)
                    drawn = True
        if not drawn:
            plt.close(fig)
            continue
        loss_ax.set(xlabel="step", ylabel="training loss", title=f"{task}: training loss")
        val_ax.set(xlabel="step", ylabel=f"val {metric}", title=f"{task}: validation {metric}")
        for ax in (loss_ax, val_ax):
            if ax.lines:
                ax.legend(fontsize=8)
        paths.append(save(fig, folder / f"{task}_curves.png"))
    return paths
