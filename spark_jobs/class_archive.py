"""A class-data sharing (CDS) archive of the Spark driver's classes, built once per machine.

A fresh Spark JVM parses, verifies and links some 26,000 classes of pyspark's jars before and while
it runs a query, in every run. HotSpot can map classes it archived in an earlier run instead
(application class-data sharing); the driver JVM that pyspark starts is given the archive when one
exists for this Java build and these jars (``SparkConfig.class_archive``).

    python -m spark_jobs.class_archive build     # once per machine (`make setup` runs it)
    python -m spark_jobs.class_archive status    # which archive this machine would use

``build`` runs the ETL on a few synthetic patients with the JVM listing the classes it loads, then
has ``java -Xshare:dump`` write them into ``~/.cache/medmod/cds/spark-<fingerprint>.jsa``. The
fingerprint covers the Java build and the name, size and time of every jar on the classpath: an
upgraded pyspark or JDK finds no archive (and builds its own), and the JVM itself checks the
classpath and its own version again when it maps one, falling back to loading classes as usual.
Classes of jars given through ``spark.jars`` (Delta, S3A) are loaded by Spark's own class loader
and are not archived.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)

SYNTH_PATIENTS = 40


class ArchiveError(RuntimeError):
    """The archive could not be built (message says which step and why)."""


def cache_dir() -> Path:
    from spark_jobs import jars

    return Path(os.environ.get("MEDMOD_CDS_DIR", jars.jars_dir().parent / "cds"))


def spark_home() -> Path:
    import pyspark

    return Path(pyspark.__file__).resolve().parent


def java_home() -> Path | None:
    """The JDK pyspark launches: ``JAVA_HOME``, else the ``java`` on PATH."""
    if os.environ.get("JAVA_HOME"):
        return Path(os.environ["JAVA_HOME"])
    java = shutil.which("java")
    return Path(java).resolve().parent.parent if java else None


def classpath(home: Path) -> str:
    """The driver's classpath as Spark's launcher writes it for a pip-installed pyspark (its conf
    folder, then its jars folder); the JVM expands the wildcard in the same order both times."""
    conf = Path(os.environ.get("SPARK_CONF_DIR", home / "conf"))
    return f"{conf}{os.pathsep}{home / 'jars' / '*'}"


def _stat_line(path: Path) -> str:
    st = path.stat()
    return f"{path.name} {st.st_size} {st.st_mtime_ns}"


def fingerprint(java: Path, spark: Path) -> str:
    """Short hash of what an archive is only valid for: the JVM build (``release`` file and
    ``libjvm.so``) and every jar of the classpath (name, size, modification time)."""
    h = hashlib.sha256()
    release = java / "release"
    h.update(release.read_bytes() if release.is_file() else b"")
    for libjvm in sorted(java.glob("lib/server/libjvm.*")):
        h.update(_stat_line(libjvm).encode())
    for jar in sorted((spark / "jars").glob("*.jar")):
        h.update(_stat_line(jar).encode())
    return h.hexdigest()[:16]


def archive_path(java: Path | None = None, spark: Path | None = None) -> Path | None:
    """Where this machine's archive is (or would be); None without a Java to fingerprint."""
    java = java or java_home()
    if java is None:
        return None
    return cache_dir() / f"spark-{fingerprint(java, spark or spark_home())}.jsa"


def driver_options() -> str:
    """Java options that map this machine's archive, or "" when there is none."""
    path = archive_path()
    if path is None or not path.is_file():
        return ""
    # An archive the JVM finds unusable (another classpath or build) is skipped without a word.
    return f"-XX:SharedArchiveFile={path}"


def _java(java: Path) -> str:
    return str(java / "bin" / "java")


def _train(class_list: Path, work: Path, patients: int) -> None:
    """The ETL on ``patients`` synthetic patients, its driver JVM listing every class it loads."""
    raw, out = work / "raw", work / "out"
    steps = [
        ["-m", "spark_jobs.synth_mimic", "--out", str(raw), "--patients", str(patients), "--no-images"],
        [
            "-m",
            "spark_jobs.pipeline",
            f"raw={raw}",
            f"out={out}",
            f"spark.class_list={class_list}",
        ],
    ]
    for args in steps:
        log.info("running %s", " ".join(args[:2]))
        done = subprocess.run([sys.executable, *args], capture_output=True, text=True)
        if done.returncode != 0:
            raise ArchiveError(f"training run `python {' '.join(args[:2])}` failed:\n{done.stderr[-3000:]}")


def dump(class_list: Path, target: Path, java: Path, spark: Path) -> Path:
    """``java -Xshare:dump`` of ``class_list`` under the driver's classpath, written atomically."""
    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_name(target.name + ".part")
    cmd = [
        _java(java),
        "-Xshare:dump",
        # A JVM maps an archive only with the same compressed-pointer mode: a small heap pins the
        # mode of every driver below 32 GB (a default heap of a quarter of a large host would not).
        "-Xmx1g",
        f"-XX:SharedClassListFile={class_list}",
        f"-XX:SharedArchiveFile={part}",
        "-Xlog:cds=error",
        "-cp",
        classpath(spark),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0 or not part.is_file():
        part.unlink(missing_ok=True)
        raise ArchiveError(f"`java -Xshare:dump` failed (exit {done.returncode}):\n{done.stdout[-3000:]}")
    part.replace(target)
    return target


def build(force: bool = False, patients: int = SYNTH_PATIENTS) -> Path:
    """Build this machine's archive unless it exists; remove archives of other builds."""
    java, spark = java_home(), spark_home()
    if java is None:
        raise ArchiveError("no Java found (JAVA_HOME unset and no `java` on PATH)")
    target = archive_path(java, spark)
    assert target is not None
    if target.is_file() and not force:
        return target
    print(f"building the JVM class archive {target} (once per machine, ~2 min)", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="medmod-cds-") as tmp:
        class_list = Path(tmp) / "classes.lst"
        _train(class_list, Path(tmp), patients)
        dump(class_list, target, java, spark)
    for stale in target.parent.glob("spark-*.jsa"):
        if stale != target:
            stale.unlink()
    return target


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    parser = argparse.ArgumentParser(
        prog="python -m spark_jobs.class_archive", description=__doc__.splitlines()[0]
    )
    parser.add_argument("action", choices=["build", "status"])
    parser.add_argument("--force", action="store_true", help="build again even if the archive exists")
    parser.add_argument(
        "--patients", type=int, default=SYNTH_PATIENTS, help="synthetic patients of the training run"
    )
    args = parser.parse_args(argv)
    if args.action == "build":
        try:
            path = build(args.force, args.patients)
        except ArchiveError as err:
            print(f"error: {err}", file=sys.stderr)
            return 1
        print(path)
        return 0
    path = archive_path()
    if path is None:
        print("no Java found: no archive")
        return 1
    print(path, "" if path.is_file() else "(missing: `python -m spark_jobs.class_archive build`)")
    return 0 if path.is_file() else 1


if __name__ == "__main__":
    raise SystemExit(main())
