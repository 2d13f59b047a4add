"""scripts/bench_arrow_task.py: its three variants of the Arrow reader's task are the same task
(same rows staged and passed on, the same Parquet parts), so that their timings compare."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "bench_arrow_task.py"


def _script():
    spec = importlib.util.spec_from_file_location("bench_arrow_task", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_arrow_task"] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("table", ["chartevents", "labevents"])
def test_the_variants_stage_the_same_parts(synth_root, tmp_path, table):
    root = synth_root[0]
    from spark_jobs.mimic_schema import mimic_iv_tables

    bench = _script()
    folder = "icu" if table == "chartevents" else "hosp"
    path = str(Path(root) / folder / f"{table}.csv.gz")
    results = {}
    for name in ("in turn, checked times", "in turn", "read ahead"):
        parts = tmp_path / name.replace(" ", "_").replace(",", "")
        with bench._variant(name):
            counts = bench._run_task(path, mimic_iv_tables("v2")[table], str(parts))
        results[name] = (counts, pq.read_table(parts).sort_by("subject_id"))
    (counts, staged), *others = results.values()
    assert counts[1] > 0 and counts[1] == staged.num_rows
    for other_counts, other_staged in others:
        assert other_counts == counts and other_staged.equals(staged)
    # The variants are restored afterwards.
    from spark_jobs.ingest import arrow_csv, arrow_typing

    assert arrow_csv.read_ahead.__name__ == "read_ahead"
    assert arrow_typing._plain_timestamp.__name__ == "_plain_timestamp"
