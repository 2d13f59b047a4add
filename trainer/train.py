"""The MedMod trainer: one loop for every task and model, on 1 CPU process or many GPUs.

    torchrun --nproc_per_node=N trainer/train.py task=ihm|pheno|decomp|los|radiology \\
        model=uni_ehr|uni_cxr|... data.shards=PATH|s3://... [key=value ...]

Writes ``<runs_dir>/<task>/<model>/<seed>/``: ``config.yaml`` (resolved), ``metrics.json``
(val/test, bootstrap 95% CIs), ``predictions.parquet`` (test) and ``predictions_val.parquet``,
``tb/`` (TensorBoard), ``checkpoints/{last,best}.pt``. A rerun of the same command resumes from
``checkpoints/last.pt`` (also after SIGKILL; torchrun ``--max-restarts`` does this by itself).
"""

from __future__ import annotations

import itertools
import logging
import math
import sys
import time
from collections.abc import Iterator
from contextlib import nullcontext
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `torchrun trainer/train.py`: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
import yaml
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from conf import typed
from trainer import checkpoint as ckpt
from trainer import scoring
from trainer.config import RunConfig, load_run_config
from trainer.data import build_data
from trainer.distributed import (
    DistContext,
    all_gather_object,
    any_rank,
    barrier,
    broadcast_object,
    rng_state,
    seed_everything,
    set_rng_state,
)
from trainer.runtime import EXIT_CONFIG, NonFiniteLoss, build_model, guarded, summary_line
from trainer.tasks import TaskSpec

log = logging.getLogger("medmod.trainer")

LOSSES: dict[str, type[nn.Module]] = {
    "binary": nn.BCEWithLogitsLoss,
    "multilabel": nn.BCEWithLogitsLoss,
    "multiclass": nn.CrossEntropyLoss,
}


def loss_for(spec: TaskSpec) -> nn.Module:
    return LOSSES[spec.kind]()


def model_config_dict(model: nn.Module, cfg: RunConfig) -> dict[str, Any]:
    config = getattr(model, "config", None)
    return typed.to_dict(config) if config is not None else dict(cfg.model.args)


def lr_lambda(cfg: RunConfig, total_steps: int):
    warmup, kind = cfg.optim.warmup_steps, cfg.optim.scheduler

    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if kind == "cosine" and total_steps > warmup:
            progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        return 1.0

    return factor


def use_progress_bar(cfg: RunConfig, ctx: DistContext) -> bool:
    if not ctx.is_main or cfg.train.progress == "never":
        return False
    return cfg.train.progress == "always" or sys.stderr.isatty()


