"""Score a model without training it: a saved checkpoint, or a model with nothing to train.

    python -m trainer.rescore checkpoint=PATH [split=val,test] [out=DIR] [data.shards=... ...]
    python -m trainer.rescore task=ihm model=late data.shards=... [split=val,test]

A checkpoint is rebuilt from its own config (any ``key=value`` word overrides it, e.g. other
shards) and writes only where ``out=DIR`` says, never over its run's files. A model built from
``task=... model=...`` (late fusion) is scored into its run dir, like a trained run.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

from torch import nn

from conf import typed
from trainer import checkpoint as ckpt
from trainer import scoring
from trainer.config import RunConfig, load_run_config
from trainer.data import build_data
from trainer.distributed import DistContext
from trainer.runtime import EXIT_CONFIG, build_model, guarded, summary_line

log = logging.getLogger("medmod.trainer.rescore")


def _split_words(words: list[str]) -> tuple[str | None, str | None, list[str], list[str]]:
    checkpoint, out_dir, splits, rest = None, None, ["test"], []
    for word in words:
        key, _, value = word.partition("=")
        if key == "checkpoint":
            checkpoint = value
        elif key == "out":
            out_dir = value
        elif key == "split":
            splits = [s for s in value.split(",") if s]
        else:
            rest.append(word)
    return checkpoint, out_dir, splits, rest


def score_model(
    cfg: RunConfig, ctx: DistContext, model: nn.Module, splits: list[str], out_dir: Path | None
) -> dict[str, Any] | None:
    """Score ``model`` as it is on ``splits`` (no training): late fusion, or a saved checkpoint.

    Predictions (and metrics.json) go to ``out_dir`` when given; rank 0 returns the metrics."""
    data = build_data(cfg, ctx)
    mode = cfg.spec.mode(cfg.train.hourly_mode)
    scoring.check_mode(model, mode)
    model = model.to(ctx.device)
    results: dict[str, Any] = {"task": cfg.task, "model": cfg.model.name, "seed": cfg.train.seed}
    for split in splits:
        batches = data.eval_iter(split)
        pred = scoring.gather_predictions(
            scoring.predict(model, batches, cfg.spec, mode, ctx.device, cfg.train.amp), ctx
        )
        if pred is not None:
            results[split] = scoring.score(cfg.spec, pred, cfg.train.bootstrap, cfg.train.seed)
            if out_dir is not None:
                name = "predictions.parquet" if split == "test" else f"predictions_{split}.parquet"
                scoring.write_predictions(pred, out_dir / name)
    if ctx.is_main and out_dir is not None:
        scoring.write_json(results, out_dir / "metrics.json")
    return results if ctx.is_main else None


def evaluate_checkpoint(words: list[str]) -> int:
    """``checkpoint=PATH [split=val,test] [out=DIR]`` rescored (config from the checkpoint,
    overridable, e.g. ``data.shards=``), or a model built from ``task=... model=...`` and scored as
    it is into its run dir (models with nothing to train, e.g. late fusion)."""
    if any(w in ("-h", "--help") for w in words):
        print(__doc__)
        return 0
    checkpoint, out_dir, splits, rest = _split_words(words)
    try:
        if checkpoint:
            state = ckpt.load(checkpoint, full=False)
            base = state.get("config") or {}
            cfg = typed.load(RunConfig, base, overrides=rest)
        else:
            cfg = load_run_config(rest)
    except (typed.ConfigError, ckpt.CheckpointError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_CONFIG

    def body(ctx: DistContext) -> dict[str, Any] | None:
        if checkpoint:
            model = build_model(cfg, state["model_name"], state["model_config"])
            model.load_state_dict(state["model"])
        else:
            model = build_model(cfg)
        # A rescored checkpoint writes only where asked (out=DIR), never over its own run's files.
        target = Path(out_dir) if out_dir else (None if checkpoint else cfg.run_dir())
        return score_model(cfg, ctx, model, splits, target)

    code, results = guarded(cfg, body)
    if results is not None:
        print(summary_line(results))
    return code


def main(argv: list[str] | None = None) -> int:
    """Rescore a checkpoint on a split: ``checkpoint=PATH [split=test] [any run-config override]``."""
    return evaluate_checkpoint(sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    sys.exit(main())
