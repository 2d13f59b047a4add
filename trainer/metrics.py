"""Benchmark metrics (SPEC §9): AUROC, AUPRC, linear-weighted kappa, MAD, ECE, bootstrap CIs.

Written in numpy so that the same code scores one run on rank 0 and 1,000 bootstrap resamples
quickly. Conventions worth knowing when reading numbers produced here:

- AUPRC is *average precision* (step-wise sum over distinct thresholds, as scikit-learn's
  ``average_precision_score``), not the trapezoid of the PR curve used by mimic3-benchmarks.
- A label whose sample holds a single class has no AUROC/AUPRC: it is NaN, and macro averages
  skip NaN labels (``nanmean``); a macro over only undefined labels is NaN. Bootstrap resamples
  where a metric is undefined are dropped and counted (``n_undefined``), never a crash.
- ECE for binary / multi-label scores is the calibration of each label's positive probability
  (10 equal-width bins on [0, 1], ``sum_b n_b/N |mean(y)_b - mean(p)_b|``), averaged over labels;
  for the multiclass LOS task it is the usual top-label ECE of the softmax.
- MAD uses the *predicted bucket's* mean hours (argmax of the probabilities), not raw logits.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy.stats import rankdata

from trainer.tasks import LOS_BUCKET_MEAN_HOURS, TaskSpec

ECE_BINS = 10
BOOTSTRAP_RESAMPLES = 1000


def _as_2d(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    return a[:, None] if a.ndim == 1 else a


def auroc_per_label(y: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """AUROC of each column by the rank-sum (Mann-Whitney) formula; ties count one half."""
    y2, s2 = _as_2d(y) > 0.5, _as_2d(scores)
    n_pos = y2.sum(axis=0).astype(np.float64)
    n_neg = y2.shape[0] - n_pos
    ranks = rankdata(s2, axis=0, method="average")
    rank_sum = np.where(y2, ranks, 0.0).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
    return np.where((n_pos > 0) & (n_neg > 0), auc, np.nan)


def _average_precision_1d(y: np.ndarray, s: np.ndarray) -> float:
    n_pos = int(y.sum())
    if n_pos == 0:
        return float("nan")
    order = np.argsort(-s, kind="mergesort")
    s_sorted, y_sorted = s[order], y[order]
    tp = np.cumsum(y_sorted)
    # One threshold per distinct score: keep the last index of each run of equal scores.
    last = np.r_[np.nonzero(np.diff(s_sorted))[0], len(s_sorted) - 1]
    tp_t = tp[last]
    precision = tp_t / (last + 1)
    recall = tp_t / n_pos
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def average_precision_per_label(y: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Average precision of each column; NaN for a column without positives."""
    y2, s2 = (_as_2d(y) > 0.5).astype(np.float64), _as_2d(scores)
    return np.array([_average_precision_1d(y2[:, j], s2[:, j]) for j in range(y2.shape[1])])


def _nanmean(values: np.ndarray) -> float:
    values = np.asarray(values, dtype=np.float64)
    return float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")


