"""What a model costs: trainable parameters and forward time per batch (the paper's Table 8
columns), shared by ``scripts/bench_models.py`` and the benchmark's report."""

from __future__ import annotations

import time

import torch
from torch import nn

from shards.record import N_FEATURES


def make_batch(batch: int, steps: int, image: int) -> dict:
    """A FORMAT.md batch of random inputs: ``steps`` hourly rows, square images, all present."""
    gen = torch.Generator().manual_seed(0)
    return {
        "ehr": torch.randn(batch, steps, N_FEATURES, generator=gen),
        "ehr_len": torch.full((batch,), steps, dtype=torch.int64),
        "image": torch.randn(batch, 3, image, image, generator=gen),
        "has_image": torch.ones(batch, dtype=torch.bool),
    }


def time_forward(model: nn.Module, batch: dict, warmup: int, repeats: int) -> tuple[list[float], list[float]]:
    """Wall and CPU seconds of each timed forward pass (eval, inference mode) after warm-ups."""
    model.eval()
    wall, cpu = [], []
    with torch.inference_mode():
        for i in range(warmup + repeats):
            start, start_cpu = time.perf_counter(), time.process_time()
            model(batch)
            if i >= warmup:
                wall.append(time.perf_counter() - start)
                cpu.append(time.process_time() - start_cpu)
    return wall, cpu


def trainable_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
