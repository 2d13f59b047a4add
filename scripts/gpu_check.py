"""The prepared GPU check (one command, < 8 min on one node): prints one table and, with
``--write``, appends it to BENCHMARKS.md with the machine.

    python scripts/gpu_check.py [--write] [--steps 40] [--out DIR]   # scripts/gpu_check.sh wraps it
    python scripts/gpu_check.py --cpu-smoke --steps 2                 # the plumbing, on CPU

Rows, each step on its own (a step that fails or cannot run is a row saying why; the others
still run, and the exit status is 1):
- image decode: DALI ``mixed`` vs ``cpu`` (SPEC §10 train transforms) where nvidia-dali is
  installed; nvJPEG through ``torchvision.io.decode_jpeg`` on the GPU and PIL on one core, the
  same JPEGs, as the decode floor and ceiling without DALI;
- uni_cxr's ResNet-34 training step alone on a resident batch (224 px): fp32 NCHW and bf16
  channels_last, samples/s (the model's ceiling, no data loading);
- trainer runs under torchrun: uni_cxr (radiology), MedFuse (IHM, random init) and uni_ehr in
  sequence mode (decompensation) at 1 and N ranks (N = GPUs, or 2 processes sharing one GPU),
  with the data-loader share and mean GPU utilisation (nvidia-smi), rank 0's samples/s;
- the ``s3://`` path: shards on a moto S3 server on loopback, read by the trainer's loader
  (and by DALI ``mixed`` where installed).
Shards are generated (shards.tiny, 256 px images) in a temp dir, so no data has to be present.
``--out DIR`` keeps the table and each failing step's log there as the check goes.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scripts.bench_common import REPO, command_line, machine_facts, now_utc, publish, setup_logging, table

log = logging.getLogger("medmod.gpu_check")
RUN_TIMEOUT_S = 180  # one trainer run; a hung process group ends the step, not the check
HEADERS = ["check", "ranks", "rate", "data-loader share", "GPU util"]
TRAIN_RUNS = [
    ("uni_cxr radiology", ["task=radiology", "model=uni_cxr"]),
    ("medfuse ihm", ["task=ihm", "model=medfuse", "model.init=random"]),
    ("uni_ehr decomp sequence", ["task=decomp", "model=uni_ehr", "train.hourly_mode=sequence"]),
    # SSL pretraining (issue #12): paired phenotyping samples, embeddings gathered over ranks
    ("convirt pretrain pheno", ["task=pheno", "model=convirt", "mode=pretrain"]),
]


@dataclass
class CheckSettings:
    """What differs between the real check and the CPU smoke run of its plumbing."""

    device: str = "cuda"
    steps: int = 40
    batch_size: int = 32
    model_batch: int = 256
    decode_batch: int = 64
    records: int = 512
    out: Path | None = None
    loaders: tuple[str, ...] = ("wds",)
    notes: list[str] = field(default_factory=list)


def row(
    check: str, ranks: int | str, rate: float, unit: str, share: float | None, util: float | None
) -> list:
    """One table row; a missing measure reads 'n/a', not 0."""
    pct = lambda x: "n/a" if x is None else f"{100 * x:.0f}%"  # noqa: E731
    return [check, ranks, f"{rate:,.1f} {unit}", pct(share), pct(util)]


def note_row(check: str, ranks: int | str, text: str) -> list:
    """A step that did not measure: why, in the rate column."""
    return [check, ranks, text, "n/a", "n/a"]


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


def dali_version() -> str | None:
    try:
        import nvidia.dali
    except ImportError:
        return None
    return nvidia.dali.__version__


def make_shards(root: str, records: int) -> None:
    from shards.tiny import tiny_dataset
    from trainer.config import load_run_config

    tiny_dataset(
        root,
        tasks=tuple(dict.fromkeys(load_run_config(words).task for _, words in TRAIN_RUNS)),  # what it trains
        records=records,
        records_per_shard=32,
        image_size=256,
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


def shard_jpegs(root: str, limit: int) -> list[bytes]:
    """The encoded images of the radiology train shards, as written (no decoding)."""
    found: list[bytes] = []
    for tar in sorted(Path(root).rglob("*.tar")):
        if "radiology" not in str(tar) or "train" not in str(tar):
            continue
        with tarfile.open(tar) as archive:
            for member in archive:
                if member.name.endswith(".jpg"):
                    found.append(archive.extractfile(member).read())
        if len(found) >= limit:
            break
    if not found:
        raise RuntimeError(f"no .jpg members in the radiology train shards under {root}")
    return found[:limit]


def timed_rate(work: Callable[[], int], seconds: float = 2.0, warmup: int = 1) -> float:
    """Items/s of repeated ``work()`` calls (each returns its item count) over >= ``seconds``."""
    for _ in range(warmup):
        work()
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        n += work()
    return n / (time.perf_counter() - start)


def torchvision_decode_rows(root: str, s: CheckSettings) -> list[list]:
    """nvJPEG (batched ``torchvision.io.decode_jpeg`` on the GPU) vs PIL on one core."""
    import torch
    from PIL import Image
    from torchvision.io import decode_jpeg

    jpegs = shard_jpegs(root, 64)
    data = [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in jpegs]

    def gpu_batch() -> int:
        out = decode_jpeg(data, device=s.device)
        if s.device == "cuda":
            torch.cuda.synchronize()
        return len(out)

    def pil_batch() -> int:
        for b in jpegs:
            Image.open(io.BytesIO(b)).convert("L").load()
        return len(jpegs)

    torch.set_num_threads(1)
    with UtilSampler(1) as util:
        gpu = timed_rate(gpu_batch)
    label = "nvJPEG decode (torchvision, GPU, batch 64)" if s.device == "cuda" else "torchvision decode (CPU)"
    return [
        row(label, 1, gpu, "images/s", None, util.mean),
        row("PIL decode (1 core)", 1, timed_rate(pil_batch), "images/s", None, None),
    ]


def dali_decode_rows(root: str, s: CheckSettings) -> list[list]:
    if dali_version() is None:
        return [note_row("DALI decode mixed / cpu", 1, "skipped: nvidia-dali not installed")]
    from shards.dali import dali_loader
    from shards.reader import ReaderConfig

    rows = []
    for device in ("mixed", "cpu") if s.device == "cuda" else ("cpu",):
        cfg = ReaderConfig(task="radiology", split="train", train=True)
        with UtilSampler(1) as util:
            rate = images_per_s(dali_loader(root, cfg, batch_size=s.decode_batch, device=device))
        rows.append(row(f"DALI decode {device}", 1, rate, "images/s", None, util.mean))
    return rows


def model_step_rows(s: CheckSettings) -> list[list]:
    """uni_cxr's training step on a batch already on the device: the model's own ceiling."""
    import torch

    from trainer.models import create_model
    from trainer.tasks import task_spec

    spec = task_spec("radiology")
    b, dev = s.model_batch, torch.device(s.device)
    batch = {
        "ehr": torch.zeros(b, 1, 76, device=dev),
        "ehr_len": torch.ones(b, dtype=torch.long, device=dev),
        "image": torch.rand(b, 3, 224, 224, device=dev),
        "has_image": torch.ones(b, dtype=torch.bool, device=dev),
    }
    target = (torch.rand(b, spec.num_outputs, device=dev) > 0.5).float()
    rows = []
    for label, bf16, channels_last in (("fp32 NCHW", False, False), ("bf16 channels_last", True, True)):
        model = create_model("uni_cxr", None, spec).to(dev)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
            batch["image"] = batch["image"].contiguous(memory_format=torch.channels_last)
        opt = torch.optim.Adam(model.parameters(), lr=1e-4)
        torch.backends.cudnn.benchmark = s.device == "cuda"

        def step(model=model, opt=opt, bf16=bf16) -> int:
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
                loss = torch.nn.functional.binary_cross_entropy_with_logits(model(batch).float(), target)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if dev.type == "cuda":
                torch.cuda.synchronize()
            return b

        with UtilSampler(1) as util:
            rate = timed_rate(step, seconds=5.0 if dev.type == "cuda" else 0.5, warmup=3)
        rows.append(row(f"uni_cxr step alone, batch {b}, {label}", 1, rate, "samples/s", None, util.mean))
    return rows


def train_command(
    words: list[str], root: str, runs: str, ranks: int, loader: str, s: CheckSettings
) -> list[str]:
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={ranks}", "--standalone"]
    cmd += ["trainer/train.py", *words, f"data.shards={root}", f"train.runs_dir={runs}"]
    cmd += [f"train.device={s.device}", "train.amp=true", "train.bootstrap=0", "train.progress=never"]
    cmd += ["train.epochs=1000", "train.chunk_steps=0", "train.resume=false", f"train.max_steps={s.steps}"]
    cmd += [f"data.batch_size={s.batch_size}", "data.num_workers=4", f"data.loader={loader}"]
    return cmd


def run_logged(cmd: list[str], name: str, s: CheckSettings, env: dict | None = None) -> None:
    """Run ``cmd``; on failure its output's tail is the error and its whole log lands in --out."""
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=env, timeout=RUN_TIMEOUT_S)
    if out.returncode != 0:
        text = out.stdout + out.stderr
        if s.out is not None:
            (s.out / f"{safe_name(name)}.log").write_text(text)
        last = [line for line in text.splitlines() if line.strip()][-3:]
        raise RuntimeError(f"exit {out.returncode}: {' | '.join(last)[-300:]}")


