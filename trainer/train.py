"""The MedMod trainer: one loop for every task and model, on 1 CPU process or many GPUs.

    torchrun --nproc_per_node=N trainer/train.py task=ihm|pheno|decomp|los|radiology \\
        model=uni_ehr|uni_cxr|... data.shards=PATH|s3://... [key=value ...]
    torchrun ... trainer/train.py mode=pretrain ssl=convirt|vicreg|align data.shards=... [task=pheno]
    torchrun ... trainer/train.py mode=probe|finetune task=... encoder=<pretrain run folder> \\
        [features=both|ehr|cxr] data.shards=...

``mode=pretrain`` trains an SSL model on the paired training samples of the task (val loss for
early stopping, every epoch's weights kept as ``checkpoints/epoch_NNNN.pt``); ``mode=probe``
trains a linear head on frozen pretrained encoders, on features cached once per split in
``features/`` beside the run (``train.cache_features``); ``mode=finetune`` trains the encoders
too. The loop, checkpoints, resume and run layout are the same in every mode.

Writes ``<runs_dir>/<task>/<model>/[<run_name>/]<seed>/``: ``config.yaml`` (resolved),
``run.json`` (the run's identity, ``trainer.identity``), ``metrics.json`` (val/test, bootstrap
95% CIs), ``predictions.parquet`` (test) and ``predictions_val.parquet``, ``tb/`` (TensorBoard),
``checkpoints/{last,best}.pt``. A rerun of the same command resumes from ``checkpoints/last.pt``
(also after SIGKILL; torchrun ``--max-restarts`` does this by itself); a run of another identity
into that folder is an error naming the differing keys (``train.run_name=NAME``: another folder).
A saved checkpoint, or a model with nothing to train (late fusion), is scored by
``python -m trainer.rescore``.
"""

from __future__ import annotations

import itertools
import logging
import math
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from pathlib import Path
from typing import Any, NoReturn

if __package__ in (None, ""):  # `torchrun trainer/train.py`: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
import yaml
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from conf import typed
from trainer import checkpoint as ckpt
from trainer import features as feature_cache
from trainer import identity as run_id
from trainer import scoring
from trainer.components import Checkpointer, EarlyStopping, MetricsLogger
from trainer.config import RunConfig, load_run_config
from trainer.data import build_data
from trainer.distributed import (
    DistContext,
    any_rank,
    barrier,
    broadcast_object,
    seed_everything,
    set_rng_state,
)
from trainer.runtime import EXIT_CONFIG, NonFiniteLoss, build_model, guarded, summary_line
from trainer.selfsup.augment import ssl_augment
from trainer.selfsup.lars import LARS
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


def lr_lambda(cfg: RunConfig, total_steps: int) -> Callable[[int], float]:
    warmup, kind = cfg.optim.warmup_steps, cfg.optim.scheduler

    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if kind == "cosine" and total_steps > warmup:
            progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        return 1.0

    return factor


def wrap_forward(model: nn.Module, mode: str, cfg: RunConfig, ctx: DistContext) -> nn.Module:
    """What a training step calls: the model's sample or sequence path, compiled and DDP-wrapped
    as the config says (scoring calls the bare model: no gradient hooks needed there)."""
    forward: nn.Module = scoring.ModeForward(model, mode)
    if cfg.train.compile:
        forward = torch.compile(forward)
    if ctx.distributed:
        ids = [ctx.device.index] if ctx.device.type == "cuda" else None
        # Every model keeps all its weights in the graph (zero gradients where unused), so DDP
        # skips the per-step graph walk that find_unused_parameters costs (tests/test_ddp.py).
        forward = DistributedDataParallel(forward, device_ids=ids)
    return forward


def apply_throughput_settings(model: nn.Module, cfg: RunConfig, ctx: DistContext) -> nn.Module:
    """cuDNN autotuning (fixed image sizes: the fastest kernel is found once) and NHWC weights
    for the CNN (tensor cores want channels-last; only 4-D weights change layout)."""
    if ctx.device.type == "cuda":
        torch.backends.cudnn.benchmark = cfg.train.cudnn_benchmark
    if cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def to_channels_last(batch: dict[str, Any]) -> dict[str, Any]:
    """The image batch in the CNN's layout (a no-op copy-free view when it already is)."""
    image = batch.get("image")
    if torch.is_tensor(image) and image.dim() == 4:
        batch = {**batch, "image": image.contiguous(memory_format=torch.channels_last)}
    return batch


