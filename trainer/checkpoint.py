"""Atomic, complete checkpoints: a kill at any moment leaves the previous file readable.

A checkpoint is one ``torch.save`` dict (format agreed with ``trainer.models``)::

    {"model": state_dict, "model_name": str, "model_config": dict,   # enough to rebuild the model
     "optimizer": ..., "scheduler": ..., "step": int, "round": int,
     "data": {"epoch": int, "batch": int}, "rng": [per-rank RNG states],
     "best": {...}, "history": [...], "config": resolved run config, "task": str}

(``best.pt`` and kept epochs leave out what only a resume needs: see ``Checkpointer``.)

Written to a temporary file in the same folder, flushed and fsync'ed, then ``os.replace``d over
the final name (atomic on POSIX), and the folder fsync'ed so the rename itself is durable.
Read back with ``weights_only=True`` (:func:`safe_load`): tensors, plain containers and the
numpy RNG state only.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger("medmod.trainer.checkpoint")

REQUIRED_KEYS = ("model", "model_name", "model_config", "optimizer", "scheduler", "step", "rng", "data")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read or lacks what a resume needs."""


class _WriteErrors:
    """The file ``torch.save`` writes through. It keeps the OSError a write raised (disk full,
    quota, file-size limit), which torch's zip writer turns into an opaque 'unexpected pos'."""

    def __init__(self, fh: Any) -> None:
        self.fh, self.error = fh, None

    def write(self, data: Any) -> int:
        try:
            return self.fh.write(data)
        except OSError as err:
            self.error = err
            raise

    def flush(self) -> None:
        self.fh.flush()


def save_atomic(state: dict[str, Any], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    out = None
    try:
        with os.fdopen(fd, "wb") as fh:
            out = _WriteErrors(fh)
            torch.save(state, out)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        cause = err if isinstance(err, OSError) else out.error if out is not None else None
        if cause is None:
            raise
        kept = "the previous one is kept" if path.is_file() else "there is no previous one"
        raise CheckpointError(f"cannot write checkpoint {path} ({kept}): {cause}") from err
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return path


def _allowed_globals() -> list[Any]:
    """What a checkpoint may hold besides tensors and plain containers: the numpy pieces of
    ``np.random.get_state()`` (one uint32 array), nothing else."""
    import numpy as np

    multiarray = np._core.multiarray if hasattr(np, "_core") else np.core.multiarray
    return [multiarray._reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]


def safe_load(path: str | Path, map_location: str | torch.device = "cpu") -> Any:
    """``torch.load`` with ``weights_only=True`` and the allow-list above: a checkpoint from
    elsewhere cannot run code when it is read (a pickle naming any other callable is refused)."""
    with torch.serialization.safe_globals(_allowed_globals()):
        return torch.load(path, map_location=map_location, weights_only=True)


def load(path: str | Path, map_location: str | torch.device = "cpu", full: bool = True) -> dict[str, Any]:
    """Read a checkpoint; ``full`` requires everything a resume needs."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        state = safe_load(path, map_location)
    except Exception as err:  # a torn or foreign file: say which, not a pickle traceback
        raise CheckpointError(f"cannot read checkpoint {path}: {err}") from err
    needed = REQUIRED_KEYS if full else ("model", "model_name", "model_config")
    missing = [k for k in needed if k not in state]
    if missing:
        raise CheckpointError(f"checkpoint {path} lacks {missing}")
    return state


def clean_stale_temps(folder: str | Path) -> int:
    """Remove temporaries left by a process killed mid-save; returns how many."""
    folder = Path(folder)
    removed = 0
    for tmp in folder.glob(".*.tmp"):
        tmp.unlink(missing_ok=True)
        removed += 1
    if removed:
        log.info("removed %d stale checkpoint temp file(s) in %s", removed, folder)
    return removed
