"""A run's identity: what determines its result, so that a run folder holds one run only.

The identity is the resolved run config as flat dotted keys (``optim.lr``, ``model.ehr_encoder``;
the model part is the model's full typed config, defaults included, not the words that set it),
minus the keys below, plus ``data.manifest``: a hash of the shard set's content for the task,
and for a model that starts from unimodal runs by convention, ``model.pretrained.<slot>``: the
identity hash of each such run (None when it has none recorded); for an SSL probe or fine-tune,
``model.pretrained.encoder``: its pretraining run's hash and selected epoch.
Checkpoints carry it (``identity``), the run folder records it in ``run.json``; a run resumes only
into a folder of the same identity, and ``trainer.rescore`` checks a checkpoint against it.

Left out, because they cannot change what is trained:

- ``BOOKKEEPING``: where and how a run reports (``train.runs_dir``, ``train.run_name``,
  ``train.progress``, ``train.log_every``), resume mechanics (``train.resume``,
  ``train.ckpt_every``: a resume is exact, so checkpoint granularity changes nothing), the shard
  *location* ``data.shards`` (``data.manifest`` identifies the content: a copy on S3 is the same
  data), and ``train.bootstrap`` (CI resampling of the final scoring, redone on every rerun).
- ``EXECUTION``: the same computation on other hardware, kernels or loader resources
  (``train.device``, ``train.compile``, ``train.channels_last``, ``train.cudnn_benchmark``, the
  DALI device / threads / prefetch, pinned memory, persistent eval workers); results agree up to
  float rounding. ``train.grad_accum_steps`` is an identity key (it sets the effective batch). ``train.amp`` is
  not one of them: bf16 changes the arithmetic on purpose.
- ``EXTENT`` (``train.epochs``, ``train.max_chunks``, ``train.max_steps``): how far a run goes, so
  that a rerun with more epochs extends a finished run. Under ``optim.scheduler=cosine`` the total
  step count shapes the learning rate, so there they are identity keys.

``data.num_workers`` *is* an identity key: webdataset splits shards over DataLoader workers, so
the worker count changes the training order. A config key added later is an identity key unless
listed here; a key that only one side of a comparison knows (an older run) is not compared.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from conf import typed
from trainer.config import RunConfig

log = logging.getLogger("medmod.trainer.identity")

BOOKKEEPING = frozenset(
    {
        "train.runs_dir",
        "train.run_name",
        "train.progress",
        "train.log_every",
        "train.resume",
        "train.ckpt_every",
        "train.bootstrap",
        "data.shards",
    }
)
EXECUTION = frozenset(
    {
        "train.device",
        "train.compile",
        "train.channels_last",
        "train.cudnn_benchmark",
        "data.dali_device",
        "data.dali_threads",
        "data.dali_prefetch",
        "data.pin_memory",
        "data.persistent_workers",
    }
)
EXTENT = frozenset({"train.epochs", "train.max_chunks", "train.max_steps"})
MANIFEST_KEY = "data.manifest"
PRETRAINED_PREFIX = "model.pretrained."
RUN_FILE = "run.json"

# Manifest fields that describe the records themselves (``sources`` is provenance: the shards'
# sha256 in the task entry already pin the content).
MANIFEST_DATA_FIELDS = ("format_version", "image_size", "ehr_dtype", "n_features")


class IdentityError(typed.ConfigError):
    """A run folder or checkpoint holds a run of another identity than the one asked for."""


@dataclass(frozen=True)
class StoredIdentity:
    """The identity a run folder or checkpoint records; ``source`` says which file told it."""

    keys: dict[str, Any]
    source: Path


def _canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=True).encode()


def manifest_hash(manifest: dict[str, Any], task: str) -> str:
    """sha256 of what the shard set holds for ``task``: record format plus the task's entry
    (normalizer, splits, every shard's sha256). Other tasks and provenance do not count, so adding
    a task to a shard set or copying it elsewhere keeps its runs' identity."""
    content = {k: manifest.get(k) for k in MANIFEST_DATA_FIELDS}
    content["task"] = manifest.get("tasks", {}).get(task)
    return hashlib.sha256(_canonical(content)).hexdigest()


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def excluded_keys(flat: dict[str, Any]) -> frozenset[str]:
    """Keys that are not part of the identity of this (flat) config."""
    extent = frozenset() if flat.get("optim.scheduler") == "cosine" else EXTENT
    return BOOKKEEPING | EXECUTION | extent


def config_identity(
    config: dict[str, Any], model_config: dict[str, Any], data_hash: str | None
) -> dict[str, Any]:
    """Flat identity keys of a resolved config dict (``typed.to_dict(RunConfig)``, or an older
    checkpoint's ``config``) with the model's resolved config; ``data_hash`` None: unknown."""
    model = {"name": (config.get("model") or {}).get("name"), **model_config}
    tree = {k: v for k, v in config.items() if k != "model"} | {"model": model}
    flat = _flatten(json.loads(_canonical(tree)))
    keys = {k: v for k, v in flat.items() if k not in excluded_keys(flat)}
    if data_hash is not None:
        keys[MANIFEST_KEY] = data_hash
    return keys


def short_hash(keys: dict[str, Any]) -> str:
    return hashlib.sha256(_canonical(keys)).hexdigest()[:12]


def run_identity(
    cfg: RunConfig,
    model_config: dict[str, Any],
    manifest: dict[str, Any],
    pretrained: dict[str, str | None] | None = None,
) -> tuple[dict[str, Any], str]:
    """The identity of run ``cfg`` (flat keys) and its short hash: a pure function of the config,
    the model's resolved config, the shard manifest and the identity hashes of the unimodal runs
    the model starts from by convention (``pretrained``, by input slot)."""
    keys = config_identity(typed.to_dict(cfg), model_config, manifest_hash(manifest, cfg.task))
    keys |= {f"{PRETRAINED_PREFIX}{slot}": value for slot, value in sorted((pretrained or {}).items())}
    return keys, short_hash(keys)


def differences(old: dict[str, Any], new: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """``(key, old, new)`` for every key both identities know and that differs, sorted."""
    return sorted((k, old[k], new[k]) for k in old.keys() & new.keys() if old[k] != new[k])


def _values(diffs: list[tuple[str, Any, Any]], side: int) -> str:
    return ", ".join(f"{d[0]}={_text(d[0], d[side])}" for d in diffs)


def _text(key: str, value: Any) -> str:
    """A value as a command-line word would write it; shard hashes cut to 12 characters."""
    if key == MANIFEST_KEY and isinstance(value, str):
        return value[:12]
    return "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


def run_file(run_dir: Path) -> Path:
    return Path(run_dir) / RUN_FILE


def write_run_file(run_dir: Path, keys: dict[str, Any]) -> None:
    """``run.json``: the identity of the run in this folder (written atomically)."""
    from trainer.scoring import write_json

    write_json({"hash": short_hash(keys), "identity": keys}, run_file(run_dir))


def checkpoint_identity(state: dict[str, Any]) -> dict[str, Any] | None:
    """A checkpoint's identity; for one written before identities, what its saved config says
    (no ``data.manifest``); None when it has no config either."""
    if "identity" in state:
        return dict(state["identity"]["keys"])
    config = state.get("config")
    if not config:
        return None
    return config_identity(config, state.get("model_config") or {}, None)


def stored_identity(run_dir: Path) -> StoredIdentity | None:
    """What the run folder holds: ``run.json``, else (a folder from before identities) its
    ``checkpoints/last.pt``; None when it holds no run."""
    from trainer import checkpoint as ckpt
    from trainer.components import Checkpointer

    path = run_file(run_dir)
    if path.is_file():
        return StoredIdentity(json.loads(path.read_text())["identity"], path)
    last = Path(run_dir) / Checkpointer.FOLDER / Checkpointer.LAST
    if last.is_file():
        keys = checkpoint_identity(ckpt.load(last, full=False))
        return None if keys is None else StoredIdentity(keys, last)
    return None


def check_run_dir(run_dir: Path, keys: dict[str, Any], resume: bool) -> bool:
    """May a run of identity ``keys`` go into ``run_dir``? True: a fresh start over another
    identity's files (``train.resume=false``), which the caller clears; False: an empty folder or
    the same identity (resume). Another identity with resuming on is an IdentityError naming the
    differing keys, raised before anything in the folder is touched."""
    stored = stored_identity(run_dir)
    if stored is None:
        return False
    if MANIFEST_KEY not in stored.keys:
        warn_unknown_data(stored.source)
    diffs = differences(stored.keys, keys)
    if not diffs:
        return False
    if not resume:
        log.warning(
            "train.resume=false: starting over in %s (it held a run with %s)", run_dir, _values(diffs, 1)
        )
        return True
    raise IdentityError(
        f"run dir {run_dir} holds a run with {_values(diffs, 1)}, this config has {_values(diffs, 2)}: "
        "use another train.runs_dir / train.run_name, or train.resume=false to start over"
    )


@functools.cache
def warn_unknown_data(source: Path) -> None:
    """Once per file: it predates run identities, so the shards it was trained on are unknown."""
    log.warning("%s was written before run identities: its shard set is unknown and not checked", source)


# Identity keys a rescoring may set: they change how the saved model is scored, not the model.
RESCORE_OPTIONS = frozenset(
    {"data.eval_batch_size", "data.num_workers", "data.loader", "train.amp", "train.hourly_mode"}
)
# Identity keys that change what the model is scored on: other shards, or other image sizes.
SHARD_KEYS = frozenset({MANIFEST_KEY, "data.image_resize", "data.image_crop"})


def check_rescore(
    stored: dict[str, Any], keys: dict[str, Any], source: Path, allow_other_shards: bool
) -> None:
    """A rescoring of the checkpoint at ``source`` (identity ``stored``) under identity ``keys``.

    Scoring options (``RESCORE_OPTIONS``) may differ. Other shards (``SHARD_KEYS``) need
    ``allow_other_shards``: scoring a model on another shard set is legitimate but must be meant.
    Any other difference is an error: rescoring trains nothing, so such an override would change
    nothing but the config the results claim.
    """
    diffs = [d for d in differences(stored, keys) if d[0] not in RESCORE_OPTIONS]
    shards = [d for d in diffs if d[0] in SHARD_KEYS]
    other = [d for d in diffs if d[0] not in SHARD_KEYS]
    if other:
        raise IdentityError(
            f"{source} was trained with {_values(other, 1)}, this command sets {_values(other, 2)}: "
            "rescoring trains nothing, so these keys cannot change; drop the override(s)"
        )
    if shards and not allow_other_shards:
        raise IdentityError(
            f"{source} was trained with {_values(shards, 1)}, this command has {_values(shards, 2)}: "
            "add allow_other_shards=true to score it on another shard set"
        )
    if shards:
        log.info("scoring %s on other shards than it was trained on (%s)", source, _values(shards, 2))


STALE_OUTPUTS = ("run.json", "metrics.json", "predictions.parquet", "predictions_val.parquet")


def clear_run_dir(run_dir: Path) -> None:
    """Remove another identity's outputs and checkpoints before starting over in its folder, so
    no file left there claims to belong to the new run (``tb/`` logs stay)."""
    from trainer.components import Checkpointer

    folder = Path(run_dir)
    stale = [folder / name for name in STALE_OUTPUTS]
    stale += [folder / Checkpointer.FOLDER / name for name in (Checkpointer.LAST, Checkpointer.BEST)]
    for path in stale:
        path.unlink(missing_ok=True)


def resolved_model_config(cfg: RunConfig) -> dict[str, Any]:
    """The model's full typed config as ``model.<key>`` words and its YAML defaults make it."""
    from trainer.models import model_config

    return typed.to_dict(model_config(cfg.model.name, dict(cfg.model.args)))


def recorded_hash(checkpoint: Path) -> str | None:
    """The identity hash of the run a checkpoint belongs to: its folder's ``run.json``, else the
    checkpoint's own record; None when neither tells (missing, or older than identities)."""
    from trainer import checkpoint as ckpt

    path = run_file(Path(checkpoint).parent.parent)
    if path.is_file():
        return json.loads(path.read_text())["hash"]
    if not Path(checkpoint).is_file():
        return None
    state = ckpt.load(checkpoint, full=False)
    return state["identity"]["hash"] if "identity" in state else None


def pretrained_hashes(cfg: RunConfig) -> dict[str, str | None]:
    """By input slot, the identity hash of each unimodal run the model starts from by
    convention (a file given in the model config is identified by its path, a config key): a
    fusion run over retrained unimodal runs is another run."""
    from trainer.models import model_config
    from trainer.runtime import find_pretrained

    t = cfg.train
    model_cfg = model_config(cfg.model.name, dict(cfg.model.args))
    paths = find_pretrained(cfg.model.name, model_cfg, cfg.task, t.runs_dir, t.seed, t.run_name)
    hashes = {slot: recorded_hash(path) for slot, path in paths.items()}
    return hashes | encoder_hash(model_cfg)


def encoder_hash(model_cfg: Any) -> dict[str, str | None]:
    """For an SSL probe / fine-tune over a pretraining run (``encoder=``): slot ``encoder``, the
    pretraining run's identity hash and, for the epoch that model selection chose, that epoch. The
    folder path alone (a config key) would let a probe over a retrained encoder pass for done."""
    source = getattr(model_cfg, "encoder_ckpt", None)
    if not source or getattr(model_cfg, "init", None) != "pretrained":
        return {}
    from trainer.models.ssl import SELECTED, encoder_checkpoint

    path = encoder_checkpoint(source)
    value = recorded_hash(path)
    selection = path.parent.parent / "selection.json"
    if value is not None and path.name == SELECTED.name and selection.is_file():
        value = f"{value}:{json.loads(selection.read_text())['best']}"
    return {"encoder": value}


def training_identity(cfg: RunConfig, manifest: dict[str, Any]) -> dict[str, Any]:
    """The identity keys of training (or late-fusion scoring) run ``cfg`` on these shards."""
    return run_identity(cfg, resolved_model_config(cfg), manifest, pretrained_hashes(cfg))[0]


def identity_for_run(cfg: RunConfig, manifest: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """The identity of run ``cfg`` on these shards, checked against its run folder
    (``check_run_dir``): the keys, and whether the folder's other run is to be cleared first."""
    keys = training_identity(cfg, manifest)
    return keys, check_run_dir(cfg.run_dir(), keys, cfg.train.resume)


def check_checkpoint(
    state: dict[str, Any], source: Path, cfg: RunConfig, manifest: dict[str, Any], allow_other_shards: bool
) -> None:
    """A rescoring of checkpoint ``state`` under ``cfg`` (its own config plus the command's
    overrides) on the shards of ``manifest`` (``check_rescore``). A checkpoint from before
    identities is checked on what its saved config tells, with a warning that its shards are
    unknown."""
    stored = checkpoint_identity(state)
    if stored is None or MANIFEST_KEY not in stored:
        warn_unknown_data(Path(source))
    if stored is None:
        return
    keys = config_identity(typed.to_dict(cfg), state["model_config"], manifest_hash(manifest, cfg.task))
    check_rescore(stored, keys, Path(source), allow_other_shards)
