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
