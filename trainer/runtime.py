"""What every trainer entry point shares: the model a run config names, exit statuses, the
process-group shell around a command's body and the one-line metric summary.

``trainer.train`` (training) and ``trainer.rescore`` (scoring a checkpoint or an untrainable
model) both build on this module; it imports neither of them, which keeps the dependency graph
of ``trainer/`` free of cycles (tests/test_layering.py checks it).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from torch import nn

from conf import typed
from trainer import checkpoint as ckpt
from trainer.components import Checkpointer
from trainer.config import MODES, RunConfig, run_root
from trainer.data import DataError
from trainer.distributed import DistContext, init_distributed, setup_logging, shutdown
from trainer.models.pretrained import PretrainedError

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
    (PretrainedError, EXIT_CONFIG),  # a fusion run whose unimodal runs are missing or do not fit
)


def run_checkpoint(runs_dir: str | Path, task: str, model: str, seed: int | None, run_name: str = "") -> Path:
    """The best checkpoint a run of ``model`` on ``task`` writes (the layout of
    ``RunConfig.run_dir`` and the Checkpointer); seed None: the only seed run there."""
    root = run_root(runs_dir, task, model, run_name)
    if seed is None:
        seeds = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
        if len(seeds) != 1:
            from trainer.models import PretrainedError

            raise PretrainedError(
                f"cannot pick a {model} checkpoint under {root}: seeds found {seeds}; "
                "set model.pretrained_seed or give the file with model.ehr_ckpt / model.cxr_ckpt"
            )
        seed_dir = seeds[0]
    else:
        seed_dir = str(seed)
    return Checkpointer.best_of(root / seed_dir)


def find_pretrained(
    name: str, model_cfg: Any, task: str, runs_dir: str | Path, seed: int | None, run_name: str = ""
) -> dict[str, Path]:
    """Where the unimodal runs model ``name`` starts from are, for the inputs its config does not
    give a file for: the run of the same seed and ``train.run_name`` in the same runs folder,
    unless the model config says otherwise (``runs_dir``, ``pretrained_seed``, an input's task
    field)."""
    from trainer.models import model_class

    inputs = model_class(name).checkpoint_inputs(model_cfg)
    if not inputs:
        return {}
    runs_dir = model_cfg.runs_dir or runs_dir
    seed = model_cfg.pretrained_seed if model_cfg.pretrained_seed is not None else seed
    return {
        slot: run_checkpoint(runs_dir, need.source_task(model_cfg, task), need.model, seed, run_name)
        for slot, need in inputs.items()
        if need.explicit(model_cfg) is None
    }


def check_input_sizes(model_cfg: Any, cfg: RunConfig) -> None:
    """The model's input sizes against what the loader feeds it: 76 EHR features per bin, and a
    ViT's patch grid against the crop (a mismatch would only surface at the first forward)."""
    from shards.record import N_FEATURES
    from trainer.models.config import EncoderConfig

    if not isinstance(model_cfg, EncoderConfig):
        return
    if model_cfg.ehr_input_dim != N_FEATURES:
        raise typed.ConfigError(
            f"model.ehr_input_dim={model_cfg.ehr_input_dim}, but the shards hold {N_FEATURES} features per bin"
        )
    if model_cfg.cxr_encoder == "vit" and model_cfg.vit_image_size != cfg.data.image_crop:
        raise typed.ConfigError(
            f"model.vit_image_size={model_cfg.vit_image_size} differs from data.image_crop={cfg.data.image_crop}: "
            "set both to the same size"
        )


def check_mode_model(mode: str, name: str) -> None:
    """A model fits a mode by its kind; probe and finetune have their one model each."""
    from trainer.models import model_class

    kind, (wanted, default) = model_class(name).kind, MODES[mode]
    if kind != wanted:
        raise typed.ConfigError(
            f"model {name!r} is a {kind} model, mode={mode} trains {wanted} ones "
            "(SSL pretraining: mode=pretrain ssl=convirt|vicreg|align)"
        )
    if mode in ("probe", "finetune") and name != default:
        raise typed.ConfigError(
            f"mode={mode} uses model {default!r} (encoder=<pretraining run>), not {name!r}"
        )


def build_model(cfg: RunConfig, name: str | None = None, args: dict[str, Any] | None = None) -> nn.Module:
    """The model ``cfg`` names (or ``name`` with ``args``, e.g. a checkpoint's own), handed the
    checkpoint files it starts from."""
    from trainer.models import create_model, model_config

    name = name or cfg.model.name
    check_mode_model(cfg.mode, name)
    model_cfg = model_config(name, dict(cfg.model.args if args is None else args))
    check_input_sizes(model_cfg, cfg)
    paths = find_pretrained(name, model_cfg, cfg.task, cfg.train.runs_dir, cfg.train.seed, cfg.train.run_name)
    return create_model(name, model_cfg, cfg.spec, checkpoints=paths)


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
