"""LARS (You et al. 2017), the optimizer of the SSL reference code (SPEC §10).

SGD with momentum where each weight matrix's step is scaled by ``eta * ||w|| / ||g + wd * w||``
(the layer-wise trust ratio), so that layers of very different gradient scale (a ResNet and a
small LSTM) train at comparable relative speed at large batch sizes. As in SimCLR's and
VICReg's versions, 1-D parameters (biases, norm weights, ALIGN's temperature) are neither
adapted nor decayed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch


class LARS(torch.optim.Optimizer):
    def __init__(
        self,
        params: Iterable[torch.nn.Parameter],
        lr: float,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        eta: float = 0.001,
    ):
        if lr < 0 or eta <= 0:
            raise ValueError(f"LARS needs lr >= 0 and eta > 0, got lr={lr}, eta={eta}")
        super().__init__(params, {"lr": lr, "momentum": momentum, "weight_decay": weight_decay, "eta": eta})

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                update = p.grad
                if p.ndim > 1:
                    update = update.add(p, alpha=group["weight_decay"])
                    w_norm, u_norm = torch.linalg.norm(p), torch.linalg.norm(update)
                    ok = (w_norm > 0) & (u_norm > 0)
                    update = update * torch.where(ok, group["eta"] * w_norm / u_norm, torch.ones_like(w_norm))
                state = self.state[p]
                if "mu" not in state:
                    state["mu"] = torch.zeros_like(p)
                mu = state["mu"].mul_(group["momentum"]).add_(update)
                p.add_(mu, alpha=-group["lr"])
        return loss
