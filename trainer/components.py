"""The parts ``Trainer.train`` delegates to, torchtitan style: early stopping, metrics logging and
checkpointing. Each is small and owns one concern, so a new training mode (pretraining, probing,
fine-tuning) composes the same parts instead of growing the loop. Parts whose state a resumed run
needs expose ``state_dict()`` / ``load_state_dict()``; the trainer merges them into its
checkpoint with flat keys (the file format agreed with ``trainer.models`` and the scripts).
"""

from __future__ import annotations

import logging
import math
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from trainer import checkpoint as ckpt
from trainer.config import TrainConfig
from trainer.distributed import DistContext, all_gather_object, barrier, rng_state

log = logging.getLogger("medmod.trainer")


class EarlyStopping:
    """The best validation value so far and the rounds (epochs or chunks) since it improved.

    A NaN value never counts as an improvement over a finite best, but any finite value beats a
    NaN best: a metric undefined in the first rounds (one class in the window) must not block
    checkpoint selection for the rest of the run.
    """

    def __init__(self, patience: int) -> None:
        self.patience = patience
        self.best: dict[str, Any] = {"value": None, "round": None, "step": None}
        self.bad_rounds = 0

    def update(self, value: float, round: int, step: int) -> bool:
        """Record one validation result; True when it is the new best (a ``best.pt`` is due)."""
        best = self.best["value"]
        improved = best is None or (math.isfinite(value) and (not math.isfinite(best) or value > best))
        if improved:
            self.best = {"value": value, "round": round, "step": step}
            self.bad_rounds = 0
        else:
            self.bad_rounds += 1
        return improved

    @property
    def exhausted(self) -> bool:
        return self.bad_rounds >= self.patience

    def state_dict(self) -> dict[str, Any]:
        return {"best": dict(self.best), "bad_rounds": self.bad_rounds}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.bad_rounds = dict(state["best"]), int(state["bad_rounds"])


def use_progress_bar(cfg: TrainConfig, ctx: DistContext) -> bool:
    if not ctx.is_main or cfg.progress == "never":
        return False
    return cfg.progress == "always" or sys.stderr.isatty()


