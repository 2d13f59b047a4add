"""Shards written to and streamed from a real S3 server (moto on loopback) through fsspec."""

from __future__ import annotations

import threading
from collections import Counter

import pytest

from shards.manifest import ManifestError, read_manifest
from shards.reader import ReaderConfig, shard_dataset
from shards.tiny import tiny_dataset
from shards.verify import verify

pytestmark = pytest.mark.s3


@pytest.fixture
def s3(s3_server, monkeypatch):
    """An s3fs filesystem whose endpoint and credentials come from the environment only."""
    import boto3
    import s3fs

    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server)  # botocore reads it; nothing passed in code
    s3fs.S3FileSystem.clear_instance_cache()
    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket="medmod")
    yield s3fs.S3FileSystem()
    s3fs.S3FileSystem.clear_instance_cache()


def test_write_then_stream_from_s3_equals_local(s3, tmp_path):
    url = "s3://medmod/shards"
    remote = tiny_dataset(url, tasks=("ihm", "los"), records=5, records_per_shard=2)
    local = tiny_dataset(str(tmp_path), tasks=("ihm", "los"), records=5, records_per_shard=2)
    assert remote["tasks"] == local["tasks"]  # same bytes, same sha256 on S3
    for task, mode in (("ihm", "sample"), ("los", "sequence")):
        cfg = ReaderConfig(task=task, split="val", mode=mode)
        a = [s["sample_id"] for s in shard_dataset(url, cfg)]
        b = [s["sample_id"] for s in shard_dataset(str(tmp_path), cfg)]
        assert a == b and a
    assert verify(url) == []


def test_read_while_the_bucket_is_listed_and_written(s3):
    url = "s3://medmod/live"
    with pytest.raises(ManifestError, match="no committed shard set"):
        read_manifest(url)  # a reader that starts before the commit point sees a clear error
    seen: list[tuple[str, int]] = []
    stop = threading.Event()

    def lister():
        while not stop.is_set():
            try:
                listing = s3.find("medmod/live", detail=True, refresh=True)
            except FileNotFoundError:  # a temp name moved away between list and stat: expected
                continue
            seen.extend((path, info["size"]) for path, info in listing.items())

    thread = threading.Thread(target=lister, daemon=True)
    thread.start()
    try:
        manifest = tiny_dataset(url, tasks=("ihm",), records=9, records_per_shard=2)
        got = Counter(s["sample_id"] for s in shard_dataset(url, ReaderConfig(task="ihm", split="test")))
    finally:
        stop.set()
        thread.join(timeout=30)
    final = {
        f"medmod/live/{s['name']}": s["size"]
        for e in manifest["tasks"]["ihm"]["splits"].values()
        for s in e["shards"]
    }
    # whatever the listing caught under a final shard name was already the whole shard
    assert all(size == final[path] for path, size in seen if path in final)
    assert (
        sum(got.values()) == manifest["tasks"]["ihm"]["splits"]["test"]["samples"] and max(got.values()) == 1
    )
    assert not [p for p in s3.find("medmod/live") if "/.tmp-" in p]


def test_stale_listing_does_not_hide_a_committed_shard(s3):
    """A listing cached (by anyone in the process) while a shard was still being written must not
    make the reader miss it: shards are opened by the names in the manifest, not from listings."""
    url = "s3://medmod/stale"
    manifest = tiny_dataset(url, tasks=("ihm",), records=9, records_per_shard=2)
    test_shards = [s["name"] for s in manifest["tasks"]["ihm"]["splits"]["test"]["shards"]]
    parent = f"medmod/stale/{test_shards[0].rsplit('/', 1)[0]}"
    listing = s3.ls(parent, detail=True, refresh=True)
    # the shared instance's cache as a listing taken before the last shard appeared
    s3.dircache[parent] = [e for e in listing if not e["name"].endswith(test_shards[-1].rsplit("/", 1)[1])]
    got = [s["sample_id"] for s in shard_dataset(url, ReaderConfig(task="ihm", split="test"))]
    assert len(got) == manifest["tasks"]["ihm"]["splits"]["test"]["samples"]


@pytest.mark.parametrize("task,mode,split", [("pheno", "sample", "test"), ("los", "sequence", "val")])
def test_dali_streams_s3_shards_like_local_files(s3, tmp_path, task, mode, split):
    """``data.loader=dali data.shards=s3://...``: the external-source path fed by the fsspec
    stream gives the same batches as DALI's reader on a local copy of the same shards."""
    pytest.importorskip("nvidia.dali")
    import torch

    from shards.dali import dali_loader

    url = f"s3://medmod/dali-{task}"
    tiny_dataset(url, tasks=(task,), records=7, records_per_shard=3, image_size=256)
    tiny_dataset(str(tmp_path), tasks=(task,), records=7, records_per_shard=3, image_size=256)
    cfg = ReaderConfig(task=task, split=split, mode=mode)
    remote = list(dali_loader(url, cfg, batch_size=3))
    local = list(dali_loader(str(tmp_path), cfg, batch_size=3))
    assert len(remote) == len(local) >= 2
    for a, b in zip(remote, local):
        assert a.keys() == b.keys() and a["sample_id"] == b["sample_id"]
        for key, value in a.items():
            if torch.is_tensor(value):
                assert torch.equal(value, b[key]), key
