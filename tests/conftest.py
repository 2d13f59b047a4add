"""Shared fixtures: one real local Spark (with Delta) per test session."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def spark():
    from spark_jobs.session import SparkConfig, build_spark

    session = build_spark(
        SparkConfig(master="local[2]", app_name="medmod-tests", shuffle_partitions=2, driver_memory="3g")
    )
    yield session
    session.stop()


# The synthetic fixture: 300 patients (issue 2's test size), generated once per test session.
SYNTH_PATIENTS = 300
SYNTH_IMAGE_SIZE = 256


@pytest.fixture(scope="session")
def synth_root(spark, tmp_path_factory):
    from spark_jobs.synth_mimic import SynthConfig, generate

    out = tmp_path_factory.mktemp("synth") / "mimic"
    cfg = SynthConfig(out=str(out), patients=SYNTH_PATIENTS, seed=0, image_size=SYNTH_IMAGE_SIZE)
    counts = generate(cfg, spark)
    return out, cfg, counts


@pytest.fixture(scope="session")
def s3_server():
    """A moto S3 server on 127.0.0.1 (free port) for the whole session; yields its endpoint URL.

    Fake credentials go into the environment for Python clients (boto3, s3fs). Spark's JVM may
    have started before this fixture and cannot see later environment changes, so tests give
    S3A the same values through per-bucket Hadoop settings on the shared session.
    """
    from moto.server import ThreadedMotoServer

    env = pytest.MonkeyPatch()
    env.setenv("AWS_ACCESS_KEY_ID", "testing")
    env.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    env.setenv("AWS_DEFAULT_REGION", "us-east-1")
    env.delenv("AWS_SESSION_TOKEN", raising=False)
    env.delenv("AWS_PROFILE", raising=False)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()
    env.undo()


@pytest.fixture(scope="session")
def standalone_cluster(tmp_path_factory):
    """A real Spark standalone master + one worker (1 core, 1g) on 127.0.0.1 for the session.

    Yields a ``tests.cluster.StandaloneCluster``: ``.url`` is the spark:// master URL,
    ``.state()`` the master's JSON status, ``.logs()`` the daemons' log tails. Both daemons (and
    the executors they started) are killed at the end of the session, also when tests fail.
    """
    from tests.cluster import standalone_cluster as running

    with running(tmp_path_factory.mktemp("spark-standalone")) as cluster:
        yield cluster


@pytest.fixture(scope="session")
def etl_run(spark, synth_root, tmp_path_factory):
    """The default ETL over the synthetic fixture: (out path, stage reports)."""
    from spark_jobs.pipeline import Pipeline, load_config

    root, _, _ = synth_root
    out = tmp_path_factory.mktemp("etl") / "tables"
    cfg = load_config([f"raw={root}", f"out={out}", "spark.shuffle_partitions=2"])
    reports = Pipeline(cfg, spark).run()
    return str(out), reports
