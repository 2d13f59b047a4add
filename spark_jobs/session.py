"""One place that builds the SparkSession: Delta Lake on, S3A configurable, quiet logs.

Credentials for S3 are never read from files in the repository: S3A takes them from the
environment (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN), the AWS profile
(``~/.aws``) or the instance role, through its default provider chain.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from conf.typed import ConfigError
from spark_jobs import class_archive, jars

log = logging.getLogger(__name__)
LOG4J_CONF = Path(__file__).resolve().parent / "log4j2.properties"
# HotSpot leaves a method of more than 8,000 bytes of bytecode to its interpreter
# (DontCompileHugeMethods). The code Spark generates for a wide projection (the events stage's
# cleaning) can be bigger than that, and then runs several times slower.
JIT_HUGE_METHODS = "-XX:-DontCompileHugeMethods"
JAVA_OPTIONS = f"-Dlog4j.configurationFile=file:{LOG4J_CONF} {JIT_HUGE_METHODS}"
# Where the driver's or the executors' JVMs lack JIT_HUGE_METHODS (spark-submit without it,
# extraJavaOptions replaced, a JVM other than HotSpot), Spark is told to split generated code
# above the JIT's limit instead.
HUGE_METHOD_LIMIT = ("spark.sql.codegen.hugeMethodLimit", "8000")
# Spark setting names that carry a credential (Spark's own redaction pattern, plus S3A's keys).
_CREDENTIAL_KEY = re.compile(r"(?i)secret|password|token|access[._]?key|credentials?$")


@dataclass
class S3Config:
    """S3A settings; leave ``endpoint`` empty for AWS itself."""

    endpoint: str = ""
    path_style: bool = False
    region: str = ""
    ssl: bool = True
    # The default chain: env vars, then ~/.aws profile, then instance/container role.
    credentials_provider: str = (
        "com.amazonaws.auth.EnvironmentVariableCredentialsProvider,"
        "com.amazonaws.auth.profile.ProfileCredentialsProvider,"
        "com.amazonaws.auth.InstanceProfileCredentialsProvider"
    )


@dataclass
class SparkConfig:
    master: str = "local[*]"
    app_name: str = "medmod"
    driver_memory: str = "4g"
    # Tasks of a shuffle; 0: four per core of the master (local[*]: the machine, a cluster: its
    # executors' cores). Adaptive execution coalesces small ones (~64 MB each), so the count is an
    # upper bound that grows with the cluster instead of a fixed 8 or Spark's 200.
    shuffle_partitions: int = 0
    log_level: str = "WARN"
    s3: S3Config = field(default_factory=S3Config)
    # Start the driver JVM with this machine's class archive when there is one
    # (`python -m spark_jobs.class_archive build`; it applies where pyspark launches the JVM).
    class_archive: bool = True
    # Write the names of the classes the driver JVM loads to this file (what the archive's
    # build trains on); empty: off.
    class_list: str = ""
    # Any other spark.* setting, passed through verbatim (never credentials: see __post_init__).
    extra: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # A config is logged and stamped on every Delta commit: credentials come from the
        # environment or a profile (s3.credentials_provider), never from here.
        secret = [k for k in self.extra if _CREDENTIAL_KEY.search(k)]
        if secret:
            raise ConfigError(
                f"spark.extra must not hold credentials ({', '.join(secret)}): set them in the "
                "environment (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY) or an AWS profile"
            )


def _s3a_conf(cfg: S3Config) -> dict[str, str]:
    conf = {
        "spark.hadoop.fs.s3a.impl": "org.apache.hadoop.fs.s3a.S3AFileSystem",
        "spark.hadoop.fs.s3a.aws.credentials.provider": cfg.credentials_provider,
        "spark.hadoop.fs.s3a.path.style.access": str(cfg.path_style).lower(),
        "spark.hadoop.fs.s3a.connection.ssl.enabled": str(cfg.ssl).lower(),
        # s3:// URLs as users write them mean the same bucket through S3A.
        "spark.hadoop.fs.s3.impl": "org.apache.hadoop.fs.s3a.S3AFileSystem",
    }
    if cfg.endpoint:
        conf["spark.hadoop.fs.s3a.endpoint"] = cfg.endpoint
    if cfg.region:
        conf["spark.hadoop.fs.s3a.endpoint.region"] = cfg.region
    return conf


def driver_java_options(cfg: SparkConfig) -> str:
    """JAVA_OPTIONS, plus the class archive (or the class list that trains one) where asked.
    Executors never get them: the archive is a file of this machine."""
    options = [JAVA_OPTIONS]
    if cfg.class_list:
        options.append(f"-XX:DumpLoadedClassList={cfg.class_list}")
    elif cfg.class_archive:
        options.append(class_archive.driver_options())
    return " ".join(o for o in options if o)


def spark_conf(cfg: SparkConfig) -> dict[str, str]:
    """The full spark.* mapping for ``cfg`` (pure: no session is started)."""
    missing = jars.missing()
    if missing:
        names = ", ".join(a.filename for a in missing)
        raise RuntimeError(
            f"Spark jars missing from {jars.jars_dir()}: {names}. Run `make setup` "
            f"(or `python -m spark_jobs.jars fetch`) once while online."
        )
    # The driver's python must also be the executors' python (venv), also on a cluster.
    conf = {
        "spark.jars": ",".join(str(p) for p in jars.local_paths()),
        "spark.sql.extensions": "io.delta.sql.DeltaSparkSessionExtension",
        "spark.sql.catalog.spark_catalog": "org.apache.spark.sql.delta.catalog.DeltaCatalog",
        "spark.sql.shuffle.partitions": str(cfg.shuffle_partitions or 8),
        "spark.sql.adaptive.enabled": "true",
        "spark.sql.adaptive.coalescePartitions.enabled": "true",
        "spark.sql.adaptive.advisoryPartitionSizeInBytes": "64m",
        "spark.sql.session.timeZone": "UTC",
        # Timestamps as Parquet INT64 microseconds rather than Spark's default INT96, a 12-byte
        # value whose dictionary encoding hashes byte arrays: cheaper to write and to read back,
        # and the standard type for other Parquet readers (BENCHMARKS.md).
        "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS",
        # Dates and times before 1582 as they are (the proleptic Gregorian calendar Spark computes
        # in, as other Parquet writers, Arrow's among them, store them): Spark's default fails a
        # write or read of such a value, even a garbage year in a raw file that is to be kept.
        **{
            f"spark.sql.parquet.{kind}RebaseModeIn{way}": "CORRECTED"
            for kind in ("datetime", "int96")
            for way in ("Write", "Read")
        },
        "spark.driver.memory": cfg.driver_memory,
        "spark.ui.enabled": "false",
        "spark.ui.showConsoleProgress": "false",
        "spark.databricks.delta.snapshotPartitions": "2",
        "spark.pyspark.python": os.environ.get("PYSPARK_PYTHON", sys.executable),
        "spark.driver.extraJavaOptions": driver_java_options(cfg),
        "spark.executor.extraJavaOptions": JAVA_OPTIONS,
    }
    conf.update(_s3a_conf(cfg.s3))
    conf.update(cfg.extra)
    return conf


def build_spark(cfg: SparkConfig | None = None):
    """Return a SparkSession for ``cfg`` (local[*] by default; any spark:// master works)."""
    from pyspark.sql import SparkSession

    cfg = cfg or SparkConfig()
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    builder = SparkSession.builder.appName(cfg.app_name)
    # Under spark-submit the master comes from the command line; do not fight it.
    if not _under_spark_submit():
        builder = builder.master(cfg.master)
    for key, value in spark_conf(cfg).items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel(cfg.log_level)
    if not cfg.shuffle_partitions and "spark.sql.shuffle.partitions" not in cfg.extra:
        spark.conf.set("spark.sql.shuffle.partitions", str(max(8, 4 * spark.sparkContext.defaultParallelism)))
    key, limit = HUGE_METHOD_LIMIT
    if key not in cfg.extra and not compiles_huge_methods(spark):
        spark.conf.set(key, limit)
        log.info("driver or executors started without %s: %s=%s", JIT_HUGE_METHODS, key, limit)
    _quiet_py4j()
    archive = mapped_class_archive(spark) or "none"
    log.info("spark %s master=%s class archive %s", spark.version, spark.sparkContext.master, archive)
    return spark


@contextmanager
def sql_conf_unless_set(spark, key: str, value: str) -> Iterator[None]:
    """Run the block with SQL setting ``key`` = ``value``, then put the previous value back
    (also when the block fails). A value the session was started with (``spark.extra``, or
    spark-submit's ``--conf``) wins: the block then runs with it, untouched."""
    if spark.sparkContext.getConf().contains(key):
        yield
        return
    previous = spark.conf.get(key, None)
    spark.conf.set(key, value)
    try:
        yield
    finally:
        if previous is None:
            spark.conf.unset(key)
        else:
            spark.conf.set(key, previous)


def _vm_option(spark, name: str) -> str:
    """A HotSpot option of the driver's JVM as it runs ("" when not HotSpot or unknown)."""
    try:
        jvm = spark.sparkContext._jvm
        bean_class = jvm.java.lang.Class.forName("com.sun.management.HotSpotDiagnosticMXBean")
        bean = jvm.java.lang.management.ManagementFactory.getPlatformMXBean(bean_class)
        return str(bean.getVMOption(name).getValue())
    except Exception:  # not HotSpot, or the option is gone
        return ""


def mapped_class_archive(spark) -> str:
    """The class archive the driver's JVM started with and maps ("" if none): a JVM that cannot
    use its archive turns sharing off (spark-submit's driver never got one from us)."""
    archive = _vm_option(spark, "SharedArchiveFile")
    if not archive or _vm_option(spark, "UseSharedSpaces") != "true":
        return ""
    return archive


def compiles_huge_methods(spark) -> bool:
    """Whether the driver's JVM JIT-compiles methods above 8,000 bytes of bytecode, and the
    executors are started with the option that makes it so (False when either is unknown)."""
    executor_options = spark.sparkContext.getConf().get("spark.executor.extraJavaOptions", "")
    master = spark.sparkContext.master
    if master == "local" or master.startswith("local["):  # not local-cluster: the driver runs the tasks
        executor_options = JIT_HUGE_METHODS
    # Unknown (not HotSpot, or the option is gone): HotSpot's default, interpreted.
    driver = _vm_option(spark, "DontCompileHugeMethods") == "false"
    return driver and JIT_HUGE_METHODS in executor_options.split()


def _under_spark_submit() -> bool:
    """True when spark-submit started this driver (its JVM launched us and owns the master)."""
    return "PYSPARK_GATEWAY_PORT" in os.environ


def _quiet_py4j() -> None:
    logging.getLogger("py4j").setLevel(logging.WARNING)