def cohen_kappa_linear(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> float:
    """Cohen's kappa with linear weights |i - j| over the fixed classes 0..K-1.

    The class set is fixed (not the labels seen in this sample), so a bucket absent from a
    bootstrap resample does not change the weights. Undefined (NaN) when the expected
    disagreement is zero, e.g. every true and predicted label is the same single class.
    """
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    if y_true.size == 0:
        return float("nan")
    if y_true.min() < 0 or y_true.max() >= num_classes or y_pred.min() < 0 or y_pred.max() >= num_classes:
        raise ValueError(f"kappa: labels must lie in [0, {num_classes})")
    confusion = np.zeros((num_classes, num_classes), dtype=np.float64)
    np.add.at(confusion, (y_true, y_pred), 1.0)
    idx = np.arange(num_classes)
    weights = np.abs(idx[:, None] - idx[None, :]).astype(np.float64)
    expected = np.outer(confusion.sum(axis=1), confusion.sum(axis=0)) / confusion.sum()
    denom = float((weights * expected).sum())
    if denom == 0.0:
        return float("nan")
    return 1.0 - float((weights * confusion).sum()) / denom


def los_mad_hours(los_hours: np.ndarray, probs: np.ndarray) -> float:
    """Mean absolute deviation (hours) between true remaining LOS and the predicted bucket's mean."""
    means = np.asarray(LOS_BUCKET_MEAN_HOURS, dtype=np.float64)
    pred = np.asarray(probs).argmax(axis=1)
    return float(np.mean(np.abs(np.asarray(los_hours, dtype=np.float64) - means[pred])))


def _ece_1d(conf: np.ndarray, correct: np.ndarray, bins: int) -> float:
    # Bin b holds conf in [b/bins, (b+1)/bins); conf == 1 falls into the last bin.
    # sum_b n_b/N * abs(acc_b - conf_b) == sum_b abs(sum of correct - sum of conf) / N.
    which = np.minimum((conf * bins).astype(np.int64), bins - 1)
    conf_sum = np.bincount(which, weights=conf, minlength=bins)
    acc_sum = np.bincount(which, weights=correct, minlength=bins)
    return float(np.abs(acc_sum - conf_sum).sum() / len(conf))


def ece_labels(y: np.ndarray, probs: np.ndarray, bins: int = ECE_BINS) -> float:
    """ECE of positive-class probabilities, mean over labels (binary and multi-label tasks)."""
    y2, p2 = _as_2d(y), np.clip(_as_2d(probs), 0.0, 1.0)
    return float(np.mean([_ece_1d(p2[:, j], y2[:, j], bins) for j in range(y2.shape[1])]))


def ece_top_label(y_true: np.ndarray, probs: np.ndarray, bins: int = ECE_BINS) -> float:
    """Top-label ECE for a multiclass softmax: confidence = max prob, correct = argmax == label."""
    probs = np.asarray(probs, dtype=np.float64)
    pred = probs.argmax(axis=1)
    correct = (pred == np.asarray(y_true)).astype(np.float64)
    return _ece_1d(np.clip(probs.max(axis=1), 0.0, 1.0), correct, bins)


@dataclass(frozen=True)
class EvalArrays:
    """What is scored: labels, probabilities and (LOS) true remaining hours, one row per sample."""

    y: np.ndarray  # [N] or [N, L] float labels; LOS: int buckets [N]
    probs: np.ndarray  # [N, C] sigmoid (binary/multilabel) or softmax (multiclass) outputs
    los_hours: np.ndarray | None = None

    def take(self, idx: np.ndarray) -> EvalArrays:
        hours = None if self.los_hours is None else self.los_hours[idx]
        return EvalArrays(self.y[idx], self.probs[idx], hours)

    def __len__(self) -> int:
        return len(self.y)


def _label_metrics(a: EvalArrays) -> dict[str, float]:
    auroc = auroc_per_label(a.y, a.probs)
    auprc = average_precision_per_label(a.y, a.probs)
    return {"auroc": _nanmean(auroc), "auprc": _nanmean(auprc), "ece": ece_labels(a.y, a.probs)}


def _multilabel_metrics(a: EvalArrays) -> dict[str, float]:
    m = _label_metrics(a)
    return {"auroc_macro": m["auroc"], "auprc_macro": m["auprc"], "ece": m["ece"]}


def _multiclass_metrics(a: EvalArrays) -> dict[str, float]:
    pred = a.probs.argmax(axis=1)
    out = {
        "kappa": cohen_kappa_linear(a.y, pred, a.probs.shape[1]),
        "accuracy": float(np.mean(pred == a.y)),
        "ece": ece_top_label(a.y, a.probs),
    }
    if a.los_hours is not None:
        out["mad_hours"] = los_mad_hours(a.los_hours, a.probs)
    return out


# Headline (bootstrapped) metrics per task kind; a registry, not an if/elif chain.
HEADLINE: dict[str, Callable[[EvalArrays], dict[str, float]]] = {
    "binary": _label_metrics,
    "multilabel": _multilabel_metrics,
    "multiclass": _multiclass_metrics,
}


def per_label(a: EvalArrays) -> dict[str, list[float]]:
    """Per-label AUROC / AUPRC (multi-label tasks), reported without CIs."""
    return {
        "auroc": [float(v) for v in auroc_per_label(a.y, a.probs)],
        "auprc": [float(v) for v in average_precision_per_label(a.y, a.probs)],
    }


def compute(spec: TaskSpec, a: EvalArrays) -> dict[str, float]:
    """Point estimates of the task's headline metrics."""
    return HEADLINE[spec.kind](a)


def _percentile_ci(draws: list[float], level: float) -> tuple[np.ndarray, np.ndarray, float, float]:
    """All draws, the finite ones, and the percentile interval of the finite ones (NaN if none)."""
    vals = np.asarray(draws, dtype=np.float64)
    ok = vals[np.isfinite(vals)]
    tail = (1.0 - level) / 2 * 100
    low, high = np.percentile(ok, [tail, 100 - tail]) if ok.size else (np.nan, np.nan)
    return vals, ok, float(low), float(high)


def bootstrap_ci(
    spec: TaskSpec,
    a: EvalArrays,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, dict[str, float]]:
    """Point estimate and percentile bootstrap CI of every headline metric.

    Resamples test samples with replacement (seeded, so a rerun gives the same interval).
    A resample where a metric is undefined is left out of that metric's interval and counted.
    """
    point = compute(spec, a)
    rng = np.random.default_rng(seed)
    n = len(a)
    draws: dict[str, list[float]] = {k: [] for k in point}
    for _ in range(resamples if n else 0):
        sample = compute(spec, a.take(rng.integers(0, n, size=n)))
        for key, value in sample.items():
            draws[key].append(value)
    out: dict[str, dict[str, float]] = {}
    for key, value in point.items():
        vals, ok, low, high = _percentile_ci(draws[key], level)
        out[key] = {
            "value": float(value),
            "ci_low": float(low),
            "ci_high": float(high),
            "n_undefined": int(vals.size - ok.size),
        }
    return out


def paired_bootstrap(
    spec: TaskSpec,
    a: EvalArrays,
    b: EvalArrays,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, dict[str, float]]:
    """Paired bootstrap test of ``a`` against ``b``: two models' scores on the same samples.

    Both are resampled with the *same* indices, so what varies between resamples is the test
    set, not the pairing; for each headline metric: the difference ``a - b``, its percentile CI
    and a two-sided p-value ``2 * min(P(d <= 0), P(d >= 0))`` over the resampled differences,
    with the add-one correction (never exactly 0 from a finite number of resamples; identical
    predictions give p = 1). Resamples where either metric is undefined are left out and counted.
    """
    if len(a) != len(b) or not np.array_equal(a.y, b.y):
        raise ValueError("paired bootstrap needs both models scored on the same samples and labels")
    point_a, point_b = compute(spec, a), compute(spec, b)
    rng = np.random.default_rng(seed)
    n = len(a)
    diffs: dict[str, list[float]] = {k: [] for k in point_a}
    for _ in range(resamples if n else 0):
        idx = rng.integers(0, n, size=n)
        ma, mb = compute(spec, a.take(idx)), compute(spec, b.take(idx))
        for key in diffs:
            diffs[key].append(ma[key] - mb[key])
    out: dict[str, dict[str, float]] = {}
    for key in point_a:
        vals, ok, low, high = _percentile_ci(diffs[key], level)
        below, above = (np.sum(ok <= 0) + 1) / (ok.size + 1), (np.sum(ok >= 0) + 1) / (ok.size + 1)
        out[key] = {
            "value": float(point_a[key]),
            "baseline": float(point_b[key]),
            "diff": float(point_a[key] - point_b[key]),
            "ci_low": float(low),
            "ci_high": float(high),
            "p_value": float(min(1.0, 2 * min(below, above))) if ok.size else float("nan"),
            "n_undefined": int(vals.size - ok.size),
        }
    return out
