"""Our jobs on a real standalone cluster through scripts/submit.sh give what local mode gives:
the synthetic generator (files) and the ETL (Delta tables)."""

from __future__ import annotations

import gzip
import json
import os
import time
from pathlib import Path

import pandas as pd
import pytest

from conf.tasks import TASK_NAMES, task_spec
from spark_jobs.synth_mimic import SynthConfig, generate
from tests.cluster import HOST, REPO, SUBMIT, Bounded, run_bounded

pytestmark = pytest.mark.cluster

PATIENTS, SEED, IMAGE_SIZE = 30, 5, 64
SUBMIT_TIMEOUT_S = 300
# The ETL on 40 patients: 2-5 min per run on a shared 2-core machine (about 2.5 CPU-minutes);
# the cluster run overlaps the local one, and its bound leaves room for a busy machine.
ETL_PATIENTS, ETL_SEED = 40, 11
ETL_SUBMIT_TIMEOUT_S = 660
ETL_TABLES = {
    "silver": {"stays", "events", "cxr", "timeseries", "first_event", "quarantine"},
    "gold": {f"samples_{t}" for t in TASK_NAMES}
    | {f"normalizer_{t}" for t in TASK_NAMES}
    | {f"windows_{t}" for t in TASK_NAMES if task_spec(t).windowed}
    | {"quarantine"},
}
# Same spark-submit settings for every job here: the worker has 1 core and 1g.
CLUSTER_CONFS = ["--conf", "spark.executor.memory=512m", "--conf", "spark.cores.max=1"]


def _files(root: Path) -> dict[str, Path]:
    return {
        str(p.relative_to(root)): p
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != "manifest.json"
    }


def _content(path: Path) -> bytes:
    if path.name.endswith(".csv.gz"):
        with gzip.open(path) as fh:
            return fh.read()
    return path.read_bytes()


def _wait_for_completed_app(cluster, known: set[str], timeout_s: float = 30.0) -> dict:
    """The master moves an application to completedapps when its driver unregisters."""
    deadline = time.monotonic() + timeout_s
    while True:
        new = [app for app in cluster.state().get("completedapps", []) if app["id"] not in known]
        if new or time.monotonic() > deadline:
            assert len(new) == 1, f"expected one new completed application, got {new}\n{cluster.logs()}"
            return new[0]
        time.sleep(0.5)


def test_synth_on_the_cluster_equals_local_mode(standalone_cluster, spark, tmp_path):
    cluster = standalone_cluster
    on_cluster, local = tmp_path / "cluster", tmp_path / "local"
    known = {app["id"] for app in cluster.state().get("completedapps", [])}

    # --chunk-size 10: three tasks on the executor rather than one.
    result = run_bounded(
        [
            str(SUBMIT),
            "--master",
            cluster.url,
            *CLUSTER_CONFS,
            "spark_jobs.synth_mimic",
            "--out",
            str(on_cluster),
            "--patients",
            str(PATIENTS),
            "--seed",
            str(SEED),
            "--image-size",
            str(IMAGE_SIZE),
            "--chunk-size",
            "10",
        ],
        timeout_s=SUBMIT_TIMEOUT_S,
        env={**os.environ, "SPARK_LOCAL_IP": HOST},
        cwd=tmp_path,  # not the repo: the job must not depend on the caller's working directory
    )
    output = f"--- stdout\n{result.stdout[-4000:]}\n--- stderr\n{result.stderr[-6000:]}"
    assert result.returncode == 0, f"submit.sh failed ({result.returncode})\n{output}\n{cluster.logs()}"

    # It really ran on the cluster: the driver's master, a finished application, an executor's dir.
    # The driver's Python output reaches spark-submit's stdout (PythonRunner merges its streams).
    assert f"master={cluster.url}" in result.stdout + result.stderr, output
    app = _wait_for_completed_app(cluster, known)
    assert app["state"] == "FINISHED", app
    executor_dirs = list((cluster.workdir / "work" / app["id"]).glob("*/stderr"))
    assert executor_dirs, f"no executor of {app['id']} under the worker dir\n{cluster.logs()}"

    generate(SynthConfig(out=str(local), patients=PATIENTS, seed=SEED, image_size=IMAGE_SIZE), spark)

    a, b = _files(on_cluster), _files(local)
    assert a.keys() == b.keys()
    assert any(name.endswith(".jpg") for name in a) and any(name.endswith(".csv.gz") for name in a)
    assert not any("_parts" in name for name in a), "chunk members left behind"
    different = [name for name in a if _content(a[name]) != _content(b[name])]
    assert not different, f"{len(different)} files differ between cluster and local mode: {different[:10]}"


