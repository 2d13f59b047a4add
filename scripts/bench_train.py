"""Trainer throughput: samples/s per task and model, 1 and N processes, sequence vs sample mode.

    .venv/bin/python scripts/bench_train.py [--shards PATH] [--procs 1 2] [--steps 20] [--write]
    .venv/bin/python scripts/bench_train.py --device cuda --loader dali --procs 1 --models uni_cxr

Each configuration is a real ``torchrun`` run of ``trainer/train.py`` for ``--steps`` optimizer
steps (``train.max_steps``); the numbers come from the run's ``metrics.json`` ``throughput``:
samples/s of the training steps (all ranks), and the data loader's share of step time (time
blocked waiting for the next batch / (that + forward, backward, optimizer)). Hourly tasks count
hourly samples, so ``sequence`` and ``sample`` mode are compared on the same unit.

Without ``--shards`` a tiny shard set is written with ``shards.tiny`` (random values, images of
``--image-size`` px); with ``--shards`` (e.g. ``make shards`` output) the real synthetic data is used.
``--write`` appends the table and the command to BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from conf.tasks import TASK_NAMES

REPO = Path(__file__).resolve().parents[1]
log = logging.getLogger("bench_train")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shards", help="shard set root (default: a tiny generated one)")
    p.add_argument("--records", type=int, default=96, help="records per split of the tiny shard set")
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--tasks", nargs="+", default=list(TASK_NAMES))
    p.add_argument("--models", nargs="+", default=["uni_ehr", "uni_cxr"])
    p.add_argument("--procs", nargs="+", type=int, default=[1, 2])
    p.add_argument("--steps", type=int, default=20, help="optimizer steps per run (uni_ehr)")
    p.add_argument("--cxr-steps", type=int, default=4, help="optimizer steps per run for CNN models")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--workers", type=int, default=1, help="DataLoader workers per process")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--loader", choices=["wds", "dali"], default="wds")
    p.add_argument("--dali-device", choices=["cpu", "mixed"], default="cpu")
    p.add_argument("--extra", nargs="*", default=[], help="more key=value words for every run")
    p.add_argument("--write", action="store_true", help="append the results to BENCHMARKS.md")
    return p.parse_args(argv)


def tiny_shards(root: Path, records: int, image_size: int, tasks: list[str]) -> str:
    from shards.tiny import tiny_dataset

    tiny_dataset(str(root), tasks=tuple(tasks), records=records, records_per_shard=8, image_size=image_size)
    return str(root)


def run_one(
    args: argparse.Namespace, shards: str, task: str, model: str, procs: int, mode: str, runs: Path
) -> dict:
    steps = args.steps if model == "uni_ehr" else args.cxr_steps
    crop = min(224, args.image_size)
    words = [
        f"task={task}",
        f"model={model}",
        f"data.shards={shards}",
        f"data.loader={args.loader}",
        f"data.dali_device={args.dali_device}",
        f"data.batch_size={args.batch_size}",
        f"data.num_workers={args.workers}",
        f"data.image_resize={args.image_size}",
        f"data.image_crop={crop}",
        f"train.device={args.device}",
        f"train.max_steps={steps}",
        f"train.hourly_mode={mode}",
        "train.chunk_steps=0",
        "train.epochs=1000",
        "train.bootstrap=0",
        "train.progress=never",
        "train.resume=false",
        f"train.log_every={max(1, steps)}",
        f"train.runs_dir={runs}",
        *args.extra,
    ]
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={procs}", "--standalone"]
    cmd += [str(REPO / "trainer" / "train.py"), *words]
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 2) // procs)),
    }
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        log.error("%s/%s x%d failed:\n%s", task, model, procs, proc.stderr[-2000:])
        return {"error": proc.returncode}
    metrics = json.loads((runs / task / model / "0" / "metrics.json").read_text())
    return {**metrics["throughput"], "wall_s": wall}


def table(rows: list[dict]) -> str:
    lines = [
        "| task | model | mode | processes | steps | samples/s | data-loader share | wall s |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(
                f"| {r['task']} | {r['model']} | {r['mode']} | {r['procs']} | failed ({r['error']}) | | | |"
            )
            continue
        lines.append(
            f"| {r['task']} | {r['model']} | {r['mode']} | {r['procs']} | {r['steps']} | "
            f"{r['samples_per_s']:.1f} | {100 * r['data_share']:.0f}% | {r['wall_s']:.0f} |"
        )
    return "\n".join(lines)


def speedups(rows: list[dict]) -> list[str]:
    out = []
    by_key = {(r["task"], r["model"], r["mode"], r["procs"]): r for r in rows if "error" not in r}
    for (task, model, mode, procs), r in sorted(by_key.items()):
        other = by_key.get((task, model, "sample", procs))
        if mode == "sequence" and other:
            ratio = r["samples_per_s"] / other["samples_per_s"]
            out.append(
                f"- {task}/{model}, {procs} process(es): sequence mode {ratio:.1f}x the samples/s of sample mode"
            )
    return out


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        tmp_path = Path(tmp)
        shards = args.shards or tiny_shards(tmp_path / "shards", args.records, args.image_size, args.tasks)
        rows = []
        for task in args.tasks:
            modes = ["sample", "sequence"] if task in ("decomp", "los") else ["sample"]
            for model in args.models:
                for mode in modes if model == "uni_ehr" else ["sample"]:
                    for procs in args.procs:
                        log.info("%s %s %s x%d", task, model, mode, procs)
                        runs = tmp_path / f"runs-{task}-{model}-{mode}-{procs}"
                        res = run_one(args, shards, task, model, procs, mode, runs)
                        rows.append({"task": task, "model": model, "mode": mode, "procs": procs, **res})
    text = table(rows)
    notes = speedups(rows)
    print(text)
    print("\n".join(notes))
    if args.write:
        command = "python scripts/bench_train.py " + " ".join(argv if argv is not None else sys.argv[1:])
        with open(REPO / "BENCHMARKS.md", "a") as fh:
            fh.write(
                f"\n### Trainer throughput ({time.strftime('%Y-%m-%d')}, {args.device}, {args.loader})\n\n"
            )
            fh.write(f"`{command}`\n\n{text}\n\n" + "\n".join(notes) + "\n")
    return 0 if all("error" not in r for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
