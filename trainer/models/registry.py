"""Models by name: one registry so the trainer, tests and benchmarks never list models by hand."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from conf import typed
from trainer.models.config import PretrainedConfig
from trainer.models.pretrained import Checkpoints
from trainer.tasks import TaskSpec

_MODELS: dict[str, type] = {}


def register_model(name: str) -> Callable[[type], type]:
    """Class decorator: make ``cls`` buildable as ``model=<name>``; cls.config_class is its schema."""

    def wrap(cls: type) -> type:
        if name in _MODELS:
            raise ValueError(f"model {name!r} registered twice ({_MODELS[name].__name__}, {cls.__name__})")
        if not dataclasses.is_dataclass(getattr(cls, "config_class", None)):
            raise TypeError(f"{cls.__name__} needs a dataclass config_class")
        _check_pretrained_inputs(cls)
        cls.name = name
        _MODELS[name] = cls
        return cls

    return wrap


def _check_pretrained_inputs(cls: type) -> None:
    """A model's declared checkpoint inputs must name fields its config has (typos fail at import)."""
    fields = {f.name for f in dataclasses.fields(cls.config_class)}
    for slot, need in getattr(cls, "pretrained_inputs", {}).items():
        wanted = {need.path_field, need.task_field} - {None}
        if not issubclass(cls.config_class, PretrainedConfig) or wanted - fields:
            raise TypeError(
                f"{cls.__name__}: input {slot!r} needs a PretrainedConfig config_class with {sorted(wanted)}"
            )


def list_models(kind: str | None = None) -> list[str]:
    """Registered names; ``kind`` ("supervised" / "pretrain") keeps the models of that kind."""
    return sorted(name for name, cls in _MODELS.items() if kind is None or cls.kind == kind)


def model_class(name: str) -> type:
    try:
        return _MODELS[name]
    except KeyError:
        raise typed.ConfigError(f"unknown model {name!r}; registered: {', '.join(list_models())}") from None


def model_config(name: str, overrides: dict[str, Any] | list[str] | None = None) -> Any:
    """The typed config of model ``name``: ``conf/model/<name>.yaml`` then ``overrides``.

    ``overrides`` is a mapping (``{"ehr_ckpt": ...}``) or ``key=value`` words without the
    ``model.`` prefix; unknown keys raise ConfigError naming the valid ones.
    """
    cls = model_class(name)
    defaults = typed.load_yaml(typed.preset_path("model", name))
    if isinstance(overrides, list):
        return typed.load(cls.config_class, defaults, overrides=overrides)
    return typed.load(cls.config_class, defaults, overrides or {})


def create_model(
    name: str, cfg: Any = None, task: TaskSpec | None = None, *, checkpoints: Checkpoints | None = None
) -> Any:
    """Build model ``name`` for ``task``.

    ``cfg``: None (YAML defaults), a mapping / list of overrides, or an instance of the model's
    config class. ``checkpoints``: files for the model's ``checkpoint_inputs`` slots that its
    config does not name explicitly (the trainer finds them in its runs folder,
    ``trainer.runtime.find_pretrained``); a needed one missing is a PretrainedError.
    """
    if task is None:
        raise ValueError("create_model needs the TaskSpec (trainer.tasks.task_spec(name))")
    cls = model_class(name)
    if cfg is None or isinstance(cfg, (dict, list)):
        cfg = model_config(name, cfg)
    elif not isinstance(cfg, cls.config_class):
        raise TypeError(f"model {name!r} takes a {cls.config_class.__name__}, got {type(cfg).__name__}")
    return cls(cfg, task, checkpoints=checkpoints)