def test_submit_without_a_module_prints_usage():
    result = run_bounded([str(SUBMIT), "--master", "local[1]"], timeout_s=60, cwd=REPO)
    assert result.returncode == 2
    assert "usage: scripts/submit.sh --master URL" in result.stderr
    assert "no MODULE given" in result.stderr


def test_submitted_module_does_not_shadow_top_level_names(tmp_path):
    """The job runs as ``python -m MODULE`` would: neither spark_jobs/ nor scripts/ on sys.path,
    so ``events``, ``tasks``, ``cohort``, ``resources`` stay free for third-party modules."""
    probe = tmp_path / "probe"
    probe.mkdir()
    (probe / "medmod_probe.py").write_text(
        "import importlib.util, json, sys\n"
        "names = ['events', 'tasks', 'cohort', 'resources', 'spark_launch', 'derive_resources']\n"
        "print('PROBE ' + json.dumps({'name': __name__, 'argv': sys.argv,\n"
        "    'found': [n for n in names if importlib.util.find_spec(n) is not None]}))\n"
    )
    env = {**os.environ, "SPARK_LOCAL_IP": HOST, "PYTHONPATH": str(probe)}
    result = run_bounded(
        [str(SUBMIT), "--master", "local[1]", "medmod_probe", "a", "--b=c"],
        timeout_s=120,
        env=env,
        cwd=tmp_path,
    )
    lines = [line for line in result.stdout.splitlines() if line.startswith("PROBE ")]
    assert result.returncode == 0 and lines, (
        f"--- stdout\n{result.stdout}\n--- stderr\n{result.stderr[-4000:]}"
    )
    seen = json.loads(lines[0].removeprefix("PROBE "))
    assert seen == {"name": "__main__", "argv": [str(probe / "medmod_probe.py"), "a", "--b=c"], "found": []}


def _delta_tables(out: Path) -> set[str]:
    return {
        f"{layer}/{table.name}"
        for layer in ETL_TABLES
        for table in (out / layer).iterdir()
        if (table / "_delta_log").is_dir()
    }


def _table_frame(spark, path: Path, drop: tuple[str, ...] = ()) -> pd.DataFrame:
    """All rows of a Delta table as a pandas frame in a canonical row order: nested columns
    (arrays, maps, structs) as their JSON text, so that rows compare and sort as plain values."""
    from pyspark.sql import functions as F
    from pyspark.sql.types import ArrayType, MapType, StructType

    df = spark.read.format("delta").load(str(path)).drop(*drop)
    nested = (ArrayType, MapType, StructType)
    df = df.select(
        *[
            F.to_json(F.col(f.name)).alias(f.name) if isinstance(f.dataType, nested) else F.col(f.name)
            for f in df.schema.fields
        ]
    )
    frame = df.toPandas()
    frame = frame[sorted(frame.columns)]
    return frame.sort_values(list(frame.columns), na_position="first").reset_index(drop=True)


def _same_rows(spark, a: Path, b: Path, drop: tuple[str, ...] = ()) -> str | None:
    """None when the tables hold the same rows; else what differs. Doubles (aggregates such as
    the normalizer's mean/std) may differ in the last bits with the order of partial results."""
    fa, fb = _table_frame(spark, a, drop), _table_frame(spark, b, drop)
    if len(fa) == 0 and len(fb) == 0 and list(fa.columns) == list(fb.columns):
        return None
    try:
        pd.testing.assert_frame_equal(fa, fb, check_exact=False, rtol=1e-9, atol=0.0)
    except AssertionError as err:
        return f"{len(fa)} vs {len(fb)} rows: {str(err)[:1500]}"
    return None


