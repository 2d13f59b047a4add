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
    text = gpu_check.render([r], {"gpu": "1 x Test GPU"}, gpu_check.CheckSettings(steps=40))
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


def test_a_failing_step_becomes_a_row_and_the_check_goes_on(tmp_path):
    s = gpu_check.CheckSettings(device="cpu", out=tmp_path)
    rows: list[list] = []

    def broken() -> list[list]:
        raise RuntimeError("NCCL said no")

    assert gpu_check.guarded_step("train x2", broken, s, rows) is False
    assert gpu_check.guarded_step("fine", lambda: [gpu_check.row("ok", 1, 2.0, "x/s", None, None)], s, rows)
    assert rows[0][0] == "train x2" and "failed: RuntimeError: NCCL said no" in rows[0][2]
    assert rows[1][0] == "ok"
    table_so_far = (tmp_path / "gpu_check_table.md").read_text()
    assert "NCCL said no" in table_so_far and "| ok |" in table_so_far
    assert "NCCL said no" in (tmp_path / "train_x2.trace").read_text()


def test_plan_covers_one_and_several_ranks_and_every_loader():
    s = gpu_check.CheckSettings(device="cpu", loaders=("wds", "dali"))
    names = [name for name, _ in gpu_check.plan("/nowhere", s, gpus=1)]
    runs = len(gpu_check.TRAIN_RUNS)
    # one GPU: 1 rank and 2 processes sharing it; 8 GPUs: 1 and 8 ranks
    assert sum(" x1" in n for n in names) == sum(" x2" in n for n in names) == 2 * runs
    names8 = [name for name, _ in gpu_check.plan("/nowhere", s, gpus=8)]
    assert sum(" x8" in n for n in names8) == 2 * runs and not any(" x2" in n for n in names8)
    assert names[0] == "make shards" and names[-1] == "S3 read"


def test_decode_and_model_step_rows_measure_on_cpu(tmp_path):
    from shards.tiny import tiny_dataset

    tiny_dataset(str(tmp_path), tasks=("radiology",), records=8, records_per_shard=4, image_size=64)
    s = gpu_check.CheckSettings(device="cpu", model_batch=2)
    jpegs = gpu_check.shard_jpegs(str(tmp_path), 64)  # the train split's images, as written
    assert 0 < len(jpegs) <= 8 and all(j[:2] == b"\xff\xd8" for j in jpegs)
    decode = gpu_check.torchvision_decode_rows(str(tmp_path), s)
    step = gpu_check.model_step_rows(s)
    assert [r[0] for r in decode] == ["torchvision decode (CPU)", "PIL decode (1 core)"]
    assert [r[0] for r in step] == [
        "uni_cxr step alone, batch 2, fp32 NCHW",
        "uni_cxr step alone, batch 2, bf16 channels_last",
    ]
    for r in decode + step:
        assert float(r[2].split()[0].replace(",", "")) > 0
    with pytest.raises(RuntimeError, match="no .jpg"):
        gpu_check.shard_jpegs(str(tmp_path / "empty"), 4)