def safe_name(text: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in text)[:60]


def train_row(name: str, words: list[str], root: str, ranks: int, loader: str, s: CheckSettings) -> list:
    runs = tempfile.mkdtemp(prefix="runs-", dir=Path(root).parent)
    check = f"train {name}, {loader}"
    with UtilSampler(ranks) as util:
        run_logged(train_command(words, root, runs, ranks, loader, s), f"{check}-{ranks}", s)
    from trainer.config import load_run_config

    run_dir = load_run_config([*words, f"train.runs_dir={runs}"]).run_dir()  # the trainer's rule
    metrics = json.loads((run_dir / "metrics.json").read_text())
    t = metrics["throughput"]
    return row(check, ranks, t["samples_per_s_per_rank"], "samples/s/GPU", t["data_share"], util.mean)


def moto_s3(bucket: str):
    """A moto S3 server on loopback with ``bucket``; the environment points boto/s3fs at it."""
    from moto.server import ThreadedMotoServer

    for key, value in {
        "AWS_ACCESS_KEY_ID": "x",
        "AWS_SECRET_ACCESS_KEY": "x",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        os.environ.setdefault(key, value)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    os.environ["AWS_ENDPOINT_URL"] = f"http://{host}:{port}"
    import boto3

    boto3.client("s3").create_bucket(Bucket=bucket)
    return server


def s3_rows(s: CheckSettings) -> list[list]:
    """Shards on moto, read by the trainer's loader (and by DALI mixed where installed)."""
    from shards.reader import ReaderConfig, make_loader
    from shards.tiny import tiny_dataset

    server = moto_s3("gpu-check")
    try:
        url = "s3://gpu-check/shards"
        tiny_dataset(url, tasks=("radiology",), records=256, records_per_shard=32, image_size=256)
        cfg = ReaderConfig(task="radiology", split="train", train=True)
        rows = [
            row(
                "S3 (moto, loopback) -> wds loader, 4 workers",
                1,
                images_per_s(iter(make_loader(url, cfg, batch_size=s.decode_batch, num_workers=4))),
                "images/s",
                None,
                None,
            )
        ]
        if dali_version() is None:
            rows.append(
                note_row("S3 (moto, loopback) -> DALI mixed", 1, "skipped: nvidia-dali not installed")
            )
        elif s.device == "cuda":
            from shards.dali import dali_loader

            with UtilSampler(1) as util:
                rate = images_per_s(dali_loader(url, cfg, batch_size=s.decode_batch, device="mixed"))
            rows.append(row("S3 (moto, loopback) -> DALI mixed", 1, rate, "images/s", None, util.mean))
        return rows
    finally:
        server.stop()


def guarded_step(name: str, body: Callable[[], list[list]], s: CheckSettings, rows: list[list]) -> bool:
    """Run one step; its failure becomes a row (and a log in --out), not the end of the check."""
    start = time.perf_counter()
    log.info("step: %s", name)
    try:
        rows.extend(body())
        ok = True
    except Exception as err:  # noqa: BLE001 - every failure is reported in the table
        log.error("step %s failed: %s", name, err)
        if s.out is not None:
            (s.out / f"{safe_name(name)}.trace").write_text(traceback.format_exc())
        rows.append(note_row(name, "-", f"failed: {type(err).__name__}: {str(err)[:300]}"))
        ok = False
    log.info("step %s: %.1f s", name, time.perf_counter() - start)
    if s.out is not None:
        (s.out / "gpu_check_table.md").write_text(table(HEADERS, rows, numbers=False) + "\n")
    return ok


def gpu_facts(s: CheckSettings) -> dict[str, str]:
    import torch
    import torchvision

    facts = machine_facts()
    if s.device == "cuda":
        facts["gpu"] = f"{torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}"
        facts["cuda"] = str(torch.version.cuda)
    facts["torch / torchvision / dali"] = (
        f"{torch.__version__} / {torchvision.__version__} / {dali_version() or 'not installed'}"
    )
    return facts


def render(rows: list[list], facts: dict[str, str], s: CheckSettings) -> str:
    lines = [f"## GPU check — {now_utc()}", "", f"Command: `{command_line()}`", ""]
    lines += [f"- {k}: {v}" for k, v in facts.items()]
    lines += ["", table(HEADERS, rows, numbers=False), ""]
    lines.append(
        f"Training rows: {s.steps} steps of batch {s.batch_size} per rank, bf16, rank 0's rate "
        "(first steps, cudnn autotuning included); data-loader share = time waiting for batches / "
        "step time. 'step alone' rows: the model on a resident batch, no data loading."
    )
    lines += s.notes
    return "\n".join(lines)


def plan(work: str, s: CheckSettings, gpus: int) -> list[tuple[str, Callable[[], list[list]]]]:
    """The steps in order; each closes over what it needs."""
    root = f"{work}/shards"
    steps: list[tuple[str, Callable[[], list[list]]]] = [
        ("make shards", lambda: make_shards(root, s.records) or []),
        ("DALI decode", lambda: dali_decode_rows(root, s)),
        ("torchvision decode", lambda: torchvision_decode_rows(root, s)),
        ("uni_cxr step alone", lambda: model_step_rows(s)),
    ]
    rank_counts = sorted({1, max(gpus, 2)})
    for ranks in rank_counts:
        for loader in s.loaders:
            for name, words in TRAIN_RUNS:
                steps.append(
                    (
                        f"train {name} {loader} x{ranks}",
                        lambda n=name, w=words, r=ranks, ld=loader: [train_row(n, w, root, r, ld, s)],
                    )
                )
    steps.append(("S3 read", lambda: s3_rows(s)))
    return steps


def settings_from(args: argparse.Namespace) -> CheckSettings:
    s = CheckSettings(steps=args.steps, out=Path(args.out) if args.out else None)
    if args.cpu_smoke:
        s.device, s.batch_size, s.model_batch, s.decode_batch, s.records = "cpu", 8, 4, 8, 64
    if dali_version() is not None:
        s.loaders = ("wds", "dali")
    else:
        s.notes.append(
            "nvidia-dali was not installed on this machine (its wheel is ~0.5 GB); the DALI rows "
            "were skipped and the trainer rows use the WebDataset loader (PIL decode on CPU workers)."
        )
    if s.out is not None:
        s.out.mkdir(parents=True, exist_ok=True)
    return s


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--write", action="store_true", help="append the table to BENCHMARKS.md")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--out", help="folder for the running table and failing steps' logs")
    parser.add_argument("--cpu-smoke", action="store_true", help="run the plumbing on CPU (no figures)")
    args = parser.parse_args(argv)
    setup_logging()
    import torch

    gpus = torch.cuda.device_count()
    if gpus < 1 and not args.cpu_smoke:
        log.error("no CUDA device visible")
        return 2
    s = settings_from(args)
    facts = gpu_facts(s)
    rows: list[list] = []
    with tempfile.TemporaryDirectory(prefix="medmod-gpu-check-") as work:
        results = [guarded_step(name, body, s, rows) for name, body in plan(work, s, gpus)]
    print(table(HEADERS, rows, numbers=False))
    if not args.cpu_smoke:
        publish(facts, lambda f: render(rows, f, s), args.write)
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