def accumulation_rounds(batches_per_epoch: int, accum: int) -> int:
    """Optimizer steps per epoch when each step takes ``accum`` batches (a global batch of
    ``batch_size x world x accum``)."""
    if accum < 1:
        raise typed.ConfigError(f"train.grad_accum_steps must be >= 1, got {accum}")
    steps = batches_per_epoch // accum
    if steps < 1:
        raise typed.ConfigError(
            f"train.grad_accum_steps={accum} exceeds the {batches_per_epoch} batches of an epoch per rank"
        )
    return steps


OPTIMIZERS: dict[str, Callable[[list[nn.Parameter], Any], torch.optim.Optimizer]] = {
    "adam": lambda params, o: torch.optim.Adam(
        params, lr=o.lr, betas=(o.beta1, o.beta2), weight_decay=o.weight_decay
    ),
    "lars": lambda params, o: LARS(
        params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay, eta=o.lars_eta
    ),
}


def build_optimizer(model: nn.Module, cfg: RunConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    return OPTIMIZERS[cfg.optim.name](params, cfg.optim)


class Trainer:
    """One loop for every task and model. It delegates data to ``trainer.data``, scoring to
    ``trainer.scoring``, and early stopping, metrics and checkpoint files to the components of
    ``trainer.components``; model differences live in the model and loss objects."""

    def __init__(
        self,
        cfg: RunConfig,
        ctx: DistContext,
        model: nn.Module,
        data: Any,
        identity: dict[str, Any] | None = None,
    ):
        self.cfg, self.ctx, self.data, self.spec = cfg, ctx, data, cfg.spec
        self.mode = data.mode  # sample mode on cached features whatever train.hourly_mode says
        scoring.check_mode(model, self.mode)
        if not getattr(model, "trainable", True) or not any(p.requires_grad for p in model.parameters()):
            raise ValueError(f"model {cfg.model.name!r} has nothing to train; score it with trainer.rescore")
        self.model = apply_throughput_settings(model.to(ctx.device), cfg, ctx)
        self.accum = cfg.train.grad_accum_steps
        self.model_config = model_config_dict(model, cfg)
        self.identity = identity or run_id.run_identity(cfg, self.model_config, data.manifest)[0]
        self.forward = wrap_forward(self.model, self.mode, cfg, ctx)
        self.loss_fn = loss_for(self.spec)
        self.optimizer = build_optimizer(self.model, cfg)
        # A round is an epoch, or a chunk of steps (hourly tasks): validation, early stopping and
        # checkpoints happen once per round, so patience counts rounds.
        self.chunked = cfg.train.chunk_steps > 0
        self.unit = "chunk" if self.chunked else "epoch"
        epoch_steps = accumulation_rounds(data.steps_per_epoch, self.accum)
        self.steps_per_round = cfg.train.chunk_steps if self.chunked else epoch_steps
        self.rounds = cfg.train.max_chunks if self.chunked else cfg.train.epochs
        total = self.rounds * self.steps_per_round
        self.total_steps = min(total, cfg.train.max_steps) if cfg.train.max_steps else total
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda(cfg, self.total_steps))
        self.run_dir = cfg.run_dir()
        self.step = 0
        self.round = 0
        self.finished = False
        self._resume_rng: dict[str, Any] | None = None
        self.autocast = (
            (lambda: torch.autocast(ctx.device.type, dtype=torch.bfloat16)) if cfg.train.amp else nullcontext
        )
        self.early_stopping = EarlyStopping(cfg.train.patience)
        self.metrics = MetricsLogger(cfg.train, ctx, self.run_dir, self.unit, self.total_steps)
        self.checkpointer = Checkpointer(self.run_dir, ctx, cfg.train.resume)
        self.keep_rounds = False  # keep every round's weights (SSL pretraining: model selection)

    # ---------------------------------------------------------------- the algorithm
    def train(self) -> None:
        """Resume, then rounds of: steps, validation, the early-stopping check, a checkpoint."""
        self.checkpointer.prepare()
        resumed = self.resume()
        self.metrics.open(self.step, resumed)
        if self.finished:
            log.info("training already finished (step %d); going to the final evaluation", self.step)
            return
        stream = self._stream()
        if resumed:
            set_rng_state(self._resume_rng)
        with self.metrics.progress(self.step, f"{self.cfg.task}/{self.cfg.model.name}"):
            while self.round < self.rounds and not self.finished:
                self.train_round(stream)
                improved = self.early_stopping.update(self.validate(), self.round, self.step)
                reason = self.stop_reason()
                self.finished = reason is not None
                keep = f"{self.unit}_{self.round:04d}" if self.keep_rounds else None
                self.checkpointer.save(self.state_dict, best=improved, keep=keep)
                if reason:
                    log.info("stopping: %s", reason)

    def train_round(self, stream: Iterator[dict[str, Any]]) -> None:
        """Optimizer steps up to the end of this round (or ``train.max_steps``)."""
        cfg = self.cfg.train
        target = min((self.round + 1) * self.steps_per_round, cfg.max_steps or sys.maxsize)
        self.metrics.start_round()
        while self.step < target:
            t0 = time.perf_counter()
            batches = [next(stream) for _ in range(self.accum)]
            t1 = time.perf_counter()
            loss, rows = self.train_step(batches)
            self.metrics.record_step(self.step, loss, rows, t1 - t0, time.perf_counter() - t1, self.lr)
            if cfg.ckpt_every and self.step % cfg.ckpt_every == 0 and self.step < target:
                self.checkpointer.save(self.state_dict)
        self.round += 1

    def train_step(self, batches: list[dict[str, Any]]) -> tuple[float, int]:
        """One optimizer step over ``batches`` (gradient accumulation: each loss weighs 1/len, so
        equal-sized batches give the gradient of their union); returns the mean loss and the
        number of samples (hourly: hours) scored. DDP all-reduces once, on the last batch."""
        self.optimizer.zero_grad(set_to_none=True)
        losses, rows = [], 0
        for i, batch in enumerate(batches):
            sync = i == len(batches) - 1 or not isinstance(self.forward, DistributedDataParallel)
            with nullcontext() if sync else self.forward.no_sync():
                loss, n = self._backward(batch, len(batches))
            losses.append(loss)
            rows += n
        if self.cfg.optim.grad_clip > 0:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.optim.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        return sum(losses) / len(losses), rows

    def _backward(self, batch: dict[str, Any], parts: int) -> tuple[float, int]:
        batch = scoring.move(batch, self.ctx.device)
        if self.cfg.train.channels_last:
            batch = to_channels_last(batch)
        with self.autocast():
            loss, rows = self.compute_loss(batch)
        if any_rank(not bool(torch.isfinite(loss.detach())), self.ctx):
            self._stop_on_nonfinite()
        (loss / parts).backward()
        return float(loss.detach()), rows

    def compute_loss(self, batch: dict[str, Any]) -> tuple[torch.Tensor, int]:
        """The training loss of one batch on the device, and the rows it scored."""
        out = scoring.rows(self.mode, self.forward(batch), batch)
        return self.loss_fn(out.logits.float(), out.y), int(out.logits.shape[0])

    def _stop_on_nonfinite(self) -> NoReturn:
        last = self.checkpointer.last
        kept = f"last good checkpoint: {last}" if last.is_file() else "no checkpoint was written yet"
        where = f"step {self.step + 1} (round {self.round})"
        raise NonFiniteLoss(f"non-finite loss at {where}; stopping, {kept} left unchanged")

    def stop_reason(self) -> str | None:
        if self.early_stopping.exhausted:
            return f"no val improvement for {self.early_stopping.bad_rounds} {self.unit}s"
        if self.cfg.train.max_steps and self.step >= self.cfg.train.max_steps:
            return f"train.max_steps={self.cfg.train.max_steps} reached"
        if self.round >= self.rounds:
            return f"all {self.rounds} {self.unit}s done"
        return None

    @property
    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    # ---------------------------------------------------------------- state and resume
    def state_dict(self) -> dict[str, Any]:
        """The checkpoint content (``rng`` is added by the checkpointer, from every rank)."""
        epoch, batch = divmod(self.step * self.accum, self.data.steps_per_epoch)
        return {
            "model": self.model.state_dict(),
            "model_name": self.cfg.model.name,
            "model_config": self.model_config,
            "task": self.cfg.task,
            "config": typed.to_dict(self.cfg),
            "identity": {"keys": self.identity, "hash": run_id.short_hash(self.identity)},
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "step": self.step,
            "round": self.round,
            "data": {
                "epoch": epoch,
                "batch": batch,
                "steps_per_epoch": self.data.steps_per_epoch,
                "grad_accum_steps": self.accum,
            },
            **self.early_stopping.state_dict(),
            **self.metrics.state_dict(),
            "finished": self.finished,
            "world_size": self.ctx.world_size,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved_accum = state["data"].get("grad_accum_steps", 1)
        if saved_accum != self.accum:
            raise ckpt.CheckpointError(
                f"checkpoint trained with train.grad_accum_steps={saved_accum}, this run has {self.accum}: "
                "the data position would not line up (or train.resume=false to start over)"
            )
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step, self.round = int(state["step"]), int(state["round"])
        self.early_stopping.load_state_dict(state)
        self.metrics.load_state_dict(state)
        self.finished = bool(state["finished"])
        # Restored once the data stream has been replayed to the resume position (see _stream).
        self._resume_rng = state["rng"][self.ctx.rank]

    def resume(self) -> bool:
        state = self.checkpointer.load_last(self.data.steps_per_epoch)
        if state is None:
            return False
        self.load_state_dict(state)
        # A rerun with more epochs/chunks/steps extends a finished run; patience stays spent.
        self.finished = self.finished and self.stop_reason() is not None
        log.info("resumed from %s at step %d (round %d)", self.checkpointer.last, self.step, self.round)
        return True

    def _stream(self) -> Iterator[dict[str, Any]]:
        """Training batches from the current step on, epoch after epoch (same count on every rank).

        The first epoch's iterator is created and advanced to the data position *now*, so that a
        resumed run restores its RNG state after the replay, exactly where the killed run was.
        """
        epoch, skip = divmod(self.step * self.accum, self.data.steps_per_epoch)
        first = self.data.train_iter(epoch, skip)
        later = (self.data.train_iter(e, 0) for e in itertools.count(epoch + 1))
        return itertools.chain(first, itertools.chain.from_iterable(later))

    # ---------------------------------------------------------------- evaluation
    def predict(self, split: str, max_batches: int = 0) -> scoring.Predictions | None:
        """Every sample of ``split`` scored once across ranks, gathered on rank 0."""
        batches = self.data.eval_iter(split, max_batches)
        pred = scoring.predict(self.model, batches, self.spec, self.mode, self.ctx.device, self.cfg.train.amp)
        return scoring.gather_predictions(pred, self.ctx)

    def validate(self) -> float:
        """The selection metric on val (a fixed window of batches in chunk mode), on every rank."""
        window = self.cfg.train.val_steps if self.chunked else 0
        pred = self.predict("val", window)
        value = float("nan")
        if pred is not None:
            scores = scoring.score(self.spec, pred, bootstrap=0, seed=self.cfg.train.seed)["metrics"]
            value = scores[self.spec.selection_metric]["value"]
            self.metrics.record_val(self.round, self.step, scores, len(pred.sample_ids))
        return float(broadcast_object(value, self.ctx))

    def final(self) -> dict[str, Any] | None:
        """Score val and test with the best checkpoint; rank 0 writes metrics and predictions."""
        source = self.checkpointer.for_scoring()
        state = ckpt.load(source, map_location="cpu", full=False)
        self.model.load_state_dict(state["model"])
        results: dict[str, Any] = {
            "task": self.cfg.task,
            "model": self.cfg.model.name,
            "seed": self.cfg.train.seed,
            "identity": run_id.short_hash(self.identity),
            "checkpoint": str(source),
            "best": state.get("best"),
            "selection_metric": self.spec.selection_metric,
            "hourly_mode": self.mode,
            "world_size": self.ctx.world_size,
            "steps": state.get("step"),
            "auprc_definition": "average precision (step-wise), not the PR-curve trapezoid",
            "throughput": self.metrics.throughput(),
        }
        for split, filename in (("val", "predictions_val.parquet"), ("test", "predictions.parquet")):
            pred = self.predict(split)
            if pred is None:
                continue
            results[split] = scoring.score(self.spec, pred, self.cfg.train.bootstrap, self.cfg.train.seed)
            scoring.write_predictions(pred, self.run_dir / filename)
        if self.ctx.is_main:
            scoring.write_json(results, self.run_dir / "metrics.json")
            self.metrics.close()
            return results
        return None


class PretrainTrainer(Trainer):
    """``mode=pretrain``: the same loop, checkpoints, resume and early stopping; the model's
    forward is its SSL loss over the global batch (``trainer.models.ssl``), images get the SSL
    augmentations first, validation is the val loss (negated: EarlyStopping keeps the highest
    value) and every epoch's weights are kept for model selection."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.keep_rounds = True
        self.val_samples = 0

    def compute_loss(self, batch: dict[str, Any]) -> tuple[torch.Tensor, int]:
        batch = {**batch, "image": ssl_augment(batch["image"], self.cfg.augment)}
        return self.forward(batch)["loss"].float(), int(batch["image"].shape[0])

    @torch.no_grad()
    def val_loss(self) -> tuple[float, int]:
        """Mean loss over val batches (each rank its share, summed over ranks). Eval batches are
        not gathered (their sizes differ across ranks); one-row batches have no negatives and no
        variance, so they are left out."""
        window = self.cfg.train.val_steps if self.chunked else 0
        total = torch.zeros(2, dtype=torch.float64)
        self.model.eval()
        try:
            for batch in self.data.eval_iter("val", window):
                rows = int(batch["image"].shape[0])
                if rows < 2:
                    continue
                with self.autocast():
                    loss = self.model(scoring.move(batch, self.ctx.device))["loss"]
                total += torch.tensor([float(loss) * rows, rows], dtype=torch.float64)
        finally:
            self.model.train()
        if self.ctx.distributed:
            total = total.to(self.ctx.device)
            torch.distributed.all_reduce(total)
        loss_sum, rows = total.tolist()
        return (loss_sum / rows if rows else float("nan")), int(rows)

    def validate(self) -> float:
        loss, self.val_samples = self.val_loss()
        if self.ctx.is_main:
            self.metrics.record_val(self.round, self.step, {"loss": {"value": loss}}, self.val_samples)
        return -loss

    def final(self) -> dict[str, Any] | None:
        """No labels to score: rank 0 writes the val-loss history and the selected epoch."""
        best = self.early_stopping.best
        results = {
            "task": self.cfg.task,
            "mode": self.cfg.mode,
            "model": self.cfg.model.name,
            "seed": self.cfg.train.seed,
            "identity": run_id.short_hash(self.identity),
            "checkpoint": str(self.checkpointer.for_scoring()),
            "best": {"val_loss": -best["value"] if best["value"] is not None else None, **best},
            "world_size": self.ctx.world_size,
            "steps": self.step,
            "history": self.metrics.history,
            "throughput": self.metrics.throughput(),
        }
        if best["value"] is not None:
            results["val"] = {"metrics": {"loss": {"value": -best["value"]}}, "n_samples": self.val_samples}
        if self.ctx.is_main:
            scoring.write_json(results, self.run_dir / "metrics.json")
            self.metrics.close()
            return results
        return None


TRAINERS: dict[str, type[Trainer]] = {
    "supervised": Trainer,
    "pretrain": PretrainTrainer,
    "probe": Trainer,
    "finetune": Trainer,
}


def write_config(cfg: RunConfig, model_config: dict[str, Any], run_dir: Path) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    resolved = typed.to_dict(cfg)
    resolved["model"]["resolved"] = model_config
    (run_dir / "config.yaml").write_text(yaml.safe_dump(resolved, sort_keys=False))


def run(cfg: RunConfig, ctx: DistContext) -> dict[str, Any] | None:
    """Train and score one run; returns rank 0's metrics (None on other ranks)."""
    seed_everything(cfg.train.seed, ctx.rank)
    data = build_data(cfg, ctx)
    # Every rank checks the run folder before any rank changes it: a run of another identity
    # there is one clear error on all ranks, and its config.yaml is never rewritten.
    identity, start_over = run_id.identity_for_run(cfg, data.manifest)
    barrier(ctx)
    model = build_model(cfg)
    if cfg.mode == "probe" and cfg.train.cache_features:
        data = feature_cache.cached_data(cfg, ctx, model, data)
    trainer = TRAINERS[cfg.mode](cfg, ctx, model, data, identity)
    if ctx.is_main:
        if start_over:
            run_id.clear_run_dir(trainer.run_dir)
        write_config(cfg, trainer.model_config, trainer.run_dir)
        run_id.write_run_file(trainer.run_dir, identity)
        log.info(
            "run %s: %d steps/epoch per rank, %s, world %d on %s",
            trainer.run_dir,
            data.steps_per_epoch,
            f"chunks of {trainer.steps_per_round} steps" if trainer.chunked else f"{trainer.rounds} epochs",
            ctx.world_size,
            ctx.device,
        )
    trainer.train()
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
