"""Derive the generator's ICD code table from the reference files (re-runnable).

    python scripts/derive_synth_resources.py [--reference ../shared/reference]

Writes spark_jobs/synth/icd_codes.json: for each of the 25 benchmark CCS groups its ICD-9 codes
(HCUP CCS 2015) and ICD-10 codes (MedMod's hand-curated list), plus a pool of codes from the
other groups that fall in no benchmark group (ICD-10 ones through the CMS 2018 GEM). The generator draws diagnoses from it; the ETL uses
its own resources, so the two sides of a test stay independent.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

import yaml

OUT = Path(__file__).resolve().parents[1] / "spark_jobs" / "synth" / "icd_codes.json"
POOL_SIZE = 400


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--reference", default=str(Path(__file__).resolve().parents[2] / "shared" / "reference")
    )
    args = parser.parse_args()
    ref = Path(args.reference)
    hcup = yaml.safe_load(open(ref / "hcup_ccs_2015_definitions.yaml"))
    mixed = yaml.safe_load(open(ref / "icd_9_10_definitions_2.yaml"))
    all_icd9 = {c for g in hcup.values() for c in g["codes"]}
    bench = [name for name, g in hcup.items() if g.get("use_in_benchmark")]
    groups = {}
    for name in bench:
        icd9 = sorted(set(hcup[name]["codes"]))
        icd10 = sorted(set(mixed.get(name, {}).get("codes", [])) - all_icd9)
        groups[name] = {"icd9": icd9, "icd10": icd10}
    bench9 = {c for g in groups.values() for c in g["icd9"]}
    bench10 = {c for g in groups.values() for c in g["icd10"]}
    rng = random.Random(0)
    other9 = sorted(c for n, g in hcup.items() if n not in bench for c in g["codes"] if c not in bench9)
    # ICD-10 codes outside the benchmark: the CMS GEM maps them onto non-benchmark ICD-9 codes.
    other9_set = set(other9)
    gem = (line.split() for line in open(ref / "2018_I10gem.txt"))
    other10 = sorted({row[0] for row in gem if len(row) >= 2 and row[1] in other9_set} - bench10 - all_icd9)
    table = {
        "benchmark_groups": groups,
        "other_icd9": sorted(rng.sample(other9, min(POOL_SIZE, len(other9)))),
        "other_icd10": sorted(rng.sample(other10, min(POOL_SIZE, len(other10)))),
    }
    OUT.write_text(json.dumps(table, indent=0, sort_keys=False) + "\n")
    print(
        f"wrote {OUT}: {len(groups)} groups, {len(table['other_icd9'])}+{len(table['other_icd10'])} other codes"
    )


if __name__ == "__main__":
    main()
