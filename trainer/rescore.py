"""Score a model without training it: a saved checkpoint, or a model with nothing to train.

    python -m trainer.rescore checkpoint=PATH [split=val,test] [out=DIR] [allow_other_shards=true]
        [data.shards=... data.eval_batch_size=... ...]
    python -m trainer.rescore task=ihm model=late data.shards=... [split=val,test]

A checkpoint is rebuilt from its own config (a ``key=value`` word overrides it) and writes only
where ``out=DIR`` says, never over its run's files. The checkpoint's run identity
(``trainer.identity``) is checked: scoring options may change (``data.eval_batch_size``,
``data.num_workers``, ``data.loader``, ``train.amp``, ``train.hourly_mode``, ``train.bootstrap``,
``train.device``, ``data.shards`` pointing at a copy of the same shards); shards of another
content, or other ``data.image_resize`` / ``data.image_crop``, need ``allow_other_shards=true``;
any other identity key (``optim.lr``, ``train.seed``, ...) is an error, since rescoring trains
nothing. A checkpoint written before identities still loads (a warning says its shards are
unknown). A model built from ``task=... model=...`` (late fusion) is scored into its run dir,
like a trained run, which holds one identity as a training run's does.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from conf import typed
from trainer import checkpoint as ckpt
from trainer import identity as run_id
from trainer import scoring
from trainer.config import RunConfig, load_run_config
from trainer.data import ShardData, build_data
from trainer.distributed import DistContext, barrier
from trainer.runtime import EXIT_CONFIG, build_model, guarded, summary_line

log = logging.getLogger("medmod.trainer.rescore")


@dataclass
class RescoreArgs:
    """The words of this command that are not run-config overrides."""

    checkpoint: str | None = None
    out_dir: str | None = None
    splits: list[str] = field(default_factory=lambda: ["test"])
    allow_other_shards: bool = False


def _split_words(words: list[str]) -> tuple[RescoreArgs, list[str]]:
    args, rest = RescoreArgs(), []
    for word in words:
        key, _, value = word.partition("=")
        if key == "checkpoint":
            args.checkpoint = value
        elif key == "out":
            args.out_dir = value
        elif key == "split":
            args.splits = [s for s in value.split(",") if s]
        elif key == "allow_other_shards":
            if value not in ("true", "false"):
                raise typed.ConfigError(f"allow_other_shards must be true or false, got {value!r}")
            args.allow_other_shards = value == "true"
        else:
            rest.append(word)
    return args, rest


def score_model(
    cfg: RunConfig,
    ctx: DistContext,
    model: nn.Module,
    data: ShardData,
    splits: list[str],
    out_dir: Path | None,
) -> dict[str, Any] | None:
    """Score ``model`` as it is on ``splits`` (no training): late fusion, or a saved checkpoint.

    Predictions (and metrics.json) go to ``out_dir`` when given; rank 0 returns the metrics."""
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


def _late_run(cfg: RunConfig, ctx: DistContext, data: ShardData) -> Path:
    """The run dir a model scored as built (late fusion) writes to, checked and recorded like a
    training run's (``trainer.identity``)."""
    keys, start_over = run_id.identity_for_run(cfg, data.manifest)
    barrier(ctx)
    run_dir = cfg.run_dir()
    if ctx.is_main:
        if start_over:
            run_id.clear_run_dir(run_dir)
        run_id.write_run_file(run_dir, keys)
    return run_dir


def evaluate_checkpoint(words: list[str]) -> int:
    """``checkpoint=PATH [split=val,test] [out=DIR] [allow_other_shards=true]`` rescored (config
    from the checkpoint, overridable within its identity), or a model built from
    ``task=... model=...`` and scored as it is into its run dir (models with nothing to train,
    e.g. late fusion)."""
    if any(w in ("-h", "--help") for w in words):
        print(__doc__)
        return 0
    try:
        args, rest = _split_words(words)
        if args.checkpoint:
            state = ckpt.load(args.checkpoint, full=False)
            base = state.get("config") or {}
            cfg = typed.load(RunConfig, base, overrides=rest)
        else:
            cfg = load_run_config(rest)
    except (typed.ConfigError, ckpt.CheckpointError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_CONFIG

    def body(ctx: DistContext) -> dict[str, Any] | None:
        data = build_data(cfg, ctx)
        if args.checkpoint:
            run_id.check_checkpoint(state, Path(args.checkpoint), cfg, data.manifest, args.allow_other_shards)
            model = build_model(cfg, state["model_name"], state["model_config"])
            model.load_state_dict(state["model"])
            # A rescored checkpoint writes only where asked (out=DIR), never over its run's files.
            target = Path(args.out_dir) if args.out_dir else None
        else:
            target = Path(args.out_dir) if args.out_dir else _late_run(cfg, ctx, data)
            model = build_model(cfg)
        return score_model(cfg, ctx, model, data, args.splits, target)

    code, results = guarded(cfg, body)
    if results is not None:
        print(summary_line(results))
    return code


def main(argv: list[str] | None = None) -> int:
    """Rescore a checkpoint on a split: ``checkpoint=PATH [split=test] [any run-config override]``."""
    return evaluate_checkpoint(sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    sys.exit(main())
