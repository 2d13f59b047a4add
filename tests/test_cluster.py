"""Our jobs on a real standalone cluster through scripts/submit.sh give what local mode gives."""

from __future__ import annotations

import gzip
import os
import time
from pathlib import Path

import pytest

from spark_jobs.synth_mimic import SynthConfig, generate
from tests.cluster import HOST, REPO, SUBMIT, run_bounded

pytestmark = pytest.mark.cluster

PATIENTS, SEED, IMAGE_SIZE = 30, 5, 64
SUBMIT_TIMEOUT_S = 300


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
            "--conf",
            "spark.executor.memory=512m",
            "--conf",
            "spark.cores.max=1",
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
