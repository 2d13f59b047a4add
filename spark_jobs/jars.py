"""The JVM jars Spark needs beyond pyspark itself: Delta Lake and S3A (hadoop-aws).

They are fetched once from Maven Central into a local cache (``$MEDMOD_JARS_DIR``, default
``~/.cache/medmod/jars``) and handed to Spark as local files, so that every later run — tests,
CI, a laptop on a train — works offline and never resolves dependencies at session start.

    python -m spark_jobs.jars fetch     # download what is missing, verify sha1
    python -m spark_jobs.jars list      # print the local paths
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import sys
import urllib.request
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

MAVEN_REPO = os.environ.get("MEDMOD_MAVEN_REPO", "https://repo1.maven.org/maven2")


@dataclass(frozen=True)
class Artifact:
    group: str
    name: str
    version: str

    @property
    def filename(self) -> str:
        return f"{self.name}-{self.version}.jar"

    def url(self, repo: str = MAVEN_REPO) -> str:
        return f"{repo}/{self.group.replace('.', '/')}/{self.name}/{self.version}/{self.filename}"


# Delta 3.3.x is the line built for Spark 3.5 (Scala 2.12); hadoop-aws must equal the Hadoop
# version bundled with pyspark (3.3.4), and the AWS SDK bundle is the one hadoop-aws 3.3.4 names.
DELTA = (
    Artifact("io.delta", "delta-spark_2.12", "3.3.2"),
    Artifact("io.delta", "delta-storage", "3.3.2"),
)
S3A = (
    Artifact("org.apache.hadoop", "hadoop-aws", "3.3.4"),
    Artifact("com.amazonaws", "aws-java-sdk-bundle", "1.12.262"),
)
ALL = DELTA + S3A


def jars_dir() -> Path:
    return Path(os.environ.get("MEDMOD_JARS_DIR", Path.home() / ".cache" / "medmod" / "jars"))


def local_paths(artifacts=ALL) -> list[Path]:
    return [jars_dir() / a.filename for a in artifacts]


def missing(artifacts=ALL) -> list[Artifact]:
    return [a for a in artifacts if not (jars_dir() / a.filename).is_file()]


def _download(url: str, dest: Path) -> None:
    tmp = dest.with_suffix(dest.suffix + ".part")
    with urllib.request.urlopen(url, timeout=120) as resp, open(tmp, "wb") as out:
        total = int(resp.headers.get("Content-Length") or 0)
        done = 0
        while chunk := resp.read(1 << 20):
            out.write(chunk)
            done += len(chunk)
            if total and sys.stderr.isatty():
                print(f"\r  {dest.name}: {done >> 20}/{total >> 20} MiB", end="", file=sys.stderr)
    if total and sys.stderr.isatty():
        print(file=sys.stderr)
    expected = urllib.request.urlopen(url + ".sha1", timeout=60).read().decode().split()[0].strip()
    actual = hashlib.sha1(tmp.read_bytes()).hexdigest()
    if actual != expected:
        tmp.unlink()
        raise RuntimeError(f"sha1 mismatch for {url}: got {actual}, Maven says {expected}")
    tmp.rename(dest)


def fetch(artifacts=ALL) -> list[Path]:
    """Download every missing artifact (atomically, sha1-checked); return all local paths."""
    target = jars_dir()
    target.mkdir(parents=True, exist_ok=True)
    for art in missing(artifacts):
        log.info("fetching %s", art.url())
        print(f"fetching {art.filename} -> {target}", file=sys.stderr)
        try:
            _download(art.url(), target / art.filename)
        except OSError as err:
            raise RuntimeError(
                f"could not download {art.url()} ({err}). Set MEDMOD_MAVEN_REPO to a reachable Maven "
                f"mirror, or place {art.filename} in {target} by hand."
            ) from err
    return local_paths(artifacts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m spark_jobs.jars", description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["fetch", "list"])
    args = parser.parse_args(argv)
    if args.action == "fetch":
        fetch()
    for path in local_paths():
        print(path, "" if path.is_file() else "(missing)")
    return 0 if not missing() else 1


if __name__ == "__main__":
    raise SystemExit(main())
