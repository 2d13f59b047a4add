"""Typed configs: dataclass schemas filled from YAML files and ``key=value`` overrides.

Every component owns a dataclass; this module turns YAML + command-line words into an instance
of it. Unknown keys are errors that name the key and list the valid ones, because a typo that is
silently ignored produces a benchmark number nobody asked for.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")
CONF_DIR = Path(__file__).resolve().parent


class ConfigError(ValueError):
    """A config file or override does not fit the schema."""


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _is_optional(tp: Any) -> tuple[bool, Any]:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return True, args[0]
    return False, tp


FLOAT_TEXT = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+")


def _coerce(value: Any, tp: Any, where: str) -> Any:
    optional, inner = _is_optional(tp)
    if value is None:
        if optional or tp is Any:
            return None
        raise ConfigError(f"{where}: null is not allowed (expected {tp})")
    tp = inner
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return build(tp, value, where)
    origin = typing.get_origin(tp)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        (item_tp, *_) = typing.get_args(tp) or (Any,)
        items = [_coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if origin is typing.Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(f"{where}: {value!r} is not one of {list(typing.get_args(tp))}")
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str) and FLOAT_TEXT.fullmatch(value):
        return float(value)  # YAML 1.1 reads 3e-4 (no dot in the mantissa) as text
    if tp is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if tp is str and isinstance(value, (str, int, float)) and not isinstance(value, bool):
        return str(value)
    if isinstance(tp, type) and isinstance(value, tp):
        return value
    raise ConfigError(f"{where}: expected {getattr(tp, '__name__', tp)}, got {value!r}")


def build(cls: type[T], data: dict[str, Any] | None, where: str = "") -> T:
    """Build dataclass ``cls`` from a (possibly nested) mapping; unknown keys raise ConfigError."""
    data = dict(data or {})
    types_ = _field_types(cls)
    unknown = sorted(set(data) - set(types_))
    if unknown:
        prefix = f"{where}." if where else ""
        raise ConfigError(
            f"unknown config key(s) {[prefix + k for k in unknown]}; valid keys here: {sorted(types_)}"
        )
    kwargs = {}
    for name, tp in types_.items():
        if name in data:
            kwargs[name] = _coerce(data[name], tp, f"{where}.{name}" if where else name)
    return cls(**kwargs)


def to_dict(obj: Any) -> Any:
    """Plain dict of a config (for writing next to outputs)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    return obj


def _set_path(tree: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = tree
    for key in keys[:-1]:
        child = node.get(key)
        if not isinstance(child, dict):
            child = {}
            node[key] = child
        node = child
    node[keys[-1]] = value


def _deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def parse_overrides(words: list[str]) -> dict[str, Any]:
    """``["a.b=3", "c=[1,2]"]`` -> nested dict; values parsed as YAML scalars/lists."""
    tree: dict[str, Any] = {}
    for word in words:
        if "=" not in word:
            raise ConfigError(f"expected key=value, got {word!r}")
        key, raw = word.split("=", 1)
        if not key:
            raise ConfigError(f"empty key in {word!r}")
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        _set_path(tree, key, value)
    return tree


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    with open(path) as fh:
        data = yaml.safe_load(fh) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    return data


def preset_path(group: str, name: str) -> Path:
    """``conf/<group>/<name>.yaml``; a name that is a path to a file is taken as is."""
    as_file = Path(name)
    if as_file.suffix in (".yaml", ".yml") and as_file.is_file():
        return as_file
    path = CONF_DIR / group / f"{name}.yaml"
    if not path.is_file():
        options = sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))
        raise ConfigError(f"no {group} preset {name!r}; available: {options}")
    return path


def load(cls: type[T], *layers: dict[str, Any], overrides: list[str] | None = None) -> T:
    """Merge mappings left to right, then ``key=value`` overrides, and build ``cls``."""
    merged: dict[str, Any] = {}
    for layer in layers:
        merged = _deep_merge(merged, layer)
    merged = _deep_merge(merged, parse_overrides(overrides or []))
    return build(cls, merged)


def from_command_line(
    words: list[str], loader: typing.Callable[[list[str]], T], usage: str | None, bad_config: int = 2
) -> T | int:
    """The config of a ``key=value`` command line, or the exit code the program should return
    at once: 0 after printing ``usage`` for ``-h``/``--help``; ``bad_config`` after printing a
    config error as one ``error:`` line (never a traceback). Shared by the entry points.
    """
    import sys

    if any(w in ("-h", "--help") for w in words):
        print(usage)
        return 0
    try:
        return loader(words)
    except (ConfigError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return bad_config
