"""Metrics against scikit-learn on random inputs and against small cases computed by hand."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, cohen_kappa_score, roc_auc_score

from trainer import metrics
from trainer.tasks import LOS_BUCKET_MEAN_HOURS, task_spec


@pytest.mark.parametrize("seed", range(5))
def test_auroc_and_ap_match_sklearn_on_random_inputs(seed):
    rng = np.random.default_rng(seed)
    n, labels = 200, 4
    y = (rng.random((n, labels)) < rng.uniform(0.1, 0.6, labels)).astype(np.float32)
    # Rounded scores force ties, which both formulas must handle the same way.
    s = np.round(rng.random((n, labels)) + 0.5 * y, 1)
    ours_roc = metrics.auroc_per_label(y, s)
    ours_ap = metrics.average_precision_per_label(y, s)
    for j in range(labels):
        assert ours_roc[j] == pytest.approx(roc_auc_score(y[:, j], s[:, j]), abs=1e-12)
        assert ours_ap[j] == pytest.approx(average_precision_score(y[:, j], s[:, j]), abs=1e-12)


def test_auroc_ap_hand_computed():
    y = np.array([0, 0, 1, 1])
    s = np.array([0.1, 0.4, 0.35, 0.8])
    # Pairs (pos, neg): (0.35>0.1) (0.35<0.4) (0.8>0.1) (0.8>0.4) -> 3/4.
    assert metrics.auroc_per_label(y, s)[0] == pytest.approx(0.75)
    # Thresholds 0.8: P=1 R=.5; 0.4: P=.5 R=.5; 0.35: P=2/3 R=1 -> AP = .5*1 + .5*2/3.
    assert metrics.average_precision_per_label(y, s)[0] == pytest.approx(0.5 + 1 / 3)
    # A tie between a positive and a negative counts one half.
    assert metrics.auroc_per_label(np.array([0, 1]), np.array([0.5, 0.5]))[0] == pytest.approx(0.5)


def test_single_class_label_is_nan_and_macro_skips_it():
    y = np.array([[0, 1], [1, 1], [0, 1], [1, 1]], dtype=np.float32)
    p = np.array([[0.2, 0.9], [0.7, 0.1], [0.3, 0.5], [0.6, 0.4]])
    roc = metrics.auroc_per_label(y, p)
    assert roc[0] == pytest.approx(1.0) and np.isnan(roc[1])
    ap_neg = metrics.average_precision_per_label(1 - y, p)
    assert np.isnan(ap_neg[1])  # no positives: undefined
    out = metrics.compute(task_spec("pheno"), metrics.EvalArrays(y, p))
    assert out["auroc_macro"] == pytest.approx(1.0)
    allneg = metrics.compute(task_spec("ihm"), metrics.EvalArrays(np.zeros((3, 1)), np.full((3, 1), 0.2)))
    assert np.isnan(allneg["auroc"]) and np.isnan(allneg["auprc"])
    assert allneg["ece"] == pytest.approx(0.2)


@pytest.mark.parametrize("seed", range(3))
def test_kappa_matches_sklearn(seed):
    rng = np.random.default_rng(seed)
    t = rng.integers(0, 10, 300)
    p = np.clip(t + rng.integers(-2, 3, 300), 0, 9)
    ours = metrics.cohen_kappa_linear(t, p, 10)
    ref = cohen_kappa_score(t, p, weights="linear", labels=list(range(10)))
    assert ours == pytest.approx(ref, abs=1e-12)


def test_kappa_hand_computed_and_degenerate():
    # Confusion [[1,1],[0,2]]: weighted observed disagreement 1; row sums (2,2), col sums (1,3)
    # give expected off-diagonal counts (2*3 + 2*1)/4 = 2 -> kappa = 1 - 1/2.
    t, p = np.array([0, 0, 1, 1]), np.array([0, 1, 1, 1])
    assert metrics.cohen_kappa_linear(t, p, 2) == pytest.approx(0.5)
    assert np.isnan(metrics.cohen_kappa_linear(np.zeros(5, int), np.zeros(5, int), 10))
    with pytest.raises(ValueError, match="labels must lie"):
        metrics.cohen_kappa_linear(np.array([0, 10]), np.array([0, 1]), 10)


def test_mad_uses_predicted_bucket_mean():
    probs = np.zeros((2, 10))
    probs[0, 0] = 1.0
    probs[1, 9] = 1.0
    hours = np.array([10.0, 600.0])
    expected = (abs(10 - LOS_BUCKET_MEAN_HOURS[0]) + abs(600 - LOS_BUCKET_MEAN_HOURS[9])) / 2
    assert metrics.los_mad_hours(hours, probs) == pytest.approx(expected)


def test_ece_hand_computed():
    # Bin [0.2,0.3): p=.25,.25 with labels 0,1 -> |0.5-0.25| * 2/4; bin [0.9,1]: p=.95,1.0 labels 1,1
    # -> |1 - 0.975| * 2/4.
    y = np.array([0, 1, 1, 1])
    p = np.array([0.25, 0.25, 0.95, 1.0])
    assert metrics.ece_labels(y, p) == pytest.approx(0.5 * 0.25 + 0.5 * 0.025)
    # Multi-label ECE is the mean of the per-label values.
    y2 = np.stack([y, 1 - y], axis=1)
    p2 = np.stack([p, np.full(4, 0.5)], axis=1)
    assert metrics.ece_labels(y2, p2) == pytest.approx((0.5 * 0.25 + 0.5 * 0.025 + 0.25) / 2)
    # Top-label ECE: confidences .6 (correct) and .8 (wrong).
    probs = np.array([[0.6, 0.4], [0.2, 0.8]])
    assert metrics.ece_top_label(np.array([0, 0]), probs) == pytest.approx((0.4 + 0.8) / 2)


def test_bootstrap_ci_is_seeded_and_brackets_the_estimate():
    rng = np.random.default_rng(0)
    y = (rng.random(400) < 0.3).astype(np.float32)[:, None]
    p = np.clip(0.3 * y + 0.7 * rng.random((400, 1)), 0, 1)
    a = metrics.EvalArrays(y, p)
    spec = task_spec("ihm")
    one = metrics.bootstrap_ci(spec, a, resamples=200, seed=1)
    two = metrics.bootstrap_ci(spec, a, resamples=200, seed=1)
    assert one == two
    for key in ("auroc", "auprc", "ece"):
        assert one[key]["ci_low"] <= one[key]["value"] <= one[key]["ci_high"]
        assert one[key]["ci_high"] - one[key]["ci_low"] > 0
    assert one["auroc"]["value"] == pytest.approx(roc_auc_score(y[:, 0], p[:, 0]))


def test_bootstrap_counts_undefined_resamples():
    # One positive in 20: many resamples miss it, AUROC is undefined there and counted, not fatal.
    y = np.zeros((20, 1), dtype=np.float32)
    y[3] = 1
    p = np.linspace(0, 1, 20)[:, None]
    out = metrics.bootstrap_ci(task_spec("ihm"), metrics.EvalArrays(y, p), resamples=100, seed=0)
    assert 0 < out["auroc"]["n_undefined"] < 100
    assert np.isfinite(out["auroc"]["ci_low"])


def test_los_metrics_keys():
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(10), 50)
    y = rng.integers(0, 10, 50)
    out = metrics.compute(task_spec("los"), metrics.EvalArrays(y, probs, rng.uniform(0, 500, 50)))
    assert set(out) == {"kappa", "accuracy", "ece", "mad_hours"}
    assert out["accuracy"] == pytest.approx(np.mean(probs.argmax(1) == y))
