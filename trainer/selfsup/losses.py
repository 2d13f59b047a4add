"""SSL objectives on a pair of embedding batches ``[N, D]`` (row i of each is the same stay).

- ConVIRT: symmetric cross-modal InfoNCE on cosine similarity / tau (SPEC §10: tau 0.1).
- ALIGN: the same loss with a learnable tau (init 0.07) and a fraction of deliberately noisy
  pairs (EHR rows swapped within the batch), as ALIGN trains on noisy web pairs.
- VICReg: 25 x invariance MSE + 25 x variance hinge + 1 x covariance off-diagonal^2 / D.

Each objective is an ``nn.Module`` (ALIGN's tau is a weight the optimizer trains and the
checkpoint saves) and returns its total and its named terms. The inputs are whatever the caller
gives: in DDP the caller passes the gathered global batch (``trainer.selfsup.gather``), so the
negatives and the batch statistics are global.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

Terms = dict[str, torch.Tensor]


def info_nce(
    a: torch.Tensor, b: torch.Tensor, temperature: torch.Tensor | float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(a -> b, b -> a) cross-entropies of the cosine-similarity matrix / temperature: row i of
    ``a`` must pick row i of ``b`` among all rows of ``b``, and the other way round."""
    a = F.normalize(a.float(), dim=-1)
    b = F.normalize(b.float(), dim=-1)
    logits = a @ b.T / temperature
    target = torch.arange(a.shape[0], device=a.device)
    return F.cross_entropy(logits, target), F.cross_entropy(logits.T, target)


def swap_rows(z: torch.Tensor, fraction: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """``z`` with ``round(fraction * N)`` chosen rows cycled among themselves (each moves to
    another chosen row's place), i.e. that many pairs made wrong on purpose."""
    n = z.shape[0]
    k = int(round(fraction * n))
    if k < 2:
        return z
    chosen = torch.randperm(n, generator=generator)[:k]
    perm = torch.arange(n)
    perm[chosen] = chosen.roll(1)
    return z[perm.to(z.device)]


class ConVIRTLoss(nn.Module):
    """Symmetric InfoNCE at a fixed temperature (the mean of both directions)."""

    def __init__(self, temperature: float = 0.1):
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = temperature

    @property
    def tau(self) -> torch.Tensor | float:
        return self.temperature

    def forward(self, z_ehr: torch.Tensor, z_cxr: torch.Tensor) -> Terms:
        ehr_to_cxr, cxr_to_ehr = info_nce(z_ehr, z_cxr, self.tau)
        return {"loss": (ehr_to_cxr + cxr_to_ehr) / 2, "ehr_to_cxr": ehr_to_cxr, "cxr_to_ehr": cxr_to_ehr}


class ALIGNLoss(ConVIRTLoss):
    """ConVIRT's loss with tau = exp(log_tau) learned (log: tau stays positive). The noisy pairs
    are made by the model before the gather (``swap_rows``), so every rank corrupts its own rows."""

    def __init__(self, temperature: float = 0.07):
        super().__init__(temperature)
        self.log_tau = nn.Parameter(torch.tensor(math.log(temperature)))

    @property
    def tau(self) -> torch.Tensor:
        return self.log_tau.exp()

    def forward(self, z_ehr: torch.Tensor, z_cxr: torch.Tensor) -> Terms:
        return {**super().forward(z_ehr, z_cxr), "tau": self.tau.detach()}


def _off_diagonal(m: torch.Tensor) -> torch.Tensor:
    return m - torch.diag(torch.diag(m))


class VICRegLoss(nn.Module):
    """Bardes et al. 2022, as their reference code: the variance hinge on sqrt(var + eps) of each
    branch averaged, the covariance penalty of each branch summed, both over the batch dim."""

    def __init__(
        self, invariance: float = 25.0, variance: float = 25.0, covariance: float = 1.0, eps: float = 1e-4
    ):
        super().__init__()
        self.weights = (invariance, variance, covariance)
        self.eps = eps

    def _std_hinge(self, z: torch.Tensor) -> torch.Tensor:
        return F.relu(1.0 - torch.sqrt(z.var(dim=0) + self.eps)).mean()

    @staticmethod
    def _cov_penalty(z: torch.Tensor) -> torch.Tensor:
        n, d = z.shape
        z = z - z.mean(dim=0)
        cov = z.T @ z / (n - 1)
        return _off_diagonal(cov).pow(2).sum() / d

    def forward(self, z_ehr: torch.Tensor, z_cxr: torch.Tensor) -> Terms:
        if z_ehr.shape[0] < 2:
            raise ValueError("VICReg needs at least 2 samples per (global) batch for its variance terms")
        x, y = z_ehr.float(), z_cxr.float()
        invariance = F.mse_loss(x, y)
        variance = (self._std_hinge(x) + self._std_hinge(y)) / 2
        covariance = self._cov_penalty(x) + self._cov_penalty(y)
        w_inv, w_var, w_cov = self.weights
        total = w_inv * invariance + w_var * variance + w_cov * covariance
        return {"loss": total, "invariance": invariance, "variance": variance, "covariance": covariance}
