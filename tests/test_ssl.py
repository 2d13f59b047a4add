"""Self-supervised pretraining (SPEC §10, issue #12): losses against hand-computed cases."""

from __future__ import annotations

import math

import pytest
import torch

from trainer.ssl.losses import ALIGNLoss, ConVIRTLoss, VICRegLoss, info_nce, swap_rows

R = 1 / math.sqrt(2)


def test_info_nce_both_directions_by_hand():
    """a = e1, e2; b = e1, (e1 + e2)/sqrt2: cosine matrix [[1, r], [0, r]] with r = 1/sqrt2.
    a -> b reads its rows, b -> a its columns; the two directions differ."""
    a = torch.tensor([[2.0, 0.0], [0.0, 3.0]])  # norms do not matter: cosine similarity
    b = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    a_to_b, b_to_a = info_nce(a, b, temperature=1.0)
    row0 = -1 + math.log(math.e + math.exp(R))
    row1 = -R + math.log(1 + math.exp(R))
    col0 = -1 + math.log(math.e + 1)
    col1 = -R + math.log(2 * math.exp(R))
    assert a_to_b.item() == pytest.approx((row0 + row1) / 2, rel=1e-6)
    assert b_to_a.item() == pytest.approx((col0 + col1) / 2, rel=1e-6)
    half = info_nce(a, b, temperature=0.5)[0]  # temperature divides the similarities
    assert half.item() == pytest.approx(
        (-2 + math.log(math.e**2 + math.exp(2 * R)) - 2 * R + math.log(1 + math.exp(2 * R))) / 2, rel=1e-6
    )
    terms = ConVIRTLoss(temperature=1.0)(a, b)
    assert terms["loss"].item() == pytest.approx((a_to_b.item() + b_to_a.item()) / 2, rel=1e-6)


def test_vicreg_three_terms_by_hand():
    """x = [[1, 0], [-1, 0]], y = [[1, 1], [-1, -1]] (N = D = 2, unbiased variances):
    invariance mean((x - y)^2) = 0.5; variance: x's second dim has std sqrt(1e-4) = 0.01, so
    (0 + 0.99) / 2 for x, 0 for y, averaged -> 0.2475; covariance: x's is diagonal, y's has
    off-diagonal 2, 2 -> (4 + 4) / D = 4."""
    x = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
    y = torch.tensor([[1.0, 1.0], [-1.0, -1.0]])
    terms = VICRegLoss()(x, y)
    assert terms["invariance"].item() == pytest.approx(0.5)
    assert terms["variance"].item() == pytest.approx(0.2475, rel=1e-5)
    assert terms["covariance"].item() == pytest.approx(4.0)
    assert terms["loss"].item() == pytest.approx(25 * 0.5 + 25 * 0.2475 + 4.0, rel=1e-5)
    assert VICRegLoss(1, 0, 0)(x, y)["loss"].item() == pytest.approx(0.5)
    with pytest.raises(ValueError, match="at least 2 samples"):
        VICRegLoss()(x[:1], y[:1])


def test_align_learns_the_temperature_with_the_hand_computed_gradient():
    """Identical orthonormal pairs: each direction's loss is log(1 + e^(-1/tau)) and its
    derivative in tau is (1 - sigmoid(1/tau)) / tau^2; ALIGN learns log tau, so the gradient it
    sees is tau times that."""
    tau = 0.5
    loss_fn = ALIGNLoss(temperature=tau)
    assert loss_fn.tau.item() == pytest.approx(tau)
    eye = torch.eye(2)
    terms = loss_fn(eye, eye)
    assert terms["loss"].item() == pytest.approx(math.log1p(math.exp(-1 / tau)), rel=1e-6)
    terms["loss"].backward()
    sig = 1 / (1 + math.exp(-1 / tau))
    assert loss_fn.log_tau.grad.item() == pytest.approx(tau * (1 - sig) / tau**2, rel=1e-5)
    assert list(ConVIRTLoss().parameters()) == []  # ConVIRT's temperature is fixed
    with pytest.raises(ValueError, match="temperature"):
        ConVIRTLoss(temperature=0.0)


def test_noisy_pairs_move_exactly_the_asked_fraction_of_rows():
    z = torch.arange(20.0).view(20, 1)
    gen = torch.Generator().manual_seed(0)
    swapped = swap_rows(z, 0.2, gen)
    moved = (swapped != z).squeeze(1)
    assert int(moved.sum()) == 4  # round(0.2 * 20) rows, none left in place
    assert sorted(swapped.squeeze(1).tolist()) == z.squeeze(1).tolist()  # a permutation
    assert torch.equal(swap_rows(z, 0.0), z) and torch.equal(swap_rows(z, 0.05), z)  # < 2 rows: none
