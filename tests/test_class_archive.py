"""The driver JVM's class archive: what it is valid for, when the driver gets it, that the JVM
serves Spark's classes from it, and that the test session's own JVM maps it where one exists."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from spark_jobs import class_archive
from spark_jobs.session import JAVA_OPTIONS, SparkConfig, driver_java_options, spark_conf


def _fake_install(root: Path) -> tuple[Path, Path]:
    java, spark = root / "jdk", root / "pyspark"
    (java / "lib" / "server").mkdir(parents=True)
    (java / "release").write_text('JAVA_VERSION="17.0.15"\n')
    (java / "lib" / "server" / "libjvm.so").write_bytes(b"jvm")
    (spark / "jars").mkdir(parents=True)
    for name in ("spark-core_2.12-3.5.5.jar", "scala-library-2.12.18.jar"):
        (spark / "jars" / name).write_bytes(b"classes")
    return java, spark


def test_the_fingerprint_follows_the_java_build_and_every_jar(tmp_path):
    java, spark = _fake_install(tmp_path)
    first = class_archive.fingerprint(java, spark)
    assert class_archive.fingerprint(java, spark) == first

    jar = spark / "jars" / "spark-core_2.12-3.5.5.jar"
    jar.write_bytes(b"other classes")  # a jar replaced (size and time)
    replaced = class_archive.fingerprint(java, spark)
    os.utime(jar, ns=(jar.stat().st_atime_ns, jar.stat().st_mtime_ns + 10**9))  # touched only
    touched = class_archive.fingerprint(java, spark)
    (spark / "jars" / "extra-1.0.jar").write_bytes(b"x")  # a jar added
    added = class_archive.fingerprint(java, spark)
    (java / "release").write_text('JAVA_VERSION="17.0.16"\n')  # the JDK updated
    updated = class_archive.fingerprint(java, spark)
    assert len({first, replaced, touched, added, updated}) == 5


def test_the_driver_gets_the_archive_only_when_there_is_one(tmp_path, monkeypatch):
    java, spark = _fake_install(tmp_path)
    monkeypatch.setenv("JAVA_HOME", str(java))
    monkeypatch.setenv("MEDMOD_CDS_DIR", str(tmp_path / "cds"))
    monkeypatch.setattr(class_archive, "spark_home", lambda: spark)

    assert driver_java_options(SparkConfig()) == JAVA_OPTIONS
    path = class_archive.archive_path()
    path.parent.mkdir()
    path.write_bytes(b"archive")
    options = driver_java_options(SparkConfig()).split()
    assert f"-XX:SharedArchiveFile={path}" in options
    assert options[: len(JAVA_OPTIONS.split())] == JAVA_OPTIONS.split()
    assert driver_java_options(SparkConfig(class_archive=False)) == JAVA_OPTIONS
    listing = driver_java_options(SparkConfig(class_list="/tmp/x.lst"))
    assert "-XX:DumpLoadedClassList=/tmp/x.lst" in listing.split() and "SharedArchiveFile" not in listing
    # The archive is a file of this machine: executors (on a cluster, other machines) never get it.
    assert spark_conf(SparkConfig())["spark.executor.extraJavaOptions"] == JAVA_OPTIONS


def _spark_submit_version(java: Path, cp: str, *options: str) -> str:
    cmd = [
        str(java / "bin" / "java"),
        *options,
        "-cp",
        cp,
        "org.apache.spark.deploy.SparkSubmit",
        "--version",
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout + done.stderr


def test_the_jvm_serves_spark_classes_from_a_dumped_archive(tmp_path):
    """A real dump under the launcher's classpath: Spark's classes then come from the archive, and
    a JVM whose classpath differs loads them from the jars (the JVM's own check)."""
    java, spark = class_archive.java_home(), class_archive.spark_home()
    if java is None:
        pytest.fail("no Java found: the ETL needs one")
    cp = class_archive.classpath(spark)
    class_list = tmp_path / "classes.lst"
    _spark_submit_version(java, cp, f"-XX:DumpLoadedClassList={class_list}")
    assert "org/apache/spark/deploy/SparkSubmit" in class_list.read_text()

    archive = class_archive.dump(class_list, tmp_path / "cds" / "spark.jsa", java, spark)
    shared = "org.apache.spark.deploy.SparkSubmit source: shared objects file"
    mapped = _spark_submit_version(java, cp, f"-XX:SharedArchiveFile={archive}", "-Xlog:class+load=info")
    assert shared in mapped

    other_jar = tmp_path / "other.jar"
    other_jar.write_bytes(next((spark / "jars").glob("*.jar")).read_bytes())
    other_cp = f"{other_jar}{os.pathsep}{cp}"
    refused = _spark_submit_version(
        java, other_cp, f"-XX:SharedArchiveFile={archive}", "-Xlog:class+load=info"
    )
    assert shared not in refused
    assert "org.apache.spark.deploy.SparkSubmit source: file:" in refused


def test_the_session_jvm_maps_this_machines_archive(spark):
    """Where `make setup` built the archive, the shared test session's driver (started by
    build_spark) loads most of its classes from it."""
    path = class_archive.archive_path()
    if path is None or not path.is_file():
        pytest.skip(f"no class archive at {path}: `python -m spark_jobs.class_archive build` makes one")
    from spark_jobs.session import mapped_class_archive

    assert mapped_class_archive(spark) == str(path)
    pid = spark.sparkContext._jvm.java.lang.ProcessHandle.current().pid()
    jcmd = class_archive.java_home() / "bin" / "jcmd"
    if not jcmd.is_file():
        pytest.skip(f"{jcmd} is missing (a JRE without the JDK's tools)")
    done = subprocess.run(
        [str(jcmd), str(pid), "PerfCounter.print"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    counters = dict(line.split("=", 1) for line in done.stdout.splitlines() if "=" in line)
    assert int(counters["java.cls.sharedLoadedClasses"]) > 5000, counters.get("java.cls.loadedClasses")


def test_a_driver_given_an_unusable_archive_starts_without_one(tmp_path):
    """An archive the JVM cannot map (here: not an archive at all) is skipped, the session starts
    as usual, and the driver reports no archive."""
    from tests.driver_process import driver_result

    broken = tmp_path / "broken.jsa"
    broken.write_bytes(b"not a class archive" * 100)
    options = f"{JAVA_OPTIONS} -XX:SharedArchiveFile={broken}"
    assert driver_result(options, "repr(mapped_class_archive(spark)), spark.range(3).count()") == "'' 3"