class Trainer:
    """Owns the loop; delegates data to ``trainer.data``, scoring to ``trainer.scoring`` and
    files to ``trainer.checkpoint``. Model differences live in the model and loss objects."""

    def __init__(self, cfg: RunConfig, ctx: DistContext, model: nn.Module, data: Any):
        self.cfg, self.ctx, self.data, self.spec = cfg, ctx, data, cfg.spec
        self.mode = cfg.train.hourly_mode if self.spec.hourly else "sample"
        scoring.check_mode(model, self.mode)
        if not getattr(model, "trainable", True) or not any(p.requires_grad for p in model.parameters()):
            raise ValueError(f"model {cfg.model.name!r} has nothing to train; score it with trainer.rescore")
        self.model = model.to(ctx.device)
        self.model_config = model_config_dict(model, cfg)
        forward: nn.Module = scoring.ModeForward(self.model, self.mode)
        if cfg.train.compile:
            forward = torch.compile(forward)
        if ctx.distributed:
            ids = [ctx.device.index] if ctx.device.type == "cuda" else None
            # Unused parameters happen by design (e.g. the learned missing-image vector in a batch
            # where every image is present), so DDP must not expect every gradient each step.
            forward = DistributedDataParallel(forward, device_ids=ids, find_unused_parameters=True)
        self.forward = forward
        self.loss_fn = loss_for(self.spec)
        params = [p for p in self.model.parameters() if p.requires_grad]
        o = cfg.optim
        self.optimizer = torch.optim.Adam(
            params, lr=o.lr, betas=(o.beta1, o.beta2), weight_decay=o.weight_decay
        )
        self.chunked = cfg.train.chunk_steps > 0
        self.steps_per_round = cfg.train.chunk_steps if self.chunked else data.steps_per_epoch
        self.rounds = cfg.train.max_chunks if self.chunked else cfg.train.epochs
        total = self.rounds * self.steps_per_round
        if cfg.train.max_steps:
            total = min(total, cfg.train.max_steps)
        self.total_steps = total
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda(cfg, total))
        self.run_dir = cfg.run_dir()
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.step = 0
        self.round = 0
        self.best: dict[str, Any] = {"value": None, "round": None, "step": None}
        self.bad_rounds = 0
        self.history: list[dict[str, Any]] = []
        self.finished = False
        self.autocast = (
            (lambda: torch.autocast(ctx.device.type, dtype=torch.bfloat16)) if cfg.train.amp else nullcontext
        )
        self.writer = None
        # Throughput of this process's training steps (this session only, resumed or not).
        self.timing = {"data_s": 0.0, "step_s": 0.0, "samples": 0, "steps": 0}

    # ---------------------------------------------------------------- state and checkpoints
    def _state(self) -> dict[str, Any]:
        epoch, batch = divmod(self.step, self.data.steps_per_epoch)
        return {
            "model": self.model.state_dict(),
            "model_name": self.cfg.model.name,
            "model_config": self.model_config,
            "task": self.cfg.task,
            "config": typed.to_dict(self.cfg),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "step": self.step,
            "round": self.round,
            "data": {"epoch": epoch, "batch": batch, "steps_per_epoch": self.data.steps_per_epoch},
            "best": dict(self.best),
            "bad_rounds": self.bad_rounds,
            "history": list(self.history),
            "finished": self.finished,
            "world_size": self.ctx.world_size,
        }

    def save(self, best: bool = False) -> None:
        """Every rank contributes its RNG state; rank 0 writes (last, and best when asked)."""
        rngs = all_gather_object(rng_state(), self.ctx)
        if self.ctx.is_main:
            state = self._state()
            state["rng"] = rngs
            ckpt.save_atomic(state, self.ckpt_dir / "last.pt")
            if best:
                ckpt.save_atomic(state, self.ckpt_dir / "best.pt")
        barrier(self.ctx)

    def try_resume(self) -> bool:
        path = self.ckpt_dir / "last.pt"
        if not (self.cfg.train.resume and path.is_file()):
            return False
        state = ckpt.load(path, map_location="cpu")
        if state.get("world_size", 1) != self.ctx.world_size:
            raise ckpt.CheckpointError(
                f"{path} was written by {state.get('world_size')} processes, this run has {self.ctx.world_size}: "
                "exact resume needs the same world size (or train.resume=false to start over)"
            )
        if state["data"].get("steps_per_epoch") != self.data.steps_per_epoch:
            raise ckpt.CheckpointError(f"{path}: steps per epoch changed (different shards or batch size?)")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step, self.round = int(state["step"]), int(state["round"])
        self.best, self.bad_rounds = dict(state["best"]), int(state["bad_rounds"])
        self.history, self.finished = list(state["history"]), bool(state["finished"])
        self._resume_rng = state["rng"][self.ctx.rank]
        # A rerun with more epochs/chunks/steps extends a finished run; patience stays spent.
        self.finished = self.finished and self._stop_reason() is not None
        log.info("resumed from %s at step %d (round %d)", path, self.step, self.round)
        return True

    # ---------------------------------------------------------------- data stream
    def _stream(self) -> Iterator[dict[str, Any]]:
        """Training batches from the current step on, epoch after epoch (same count on every rank).

        The first epoch's iterator is created and advanced to the data position *now*, so that a
        resumed run restores its RNG state after the replay, exactly where the killed run was.
        """
        epoch, skip = divmod(self.step, self.data.steps_per_epoch)
        first = self.data.train_iter(epoch, skip)
        later = (self.data.train_iter(e, 0) for e in itertools.count(epoch + 1))
        return itertools.chain(first, itertools.chain.from_iterable(later))

    # ---------------------------------------------------------------- the loop
    def train_step(self, batch: dict[str, Any]) -> tuple[float, int]:
        """One optimizer step; returns the loss and the number of samples (hourly: hours) scored."""
        batch = scoring.move(batch, self.ctx.device)
        with self.autocast():
            out = scoring.rows(self.mode, self.forward(batch), batch)
            loss = self.loss_fn(out.logits.float(), out.y)
        if any_rank(not bool(torch.isfinite(loss.detach())), self.ctx):
            where = f"step {self.step + 1} (round {self.round})"
            last = self.ckpt_dir / "last.pt"
            kept = f"last good checkpoint: {last}" if last.is_file() else "no checkpoint was written yet"
            raise NonFiniteLoss(f"non-finite loss at {where}; stopping, {kept} left unchanged")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.cfg.optim.grad_clip > 0:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.optim.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        return float(loss.detach()), int(out.logits.shape[0])

    def fit(self) -> None:
        self.ckpt_dir.mkdir(parents=True, exist_ok=True) if self.ctx.is_main else None
        resumed = self.try_resume()
        if self.ctx.is_main:
            ckpt.clean_stale_temps(self.ckpt_dir)
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.run_dir / "tb"), purge_step=self.step if resumed else None)
        if self.finished:
            log.info("training already finished (step %d); going to the final evaluation", self.step)
            return
        stream = self._stream()
        if resumed:
            set_rng_state(self._resume_rng)
        bar = self._progress()
        try:
            while self.round < self.rounds and not self.finished:
                self._run_round(stream, bar)
        finally:
            if bar is not None:
                bar.close()

    def _run_round(self, stream: Iterator[dict[str, Any]], bar: Any) -> None:
        cfg = self.cfg.train
        target = min((self.round + 1) * self.steps_per_round, cfg.max_steps or sys.maxsize)
        tick, seen, losses = time.perf_counter(), 0, []
        while self.step < target:
            t0 = time.perf_counter()
            batch = next(stream)
            t1 = time.perf_counter()
            loss, rows = self.train_step(batch)
            self.timing["data_s"] += t1 - t0
            self.timing["step_s"] += time.perf_counter() - t1
            self.timing["samples"] += rows
            self.timing["steps"] += 1
            losses.append(loss)
            seen += rows
            if bar is not None:
                bar.update(1)
                bar.set_postfix(
                    loss=f"{losses[-1]:.4f}", samples_s=f"{seen / (time.perf_counter() - tick):.1f}"
                )
            if self.step % cfg.log_every == 0:
                self._log_train(losses, seen, tick)
            if cfg.ckpt_every and self.step % cfg.ckpt_every == 0 and self.step < target:
                self.save()
        self.round += 1
        value = self.validate()
        improved = self._update_best(value)
        stop_reason = self._stop_reason()
        self.finished = stop_reason is not None
        self.save(best=improved)
        if stop_reason:
            log.info("stopping: %s", stop_reason)

    def _stop_reason(self) -> str | None:
        if self.bad_rounds >= self.cfg.train.patience:
            return f"no val improvement for {self.bad_rounds} {'chunks' if self.chunked else 'epochs'}"
        if self.cfg.train.max_steps and self.step >= self.cfg.train.max_steps:
            return f"train.max_steps={self.cfg.train.max_steps} reached"
        if self.round >= self.rounds:
            return f"all {self.rounds} {'chunks' if self.chunked else 'epochs'} done"
        return None

    def _update_best(self, value: float) -> bool:
        best = self.best["value"]
        improved = best is None or (math.isfinite(value) and (not math.isfinite(best) or value > best))
        if improved:
            self.best = {"value": value, "round": self.round, "step": self.step}
            self.bad_rounds = 0
        else:
            self.bad_rounds += 1
        return improved

    def _log_train(self, losses: list[float], seen: int, tick: float) -> None:
        rate = seen / max(1e-9, time.perf_counter() - tick)
        recent = sum(losses[-self.cfg.train.log_every :]) / len(losses[-self.cfg.train.log_every :])
        log.info("step %d  loss %.4f  lr %.2e  %.1f samples/s/rank", self.step, recent, self._lr(), rate)
        if self.writer is not None:
            self.writer.add_scalar("train/loss", recent, self.step)
            self.writer.add_scalar("train/lr", self._lr(), self.step)
            self.writer.add_scalar("train/samples_per_s_per_rank", rate, self.step)

    def _lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def _progress(self) -> Any:
        if not use_progress_bar(self.cfg, self.ctx):
            return None
        from tqdm import tqdm

        return tqdm(total=self.total_steps, initial=self.step, desc=f"{self.cfg.task}/{self.cfg.model.name}")

    # ---------------------------------------------------------------- evaluation
    def predict(self, split: str, max_batches: int = 0) -> scoring.Predictions | None:
        """Every sample of ``split`` scored once across ranks, gathered on rank 0."""
        batches = self.data.eval_iter(split, max_batches)
        pred = scoring.predict(self.model, batches, self.spec, self.mode, self.ctx.device, self.cfg.train.amp)
        return scoring.gather_predictions(pred, self.ctx)

    def validate(self) -> float:
        window = self.cfg.train.val_steps if self.chunked else 0
        pred = self.predict("val", window)
        value = float("nan")
        if pred is not None:
            scores = scoring.score(self.spec, pred, bootstrap=0, seed=self.cfg.train.seed)["metrics"]
            value = scores[self.spec.selection_metric]["value"]
            entry = {"round": self.round, "step": self.step, **{k: v["value"] for k, v in scores.items()}}
            self.history.append(entry)
            log.info(
                "%s %d val %s  (%d samples)",
                "chunk" if self.chunked else "epoch",
                self.round,
                "  ".join(f"{k} {v['value']:.4f}" for k, v in scores.items()),
                len(pred.sample_ids),
            )
            if self.writer is not None:
                for key, v in scores.items():
                    self.writer.add_scalar(f"val/{key}", v["value"], self.step)
                self.writer.flush()
        return float(broadcast_object(value, self.ctx))

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

    def final(self) -> dict[str, Any] | None:
        """Score val and test with the best checkpoint; rank 0 writes metrics and predictions."""
        best = self.ckpt_dir / "best.pt"
        source = best if best.is_file() else self.ckpt_dir / "last.pt"
        state = ckpt.load(source, map_location="cpu", full=False)
        self.model.load_state_dict(state["model"])
        results: dict[str, Any] = {
            "task": self.cfg.task,
            "model": self.cfg.model.name,
            "seed": self.cfg.train.seed,
            "checkpoint": str(source),
            "best": state.get("best"),
            "selection_metric": self.spec.selection_metric,
            "hourly_mode": self.mode,
            "world_size": self.ctx.world_size,
            "steps": state.get("step"),
            "auprc_definition": "average precision (step-wise), not the PR-curve trapezoid",
            "throughput": self.throughput(),
        }
        for split, filename in (("val", "predictions_val.parquet"), ("test", "predictions.parquet")):
            pred = self.predict(split)
            if pred is None:
                continue
            results[split] = scoring.score(self.spec, pred, self.cfg.train.bootstrap, self.cfg.train.seed)
            scoring.write_predictions(pred, self.run_dir / filename)
        if self.ctx.is_main:
            scoring.write_json(results, self.run_dir / "metrics.json")
            if self.writer is not None:
                self.writer.close()
            return results
        return None


