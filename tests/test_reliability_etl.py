"""RELIABILITY.md, ETL faults and secrets, on a small hand-made raw dataset (every table the
ingest reads; a few rows, some bad).

Kill: a process running the ingest stage (``ingest.run``, as the pipeline calls it) is SIGKILLed
the moment the first new data file of its run appears (mid write, before that write's commit),
on an output that already holds a finished run: readers must
still see exactly that run although the dead writer's files lie on disk, and a re-run must give
it again and leave no staging copy. Secret: with credentials planted in the environment, no log
and no output file (``_delta_log`` included) of the ingest stage or of a training run holds them.
"""

from __future__ import annotations

import gzip
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from spark_jobs.ingest.job import DEFAULT_TABLES
from spark_jobs.mimic_schema import CXR_TABLES, mimic_iv_tables
from tests.test_ingest import csv_text

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
SECRET = "planted-" + uuid.uuid4().hex  # unique per session: no file holds it by chance
ROWS = {
    "patients": [
        dict(subject_id=str(i), gender="F", anchor_age="60", anchor_year="2150") for i in range(1, 4)
    ]
    + [dict(subject_id="x")],
    "admissions": [dict(subject_id="1", hadm_id="10", admittime="2150-01-01 00:00:00")],
    "icustays": [
        dict(
            subject_id="1",
            hadm_id="10",
            stay_id="100",
            intime="2150-01-01 01:00:00",
            outtime="2150-01-03 01:00:00",
        )
    ],
    "chartevents": [
        dict(subject_id="1", hadm_id="10", stay_id="100", itemid="220045", charttime=f"2150-01-01 0{h}:00:00")
        for h in range(2, 9)
    ]
    + [dict(subject_id="1", stay_id="100", itemid="220045", charttime="soon")],
}


def _words(raw: Path, out: Path, *extra: str) -> list[str]:
    return [f"raw={raw}", f"cxr={raw}", f"out={out}", "stages=[ingest]", "spark.shuffle_partitions=2", *extra]


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("raw-small")
    tables = mimic_iv_tables("v2") | CXR_TABLES
    for name in DEFAULT_TABLES:
        table = tables[name]
        path = root / f"{table.relpath}.csv.gz"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(gzip.compress(csv_text(table.column_names, ROWS.get(name, [])).encode()))
    return root


KILLED_TABLES = ["patients", "chartevents"]  # two tables (one filtered by item) keep it short
_INGEST = """
import sys
from spark_jobs import ingest
from spark_jobs.session import SparkConfig, build_spark
from tests.test_reliability_etl import ingest_config

level = sys.argv[3] if len(sys.argv) > 3 else "WARN"
spark = build_spark(SparkConfig(master="local[2]", shuffle_partitions=2, driver_memory="1g", log_level=level))
print(ingest.run(spark, ingest_config(sys.argv[1]), sys.argv[2]))
"""


def ingest_config(raw: str):
    """The ingest stage as the pipeline configures it, on ``KILLED_TABLES`` only."""
    from spark_jobs.ingest import IngestConfig

    return IngestConfig(raw=raw, cxr=raw, layout="v2", tables=KILLED_TABLES, itemids=[220045])


@pytest.fixture(scope="module")
def reference(spark, raw, tmp_path_factory) -> Path:
    from spark_jobs import ingest

    out = tmp_path_factory.mktemp("etl-ref") / "out"
    ingest.run(spark, ingest_config(str(raw)), str(out))
    return out


def _data_files(root: Path) -> set[Path]:
    return {p for p in root.rglob("*.parquet") if "_delta_log" not in p.parts}


def _fingerprints(spark, root: Path) -> dict[Path, tuple]:
    """{table: (rows, order-free hash of its rows)} of every Delta table readers use under ``root``."""
    out = {}
    for log_dir in sorted(root.rglob("_delta_log")):
        if "_staging" in log_dir.parts:  # the ingest's private copies: no reader looks there
            continue
        df = spark.read.format("delta").load(str(log_dir.parent))
        df = df.drop("run_id")  # _quality: each run stamps its own id
        row = df.selectExpr("count(*) AS n", "sum(cast(hash(*) AS bigint)) AS h").first()
        out[log_dir.parent.relative_to(root)] = (row["n"], row["h"])
    return out


def test_etl_killed_mid_write_stays_readable_and_reruns_identical(spark, raw, reference, tmp_path):
    from spark_jobs import ingest

    want = _fingerprints(spark, reference)
    assert want[Path("bronze/patients")][0] == 3 and want[Path("bronze/quarantine")][0] == 2
    out = tmp_path / "out"
    shutil.copytree(reference, out)
    before = _data_files(out)

    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-c", _INGEST, str(raw), str(out)]
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    deadline = time.monotonic() + 300
    while proc.poll() is None and time.monotonic() < deadline and not _data_files(out) - before:
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and its JVM
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL and _data_files(out) - before  # the dead writer's files
    assert _fingerprints(spark, out) == want  # ... are not what readers see

    ingest.run(spark, ingest_config(str(raw)), str(out))
    assert _fingerprints(spark, out) == want
    staging = out / "bronze" / "_staging"
    assert not staging.exists() or not any(staging.iterdir())


def _holding(root: Path, needle: bytes) -> list[str]:
    return [str(p) for p in root.rglob("*") if p.is_file() and needle in p.read_bytes()]


def test_planted_secret_never_reaches_logs_or_delta_log(raw, tmp_path):
    """Credentials live in the environment only: with a secret planted in the variables S3 reads
    (and one more), the ingest stage and a training run write it nowhere: not in their logs
    (Spark's at INFO), not in any output file (Delta commit metadata with the stage's config,
    quarantine, run config, checkpoints)."""
    from shards.tiny import tiny_dataset
    from tests.test_trainer import words

    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "OMP_NUM_THREADS": "1",
        "AWS_ACCESS_KEY_ID": SECRET + "-id",
        "AWS_SECRET_ACCESS_KEY": SECRET,
        "AWS_SESSION_TOKEN": SECRET + "-token",
        "MEDMOD_PLANTED_SECRET": SECRET,
    }
    out = tmp_path / "out"
    etl = [sys.executable, "-c", _INGEST, str(raw), str(out), "INFO"]
    etl_run = subprocess.run(etl, env=env, capture_output=True, timeout=600)
    assert etl_run.returncode == 0, etl_run.stderr[-3000:]

    shards, runs = tmp_path / "shards", tmp_path / "runs"
    tiny_dataset(str(shards), tasks=("ihm",), records=4, records_per_shard=2)
    cmd = [
        sys.executable,
        str(REPO / "trainer" / "train.py"),
        *words(shards, runs, "task=ihm", "train.epochs=1"),
    ]
    trained = subprocess.run(cmd, env=env, capture_output=True, timeout=600)
    assert trained.returncode == 0, trained.stderr[-3000:]

    logs = etl_run.stdout + etl_run.stderr + trained.stdout + trained.stderr
    assert b"'rows_in': 4, 'kept': 3" in logs and b"INFO" in logs  # the logs searched are the real ones
    assert list(out.rglob("_delta_log/*.json")) and list(runs.rglob("*.pt"))
    needle = SECRET.encode()
    assert needle not in logs
    assert _holding(out, needle) == [] and _holding(runs, needle) == []
