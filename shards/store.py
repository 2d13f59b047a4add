"""Tar shards, DALI index files and atomic commits, through fsspec (local paths and ``s3://``).

A shard is written to a local temporary file first (tar members with fixed mtime/owner/mode so
the bytes depend on the records only), hashed, then committed: on a file system under a temporary
name beside its final name and renamed, on S3 by one PUT (objects appear only when complete). A
reader listing the folder may see a ``.tmp-*`` file but never a half-written shard under a final
name, and ``manifest.json`` (the commit point) is written only after every shard it lists. When
the final file already holds the same bytes it is left untouched.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import tarfile
import tempfile
import uuid
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field

import fsspec

from conf.tasks import task_spec
from shards.record import Record, encode_record

log = logging.getLogger("medmod.shards")
IDX_VERSION = "v1.2"  # DALI's wds2idx format: "v1.2 <n>" then one line per sample
_CHUNK = 1 << 20


@dataclass
class ShardInfo:
    """What the manifest says about one shard (paths relative to the dataset root)."""

    name: str
    sha256: str
    size: int
    index: str
    index_sha256: str
    records: int
    samples: int
    with_image: int
    label_sum: list[float] = field(default_factory=list)  # per label (LOS: per bucket)

    def to_json(self) -> dict:
        return asdict(self)


def fs_and_path(url: str) -> tuple[fsspec.AbstractFileSystem, str]:
    fs, path = fsspec.core.url_to_fs(url)
    return fs, path


def join(root: str, *parts: str) -> str:
    return "/".join([root.rstrip("/"), *parts])


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(_CHUNK):
            h.update(block)
    return h.hexdigest()


def sha256_url(url: str) -> str:
    h = hashlib.sha256()
    with fsspec.open(url, "rb") as fh:
        while block := fh.read(_CHUNK):
            h.update(block)
    return h.hexdigest()


def _tarinfo(name: str, size: int) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.size, ti.mtime, ti.mode = size, 0, 0o444
    ti.uid = ti.gid = 0
    ti.uname = ti.gname = ""
    return ti


def label_counts(rec: Record, task: str) -> list[float]:
    """Per-label sums over the record's samples (LOS: bucket histogram) for the prevalence."""
    import numpy as np

    y = np.asarray(rec.y)
    if task_spec(task).is_multiclass:
        return (
            np.bincount(y.reshape(-1).astype(np.int64), minlength=task_spec(task).num_classes)
            .astype(float)
            .tolist()
        )
    return y.reshape(rec.n_samples, -1).astype(np.float64).sum(axis=0).tolist()


def write_tar(records: Iterable[Record], local_path: str, task: str) -> tuple[str, dict]:
    """Write records to a local tar; return (DALI index text, stats)."""
    lines: list[str] = []
    stats = {"records": 0, "samples": 0, "with_image": 0, "label_sum": None}
    with tarfile.open(local_path, "w", format=tarfile.USTAR_FORMAT) as tf:
        for rec in records:
            entries = []
            for ext, data in encode_record(rec):
                name = f"{rec.key}.{ext}"
                ti = _tarinfo(name, len(data))
                header = tf.offset
                tf.addfile(ti, io.BytesIO(data))
                entries.append(f"{ext} {header + tarfile.BLOCKSIZE} {len(data)} {name}")
            lines.append(" ".join(entries))
            counts = label_counts(rec, task)
            prev = stats["label_sum"]
            stats["label_sum"] = counts if prev is None else [a + b for a, b in zip(prev, counts)]
            stats["records"] += 1
            stats["samples"] += rec.n_samples
            stats["with_image"] += int(rec.image is not None) * rec.n_samples
    if not lines:
        raise ValueError("a shard needs at least one record")
    index = f"{IDX_VERSION} {len(lines)}\n" + "\n".join(lines) + "\n"
    stats["label_sum"] = stats["label_sum"] or []
    return index, stats


def _is_local(fs: fsspec.AbstractFileSystem) -> bool:
    protocols = (fs.protocol,) if isinstance(fs.protocol, str) else tuple(fs.protocol)
    return "file" in protocols or "local" in protocols


def commit_file(local_path: str, url: str, sha256: str) -> bool:
    """Put ``local_path`` at ``url`` so that readers see the whole file or nothing.

    A file system gets a temporary name beside the target and a rename. An object store (S3)
    shows an object only once its PUT (or multipart upload) is complete, so the object is put
    under its final name directly: a rename there would be a second full copy, and its
    copy-then-delete races with listings of the same prefix. Returns False (and writes nothing)
    when ``url`` already holds these exact bytes.
    """
    fs, path = fs_and_path(url)
    size = os.path.getsize(local_path)
    parent = path.rsplit("/", 1)[0]
    # fsspec shares one filesystem instance per process: a listing made elsewhere (a reader, a
    # monitor) leaves a directory cache that may predate our files; drop it
    fs.invalidate_cache(parent)
    if fs.exists(path) and fs.size(path) == size and sha256_url(url) == sha256:
        return False
    if not _is_local(fs):
        fs.put_file(local_path, path)
        fs.invalidate_cache(parent)
        return True
    fs.makedirs(parent, exist_ok=True)
    tmp = f"{parent}/.tmp-{uuid.uuid4().hex}-{path.rsplit('/', 1)[1]}"
    fs.put_file(local_path, tmp)
    try:
        fs.mv(tmp, path)
    except BaseException:
        fs.rm(tmp)
        raise
    return True


def commit_bytes(data: bytes, url: str) -> bool:
    with tempfile.NamedTemporaryFile(delete=False) as fh:
        fh.write(data)
    try:
        return commit_file(fh.name, url, hashlib.sha256(data).hexdigest())
    finally:
        os.unlink(fh.name)


def shard_name(task: str, split: str, index: int) -> str:
    """Path of shard ``index`` relative to the dataset root (FORMAT.md)."""
    return f"{task}/{split}/{task}-{split}-{index:06d}.tar"


def write_shard(records: Iterable[Record], root: str, task: str, split: str, index: int) -> ShardInfo:
    """Write one shard (tar + ``.idx``) of ``records`` under ``root`` and commit both."""
    name = shard_name(task, split, index)
    idx_name = name[: -len(".tar")] + ".idx"
    with tempfile.TemporaryDirectory(prefix="medmod-shard-") as tmp:
        local = os.path.join(tmp, "shard.tar")
        index_text, stats = write_tar(records, local, task)
        digest = sha256_file(local)
        idx_bytes = index_text.encode()
        commit_bytes(idx_bytes, join(root, idx_name))
        written = commit_file(local, join(root, name), digest)
        log.debug("%s %s (%d records)", "wrote" if written else "unchanged", name, stats["records"])
        return ShardInfo(
            name=name,
            sha256=digest,
            size=os.path.getsize(local),
            index=idx_name,
            index_sha256=hashlib.sha256(idx_bytes).hexdigest(),
            **stats,
        )
