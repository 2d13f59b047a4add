"""RELIABILITY.md, faults: processes killed mid-work, storage that fails or goes away. Each test
injects the real fault (SIGKILL, a file-size limit, a stopped server) into a real process."""

from __future__ import annotations

import hashlib
import json
import os
import re
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from shards.tiny import tiny_dataset
from tests.test_trainer import REPO, words
from trainer import checkpoint as ckpt
from trainer import train

pytestmark = pytest.mark.slow


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _file_size_limit(limit: int):
    """preexec_fn: the child cannot write a file past ``limit`` bytes (EFBIG, like a full disk)."""

    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # an error from write(), not a kill
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def test_disk_full_while_checkpointing_keeps_the_previous_checkpoint(tmp_path):
    """No mount is needed: RLIMIT_FSIZE makes the checkpoint write fail as a full disk does."""
    root, runs = tmp_path / "ds", tmp_path / "runs"
    tiny_dataset(str(root), tasks=("ihm",), records=6, records_per_shard=3)
    assert train.main(words(root, runs, "task=ihm", "train.epochs=1")) == 0
    last = runs / "ihm" / "uni_ehr" / "0" / "checkpoints" / "last.pt"
    before = _sha(last)

    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        str(REPO / "trainer" / "train.py"),
        *words(root, runs, "task=ihm", "train.epochs=2"),
    ]
    proc = subprocess.run(
        cmd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=_file_size_limit(last.stat().st_size // 2),
    )
    assert proc.returncode != 0
    tail = proc.stderr[-2000:]
    assert f"cannot write checkpoint {last} (the previous one is kept)" in tail, tail
    assert "File too large" in tail and "Traceback" not in proc.stderr, tail
    assert _sha(last) == before and ckpt.load(last)["step"] > 0
    assert not list(last.parent.glob(".*.tmp"))


def _pid_of_rank(tag: str, rank: int) -> int | None:
    """The torchrun worker of ``rank`` among processes started with ``MEDMOD_FAULT_TAG=tag``."""
    for proc in Path("/proc").iterdir():
        try:
            env = dict(
                kv.split("=", 1) for kv in (proc / "environ").read_bytes().decode().split("\0") if "=" in kv
            )
        except (OSError, ValueError):
            continue
        if (
            env.get("MEDMOD_FAULT_TAG") == tag
            and env.get("RANK") == str(rank)
            and "TORCHELASTIC_RUN_ID" in env
        ):
            return int(proc.name)
    return None


def _torchrun(root: Path, runs: Path, tag: str, kill_rank_at: str | None) -> tuple[int, str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "MEDMOD_FAULT_TAG": tag}
    extra = ("task=ihm", "train.epochs=4", "train.ckpt_every=2", "train.log_every=1", "train.patience=10")
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--max-restarts=1",
        "--standalone",
        str(REPO / "trainer" / "train.py"),
        *words(root, runs, *extra),
    ]
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    lines = []
    for line in proc.stderr:
        lines.append(line)
        if kill_rank_at and kill_rank_at in line:
            pid = _pid_of_rank(tag, 1)
            assert pid is not None, "rank 1 not found"
            os.kill(pid, signal.SIGKILL)
            kill_rank_at = None
    return proc.wait(timeout=600), "".join(lines)


def test_trainer_rank_killed_under_torchrun_restarts_to_the_same_metrics(tmp_path):
    root = tmp_path / "ds"
    # 12 train records in 4 shards over 2 ranks, 3 per batch: 2 steps per epoch, 8 in all.
    tiny_dataset(str(root), tasks=("ihm",), records=12, records_per_shard=3)
    code, _ = _torchrun(root, tmp_path / "ref", uuid.uuid4().hex, None)
    assert code == 0
    code, log = _torchrun(root, tmp_path / "killed", uuid.uuid4().hex, " step 3 ")  # after the step-2 save
    assert code == 0, log[-3000:]
    assert re.search(r"resumed from \S+last.pt at step [246] ", log), log[-3000:]
    ref, got = (
        json.loads((tmp_path / r / "ihm/uni_ehr/0/metrics.json").read_text()) for r in ("ref", "killed")
    )
    for split in ("val", "test"):
        assert got[split]["metrics"] == ref[split]["metrics"], split