@pytest.mark.slow
def test_etl_on_the_cluster_equals_local_mode(standalone_cluster, spark, tmp_path):
    """The whole ETL submitted to the cluster writes the same silver/gold rows and the same
    _quality counts as the same ETL in local mode (this test session's Spark)."""
    from spark_jobs.pipeline import Pipeline, load_config

    cluster = standalone_cluster
    raw, local, on_cluster = tmp_path / "raw", tmp_path / "local", tmp_path / "cluster"
    generate(SynthConfig(out=str(raw), patients=ETL_PATIENTS, seed=ETL_SEED, images=False), spark)
    words = [f"raw={raw}", "spark.shuffle_partitions=2"]

    # The cluster run goes in the background while the same ETL runs here in local mode.
    known = {app["id"] for app in cluster.state().get("completedapps", [])}
    submit = [str(SUBMIT), "--master", cluster.url, *CLUSTER_CONFS, "spark_jobs.pipeline"]
    with Bounded(
        [*submit, *words, f"out={on_cluster}"],
        timeout_s=ETL_SUBMIT_TIMEOUT_S,
        env={**os.environ, "SPARK_LOCAL_IP": HOST},
        cwd=tmp_path,
    ) as submitted:
        Pipeline(load_config([*words, f"out={local}"]), spark).run()
        result = submitted.wait()
    output = f"--- stdout\n{result.stdout[-4000:]}\n--- stderr\n{result.stderr[-6000:]}"
    assert result.returncode == 0, f"submit.sh failed ({result.returncode})\n{output}\n{cluster.logs()}"
    assert f"master={cluster.url}" in result.stdout + result.stderr, output
    assert "ETL finished" in result.stdout, output
    app = _wait_for_completed_app(cluster, known)
    assert app["state"] == "FINISHED", app
    assert list((cluster.workdir / "work" / app["id"]).glob("*/stderr")), f"no executor of {app['id']}"

    tables = _delta_tables(local)
    expected = {f"{layer}/{name}" for layer, names in ETL_TABLES.items() for name in names}
    assert tables == expected, f"local run wrote {sorted(tables)}"
    assert _delta_tables(on_cluster) == tables
    different = {t: d for t in sorted(tables) if (d := _same_rows(spark, local / t, on_cluster / t))}
    assert not different, f"{len(different)} tables differ between local mode and the cluster: {different}"

    quality = _same_rows(spark, local / "_quality", on_cluster / "_quality", drop=("run_id",))
    assert quality is None, f"_quality differs: {quality}"
    assert len(_table_frame(spark, local / "_quality")) > 0


BLOCKING_JOB = REPO / "tests" / "cluster_blocking_job.py"
KILL_PARTS = 4
# One executor per worker (1 core, 512m each: two fit on 2 shared cores), so that when one worker
# dies the survivor already runs an executor of the application; the master could not place a new
# one anyway while the survivor's only core is taken.
KILL_CONFS = [
    *("--conf", "spark.executor.cores=1", "--conf", "spark.executor.memory=512m"),
    *("--conf", "spark.cores.max=2"),
    # A task of the killed executor fails once: counted against the task when the driver first hears
    # of it as a lost RPC connection (the cause is then the app's), not counted when the master
    # first reports the worker lost. With maxFailures=1 the first case would abort the job; 4 (the
    # cluster default, set here so that no spark-defaults can lower it) leaves room for the retry.
    *("--conf", "spark.task.maxFailures=4"),
    # No speculative copies: every attempt after the first is the fault's retry.
    *("--conf", "spark.speculation=false"),
]


def _markers(markers: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(markers.glob("started-*.json"))]