class MetricsLogger:
    """Where the numbers of a run go: log lines, the progress bar and TensorBoard (rank 0), this
    process's step timing (throughput), and the validation history a checkpoint carries."""

    def __init__(self, cfg: TrainConfig, ctx: DistContext, run_dir: Path, unit: str, total_steps: int):
        self.cfg, self.ctx, self.run_dir, self.unit, self.total_steps = cfg, ctx, run_dir, unit, total_steps
        self.history: list[dict[str, Any]] = []
        self.writer: Any = None
        self.bar: Any = None
        # Throughput of the run's training steps, over every session: the checkpoint carries it,
        # so a rerun of a finished run (which trains nothing) reports what the training measured.
        self.timing = {"data_s": 0.0, "step_s": 0.0, "samples": 0, "steps": 0}
        self._tick, self._seen, self._losses = 0.0, 0, []

    def open(self, step: int, resumed: bool) -> None:
        """TensorBoard on rank 0; a resumed run drops the events a killed run wrote past ``step``."""
        if self.ctx.is_main:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.run_dir / "tb"), purge_step=step if resumed else None)

    @contextmanager
    def progress(self, step: int, desc: str) -> Iterator[None]:
        """A step progress bar from ``step`` on while training runs (rank 0, a TTY or asked for)."""
        if use_progress_bar(self.cfg, self.ctx):
            from tqdm import tqdm

            self.bar = tqdm(total=self.total_steps, initial=step, desc=desc)
        try:
            yield
        finally:
            if self.bar is not None:
                self.bar.close()
                self.bar = None

    def start_round(self) -> None:
        """Loss average and samples/s in the log lines cover the current round only."""
        self._tick, self._seen, self._losses = time.perf_counter(), 0, []

    def record_step(self, step: int, loss: float, rows: int, data_s: float, step_s: float, lr: float) -> None:
        t = self.timing
        t["data_s"] += data_s
        t["step_s"] += step_s
        t["samples"] += rows
        t["steps"] += 1
        self._losses.append(loss)
        self._seen += rows
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{loss:.4f}", samples_s=f"{self._seen / self._elapsed():.1f}")
        if step % self.cfg.log_every == 0:
            self._log_train(step, lr)

    def _elapsed(self) -> float:
        return time.perf_counter() - self._tick

    def _log_train(self, step: int, lr: float) -> None:
        rate = self._seen / max(1e-9, self._elapsed())
        window = self._losses[-self.cfg.log_every :]
        recent = sum(window) / len(window)
        log.info("step %d  loss %.4f  lr %.2e  %.1f samples/s/rank", step, recent, lr, rate)
        if self.writer is not None:
            self.writer.add_scalar("train/loss", recent, step)
            self.writer.add_scalar("train/lr", lr, step)
            self.writer.add_scalar("train/samples_per_s_per_rank", rate, step)

    def record_val(self, round: int, step: int, scores: dict[str, dict[str, float]], n_samples: int) -> None:
        """One validation result (rank 0, which holds the gathered predictions)."""
        self.history.append({"round": round, "step": step, **{k: v["value"] for k, v in scores.items()}})
        log.info(
            "%s %d val %s  (%d samples)",
            self.unit,
            round,
            "  ".join(f"{k} {v['value']:.4f}" for k, v in scores.items()),
            n_samples,
        )
        if self.writer is not None:
            for key, v in scores.items():
                self.writer.add_scalar(f"val/{key}", v["value"], step)
            self.writer.flush()

    def throughput(self) -> dict[str, float]:
        """Rank 0's training throughput; samples/s for all ranks assumes they run in lockstep (DDP)."""
        t = self.timing
        busy = t["data_s"] + t["step_s"]
        rate = t["samples"] / busy if busy else float("nan")
        return {
            "steps": t["steps"],
            "samples_per_s": rate * self.ctx.world_size,
            "samples_per_s_per_rank": rate,
            "data_share": t["data_s"] / busy if busy else float("nan"),
        }

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()

    def state_dict(self) -> dict[str, Any]:
        return {"history": list(self.history), "timing": dict(self.timing)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.history = list(state["history"])
        self.timing = dict(state.get("timing", self.timing))  # older checkpoints: this session only


class Checkpointer:
    """A run's ``checkpoints/`` folder: ``last.pt`` after every round (and every
    ``train.ckpt_every`` steps), ``best.pt`` when validation improved, ``last.pt`` read back on
    resume; with ``keep`` also ``<keep>.pt`` (SSL pretraining keeps every epoch's weights for
    model selection: model keys only). Only ``last.pt`` holds the resume state (optimizer,
    scheduler, RNG): with Adam that is twice the weights' size, and every other file is only
    ever read for its weights. Files are written atomically by ``trainer.checkpoint``; every
    rank adds its RNG state.
    """

    FOLDER, LAST, BEST = "checkpoints", "last.pt", "best.pt"
    KEPT_KEYS = (
        "model",
        "model_name",
        "model_config",
        "task",
        "config",
        "identity",
        "step",
        "round",
        "history",
    )
    RESUME_ONLY_KEYS = ("optimizer", "scheduler", "rng")

    def __init__(self, run_dir: Path, ctx: DistContext, resume: bool) -> None:
        self.folder, self.ctx, self.resume = run_dir / self.FOLDER, ctx, resume

    @classmethod
    def best_of(cls, run_dir: Path) -> Path:
        """The best checkpoint of any run dir (fusion models start from unimodal runs' ones)."""
        return run_dir / cls.FOLDER / cls.BEST

    @property
    def last(self) -> Path:
        return self.folder / self.LAST

    @property
    def best(self) -> Path:
        return self.folder / self.BEST

    def prepare(self) -> None:
        """The folder exists, without temporaries a process killed mid-save left behind."""
        if self.ctx.is_main:
            self.folder.mkdir(parents=True, exist_ok=True)
            ckpt.clean_stale_temps(self.folder)

    def save(self, state: Callable[[], dict[str, Any]], best: bool = False, keep: str | None = None) -> None:
        """Collective: every rank's RNG state is gathered; rank 0 builds ``state()`` and writes."""
        rngs = all_gather_object(rng_state(), self.ctx)
        if self.ctx.is_main:
            full = state()
            full["rng"] = rngs
            ckpt.save_atomic(full, self.last)
            if best:
                weights = {k: v for k, v in full.items() if k not in self.RESUME_ONLY_KEYS}
                ckpt.save_atomic(weights, self.best)
            if keep:
                kept = {k: full[k] for k in self.KEPT_KEYS if k in full}
                ckpt.save_atomic(kept, self.folder / f"{keep}.pt")
        barrier(self.ctx)

    def load_last(self, steps_per_epoch: int) -> dict[str, Any] | None:
        """``last.pt`` when resuming is on and it exists, checked to fit this run exactly."""
        if not (self.resume and self.last.is_file()):
            return None
        state = ckpt.load(self.last, map_location="cpu")
        if state.get("world_size", 1) != self.ctx.world_size:
            raise ckpt.CheckpointError(
                f"{self.last} was written by {state.get('world_size')} processes, this run has "
                f"{self.ctx.world_size}: exact resume needs the same world size (or train.resume=false "
                "to start over)"
            )
        if state["data"].get("steps_per_epoch") != steps_per_epoch:
            raise ckpt.CheckpointError(
                f"{self.last}: steps per epoch changed (different shards or batch size?)"
            )
        return state

    def for_scoring(self) -> Path:
        """The checkpoint the final scores come from: the best one, else the last."""
        return self.best if self.best.is_file() else self.last
