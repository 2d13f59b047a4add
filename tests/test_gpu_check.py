"""The GPU check's parts that need no GPU: its table, its refusal without a GPU, its timing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from scripts import gpu_check

REPO = Path(__file__).resolve().parents[1]


def test_rows_and_table_read_plainly():
    r = gpu_check.row("DALI decode mixed", 1, 1234.56, "images/s", None, 0.873)
    assert r == ["DALI decode mixed", 1, "1,234.6 images/s", "n/a", "87%"]
    text = gpu_check.render([r], {"gpu": "1 x Test GPU"}, steps=40)
    assert (
        "| DALI decode mixed | 1 | 1,234.6 images/s | n/a | 87% |" in text and "- gpu: 1 x Test GPU" in text
    )


def test_images_per_s_skips_warmup_batches():
    batches = iter([{"has_image": torch.ones(4, dtype=torch.bool)}] * 3)
    assert gpu_check.images_per_s(batches) > 0
    with pytest.raises(RuntimeError, match="too few"):
        gpu_check.images_per_s(iter([{"has_image": torch.ones(1)}]))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU answer")
def test_without_a_gpu_the_check_says_so_and_fails():
    out = subprocess.run(
        ["bash", "scripts/gpu_check.sh", sys.executable, "--no-write"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2 and "no CUDA device" in out.stderr
