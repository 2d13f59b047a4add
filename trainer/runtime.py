"""What every trainer entry point shares: the model a run config names, exit statuses, the
process-group shell around a command's body and the one-line metric summary.

``trainer.train`` (training) and ``trainer.rescore`` (scoring a checkpoint or an untrainable
model) both build on this module; it imports neither of them, which keeps the dependency graph
of ``trainer/`` free of cycles (tests/test_layering.py checks it).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from typing import Any, TypeVar

from torch import nn

from conf import typed
from trainer import checkpoint as ckpt
from trainer.config import RunConfig
from trainer.data import DataError
from trainer.distributed import DistContext, init_distributed, setup_logging, shutdown

log = logging.getLogger("medmod.trainer")

EXIT_CONFIG, EXIT_NONFINITE, EXIT_DATA = 2, 3, 4

T = TypeVar("T")


class NonFiniteLoss(RuntimeError):
    """The loss became NaN/inf: the run stops, the last good checkpoint stays as it was."""


EXIT_CODES: tuple[tuple[type[Exception], int], ...] = (
    (NonFiniteLoss, EXIT_NONFINITE),
    (DataError, EXIT_DATA),
    (typed.ConfigError, EXIT_CONFIG),
    (ckpt.CheckpointError, EXIT_CONFIG),
)


def build_model(cfg: RunConfig) -> nn.Module:
    """The model ``cfg`` names, with its typed config (YAML defaults + ``model.*`` words)."""
    from trainer.models import create_model, model_class

    args = dict(cfg.model.args)
    # Fusion models find their unimodal checkpoints under runs_dir: default it to this run's.
    if "runs_dir" in {f.name for f in dataclasses.fields(model_class(cfg.model.name).config_class)}:
        args.setdefault("runs_dir", cfg.train.runs_dir)
    return create_model(cfg.model.name, args, cfg.spec, seed=cfg.train.seed)


def guarded(cfg: RunConfig, body: Callable[[DistContext], T]) -> tuple[int, T | None]:
    """Process group up, ``body(ctx)``, process group down; a known failure is logged as one line
    and mapped to its exit status instead of a traceback."""
    ctx = init_distributed(cfg.train.device)
    setup_logging(ctx.rank)
    try:
        return 0, body(ctx)
    except tuple(cls for cls, _ in EXIT_CODES) as err:
        log.error("%s: %s", type(err).__name__, err)
        return next(code for cls, code in EXIT_CODES if isinstance(err, cls)), None
    finally:
        shutdown()


def _metric_text(name: str, m: dict[str, float]) -> str:
    ci = f" [{m['ci_low']:.4f}, {m['ci_high']:.4f}]" if "ci_low" in m else ""
    return f"{name} {m['value']:.4f}{ci}"


def summary_line(results: dict[str, Any]) -> str:
    """One line per split: each metric with its 95% CI when bootstrapped, and the sample count."""
    lines = []
    for split in ("val", "test"):
        if split in results:
            metrics = "  ".join(_metric_text(k, v) for k, v in results[split]["metrics"].items())
            lines.append(f"{split}: {metrics}  (n={results[split]['n_samples']})")
    return "\n".join(lines)