def write_config(cfg: RunConfig, model_config: dict[str, Any], run_dir: Path) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    resolved = typed.to_dict(cfg)
    resolved["model"]["resolved"] = model_config
    (run_dir / "config.yaml").write_text(yaml.safe_dump(resolved, sort_keys=False))


def run(cfg: RunConfig, ctx: DistContext) -> dict[str, Any] | None:
    """Train and score one run; returns rank 0's metrics (None on other ranks)."""
    seed_everything(cfg.train.seed, ctx.rank)
    data = build_data(cfg, ctx)
    model = build_model(cfg)
    trainer = Trainer(cfg, ctx, model, data)
    if ctx.is_main:
        write_config(cfg, trainer.model_config, trainer.run_dir)
        log.info(
            "run %s: %d steps/epoch per rank, %s, world %d on %s",
            trainer.run_dir,
            data.steps_per_epoch,
            f"chunks of {trainer.steps_per_round} steps" if trainer.chunked else f"{trainer.rounds} epochs",
            ctx.world_size,
            ctx.device,
        )
    trainer.fit()
    return trainer.final()


def main(argv: list[str] | None = None) -> int:
    cfg = typed.from_command_line(
        sys.argv[1:] if argv is None else argv, load_run_config, __doc__, EXIT_CONFIG
    )
    if isinstance(cfg, int):
        return cfg
    code, results = guarded(cfg, lambda ctx: run(cfg, ctx))
    if results is not None:
        log.info("results in %s\n%s", cfg.run_dir(), summary_line(results))
    return code


if __name__ == "__main__":
    sys.exit(main())
