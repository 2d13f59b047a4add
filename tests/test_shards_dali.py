"""DALI's webdataset reader over our shards (CPU operators here) equals the WebDataset reader."""

from __future__ import annotations

import pytest
import torch

from shards.reader import ReaderConfig, shard_dataset
from shards.tiny import tiny_dataset

dali = pytest.importorskip("nvidia.dali")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny-dali")
    manifest = tiny_dataset(str(root), tasks=("pheno", "los"), records=7, records_per_shard=3, image_size=256)
    return str(root), manifest


def _first_id(s):
    return s["sample_id"] if isinstance(s["sample_id"], str) else s["sample_id"][0]


@pytest.mark.parametrize("task,mode", [("pheno", "sample"), ("los", "sequence")])
def test_dali_and_webdataset_give_the_same_samples(tiny, task, mode):
    from shards.dali import dali_samples

    root, manifest = tiny
    cfg = ReaderConfig(task=task, split="test", mode=mode)
    a = {_first_id(s): s for s in dali_samples(root, cfg, batch_size=3, manifest=manifest)}
    b = {_first_id(s): s for s in shard_dataset(root, cfg, manifest=manifest)}
    assert sorted(a) == sorted(b) and len(a) == 7
    for key, x in a.items():
        y = b[key]
        assert x["sample_id"] == y["sample_id"] and x["has_image"] == y["has_image"]
        assert torch.equal(x["ehr"], y["ehr"]) and torch.equal(x["y"], y["y"])
        assert x["image"].shape == y["image"].shape == (3, 224, 224)
        # both decode the same JPEG with libjpeg-turbo; 1/255 of ImageNet std bounds the rounding
        assert (x["image"] - y["image"]).abs().max() <= 1.0 / (255 * 0.224) + 1e-5
        if not x["has_image"]:
            assert x["image"].abs().sum() == 0


def test_dali_exact_eval_covers_every_sample_once_over_ranks(tiny):
    from shards.dali import dali_loader

    root, manifest = tiny
    cfg = ReaderConfig(task="los", split="val")
    ids = [
        sid
        for r in range(2)
        for b in dali_loader(root, cfg, 4, rank=r, world_size=2, manifest=manifest)
        for sid in b["sample_id"]
    ]
    assert len(ids) == len(set(ids)) == manifest["tasks"]["los"]["splits"]["val"]["samples"]


def test_dali_train_pipeline_augments(tiny):
    from shards.dali import dali_loader

    root, manifest = tiny
    batch = next(iter(dali_loader(root, ReaderConfig(task="pheno", split="train"), 4, manifest=manifest)))
    assert batch["image"].shape == (4, 3, 224, 224) and batch["y"].shape == (4, 25)
    assert torch.isfinite(batch["image"]).all()


def test_each_rank_decodes_on_its_local_gpu(monkeypatch):
    from shards.dali import device_id_for

    assert device_id_for("cpu", 3) is None
    assert [device_id_for("mixed", r, gpus=8) for r in range(8)] == list(range(8))
    # more ranks than GPUs (two processes sharing one): wrapped, as trainer.distributed does
    assert [device_id_for("mixed", r, gpus=1) for r in range(2)] == [0, 0]
    assert [device_id_for("mixed", r, gpus=2) for r in range(4)] == [0, 1, 0, 1]
    monkeypatch.setenv("LOCAL_RANK", "5")
    assert device_id_for("mixed", gpus=8) == 5 and device_id_for("cpu") is None
    with pytest.raises(ValueError, match="local rank"):
        device_id_for("mixed", -1, gpus=8)


def test_pipeline_threads_share_the_node_between_ranks(monkeypatch):
    from shards.dali import MAX_THREADS, DaliResources, node_resources, size_resources

    assert size_resources(cpus=128, local_ranks=8) == DaliResources(num_threads=MAX_THREADS)
    assert size_resources(cpus=16, local_ranks=8) == DaliResources(num_threads=1)
    assert size_resources(cpus=32, local_ranks=8, prefetch=3) == DaliResources(3, 3)
    assert size_resources(cpus=2, local_ranks=8).num_threads == 1
    assert size_resources(cpus=16, local_ranks=8, threads=6).num_threads == 6
    with pytest.raises(ValueError, match="prefetch"):
        size_resources(16, 1, prefetch=0)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1000")
    assert node_resources().num_threads == 1


