"""The SparkSession factory: Delta on (real jars), S3A from config, clear errors."""

from __future__ import annotations

import pytest

from spark_jobs import jars
from spark_jobs.session import S3Config, SparkConfig, spark_conf


def test_delta_write_update_and_time_travel(spark, tmp_path):
    from delta.tables import DeltaTable

    path = str(tmp_path / "t")
    spark.createDataFrame([(1, "a"), (2, "b")], "id long, v string").write.format("delta").save(path)
    DeltaTable.forPath(spark, path).update("id = 2", {"v": "'changed'"})
    now = {r.id: r.v for r in spark.read.format("delta").load(path).collect()}
    then = {r.id: r.v for r in spark.read.format("delta").option("versionAsOf", 0).load(path).collect()}
    assert now == {1: "a", 2: "changed"} and then == {1: "a", 2: "b"}


def test_s3a_settings_come_from_config_not_files():
    conf = spark_conf(SparkConfig(s3=S3Config(endpoint="http://127.0.0.1:9000", path_style=True, ssl=False)))
    assert conf["spark.hadoop.fs.s3a.endpoint"] == "http://127.0.0.1:9000"
    assert conf["spark.hadoop.fs.s3a.path.style.access"] == "true"
    assert conf["spark.hadoop.fs.s3a.connection.ssl.enabled"] == "false"
    assert "EnvironmentVariableCredentialsProvider" in conf["spark.hadoop.fs.s3a.aws.credentials.provider"]
    assert not any("secret" in k.lower() or "access.key" in k.lower() for k in conf)
    assert all(path.endswith(".jar") for path in conf["spark.jars"].split(","))


def test_extra_settings_pass_through_and_win():
    conf = spark_conf(SparkConfig(shuffle_partitions=3, extra={"spark.sql.shuffle.partitions": "5"}))
    assert conf["spark.sql.shuffle.partitions"] == "5"


def test_missing_jars_say_how_to_fetch_them(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDMOD_JARS_DIR", str(tmp_path))
    assert len(jars.missing()) == len(jars.ALL)
    with pytest.raises(RuntimeError, match="make setup"):
        spark_conf(SparkConfig())


def test_jar_urls_point_at_maven_layout():
    art = jars.Artifact("io.delta", "delta-spark_2.12", "3.3.2")
    assert art.url("https://repo").endswith("/io/delta/delta-spark_2.12/3.3.2/delta-spark_2.12-3.3.2.jar")
