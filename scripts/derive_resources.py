"""Derive the run-time resource files of ``spark_jobs/resources/`` from the reference data.

The reference files (``../shared/reference/`` beside the repository) are large, mixed with
variables and codes the benchmark never uses, and in formats chosen by other projects. The ETL
reads small, reviewed files instead; this script is how they were made, so that a change of rule
is a change here plus a re-run, and a reviewer can diff the output. Re-runnable: it overwrites
the files it writes and nothing else.

    python scripts/derive_resources.py [--reference DIR] [--out DIR]
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import re
import shutil
from pathlib import Path

import yaml

log = logging.getLogger("derive_resources")

REPO = Path(__file__).resolve().parents[1]
DEFAULT_REFERENCE = REPO.parent / "shared" / "reference"
DEFAULT_OUT = REPO / "spark_jobs" / "resources"

# SPEC §3 decisions for the default item map.
CRR = "Capillary refill rate"
EXTRA_DEFAULT_ITEMS = (
    # MetaVision capillary refill (R / L); the reference map only knows CareVue itemids.
    (223951, CRR, "chartevents", ""),
    (224308, CRR, "chartevents", ""),
)
URINE_LABS = (51478, 51491, 51094)  # urine glucose, urine pH (x2): not blood values

# The reference spells one variable differently in variable_ranges.csv.
RANGE_ALIASES = {"Heart rate": "Heart Rate"}

# Group label order. "hcup" = order of hcup_ccs_2015_definitions.yaml (what the project chose);
# the references (mimic3-benchmarks, MedFuse, MedMod) use sorted group names.
PHENOTYPE_ORDERS = ("hcup", "alphabetical")


def _unit_hint(variable: str, unitname: str, label: str) -> str:
    """The unit a conversion rule needs, from the reference's UNITNAME and MIMIC label.

    Only temperature, weight and height are converted by unit; for other variables the hint is
    informational (the native unit when the reference names one).
    """
    unit = unitname.strip()
    if variable == "Temperature":
        if unit in ("?F", "°F") or re.search(r"\bF\b|\[F\]|Fahrenheit", label):
            return "F"
        return "C"
    if variable == "Weight":
        if re.search(r"\boz\b", label, re.IGNORECASE):
            return "oz"
        if re.search(r"\blbs?\b", label, re.IGNORECASE):
            return "lb"
        return "kg"
    if variable == "Height":
        if unit.lower() in ("inch", "in") or re.search(r"\binch", label, re.IGNORECASE):
            return "in"
        return "cm"
    if unit in ("", "None"):
        return ""
    return unit.replace("?", "°")


def derive_item_maps(reference: Path) -> dict[str, list[tuple[int, str, str, str]]]:
    """{'parity': rows, 'default': rows}; a row is (itemid, variable, linksto, unit)."""
    with open(reference / "itemid_to_variable_map.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    parity: list[tuple[int, str, str, str]] = []
    for r in rows:
        count = r["COUNT"].strip()
        if not r["LEVEL2"].strip() or r["STATUS"].strip() != "ready":
            continue
        if not count or int(float(count)) <= 0:
            continue
        variable = r["LEVEL2"].strip()
        parity.append(
            (
                int(r["ITEMID"]),
                variable,
                r["LINKSTO"].strip(),
                _unit_hint(variable, r["UNITNAME"], r["MIMIC LABEL"]),
            )
        )
    parity.sort(key=lambda t: (t[1], t[2], t[0]))
    ids = [t[0] for t in parity]
    if len(ids) != len(set(ids)):
        raise ValueError("itemid mapped twice in the reference map")
    default = [t for t in parity if t[0] not in URINE_LABS] + list(EXTRA_DEFAULT_ITEMS)
    default.sort(key=lambda t: (t[1], t[2], t[0]))
    return {"parity": parity, "default": default}


def derive_variable_ranges(reference: Path, variables: list[str]) -> list[dict[str, str]]:
    """The ranges of the 17 benchmark variables, under their discretizer names."""
    wanted = set(variables)
    out = {}
    with open(reference / "variable_ranges.csv", newline="") as fh:
        for r in csv.DictReader(fh):
            name = RANGE_ALIASES.get(r["LEVEL2"].strip(), r["LEVEL2"].strip())
            if name in wanted and name not in out:
                out[name] = {
                    "variable": name,
                    "outlier_low": r["OUTLIER LOW"].strip(),
                    "valid_low": r["VALID LOW"].strip(),
                    "impute": r["IMPUTE"].strip(),
                    "valid_high": r["VALID HIGH"].strip(),
                    "outlier_high": r["OUTLIER HIGH"].strip(),
                }
    missing = wanted - set(out)
    if missing:
        raise ValueError(f"variable_ranges.csv lacks {sorted(missing)}")
    return [out[v] for v in variables]


def _unique(codes: list) -> list[str]:
    seen: dict[str, None] = {}
    for c in codes:
        seen.setdefault(str(c).strip(), None)
    return list(seen)


def derive_phenotypes(reference: Path, order: str = "hcup") -> list[dict]:
    """The 25 benchmark groups with ICD-9 codes (HCUP CCS) and ICD-10 codes (MedMod's list).

    MedMod's ``icd_9_10_definitions_2.yaml`` lists each group's ICD-9 and ICD-10 codes in one
    mixed list; a code is ICD-10 when it is in that list and not among the group's ICD-9 codes.
    """
    with open(reference / "hcup_ccs_2015_definitions.yaml") as fh:
        hcup = yaml.safe_load(fh)
    with open(reference / "icd_9_10_definitions_2.yaml") as fh:
        mixed = yaml.safe_load(fh)
    groups = []
    for name, d in hcup.items():
        if not d.get("use_in_benchmark"):
            continue
        icd9 = _unique(d["codes"])
        if name not in mixed:
            raise ValueError(f"{name!r} missing from icd_9_10_definitions_2.yaml")
        nine = set(icd9)
        icd10 = [c for c in _unique(mixed[name]["codes"]) if c not in nine]
        groups.append({"name": name, "ccs_id": int(d["id"]), "type": d["type"], "icd9": icd9, "icd10": icd10})
    if len(groups) != 25:
        raise ValueError(f"expected 25 benchmark groups, found {len(groups)}")
    if order == "alphabetical":
        groups.sort(key=lambda g: g["name"])
    elif order != "hcup":
        raise ValueError(f"order must be one of {PHENOTYPE_ORDERS}")
    return groups


def _write_csv(path: Path, header: list[str], rows: list) -> None:
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(header)
        w.writerows(rows)


class _FlowList(list):
    """A list YAML writes on one line (code lists), keeping the file short and diffable."""


def _flow_representer(dumper: yaml.SafeDumper, data: _FlowList) -> yaml.SequenceNode:
    # Codes always quoted: "0380" is a string to PyYAML but an integer to YAML 1.2 readers.
    items = [yaml.ScalarNode("tag:yaml.org,2002:str", str(c), style="'") for c in data]
    return yaml.SequenceNode("tag:yaml.org,2002:seq", items, flow_style=True)


def write_phenotypes(path: Path, groups: list[dict], order: str) -> None:
    dumper = type("_Dumper", (yaml.SafeDumper,), {})
    dumper.add_representer(_FlowList, _flow_representer)
    doc = {"groups": [{**g, "icd9": _FlowList(g["icd9"]), "icd10": _FlowList(g["icd10"])} for g in groups]}
    header = (
        "# The 25 HCUP CCS phenotype groups of the benchmark, in label order "
        f"({order} order).\n"
        "# Generated by scripts/derive_resources.py; do not edit by hand. Codes have no dots.\n"
        "# icd9: hcup_ccs_2015_definitions.yaml (mimic3-benchmarks, MIT; CCS: AHRQ).\n"
        "# icd10: icd_9_10_definitions_2.yaml (MedMod, Apache-2.0) minus the group's ICD-9 codes.\n"
    )
    text = yaml.dump(doc, Dumper=dumper, sort_keys=False, allow_unicode=True, width=100)
    path.write_text(header + text)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reference", type=Path, default=DEFAULT_REFERENCE)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--phenotype-order", choices=PHENOTYPE_ORDERS, default="hcup")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    ref, out = args.reference, args.out
    out.mkdir(parents=True, exist_ok=True)

    maps = derive_item_maps(ref)
    for preset, rows in maps.items():
        _write_csv(out / f"item_map_{preset}.csv", ["itemid", "variable", "linksto", "unit"], rows)
        log.info("item_map_%s.csv: %d itemids", preset, len(rows))

    with open(ref / "discretizer_config.json") as fh:
        channels = json.load(fh)["id_to_channel"]
    ranges = derive_variable_ranges(ref, channels)
    _write_csv(out / "variable_ranges.csv", list(ranges[0]), [list(r.values()) for r in ranges])
    log.info("variable_ranges.csv: %d variables", len(ranges))

    groups = derive_phenotypes(ref, args.phenotype_order)
    write_phenotypes(out / "phenotypes.yaml", groups, args.phenotype_order)
    log.info("phenotypes.yaml: %d groups", len(groups))

    for name in ("discretizer_config.json", "channel_info.json"):
        shutil.copyfile(ref / name, out / name)
    splits = out / "splits"
    splits.mkdir(exist_ok=True)
    for name in ("testset_iv.csv", "valset_iv.csv"):
        shutil.copyfile(ref / name, splits / name)
    log.info("copied discretizer_config.json, channel_info.json, splits/")


if __name__ == "__main__":
    main()
