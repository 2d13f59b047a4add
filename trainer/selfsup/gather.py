"""All-gather that keeps the autograd graph, so SSL losses see the global batch in DDP.

``dist.all_gather`` returns tensors without history: a contrastive loss over them would treat
the other ranks' rows as constants and lose half of each similarity's gradient. Here every rank
computes the *same* loss over the gathered batch; the backward sums the gathered gradient over
ranks (every rank's loss depends on every row) and hands each rank its own rows' share. DDP's
averaging of the parameter gradients then gives exactly the gradient of one process over the
whole batch (tests/test_ssl.py checks it on 2 gloo ranks).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist


class _GatherWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        ctx.rank, ctx.rows = dist.get_rank(), x.shape[0]
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        # all_reduce + slice rather than reduce_scatter: gloo (CPU runs and tests) has no reduce_scatter.
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return grad[ctx.rank * ctx.rows : (ctx.rank + 1) * ctx.rows]


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Rows of every rank in rank order ``[world * N, ...]`` (``x`` itself in one process).

    Ranks must hold the same number of rows (the trainer's training batches always do); a
    mismatch is a clear error here instead of a hang or a shape error inside the collective.
    """
    world = world_size()
    if world == 1:
        return x
    sizes = [torch.zeros(1, dtype=torch.long, device=x.device) for _ in range(world)]
    dist.all_gather(sizes, torch.tensor([x.shape[0]], device=x.device))
    if len({int(s) for s in sizes}) != 1:
        raise ValueError(f"gather_with_grad needs equal rows on every rank, got {[int(s) for s in sizes]}")
    return _GatherWithGrad.apply(x)
