"""Seconds per SSL pretraining step (forward + backward) of every pretrain model, interleaved.

One process, random weights, one batch of ``--batch`` pairs (48 hourly rows of 76 features,
224x224 images), the models timed in turn ``--repeats`` times on the same batch, so that load on a
shared machine hits them alike; the best time per model is the one to compare.

    PYTHONPATH=. OMP_NUM_THREADS=2 nice -n 19 python scripts/bench_ssl_step.py --repeats 3
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from trainer.models import create_model, list_models  # noqa: E402
from trainer.tasks import task_spec  # noqa: E402


def pairs(batch: int, seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {
        "ehr": torch.randn(batch, 48, 76, generator=gen),
        "ehr_len": torch.full((batch,), 48),
        "image": torch.randn(batch, 3, 224, 224, generator=gen),
        "has_image": torch.ones(batch, dtype=torch.bool),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    batch = pairs(args.batch)
    models = {name: create_model(name, None, task_spec("pheno")).train() for name in list_models("pretrain")}
    times: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(args.repeats):
        for name, model in models.items():
            start = time.perf_counter()
            model(batch)["loss"].backward()
            model.zero_grad(set_to_none=True)
            times[name].append(time.perf_counter() - start)
    for name, ts in times.items():
        best = min(ts)
        print(
            f"{name:<8} s/step {' '.join(f'{t:.2f}' for t in ts)}  best {best:.2f}  {args.batch / best:.2f} samples/s"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
