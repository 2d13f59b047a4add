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


@pytest.mark.parametrize(
    "module, bad_exit, words",
    [
        ("spark_jobs.pipeline", 2, []),
        ("spark_jobs.write_shards", 2, []),
        ("trainer.train", None, ["task=ihm", "model=uni_ehr"]),
    ],
)
def test_entry_points_answer_help_and_bad_config_without_a_traceback(module, bad_exit, words, capsys):
    """Every ``key=value`` entry point: help exits 0 with its usage, an unknown key exits with
    its config code and one ``error:`` line (checked before any Spark or torch work starts)."""
    import importlib

    mod = importlib.import_module(module)
    bad_exit = bad_exit if bad_exit is not None else mod.EXIT_CONFIG
    assert mod.main(["--help"]) == 0
    assert mod.__doc__.strip().splitlines()[0] in capsys.readouterr().out
    assert mod.main([*words, "no_such_key=1"]) == bad_exit
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "no_such_key" in err[0]


def test_pipeline_ingest_tuning_reaches_the_config_and_is_checked_at_load():
    from spark_jobs.pipeline import IngestTuning, load_config

    assert load_config(["ingest.spread=1", "ingest.concurrency=2"]).ingest == IngestTuning(
        concurrency=2, spread=1
    )
    with pytest.raises(ConfigError, match="ingest.spread"):
        load_config(["ingest.spread=-1"])
    with pytest.raises(ConfigError, match="ingest.reader must be one of auto, arrow, spark"):
        load_config(["ingest.reader=pandas"])


def test_a_float_key_takes_exponent_notation_that_yaml_reads_as_text():
    """PyYAML reads `3e-4` (no dot) as a string; a float key still takes it, other text is refused."""
    from trainer.config import load_run_config

    assert load_run_config(["task=ihm", "optim.lr=3e-4"]).optim.lr == 3e-4
    assert load_run_config(["task=ihm", "optim.lr=1E+2"]).optim.lr == 100.0
    assert load_run_config(["task=ihm", "optim.lr=-.5e-1"]).optim.lr == -0.05
    for bad in ("3e", "e-4", "fast", "3e-4x"):
        with pytest.raises(ConfigError, match="optim.lr: expected float"):
            load_run_config(["task=ihm", f"optim.lr={bad}"])
