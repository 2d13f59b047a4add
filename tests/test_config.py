"""Typed configs: YAML + key=value overrides into dataclasses; unknown keys are errors."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import pytest

from conf.typed import ConfigError, build, load, parse_overrides, preset_path, to_dict


@dataclass
class Inner:
    rate: float = 0.5
    mode: Literal["a", "b"] = "a"


@dataclass
class Outer:
    name: str = "x"
    count: int = 1
    flags: list[str] = field(default_factory=list)
    inner: Inner = field(default_factory=Inner)
    extra: dict[str, str] = field(default_factory=dict)
    maybe: int | None = None


def test_overrides_reach_nested_fields_with_types():
    cfg = load(Outer, {"count": 2}, overrides=["inner.rate=3", "flags=[p, q]", "name=y", "maybe=7"])
    assert cfg == Outer(name="y", count=2, flags=["p", "q"], inner=Inner(rate=3.0), maybe=7)
    assert isinstance(cfg.inner.rate, float)


def test_later_layers_win_and_merge_deeply():
    cfg = load(Outer, {"inner": {"rate": 1.0, "mode": "b"}}, {"inner": {"rate": 2.0}})
    assert cfg.inner == Inner(rate=2.0, mode="b")


@pytest.mark.parametrize(
    "words, message",
    [
        (["inner.rat=1"], r"unknown config key\(s\) \['inner.rat'\]; valid keys here: \['mode', 'rate'\]"),
        (["count=abc"], "count: expected int"),
        (["inner.mode=c"], "not one of"),
        (["flags=3"], "expected a list"),
        (["noequals"], "expected key=value"),
        (["count=null"], "null is not allowed"),
    ],
)
def test_bad_words_are_clear_errors(words, message):
    with pytest.raises(ConfigError, match=message):
        load(Outer, overrides=words)


def test_round_trip_through_a_plain_dict():
    cfg = Outer(flags=["a"], inner=Inner(rate=0.1, mode="b"))
    assert build(Outer, to_dict(cfg)) == cfg


def test_values_parse_as_yaml():
    assert parse_overrides(["a.b=1.5", "c=true", "d=[1,2]", "e=text"]) == {
        "a": {"b": 1.5},
        "c": True,
        "d": [1, 2],
        "e": "text",
    }


def test_presets_are_found_and_listed_when_missing():
    assert preset_path("etl", "parity").name == "parity.yaml"
    with pytest.raises(ConfigError, match=r"available: \['default', 'parity'\]"):
        preset_path("etl", "nope")


def test_every_etl_preset_builds():
    from spark_jobs.pipeline import load_config

    default, parity = load_config([]), load_config(["etl=parity"])
    assert default.samples.pairing == "causal" and parity.samples.pairing == "last_in_stay"
    assert default.events.outliers and not parity.events.outliers
    assert parity.events.item_map == "parity" and parity.cohort.count_dod
