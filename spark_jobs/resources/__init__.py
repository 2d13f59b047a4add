"""Run-time resource files (item map, ranges, phenotype groups, channels, split lists).

Small, reviewed files derived from ``../shared/reference/`` by ``scripts/derive_resources.py``
(attribution in ``NOTICE.md``). Loaders return plain Python objects so that pure-Python code
(tests, the trainer, the generator) can use them without Spark; they are cached because every
stage asks for the same few kilobytes.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import yaml

RESOURCE_DIR = Path(__file__).resolve().parent
ITEM_MAP_PRESETS = ("default", "parity")
CHARTEVENTS = "chartevents"
LABEVENTS = "labevents"


@dataclass(frozen=True)
class ItemMapping:
    itemid: int
    variable: str
    linksto: str  # "chartevents" | "labevents": the raw table the itemid lives in
    unit: str  # conversion hint: F/C (temperature), lb/oz/kg (weight), in/cm (height); else native unit or ""


@dataclass(frozen=True)
class VariableRange:
    variable: str
    outlier_low: float | None
    valid_low: float | None
    impute: float | None
    valid_high: float | None
    outlier_high: float | None


@dataclass(frozen=True)
class PhenotypeGroup:
    name: str
    ccs_id: int
    type: str
    icd9: tuple[str, ...]
    icd10: tuple[str, ...]


def _path(name: str) -> Path:
    return RESOURCE_DIR / name


@cache
def item_map(preset: str = "default") -> tuple[ItemMapping, ...]:
    """The itemid -> variable map of ``preset`` (``default`` or ``parity``, SPEC §3)."""
    if preset not in ITEM_MAP_PRESETS:
        raise ValueError(f"unknown item map preset {preset!r}; expected one of {ITEM_MAP_PRESETS}")
    with open(_path(f"item_map_{preset}.csv"), newline="") as fh:
        return tuple(
            ItemMapping(int(r["itemid"]), r["variable"], r["linksto"], r["unit"]) for r in csv.DictReader(fh)
        )


def all_itemids(linksto: str) -> tuple[int, ...]:
    """Every itemid of ``linksto`` any preset uses: what ingest must keep from the raw table."""
    ids = {m.itemid for p in ITEM_MAP_PRESETS for m in item_map(p) if m.linksto == linksto}
    return tuple(sorted(ids))


def _num(text: str) -> float | None:
    return float(text) if text.strip() else None


@cache
def variable_ranges() -> dict[str, VariableRange]:
    """Outlier / valid ranges of the 17 variables, keyed by discretizer channel name."""
    with open(_path("variable_ranges.csv"), newline="") as fh:
        return {
            r["variable"]: VariableRange(
                r["variable"],
                _num(r["outlier_low"]),
                _num(r["valid_low"]),
                _num(r["impute"]),
                _num(r["valid_high"]),
                _num(r["outlier_high"]),
            )
            for r in csv.DictReader(fh)
        }


@cache
def phenotype_groups() -> tuple[PhenotypeGroup, ...]:
    """The 25 benchmark CCS groups in label order (the order of ``stays.phenotypes``)."""
    with open(_path("phenotypes.yaml")) as fh:
        doc = yaml.safe_load(fh)
    return tuple(
        PhenotypeGroup(
            g["name"],
            int(g["ccs_id"]),
            g["type"],
            tuple(str(c) for c in g["icd9"]),
            tuple(str(c) for c in g["icd10"]),
        )
        for g in doc["groups"]
    )


def phenotype_names() -> list[str]:
    return [g.name for g in phenotype_groups()]


@cache
def _json(name: str) -> str:
    return _path(name).read_text()


def discretizer_config() -> dict[str, Any]:
    """mimic3-benchmarks' channel config: channel order, categorical flags, value lists, normals."""
    return json.loads(_json("discretizer_config.json"))


def channel_info() -> dict[str, Any]:
    """Per channel value lists with ordinal scores (``values``: category -> score)."""
    return json.loads(_json("channel_info.json"))


def split_files() -> tuple[Path, Path]:
    """(test list, val list) of the reference MIMIC-IV split (``subject_id,flag``, no header)."""
    return _path("splits/testset_iv.csv"), _path("splits/valset_iv.csv")