def test_the_pipeline_runs_on_the_device_it_is_given(tiny, monkeypatch):
    """``build_pipeline`` hands DALI the rank's device id (GPU-free: pipeline_def is recorded)."""
    import nvidia.dali

    from shards import dali as sd

    seen = {}

    def fake_pipeline_def(**kwargs):
        seen.update(kwargs)
        raise RuntimeError("recorded")

    monkeypatch.setattr(nvidia.dali, "pipeline_def", fake_pipeline_def)
    cfg = ReaderConfig(task="pheno", split="test")
    for device, local_rank, want in (("mixed", 3, 3), ("cpu", 3, None)):
        with pytest.raises(RuntimeError, match="recorded"):
            sd.build_pipeline([], [], cfg, 4, device, 2, device_id=sd.device_id_for(device, local_rank))
        assert seen["device_id"] == want and seen["prefetch_queue_depth"] == 2


def test_source_kind_streams_anything_but_local_paths():
    from shards.dali import source_kind

    assert source_kind("/data/shards") == source_kind("file:///data/shards") == "reader"
    assert source_kind("s3://bucket/shards") == source_kind("gs://b/s") == "stream"


def test_external_batches_look_like_the_reader_outputs():
    from shards.dali import external_batches

    recs = [{"a.npy": b"\x01\x02", "cxr.jpg": b"\xff"}, {"a.npy": b"\x03"}, {"a.npy": b"", "cxr.jpg": None}]
    batches = list(external_batches(iter(recs), ["a.npy", "cxr.jpg"], 2))
    assert [len(b[0]) for b in batches] == [2, 1]
    assert batches[0][0][0].tolist() == [1, 2] and batches[0][1][1].size == 0
    assert all(a.dtype.name == "uint8" for b in batches for col in b for a in col)


def test_gpu_images_go_device_to_device_and_host_batches_are_pinned(monkeypatch):
    """The ``mixed`` output path without a GPU: DALI's image batch is copied into a CUDA tensor
    by ``feed_ndarray`` (mocked: it needs a GPU) and never through ``as_cpu``/numpy."""
    import nvidia.dali.plugin.pytorch as dali_torch

    from shards import dali as sd

    calls = {}

    class FakeGpuBatch:
        def __len__(self):
            return 2

        def as_cpu(self):
            raise AssertionError("host round trip")

        def at(self, i):
            raise AssertionError("host round trip")

        def as_tensor(self):
            return type("Dense", (), {"shape": lambda self: [2, 3, 4, 4]})()

    def fake_feed(dense, out, cuda_stream=None):
        calls["target"] = out
        return out

    monkeypatch.setattr(dali_torch, "feed_ndarray", fake_feed)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: None)
    monkeypatch.setattr(sd, "cuda_device", lambda device_id: torch.device("meta"))  # no GPU here
    images = sd.images_to_torch(FakeGpuBatch(), "mixed", device_id=1)
    assert len(images) == 2 and images[0].shape == (3, 4, 4)
    assert calls["target"].shape == (2, 3, 4, 4)

    pinned = []
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda t: pinned.append(t.shape) or t)
    batch = sd.pin_host_tensors(
        {"ehr": torch.zeros(2, 3), "image": torch.zeros(1, device="meta"), "ids": ["a"]}
    )
    assert pinned == [torch.Size([2, 3])] and batch["ids"] == ["a"]


def test_dali_reads_pairs_only_for_pretraining_like_the_webdataset_reader(tiny):
    """mode=pretrain sets paired_only: no record without an image may reach the SSL loss."""
    from shards.dali import dali_loader

    root, manifest = tiny
    cfg = ReaderConfig(task="pheno", split="test", mode="sample", paired_only=True)
    dali_ids = [i for b in dali_loader(root, cfg, batch_size=2, manifest=manifest) for i in b["sample_id"]]
    wds_ids = [s["sample_id"] for s in shard_dataset(root, cfg, manifest=manifest)]
    assert sorted(dali_ids) == sorted(wds_ids)
    everything = ReaderConfig(task="pheno", split="test", mode="sample")
    assert 0 < len(dali_ids) < len(list(shard_dataset(root, everything, manifest=manifest)))
    for batch in dali_loader(root, cfg, batch_size=2, manifest=manifest):
        assert bool(batch["has_image"].all())
