"""Shard write and read throughput vs the per-file baseline; appends a section to BENCHMARKS.md.

    python scripts/bench_shards.py --tables data/etl-2000p-seed0 [--cxr PATH] [--task ihm]
        [--samples 512] [--batch-size 16] [--workers 1] [--note "measured under load"] [--no-write]

Measures, on this machine in one run:
- write: ``spark_jobs.write_shards`` of one task from the gold tables (samples/s, MB/s of shard bytes);
- read, train transforms (decode + SPEC §10 augmentation + normalize + collate), samples/s:
  the WebDataset reader, the DALI CPU reader, and the baseline that loads each sample's JPEG from
  the raw CXR tree and resizes it every step (the reference implementation's way), with the EHR
  handed over from memory (which favours the baseline).
Ratios are shard reader / baseline (issue 4's target: >= 3x).
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from scripts.bench_common import (  # noqa: E402
    append_section,
    command_line,
    machine_facts,
    now_utc,
    setup_logging,
    table,
)

log = logging.getLogger("medmod.bench.shards")


def bench_write(tables: str, cxr: str, task: str, out: str) -> dict:
    from spark_jobs import write_shards
    from spark_jobs.session import SparkConfig, build_spark

    cfg = write_shards.ShardWriterConfig(
        tables=tables, out=out, cxr=cxr, task=task, spark=SparkConfig(master="local[2]", shuffle_partitions=4)
    )
    spark = build_spark(cfg.spark)
    start = time.perf_counter()
    manifest = write_shards.run(cfg, spark)
    seconds = time.perf_counter() - start
    splits = manifest["tasks"][task]["splits"].values()
    n = sum(e["samples"] for e in splits)
    size = sum(s["size"] for e in splits for s in e["shards"])
    gold = write_shards.read_delta(spark, f"{tables}/gold/samples_{task}").where("split = 'train'")
    cxr_root = manifest["sources"]["cxr"]
    paths = {
        r["dicom_id"]: r["path"]
        for r in write_shards.read_delta(spark, f"{tables}/silver/cxr")
        .join(gold.select("dicom_id"), "dicom_id")
        .collect()
    }
    spark.stop()
    return {"seconds": seconds, "samples": n, "bytes": size, "cxr": cxr_root, "paths": list(paths.values())}


def _timed(batches, samples: int) -> float:
    start, seen = time.perf_counter(), 0
    for batch in batches:
        seen += len(batch["sample_id"])
        if seen >= samples:
            break
    return seen / (time.perf_counter() - start)


def bench_wds(root: str, task: str, samples: int, batch_size: int, workers: int) -> float:
    from shards.reader import ReaderConfig, make_loader

    cfg = ReaderConfig(task=task, split="train", repeat=True)
    return _timed(make_loader(root, cfg, batch_size, num_workers=workers), samples)


def bench_dali(root: str, task: str, samples: int, batch_size: int, threads: int) -> float:
    from shards.dali import dali_loader
    from shards.reader import ReaderConfig

    cfg = ReaderConfig(task=task, split="train")

    def forever():
        while True:
            yield from dali_loader(root, cfg, batch_size, num_threads=threads)

    return _timed(forever(), samples)


def bench_baseline(cxr: str, paths: list[str], samples: int, batch_size: int) -> float:
    """Per step: open the raw JPEG, decode, Resize(256) + SPEC §10 augmentation (torchvision)."""
    import numpy as np
    import torch
    from PIL import Image
    from torchvision import transforms

    from shards.transforms import IMAGENET_MEAN, IMAGENET_STD

    tf = transforms.Compose(
        [
            transforms.Resize(256),
            transforms.RandomHorizontalFlip(),
            transforms.RandomAffine(degrees=45, translate=(0.15, 0.15), scale=(0.85, 1.15)),
            transforms.CenterCrop(224),
            transforms.ToTensor(),
            transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )
    ehr = torch.from_numpy(np.zeros((48, 76), np.float32))

    def batches():
        i = 0
        while True:
            batch = []
            for _ in range(batch_size):
                with Image.open(f"{cxr}/{paths[i % len(paths)]}") as img:
                    batch.append(tf(img.convert("RGB")))
                i += 1
            yield {
                "image": torch.stack(batch),
                "ehr": ehr.expand(batch_size, -1, -1),
                "sample_id": [""] * batch_size,
            }

    return _timed(batches(), samples)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tables", required=True)
    ap.add_argument("--cxr", default="")
    ap.add_argument("--task", default="ihm")
    ap.add_argument("--samples", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--workers", type=int, default=1, help="DataLoader workers / DALI threads")
    ap.add_argument("--note", default="")
    ap.add_argument("--no-write", action="store_true", help="print the section, do not append it")
    args = ap.parse_args()
    setup_logging()
    facts = machine_facts()
    with tempfile.TemporaryDirectory(prefix="bench-shards-") as out:
        w = bench_write(args.tables, args.cxr, args.task, out)
        log.info("write: %d samples in %.1fs", w["samples"], w["seconds"])
        base = bench_baseline(w["cxr"], w["paths"], args.samples, args.batch_size)
        wds_rate = bench_wds(out, args.task, args.samples, args.batch_size, args.workers)
        dali_rate = bench_dali(out, args.task, args.samples, args.batch_size, max(args.workers, 1))
    rows = [
        ["baseline: raw JPEG + resize per step", f"{base:.1f}", "1.00"],
        ["webdataset reader", f"{wds_rate:.1f}", f"{wds_rate / base:.2f}"],
        ["DALI reader (CPU)", f"{dali_rate:.1f}", f"{dali_rate / base:.2f}"],
    ]
    text = "\n".join(
        [
            f"## Shards: write and read throughput — {now_utc()}",
            "",
            f"Command: `{command_line()}`" + (f" — {args.note}" if args.note else ""),
            "",
            f"Write ({args.task}, all splits): {w['samples']:,} samples, {w['bytes'] / 1e6:.1f} MB in "
            f"{w['seconds']:.1f}s = {w['samples'] / w['seconds']:.1f} samples/s, "
            f"{w['bytes'] / 1e6 / w['seconds']:.2f} MB/s (Spark local[2], includes reading and resizing each image once).",
            "",
            f"Read, train transforms, batch {args.batch_size}, {args.samples} samples, {args.workers} worker(s)/thread(s):",
            "",
            table(["reader", "samples/s", "x baseline"], rows),
            "",
            "Machine: " + "; ".join(f"{k}: {v}" for k, v in facts.items()),
        ]
    )
    print(text)
    if not args.no_write:
        append_section(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
