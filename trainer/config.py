"""The trainer's typed run config: task, model, data, optim, train.

Layers, later wins: ``conf/train/default.yaml``, ``conf/data/<data>.yaml`` (default ``wds``),
``conf/task/<task>.yaml``, ``conf/train/<train>.yaml`` when ``train=<preset>`` names another
preset (e.g. ``smoke``), then ``key=value`` words. ``task=``, ``model=``,
``data=`` and ``train=`` name presets. ``model=X`` sets ``model.name``; any other ``model.<key>=v``
word is a model option (kept in ``model.args``) that ``trainer.models`` validates against the
model's own typed config (``conf/model/<name>.yaml``), so unknown model keys are errors too.

``mode=`` picks what the one trainer does (``MODES``): supervised training (default), SSL
pretraining (``mode=pretrain ssl=convirt|vicreg|align``: ``ssl=`` names the model, task
defaults to pheno), or the evaluation of a pretraining run (``mode=probe|finetune
encoder=<pretraining run folder> [features=both|ehr|cxr]``: the ``ssl_probe`` / ``ssl_finetune``
model with ``model.encoder_ckpt`` / ``model.features``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from conf import typed
from conf.tasks import TASK_NAMES, TaskSpec, task_spec
from trainer.selfsup.augment import AugmentConfig

# mode -> (the model kind it trains, the model it uses when the command names none)
MODES: dict[str, tuple[str, str | None]] = {
    "supervised": ("supervised", None),
    "pretrain": ("pretrain", "convirt"),
    "probe": ("supervised", "ssl_probe"),
    "finetune": ("supervised", "ssl_finetune"),
}
PRETRAIN_TASK = "pheno"  # SSL pretraining data: the paired training samples of this task by default


@dataclass
class ModelConfig:
    name: str = "uni_ehr"
    args: dict[str, Any] = field(default_factory=dict)


@dataclass
class DataConfig:
    shards: str = ""  # root holding <task>/<split>/*.tar and manifest.json (local path or s3://)
    loader: Literal["wds", "dali"] = "wds"
    dali_device: Literal["cpu", "mixed"] = "cpu"
    dali_threads: int = 0  # 0: this rank's share of the node's cores (shards.dali.size_resources)
    dali_prefetch: int = 2  # batches DALI decodes ahead per rank
    batch_size: int = 16
    eval_batch_size: int = 64
    num_workers: int = 2
    pin_memory: bool = True  # page-locked host batches (CUDA runs): non_blocking copies overlap compute
    persistent_workers: bool = True  # eval loaders keep their workers between validations
    shuffle_buffer: int = 256
    image_resize: int = 256  # SPEC §10: resize short side, then center crop (tiny tests use 64/56)
    image_crop: int = 224


@dataclass
class OptimConfig:
    name: Literal["adam", "lars"] = "adam"  # lars: the SSL reference's (trainer.selfsup.lars)
    lr: float = 1e-4
    beta1: float = 0.9
    beta2: float = 0.999  # the reference passes 0.9 here by mistake (SPEC §10)
    weight_decay: float = 0.0
    scheduler: Literal["constant", "cosine"] = "constant"
    warmup_steps: int = 0
    grad_clip: float = 0.0  # 0: off
    momentum: float = 0.9  # lars only
    lars_eta: float = 0.001  # lars trust coefficient


@dataclass
class TrainConfig:
    seed: int = 0
    epochs: int = 50
    # Chunk-wise training (hourly tasks): > 0 replaces epochs by chunks of this many steps.
    chunk_steps: int = 0
    max_chunks: int = 100
    val_steps: int = 0  # > 0: validate on a fixed window of this many batches (chunk mode only)
    patience: int = 10  # epochs (or chunks) without val improvement before stopping
    hourly_mode: Literal["sample", "sequence"] = "sample"
    amp: bool = False  # bf16 autocast
    compile: bool = False
    channels_last: bool = True  # NHWC CNN weights and images (tensor cores; same results)
    cudnn_benchmark: bool = True  # autotune conv kernels once (fixed image sizes); CUDA only
    grad_accum_steps: int = 1  # batches per optimizer step: global batch = batch x world x this
    device: Literal["auto", "cpu", "cuda"] = "auto"
    max_steps: int = 0  # > 0: cap on total optimizer steps (smoke runs, benchmarks)
    log_every: int = 50
    ckpt_every: int = 0  # > 0: also checkpoint every N steps (resume granularity)
    bootstrap: int = 1000
    runs_dir: str = "runs"
    run_name: str = ""  # set: runs_dir/task/model/<run_name>/seed, a folder beside the default one
    resume: bool = True  # pick up checkpoints/last.pt in the run dir when present
    progress: Literal["auto", "always", "never"] = "auto"  # auto: a bar only on a TTY
    cache_features: bool = True  # mode=probe: encode each split once, train the head on the cache


@dataclass
class RunConfig:
    task: str = "ihm"
    mode: Literal["supervised", "pretrain", "probe", "finetune"] = "supervised"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)  # mode=pretrain only

    def __post_init__(self) -> None:
        task_spec(self.task)  # unknown task: a clear error now, not deep in the loop
        if self.data.batch_size < 1 or self.data.eval_batch_size < 1:
            raise typed.ConfigError("data.batch_size and data.eval_batch_size must be >= 1")
        if not 0 < self.data.image_crop <= self.data.image_resize:
            raise typed.ConfigError(
                f"data.image_crop ({self.data.image_crop}) must be in 1..data.image_resize ({self.data.image_resize})"
            )
        name = self.train.run_name
        if name in (".", "..") or "/" in name or "\\" in name or name.isdigit():
            raise typed.ConfigError(
                f"train.run_name={name!r} must be one folder name that is not a number (seeds are)"
            )

    @property
    def spec(self) -> TaskSpec:
        return task_spec(self.task)

    def run_dir(self) -> Path:
        """One folder per run identity (trainer.identity); ``train.run_name`` gives a run of
        another identity its own folder while the default layout stays as it was."""
        return run_root(self.train.runs_dir, self.task, self.model.name, self.train.run_name) / str(
            self.train.seed
        )


def run_root(runs_dir: str | Path, task: str, model: str, run_name: str = "") -> Path:
    """The folder holding the seed folders of ``model``'s runs on ``task``: the run layout,
    shared by the trainer and the lookup of the unimodal runs a fusion model starts from."""
    return Path(runs_dir, task, model, *((run_name,) if run_name else ()))


PRESET_GROUPS = {"data": "wds", "task": None, "train": None}
# Short words of the SSL modes -> the model option they set.
MODEL_WORDS = {"ssl": "model.name", "encoder": "model.args.encoder_ckpt", "features": "model.args.features"}


def mode_defaults(words: list[str]) -> list[str]:
    """Words a mode implies unless the command gives them: its model, and pheno for pretraining."""
    given = dict(w.partition("=")[::2] for w in words)
    mode = given.get("mode", "supervised")
    if mode not in MODES:
        raise typed.ConfigError(f"mode={mode!r} is not one of {list(MODES)}")
    default_model = MODES[mode][1]
    implied = []
    if default_model and not any(k in given for k in ("model", "ssl", "model.name")):
        implied.append(f"model={default_model}")
    if mode == "pretrain" and "task" not in given:
        implied.append(f"task={PRETRAIN_TASK}")
    return implied + words


def load_run_config(words: list[str]) -> RunConfig:
    """Build the run config from command-line words (presets first, then overrides)."""
    chosen: dict[str, str | None] = dict(PRESET_GROUPS)
    rest: list[str] = []
    for word in mode_defaults(words):
        key, _, value = word.partition("=")
        if key in chosen and value:
            chosen[key] = value
            if key == "task":
                rest.append(word)
        elif key in MODEL_WORDS and value:
            rest.append(f"{MODEL_WORDS[key]}={value}")
        elif key == "model" and value:
            rest.append(f"model.name={value}")
        elif key.startswith("model.") and key not in ("model.name",) and not key.startswith("model.args."):
            rest.append(f"model.args.{key[len('model.') :]}={value}")
        else:
            rest.append(word)
    if not chosen["task"]:
        raise typed.ConfigError(f"task=<name> is required ({', '.join(TASK_NAMES)})")
    layers = [typed.load_yaml(typed.preset_path("train", "default"))]
    layers += [typed.load_yaml(typed.preset_path(group, name)) for group, name in chosen.items() if name]
    return typed.load(RunConfig, *layers, overrides=rest)
