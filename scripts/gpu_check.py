"""The prepared GPU check (one command, < 8 min on one node): prints one table and, with
``--write``, appends it to BENCHMARKS.md with the machine.

    python scripts/gpu_check.py [--write] [--steps 40]     # scripts/gpu_check.sh wraps it

Rows: DALI ``mixed`` vs ``cpu`` decode (images/s, SPEC §10 train transforms); training samples/s
per GPU of uni_cxr (DALI mixed), MedFuse (random init) and uni_ehr in sequence mode at 1 and N
ranks (torchrun, NCCL, bf16), with the data-loader share and the mean GPU utilisation
(nvidia-smi); the ``s3://`` -> DALI mixed path against a moto S3 server on loopback. Shards are
generated (shards.tiny, 256 px images) in a temp dir, so no data has to be present.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scripts.bench_common import REPO, command_line, machine_facts, now_utc, publish, setup_logging, table

log = logging.getLogger("medmod.gpu_check")
HEADERS = ["check", "ranks", "rate", "data-loader share", "GPU util"]
TRAIN_RUNS = [
    ("uni_cxr radiology, DALI mixed", ["task=radiology", "model=uni_cxr", "data=dali"]),
    ("medfuse ihm, wds", ["task=ihm", "model=medfuse", "model.init=random"]),
    ("uni_ehr decomp sequence, wds", ["task=decomp", "model=uni_ehr", "train.hourly_mode=sequence"]),
]


def row(
    check: str, ranks: int | str, rate: float, unit: str, share: float | None, util: float | None
) -> list:
    """One table row; a missing measure reads 'n/a', not 0."""
    pct = lambda x: "n/a" if x is None else f"{100 * x:.0f}%"  # noqa: E731
    return [check, ranks, f"{rate:,.1f} {unit}", pct(share), pct(util)]


class UtilSampler:
    """Mean GPU utilisation over a block, from ``nvidia-smi`` twice a second."""

    def __init__(self, gpus: int):
        self.gpus, self.samples, self._stop = gpus, [], threading.Event()

    def _poll(self) -> None:
        query = ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"]
        while not self._stop.wait(0.5):
            try:
                out = subprocess.run(query, capture_output=True, text=True, timeout=5).stdout
            except (OSError, subprocess.SubprocessError):
                return
            values = [float(v) for v in out.split()[: self.gpus] if v.strip().isdigit()]
            if values:
                self.samples.append(sum(values) / len(values) / 100)

    def __enter__(self) -> UtilSampler:
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    @property
    def mean(self) -> float | None:
        return sum(self.samples) / len(self.samples) if self.samples else None


def make_shards(root: str) -> None:
    from shards.tiny import tiny_dataset

    tiny_dataset(
        root, tasks=("radiology", "ihm", "decomp"), records=512, records_per_shard=32, image_size=256
    )


def images_per_s(batches: Iterator[dict], warmup: int = 1) -> float:
    """Images/s after ``warmup`` batches (pipeline build and first-batch costs excluded)."""
    n, start = 0, None
    for i, batch in enumerate(batches):
        if i == warmup:
            start, n = time.perf_counter(), 0
        n += int(batch["has_image"].sum())
    if start is None:
        raise RuntimeError("too few batches to time")
    return n / (time.perf_counter() - start)


def decode_rows(root: str) -> list[list]:
    from shards.dali import dali_loader
    from shards.reader import ReaderConfig

    rows = []
    for device in ("mixed", "cpu"):
        cfg = ReaderConfig(task="radiology", split="train", train=True)
        with UtilSampler(1) as util:
            rate = images_per_s(dali_loader(root, cfg, batch_size=64, device=device))
        rows.append(row(f"DALI decode {device}", 1, rate, "images/s", None, util.mean))
    return rows


def train_row(name: str, words: list[str], root: str, runs: str, ranks: int, steps: int) -> list:
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={ranks}", "--standalone"]
    cmd += ["trainer/train.py", *words, f"data.shards={root}", f"train.runs_dir={runs}/{ranks}"]
    cmd += ["train.device=cuda", "train.amp=true", "train.bootstrap=0", "train.progress=never"]
    cmd += ["train.epochs=1000", "train.chunk_steps=0", "train.resume=false", f"train.max_steps={steps}"]
    cmd += ["data.batch_size=32", "data.num_workers=4"]
    with UtilSampler(ranks) as util:
        subprocess.run(cmd, cwd=REPO, check=True)
    task, model = (w.split("=", 1)[1] for w in words[:2])
    metrics = json.loads((Path(runs) / str(ranks) / task / model / "0" / "metrics.json").read_text())
    t = metrics["throughput"]
    return row(name, ranks, t["samples_per_s_per_rank"], "samples/s/GPU", t["data_share"], util.mean)


def s3_row() -> list:
    """The moto server on loopback, the shards copied up, DALI mixed reading them by URL."""
    from moto.server import ThreadedMotoServer

    from shards.dali import dali_loader
    from shards.reader import ReaderConfig
    from shards.tiny import tiny_dataset

    for key, value in {
        "AWS_ACCESS_KEY_ID": "x",
        "AWS_SECRET_ACCESS_KEY": "x",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        os.environ.setdefault(key, value)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        os.environ["AWS_ENDPOINT_URL"] = f"http://{host}:{port}"
        import boto3

        boto3.client("s3").create_bucket(Bucket="gpu-check")
        url = "s3://gpu-check/shards"
        tiny_dataset(url, tasks=("radiology",), records=256, records_per_shard=32, image_size=256)
        cfg = ReaderConfig(task="radiology", split="train", train=True)
        with UtilSampler(1) as util:
            rate = images_per_s(dali_loader(url, cfg, batch_size=64, device="mixed"))
        return row("S3 (moto, loopback) -> DALI mixed", 1, rate, "images/s", None, util.mean)
    finally:
        server.stop()


def gpu_facts() -> dict[str, str]:
    import nvidia.dali
    import torch

    facts = machine_facts()
    name = torch.cuda.get_device_name(0)
    facts["gpu"] = f"{torch.cuda.device_count()} x {name}"
    facts["torch / dali"] = f"{torch.__version__} / {nvidia.dali.__version__}"
    return facts


def render(rows: list[list], facts: dict[str, str], steps: int) -> str:
    lines = [f"## GPU check — {now_utc()}", "", f"Command: `{command_line()}`", ""]
    lines += [f"- {k}: {v}" for k, v in facts.items()]
    lines += ["", table(HEADERS, rows, numbers=False), ""]
    lines.append(
        f"Training rows: {steps} steps of batch 32 per GPU, bf16, rank 0's rate (first steps, "
        "cudnn autotuning included); data-loader share = time waiting for batches / step time."
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--write", action="store_true", help="append the table to BENCHMARKS.md")
    parser.add_argument("--steps", type=int, default=40)
    args = parser.parse_args(argv)
    setup_logging()
    import torch

    gpus = torch.cuda.device_count()
    if gpus < 1:
        log.error("no CUDA device visible")
        return 2
    facts = gpu_facts()
    with tempfile.TemporaryDirectory(prefix="medmod-gpu-check-") as work:
        root, runs = f"{work}/shards", f"{work}/runs"
        make_shards(root)
        rows = decode_rows(root)
        for ranks in sorted({1, gpus}):
            rows += [train_row(name, words, root, runs, ranks, args.steps) for name, words in TRAIN_RUNS]
        rows.append(s3_row())
    publish(facts, lambda f: render(rows, f, args.steps), args.write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
