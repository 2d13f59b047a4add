"""Process-group setup, rank-aware logging, seeding and object collectives.

One process (no torchrun) is a world of size 1 without a process group, so every helper here
also works in a plain ``python trainer/train.py`` run and in unit tests.
"""

from __future__ import annotations

import logging
import os
import random
import sys
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

log = logging.getLogger("medmod.trainer")


@dataclass(frozen=True)
class DistContext:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str = "auto") -> DistContext:
    """NCCL when the run uses GPUs, gloo on CPU; env vars from torchrun (RANK, WORLD_SIZE, ...)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    if use_cuda and not torch.cuda.is_available():
        raise RuntimeError("train.device=cuda but no CUDA device is visible")
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
    gpus = torch.cuda.device_count() if use_cuda else 0
    if use_cuda:
        index = cuda_index(local_rank, gpus)
        torch.cuda.set_device(index)
        dev = torch.device("cuda", index)
    else:
        dev = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        backend = process_group_backend(use_cuda, local_world, gpus)
        if use_cuda and backend == "gloo":
            log.warning(
                "%d ranks share %d GPU(s) on this node: gloo instead of NCCL (NCCL refuses two "
                "ranks on one device); correct but slower",
                local_world,
                gpus,
            )
        attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
        if attempt != "0" and os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True":
            # After a restart the agent's store still holds the dead attempt's addresses under
            # the same keys: a restarted rank would connect to a dead peer. Keys per attempt.
            store = dist.TCPStore(
                os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world, is_master=False
            )
            prefixed = dist.PrefixStore(f"/medmod/attempt_{attempt}", store)
            dist.init_process_group(backend=backend, store=prefixed, rank=rank, world_size=world)
        else:
            dist.init_process_group(backend=backend)
    return DistContext(rank=rank, world_size=world, local_rank=local_rank, device=dev)


def cuda_index(local_rank: int, gpus: int) -> int:
    """The rank's GPU: its local rank, wrapped when a node runs more ranks than it has GPUs
    (several processes then share a device)."""
    if gpus < 1:
        raise RuntimeError("no CUDA device is visible")
    return local_rank % gpus


def process_group_backend(use_cuda: bool, local_ranks: int, gpus: int) -> str:
    """NCCL when each local rank has its own GPU; gloo on CPU and when ranks share a GPU."""
    return "nccl" if use_cuda and local_ranks <= gpus else "gloo"


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


class _RankFilter(logging.Filter):
    def __init__(self, rank: int):
        super().__init__()
        self.rank = rank

    def filter(self, record: logging.LogRecord) -> bool:
        record.rank = self.rank
        return True


def setup_logging(rank: int, level: int = logging.INFO) -> None:
    """Rank 0 logs at ``level``; other ranks only warnings and errors, each line tagged."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_RankFilter(rank))
    handler.setFormatter(logging.Formatter("%(asctime)s [rank %(rank)d] %(name)s: %(message)s", "%H:%M:%S"))
    handler._medmod = True  # type: ignore[attr-defined]
    root = logging.getLogger()
    # Replace our own handler on a second call; keep others (pytest's capture, a caller's file log).
    root.handlers[:] = [h for h in root.handlers if not getattr(h, "_medmod", False)] + [handler]
    root.setLevel(level if rank == 0 else logging.WARNING)


def seed_everything(seed: int, rank: int = 0) -> None:
    """Python, numpy and torch RNGs; ranks differ so that dropout masks are not copies."""
    s = seed * 1000 + rank
    random.seed(s)
    np.random.seed(s % (2**32))
    torch.manual_seed(s)


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def all_gather_object(obj: Any, ctx: DistContext) -> list[Any]:
    if not ctx.distributed:
        return [obj]
    out: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def gather_object(obj: Any, ctx: DistContext) -> list[Any] | None:
    """Every rank's ``obj`` on rank 0 (``None`` elsewhere)."""
    if not ctx.distributed:
        return [obj]
    out: list[Any] | None = [None] * ctx.world_size if ctx.is_main else None
    dist.gather_object(obj, out, dst=0)
    return out


def broadcast_object(obj: Any, ctx: DistContext) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not ctx.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def any_rank(flag: bool, ctx: DistContext) -> bool:
    """True on every rank when ``flag`` is true on at least one (a per-step agreement)."""
    if not ctx.distributed:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=ctx.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def barrier(ctx: DistContext) -> None:
    if ctx.distributed:
        dist.barrier()
