"""The ingest stage on raw tables in S3: Spark's csv reader against the Arrow reader, whose tasks
open the files themselves (s3fs, with the bucket's S3A settings).

    python scripts/bench_ingest_s3.py [--patients 5000] [--seed 3] [--unused-scale 13]
                                      [--cache data/bench/synth-cache] [--work data/bench/s3]
                                      [--rounds 2] [--cluster CORES] [--set key=value ...]
                                      [--note TEXT] [--no-write]

The cached synthetic set of ``bench_etl.py`` (generated there first when absent, not timed) is
uploaded to a bucket of a moto S3 server on 127.0.0.1, started by this script in its own process.
Then, alternating the readers round by round, a fresh child process runs the ETL's ingest stage
(``stages=[ingest]``, ``raw=s3a://...``, ``ingest.reader=spark`` or ``auto``) while the parent
samples the child's process tree (``bench_common.run_child``). ``--cluster N``: the child's Spark
runs on a standalone master and one worker with N cores on 127.0.0.1 (``tests/cluster.py``), so
the raw files are read by the executors, not by the driver. The moto server's own CPU is not in
the figures but shares the machine's cores with Spark: on a 2-core machine it slows both readers.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import bench_common as bc  # noqa: E402
import bench_etl  # noqa: E402

BUCKET = "medmod-bench"
READERS = ("spark", "auto")
# What S3A and s3fs need for a moto server; moto accepts any key.
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "bench",
    "AWS_SECRET_ACCESS_KEY": "bench",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@contextlib.contextmanager
def moto_server(log: Path):
    """A moto S3 server in its own process on a free loopback port; yields its URL."""
    from tests.cluster import HOST, free_port

    port = free_port()
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", HOST, "-p", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://{HOST}:{port}"
    try:
        import urllib.request

        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(url, timeout=2).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"moto server did not start; see {log}") from None
                time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def upload(url: str, root: Path, prefix: str) -> int:
    """The raw tables under ``root`` (csv / csv.gz, not the generator's _truth) to the bucket."""
    import boto3

    s3 = boto3.client("s3", endpoint_url=url, region_name="us-east-1")
    s3.create_bucket(Bucket=BUCKET)
    total = 0
    for path in sorted(root.rglob("*.csv*")):
        relative = path.relative_to(root)
        if relative.parts[0].startswith("_"):
            continue
        s3.upload_file(str(path), BUCKET, f"{prefix}/{relative}")
        total += path.stat().st_size
    return total


@contextlib.contextmanager
def spark_master(cores: int | None, workdir: Path):
    """``local[*]``, or a standalone master with one worker of ``cores`` cores on 127.0.0.1."""
    if not cores:
        yield []
        return
    from tests.cluster import standalone_cluster

    with standalone_cluster(workdir, cores=cores, memory="8g") as cluster:
        yield [f"spark.master={cluster.url}", "spark.extra={spark.executor.memory: 6g}"]


def measure(args: argparse.Namespace, url: str, reader: str, round_: int, master: list[str]) -> dict:
    out = args.work / f"ingest-{reader}-{round_}"
    shutil.rmtree(out, ignore_errors=True)
    raw = f"s3a://{BUCKET}/p{args.patients}"
    words = [
        f"raw={raw}",
        f"cxr={raw}",
        f"out={out}",
        "stages=[ingest]",
        f"ingest.reader={reader}",
        f"spark.s3.endpoint={url}",
        "spark.s3.path_style=true",
        "spark.s3.ssl=false",
        "spark.s3.region=us-east-1",
        "spark.driver_memory=8g",
        *master,
        *args.settings,
    ]
    bc.log.info("ingest from S3, reader %s, round %d: %s", reader, round_, " ".join(words))
    load = os.getloadavg()[0]
    run = bc.run_child(
        Path(bench_etl.__file__).resolve(),
        {"words": words},
        args.work / "logs" / f"ingest-{reader}-{round_}.log",
        args.interval,
    )
    shutil.rmtree(out, ignore_errors=True)
    ingest_s = run.result["stage_s"]["ingest"]
    rows = sum(r["rows_in"] for r in run.result["reports"] if r["table"] in ("chartevents", "labevents"))
    bc.log.info("reader %s: ingest %.1f s, CPU %.0f s", reader, ingest_s, run.usage.cpu_s)
    return {
        "reader": reader,
        "round": round_,
        "ingest_s": ingest_s,
        "process_s": run.wall_s,
        "cpu_s": run.usage.cpu_s,
        "peak": run.usage.peak_rss,
        "load": load,
        "rows": rows,
        "reports": run.result["reports"],
    }


def report(args: argparse.Namespace, runs: list[dict], uploaded: int, facts: dict[str, str]) -> str:
    where = f"standalone master + 1 worker ({args.cluster} cores)" if args.cluster else "local[*]"
    rows = [
        [
            r["reader"],
            r["round"],
            f"{r['ingest_s']:.1f}",
            f"{r['process_s']:.1f}",
            f"{r['cpu_s']:.0f}",
            bc.mib(r["peak"]),
            f"{r['load']:.2f}",
        ]
        for r in runs
    ]
    mean = {
        reader: sum(r["ingest_s"] for r in runs if r["reader"] == reader)
        / max(1, sum(r["reader"] == reader for r in runs))
        for reader in READERS
    }
    same = all(r["reports"] == runs[0]["reports"] for r in runs)
    lines = [
        f"## Ingest from S3 (moto on loopback), {args.patients:,} patients, {where} — {bc.now_utc()}",
        "",
        "```bash",
        bc.command_line(),
        "```",
        "",
        *[f"- {key}: {value}" for key, value in facts.items()],
        "",
        f"{uploaded / 2**20:,.0f} MiB of raw csv.gz in the bucket, {runs[0]['rows']:,} raw event rows. "
        "Readers alternate round by round; each run is a fresh process (its own Spark).",
        "",
        bc.table(
            ["reader", "round", "ingest s", "process s", "CPU s", "peak RSS", "load avg at start"],
            rows,
            False,
        ),
        "",
        f"- Mean ingest: spark {mean['spark']:.1f} s, auto (Arrow in the tasks) {mean['auto']:.1f} s: "
        f"**{mean['spark'] / mean['auto']:.2f}x**.",
        f"- Same counts (rows in, kept, rejected by reason) in every run: {'yes' if same else 'NO'}.",
    ]
    if args.cluster:
        lines.append(
            "- CPU s and peak RSS are the driver's process tree only: the executors run under the "
            "worker daemon, outside it."
        )
    if args.note:
        lines += ["", args.note]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--patients", type=int, default=5000)
    p.add_argument("--seed", type=int, default=3)
    p.add_argument("--unused-scale", type=int, default=bench_etl.MIMIC_LIKE_UNUSED_SCALE)
    p.add_argument("--cache", type=Path, default=bc.REPO / "data/bench/synth-cache")
    p.add_argument("--work", type=Path, default=bc.REPO / "data/bench/s3")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument(
        "--cluster", type=int, default=0, metavar="CORES", help="standalone worker cores (0: local)"
    )
    p.add_argument("--set", dest="settings", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--interval", type=float, default=0.5)
    p.add_argument("--note", default="")
    p.add_argument("--no-write", dest="write", action="store_false")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    bc.setup_logging()
    args = parse_args(argv)
    if args.rounds < 1:
        raise SystemExit("--rounds must be >= 1")
    args.work.mkdir(parents=True, exist_ok=True)
    root = bench_etl.dataset(args, args.patients)
    os.environ.update(CREDENTIALS)  # the children's S3A (environment provider) and s3fs read these
    facts = bc.machine_facts()  # the load average before the runs
    runs = []
    with (
        moto_server(args.work / "moto.log") as url,
        tempfile.TemporaryDirectory(dir=args.work) as cluster_dir,
        spark_master(args.cluster, Path(cluster_dir)) as master,
    ):
        uploaded = upload(url, root, f"p{args.patients}")
        for round_ in range(1, args.rounds + 1):
            for reader in READERS:
                runs.append(measure(args, url, reader, round_, master))
    return bc.publish(facts, lambda f: report(args, runs, uploaded, f), args.write) and 0


if __name__ == "__main__":
    sys.exit(main())