class _RestartableS3:
    """A moto S3 server on a fixed loopback port that can go away and come back (moto keeps its
    buckets in process memory, so a restarted server serves the same objects)."""

    def __init__(self) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = None
        self.start()

    def start(self) -> None:
        from moto.server import ThreadedMotoServer

        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self.server.start()

    def stop(self) -> None:
        self.server.stop()


@pytest.fixture
def s3_shards(tmp_path, monkeypatch):
    """A tiny shard set on a restartable moto server: (server, s3 root, local copy)."""
    import boto3
    import s3fs

    for key, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing")):
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    server = _RestartableS3()
    monkeypatch.setenv("AWS_ENDPOINT_URL", server.url)
    s3fs.S3FileSystem.clear_instance_cache()
    boto3.client("s3").create_bucket(Bucket="medmod-faults")
    local = tmp_path / "ds"
    tiny_dataset(str(local), tasks=("ihm",), records=6, records_per_shard=2)
    s3fs.S3FileSystem().put(str(local), "medmod-faults/ds", recursive=True)
    yield server, "s3://medmod-faults/ds", local
    server.stop()
    s3fs.S3FileSystem.clear_instance_cache()


@pytest.mark.s3
def test_s3_server_stopped_mid_read_is_retried_then_a_clear_error(s3_shards):
    from shards.reader import ReaderConfig, shard_dataset

    server, root, local = s3_shards
    cfg = ReaderConfig(task="ihm", split="test")
    want = [s["sample_id"] for s in shard_dataset(str(local), cfg)]

    it = iter(shard_dataset(root, cfg))  # eval order: shard by shard
    got = [next(it)["sample_id"]]
    server.stop()  # down between two shards: the next open fails until it is back
    restart = threading.Timer(2.0, server.start)
    restart.start()
    got += [s["sample_id"] for s in it]  # botocore retries with exponential backoff
    restart.join()
    assert got == want

    it = iter(shard_dataset(root, cfg))
    next(it)
    server.stop()
    started = time.monotonic()
    with pytest.raises(
        Exception, match=r"Could not connect to the endpoint URL.*ihm-test-00000[12]\.tar"
    ) as err:
        list(it)
    assert time.monotonic() - started < 60 and len(str(err.value).splitlines()) == 1
    server.start()  # for the fixture's teardown


_SLOW_WRITER = """
import sys, time
from shards.tiny import SPLITS, tiny_records
from shards.write import identity_normalizer, write_dataset

def slow(recs):
    for rec in recs:
        time.sleep(0.05)
        yield rec

recs = {("ihm", s): slow(tiny_records("ihm", s, 12)) for s in SPLITS}
write_dataset(sys.argv[1], recs, {"ihm": identity_normalizer()}, image_size=64, records_per_shard=2,
              paired={"ihm": False}, sources={"kind": "tiny"})
"""


def test_shard_writer_sigkilled_then_rerun_gives_the_clean_set(tmp_path):
    from shards.manifest import ManifestError, read_manifest

    clean, killed = tmp_path / "clean", tmp_path / "killed"
    tiny_dataset(str(clean), tasks=("ihm",), records=12, records_per_shard=2)
    want = {p.relative_to(clean): p.read_bytes() for p in clean.rglob("*") if p.is_file()}

    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", _SLOW_WRITER, str(killed)], env=env)
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline and not list(killed.rglob("*.tar")):
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL
    finals = [p for p in killed.rglob("*") if p.is_file() and not p.name.startswith(".tmp-")]
    assert finals and len(finals) < len(want)  # killed mid-set
    for p in finals:  # whatever carries a final name is complete
        assert p.read_bytes() == want[p.relative_to(killed)], p
    with pytest.raises(ManifestError, match="no committed shard set"):
        read_manifest(str(killed))

    tiny_dataset(str(killed), tasks=("ihm",), records=12, records_per_shard=2)
    got = {p.relative_to(killed): p.read_bytes() for p in killed.rglob("*") if p.is_file()}
    assert {k: v for k, v in got.items() if not k.name.startswith(".tmp-")} == want
