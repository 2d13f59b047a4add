"""Model selection for SSL pretraining, as in the paper: a quick linear probe of every kept
pretraining epoch, scored on the val split; the best epoch's encoders become the run's selected
ones, which ``encoder=<pretraining run folder>`` then means for the final probe or fine-tune.

    torchrun --nproc_per_node=N -m trainer.selection encoder=<pretraining run folder> task=ihm \\
        data.shards=... [key=value ...]   (the words of a mode=probe run, e.g. train=smoke)

Each epoch's probe is an ordinary ``mode=probe`` run in its own folder
(``train.run_name=select-<method>-<seed>-epoch_NNNN``: resumable, cached features, metrics).
Writes ``<pretraining run>/selection.json`` (every epoch's val selection metric, the best) and
``checkpoints/selected.pt`` (the best epoch's weights).
"""

from __future__ import annotations

import logging
import math
import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python trainer/selection.py`: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from conf import typed
from trainer import checkpoint as ckpt
from trainer import scoring, train
from trainer.config import RunConfig, load_run_config
from trainer.distributed import DistContext, barrier, broadcast_object
from trainer.models.ssl import SELECTED
from trainer.runtime import EXIT_CONFIG, guarded

log = logging.getLogger("medmod.trainer.selection")


def epoch_checkpoints(run: Path) -> list[Path]:
    epochs = sorted((run / "checkpoints").glob("epoch_*.pt"))
    if not epochs:
        raise typed.ConfigError(
            f"{run} has no checkpoints/epoch_*.pt: encoder= must be a mode=pretrain run folder"
        )
    return epochs


def split_encoder(words: list[str]) -> tuple[Path, list[str]]:
    runs = [w.partition("=")[2] for w in words if w.startswith("encoder=")]
    if len(runs) != 1 or not runs[0]:
        raise typed.ConfigError("encoder=<pretraining run folder> is required (once)")
    return Path(runs[0]), [w for w in words if not w.startswith("encoder=")]


def probe_config(run: Path, epoch: Path, words: list[str]) -> RunConfig:
    name = f"select-{run.parent.name}-{run.name}-{epoch.stem}"
    return load_run_config(["mode=probe", f"encoder={epoch}", f"train.run_name={name}", *words])


def first_config(words: list[str]) -> RunConfig:
    """A probe config of these words: checks them (and gives the device) before any work."""
    run, rest = split_encoder(words)
    return probe_config(run, run / "checkpoints" / "epoch_0000.pt", rest)


def select(words: list[str], ctx: DistContext) -> dict[str, Any] | None:
    """Probe every kept epoch, pick the best by the task's val selection metric (NaN: worst)."""
    run, rest = split_encoder(words)
    scores: dict[str, float] = {}
    metric = ""
    for epoch in epoch_checkpoints(run):
        cfg = probe_config(run, epoch, rest)
        metric = cfg.spec.selection_metric
        results = train.run(cfg, ctx)
        value = results["val"]["metrics"][metric]["value"] if results else None
        scores[epoch.name] = float(broadcast_object(value, ctx))
        log.info("%s: val %s %.4f", epoch.name, metric, scores[epoch.name])
    best = max(scores, key=lambda k: -math.inf if math.isnan(scores[k]) else scores[k])
    selection = {
        "metric": metric,
        "task": cfg.task,
        "scores": scores,
        "best": best,
        "selected": str(run / SELECTED),
    }
    if ctx.is_main:
        ckpt.save_atomic(ckpt.load(run / "checkpoints" / best, full=False), run / SELECTED)
        scoring.write_json(selection, run / "selection.json")
    barrier(ctx)
    return selection if ctx.is_main else None


def main(argv: list[str] | None = None) -> int:
    words = sys.argv[1:] if argv is None else argv
    cfg = typed.from_command_line(words, first_config, __doc__, EXIT_CONFIG)
    if isinstance(cfg, int):
        return cfg
    code, selection = guarded(cfg, lambda ctx: select(words, ctx))
    if selection is not None:
        log.info(
            "selected %s (val %s %.4f)",
            selection["best"],
            selection["metric"],
            selection["scores"][selection["best"]],
        )
    return code


if __name__ == "__main__":
    sys.exit(main())