@pytest.mark.slow
def test_worker_killed_mid_job_the_job_completes_with_the_same_rows(tmp_path):
    """Two workers; while a job writing a Delta table has a task running on each (every task waits
    for a release file, so the kill lands mid-job, never after it), one worker's whole process group
    (worker JVM, executor JVM, Python workers) is SIGKILLed. The master marks that worker DEAD, the
    killed task is retried on the surviving worker, the job finishes, and the table holds exactly
    the rows of the same job run undisturbed."""
    from tests.cluster import standalone_cluster

    env = {**os.environ, "SPARK_LOCAL_IP": HOST, "PYTHONPATH": str(REPO)}
    job = [str(BLOCKING_JOB), "--parts", str(KILL_PARTS)]
    local_markers, markers, work = tmp_path / "local-markers", tmp_path / "markers", tmp_path / "cluster"
    local_markers.mkdir()
    markers.mkdir()
    work.mkdir()
    (local_markers / "release").touch()  # the undisturbed run never waits

    # The undisturbed run (same job, local mode) goes in the background while the cluster starts.
    with (
        Bounded(
            [
                str(SUBMIT),
                "--master",
                "local[2]",
                *job,
                "--out",
                str(tmp_path / "undisturbed"),
                "--markers",
                str(local_markers),
            ],
            timeout_s=SUBMIT_TIMEOUT_S,
            env=env,
            cwd=tmp_path,
        ) as undisturbed,
        standalone_cluster(work, workers=2) as cluster,
    ):
        known = {app["id"] for app in cluster.state().get("completedapps", [])}
        submit = [str(SUBMIT), "--master", cluster.url, *KILL_CONFS, *job]
        with Bounded(
            [*submit, "--out", str(tmp_path / "killed"), "--markers", str(markers)],
            timeout_s=SUBMIT_TIMEOUT_S,
            env=env,
            cwd=tmp_path,
        ) as submitted:
            # Wait until a task runs on each worker (their first attempts, blocked on the release).
            deadline = time.monotonic() + 180
            while len({cluster.worker_running(m["cwd"]).index for m in _markers(markers)}) < 2:
                assert submitted.proc.poll() is None, f"the job ended early\n{submitted.wait()}"
                assert time.monotonic() < deadline, (
                    f"no task on each worker: {_markers(markers)}\n{cluster.logs()}"
                )
                time.sleep(0.2)
            running = _markers(markers)
            assert not (markers / "release").exists() and all(m["attempt"] == 0 for m in running)
            victim = cluster.worker_running(running[0]["cwd"])
            survivor = next(w for w in cluster.workers if w is not victim)
            victim_parts = {m["partition"] for m in running if cluster.worker_running(m["cwd"]) is victim}

            killed = cluster.kill_worker(victim.index)
            # Killed: the worker JVM, its executor JVM, the PySpark daemon and the blocked task's Python worker.
            assert {m["pid"] for m in running if m["partition"] in victim_parts} <= killed.keys(), killed
            assert len(killed) >= 3, killed

            # The master sees the worker die (its connection drops) before the job may go on.
            deadline = time.monotonic() + 60
            while (state := cluster.state())["aliveworkers"] != 1 or cluster.worker_state(victim) != "DEAD":
                assert time.monotonic() < deadline, (
                    f"master still counts the killed worker: {state['workers']}"
                )
                time.sleep(0.2)
            assert cluster.worker_state(survivor) == "ALIVE"

            (markers / "release").touch()
            result = submitted.wait()
        output = f"--- stdout\n{result.stdout[-4000:]}\n--- stderr\n{result.stderr[-6000:]}"
        assert result.returncode == 0, (
            f"the job failed after the kill ({result.returncode})\n{output}\n{cluster.logs()}"
        )
        assert f"master={cluster.url}" in result.stdout + result.stderr, output
        app = _wait_for_completed_app(cluster, known)
        assert app["state"] == "FINISHED", app
        local = undisturbed.wait()
        assert local.returncode == 0, (
            f"undisturbed run failed\n{local.stdout[-3000:]}\n{local.stderr[-4000:]}"
        )

    # Every task killed with the worker ran again, on the survivor; every partition finished.
    attempts = _markers(markers)
    retried = {m["partition"] for m in attempts if m["attempt"] > 0}
    assert victim_parts <= retried, attempts
    assert all(cluster.worker_running(m["cwd"]) is survivor for m in attempts if m["attempt"] > 0), attempts
    assert {m["partition"] for m in attempts} == set(range(KILL_PARTS))

    # Row for row what the undisturbed run wrote (each read back through its Delta log).
    rows = json.loads((tmp_path / "killed.rows.json").read_text())
    expected = json.loads((tmp_path / "undisturbed.rows.json").read_text())
    assert len(expected) == KILL_PARTS * 250 and rows == expected
