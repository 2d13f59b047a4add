"""DDP without ``find_unused_parameters`` over every registered model, on 2 gloo ranks (CPU).

DDP with ``find_unused_parameters=False`` raises at the next forward when a parameter got no
gradient on some rank in the previous step. The ranks here see opposite batches (all images
present on one, all missing on the other, then swapped), the cases where a model is most likely
to leave a weight (the CNN, the missing-image vector) out of the graph. A control model with a
deliberately unused weight shows that the check bites.
"""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from trainer.config import RunConfig
from trainer.distributed import DistContext
from trainer.models import create_model, list_models, model_class
from trainer.tasks import task_spec
from trainer.train import wrap_forward

WORLD = 2
TASK = "pheno"
PRETRAINED = ("early", "medfuse", "late", "ssl_probe", "ssl_finetune")
# (rank 0, rank 1) has_image per step: opposite images across ranks, then the same on both.
PATTERNS = [
    ((True, True, True), (False, False, False)),
    ((False, False, False), (True, True, True)),
    ((True, False, True), (True, True, True)),
    ((False, False, False), (False, False, False)),
]


def _batch(has_image: tuple[bool, ...], seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    rows, steps = len(has_image), 4
    has = torch.tensor(has_image)
    return {
        "ehr": torch.randn(rows, steps, 76, generator=gen),
        "ehr_len": torch.full((rows,), steps),
        "image": torch.randn(rows, 3, 64, 64, generator=gen) * has.view(-1, 1, 1, 1),
        "has_image": has,
        "y": (torch.rand(rows, task_spec(TASK).num_outputs, generator=gen) > 0.5).float(),
    }


def _model(name: str) -> nn.Module:
    torch.manual_seed(0)  # same initial weights on both ranks (DDP also broadcasts rank 0's)
    return create_model(name, {"init": "random"} if name in PRETRAINED else {}, task_spec(TASK)).train()


def _ddp_steps(model: nn.Module, ctx: DistContext) -> None:
    """The trainer's DDP wrapper over the rank-opposite batches; every weight must get a
    gradient, equal on both ranks, and DDP must not complain at the following forward."""
    forward = wrap_forward(model, "sample", RunConfig(task=TASK), ctx)
    assert isinstance(forward, nn.parallel.DistributedDataParallel) and not forward.find_unused_parameters
    for step, pattern in enumerate(PATTERNS):
        model.zero_grad(set_to_none=True)
        batch = _batch(pattern[ctx.rank], seed=step * WORLD + ctx.rank)
        nn.functional.binary_cross_entropy_with_logits(forward(batch), batch["y"]).backward()
        for pname, param in model.named_parameters():
            if param.requires_grad:
                assert param.grad is not None, f"{model.name}: no gradient for {pname} at step {step}"
                peer = param.grad.clone()
                dist.broadcast(peer, src=0)
                assert torch.allclose(peer, param.grad), f"{model.name}: {pname} not all-reduced"
    with torch.no_grad():
        forward(_batch(PATTERNS[0][ctx.rank], seed=99))  # raises if the last step left one out


def _worker(rank: int, init_file: str, names: list[str], unused_control: bool) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    ctx = DistContext(rank=rank, world_size=WORLD, local_rank=rank, device=torch.device("cpu"))
    try:
        for name in names:
            model = _model(name)
            if unused_control:
                model.unused = nn.Parameter(torch.zeros(3))
            _ddp_steps(model, ctx)
    finally:
        dist.destroy_process_group()


def _spawn(tmp_path, names: list[str], unused_control: bool = False) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    mp.spawn(_worker, args=(str(tmp_path / "pg"), names, unused_control), nprocs=WORLD, join=True)


def test_every_trainable_model_runs_ddp_without_find_unused_parameters(tmp_path):
    trainable = [n for n in list_models("supervised") if model_class(n).trainable]
    assert len(trainable) >= 9
    _spawn(tmp_path, trainable)


def test_an_unused_weight_makes_the_ddp_check_fail(tmp_path):
    with pytest.raises(Exception, match="no gradient for unused"):
        _spawn(tmp_path, ["uni_ehr"], unused_control=True)


def test_ranks_sharing_a_gpu_wrap_onto_it_and_use_gloo():
    """NCCL refuses two ranks on one device, so 2 processes on a 1-GPU node run over gloo on
    cuda:0; with a GPU per rank, each rank owns its local device over NCCL."""
    from trainer.distributed import cuda_index, process_group_backend

    assert [cuda_index(r, 8) for r in range(8)] == list(range(8))
    assert [cuda_index(r, 1) for r in range(2)] == [0, 0]
    assert process_group_backend(True, local_ranks=8, gpus=8) == "nccl"
    assert process_group_backend(True, local_ranks=2, gpus=1) == "gloo"
    assert process_group_backend(False, local_ranks=2, gpus=0) == "gloo"
    with pytest.raises(RuntimeError, match="no CUDA device"):
        cuda_index(0, 0)
