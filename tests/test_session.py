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


def test_delta_files_store_timestamps_as_int64_microseconds(spark, tmp_path):
    import datetime as dt
    from pathlib import Path

    import pyarrow.parquet as pq

    path = tmp_path / "t"
    when = [dt.datetime(2150, 1, 1, 10, 0, 0, 123456), dt.datetime(2180, 6, 30, 23, 59, 59)]
    frame = spark.createDataFrame([(i, t) for i, t in enumerate(when)], "id long, charttime timestamp")
    frame.write.format("delta").save(str(path))
    files = list(Path(path).glob("*.parquet"))
    column = pq.ParquetFile(files[0]).schema.column(1)
    assert (column.name, column.physical_type) == ("charttime", "INT64")  # Spark's default: INT96
    back = spark.read.format("delta").load(str(path)).orderBy("id").collect()
    assert [r.charttime for r in back] == when


def test_times_before_1582_are_written_and_read_as_they_are(spark, tmp_path):
    """Spark's default fails on such values (and a garbage year in a raw file is one); they are
    stored in the proleptic calendar, as Arrow stores them, and read back unchanged."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from pyspark.sql import functions as F

    micros = [-30610224000000000, -12244089600000000, 6626966400000000]  # years 1000, 1582, 2180
    frame = spark.createDataFrame([(i, m) for i, m in enumerate(micros)], "id long, m long")
    frame.select("id", F.timestamp_micros("m").alias("t")).write.format("delta").save(str(tmp_path / "d"))
    arrow = pa.table(
        {"id": pa.array(range(3), pa.int64()), "t": pa.array(micros, pa.timestamp("us", tz="UTC"))}
    )
    pq.write_table(arrow, tmp_path / "a.parquet")
    for back in (
        spark.read.format("delta").load(str(tmp_path / "d")),
        spark.read.parquet(str(tmp_path / "a.parquet")),
    ):
        assert [
            r.m for r in back.select("id", F.unix_micros("t").alias("m")).orderBy("id").collect()
        ] == micros


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


def test_generated_code_above_the_jit_limit_is_compiled(spark):
    """The driver JVM (which runs the tasks in local mode) JIT-compiles huge generated methods,
    so Spark keeps its default code size limit: without the option the events stage's cleaning
    runs in the bytecode interpreter, several times slower (BENCHMARKS.md)."""
    from spark_jobs.session import HUGE_METHOD_LIMIT, JIT_HUGE_METHODS, compiles_huge_methods

    conf = spark_conf(SparkConfig())
    for key in ("spark.driver.extraJavaOptions", "spark.executor.extraJavaOptions"):
        assert JIT_HUGE_METHODS in conf[key].split()
    assert compiles_huge_methods(spark)
    key, limit = HUGE_METHOD_LIMIT
    assert spark.conf.get(key) != limit


def test_a_driver_without_the_jit_option_splits_generated_code():
    """A driver JVM started without the option (spark-submit without it, a user's own
    extraJavaOptions) gets Spark's code size limit lowered to what the JIT compiles."""
    from tests.driver_process import driver_result

    result = driver_result(
        "-Dmedmod.test=1", "compiles_huge_methods(spark), spark.conf.get('spark.sql.codegen.hugeMethodLimit')"
    )
    assert result == "False 8000"


CACHE_COMPRESSED = "spark.sql.inMemoryColumnarStorage.compressed"


def _cached_bytes(spark, df) -> int:
    """Bytes in memory of ``df`` cached (materialized by a count), then released; what other
    tests of the shared session left cached is not counted."""

    def in_memory() -> int:
        return sum(info.memSize() for info in spark.sparkContext._jsc.sc().getRDDStorageInfo())

    before = in_memory()
    df = df.persist()
    df.count()
    size = in_memory() - before
    df.unpersist(blocking=True)
    return size


def test_a_setting_holds_inside_the_block_only(spark):
    from spark_jobs.session import sql_conf_unless_set

    assert spark.conf.get(CACHE_COMPRESSED) == "true"
    with sql_conf_unless_set(spark, CACHE_COMPRESSED, "false"):
        assert spark.conf.get(CACHE_COMPRESSED) == "false"
    assert spark.conf.get(CACHE_COMPRESSED) == "true"
    key = "spark.sql.files.maxRecordsPerFile"  # not among the session's starting settings
    spark.conf.set(key, "3")
    with pytest.raises(RuntimeError, match="boom"):
        with sql_conf_unless_set(spark, key, "7"):
            assert spark.conf.get(key) == "7"
            raise RuntimeError("boom")
    assert spark.conf.get(key) == "3"
    spark.conf.unset(key)


def test_a_setting_the_session_started_with_wins(spark):
    from spark_jobs.session import sql_conf_unless_set

    key = "spark.sql.session.timeZone"  # given to the builder by spark_conf
    assert spark.sparkContext.getConf().contains(key)
    with sql_conf_unless_set(spark, key, "Europe/Paris"):
        assert spark.conf.get(key) == "UTC"
    assert spark.conf.get(key) == "UTC"


def test_a_cache_filled_inside_the_block_is_not_compressed(spark):
    """The events stage relies on Spark reading the setting when the cache is filled, not when
    the process starts: an uncompressed cache of repetitive columns is several times larger."""
    from spark_jobs.session import sql_conf_unless_set

    def frame():
        return spark.range(200_000).selectExpr("id % 3 AS k", "'the same text' AS s")

    compressed = _cached_bytes(spark, frame())
    with sql_conf_unless_set(spark, CACHE_COMPRESSED, "false"):
        plain = _cached_bytes(spark, frame())
    assert plain > 3 * compressed > 0
