"""Shard format, writer core and webdataset reader on tiny hand-made records (no Spark)."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from shards.manifest import eval_assignment, num_records, num_samples, rank_counts, read_manifest
from shards.reader import ReaderConfig, collate_samples, expand_hourly, make_loader, shard_dataset
from shards.record import ImageError, Record, decode_record, encode_image, tar_key
from shards.tiny import tiny_dataset, tiny_records
from shards.transforms import ImageTransform
from shards.write import write_shard_files


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny") / "ds"
    manifest = tiny_dataset(str(root), tasks=("ihm", "los", "decomp"), records=7, records_per_shard=2)
    return root, manifest


def test_index_files_equal_dali_wds2idx(tiny, tmp_path):
    wds2idx = pytest.importorskip("wds2idx")
    root, manifest = tiny
    for shard in manifest["tasks"]["los"]["splits"]["train"]["shards"]:
        theirs = tmp_path / "theirs.idx"
        with wds2idx.IndexCreator(str(root / shard["name"]), str(theirs), verbose=False) as creator:
            creator.create_index()
        assert (root / shard["index"]).read_text() == theirs.read_text()


def test_rewrite_is_byte_identical_and_leaves_files_untouched(tiny, tmp_path):
    root, _ = tiny
    again = tmp_path / "again"
    tiny_dataset(str(again), tasks=("ihm", "los", "decomp"), records=7, records_per_shard=2)
    assert _files(root) == _files(again)
    before = {p: p.stat().st_mtime_ns for p in again.rglob("*.tar")}
    os.utime(next(iter(before)), ns=(1, 1))  # an untouched file keeps even a fake mtime
    marked = next(iter(before))
    tiny_dataset(str(again), tasks=("ihm", "los", "decomp"), records=7, records_per_shard=2)
    assert marked.stat().st_mtime_ns == 1
    assert not list(again.rglob(".tmp-*"))


def test_manifest_counts_and_prevalence(tiny):
    _, manifest = tiny
    recs = tiny_records("decomp", "val", 7)
    assert num_records(manifest, "decomp", "val") == 7
    assert num_samples(manifest, "decomp", "val") == sum(r.n_samples for r in recs)
    pos = sum(float(r.y.sum()) for r in recs)
    assert manifest["tasks"]["decomp"]["splits"]["val"]["prevalence"] == [
        pytest.approx(pos / sum(r.n_samples for r in recs))
    ]
    los = manifest["tasks"]["los"]["splits"]["test"]["prevalence"]
    assert len(los) == 10 and sum(los) == pytest.approx(1.0)


def test_reader_gives_back_the_records(tiny):
    root, manifest = tiny
    recs = {r.meta["sample_id"]: r for r in tiny_records("ihm", "test", 7)}
    seen = list(shard_dataset(str(root), ReaderConfig(task="ihm", split="test"), manifest=manifest))
    assert sorted(s["sample_id"] for s in seen) == sorted(recs)
    for s in seen:
        rec = recs[s["sample_id"]]
        want = rec.ehr.astype(np.float16).astype(np.float32)
        if len(want) == 0:
            want = np.zeros((1, 76), np.float32)
        np.testing.assert_array_equal(s["ehr"].numpy(), want)
        np.testing.assert_array_equal(s["y"].numpy(), rec.y)
        assert s["has_image"] == (rec.image is not None)
        assert s["image"].shape == (3, 224, 224)
        assert s["image"].abs().sum() > 0 if rec.image else s["image"].abs().sum() == 0


@pytest.mark.parametrize("world_size", [1, 2, 3, 5])
def test_exact_eval_scores_every_sample_once(tiny, world_size):
    root, manifest = tiny
    cfg = ReaderConfig(task="los", split="val")
    got, per_rank = [], []
    for rank in range(world_size):
        ids = [
            sid
            for b in make_loader(str(root), cfg, 4, num_workers=2, rank=rank, world_size=world_size)
            for sid in b["sample_id"]
        ]
        per_rank.append(len(ids))
        got += ids
    want = [sid for r in tiny_records("los", "val", 7) for sid in r.sample_ids()]
    assert Counter(got) == Counter(want) and len(set(got)) == len(got)
    assert per_rank == rank_counts(manifest, "los", "val", world_size)
    names = [s["name"] for p in eval_assignment(manifest, "los", "val", world_size) for s in p]
    assert sorted(names) == sorted(s["name"] for s in manifest["tasks"]["los"]["splits"]["val"]["shards"])


def test_sequence_mode_matches_expanded_samples(tiny):
    root, manifest = tiny
    seq = list(
        shard_dataset(str(root), ReaderConfig(task="decomp", split="val", mode="sequence"), manifest=manifest)
    )
    flat = list(shard_dataset(str(root), ReaderConfig(task="decomp", split="val"), manifest=manifest))
    assert [s["sample_id"] for s in flat] == [sid for seg in seq for sid in seg["sample_id"]]
    expanded = [x for seg in seq for x in expand_hourly(seg)]
    for a, b in zip(expanded, flat, strict=True):
        assert torch.equal(a["ehr"], b["ehr"]) and torch.equal(a["y"], b["y"])
    batch = collate_samples(flat[:3])
    assert batch["y"].shape == (3, 1) and batch["ehr_len"].tolist() == [len(s["ehr"]) for s in flat[:3]]


def test_train_transform_is_seeded_and_eval_is_deterministic():
    img = torch.randint(0, 256, (1, 300, 280), dtype=torch.uint8)
    ev = ImageTransform(train=False)
    assert torch.equal(ev(img), ev(img)) and ev(img).shape == (3, 224, 224)
    a, b, c = ImageTransform(True, seed=1), ImageTransform(True, seed=1), ImageTransform(True, seed=2)
    xa, xb, xc = a(img), b(img), c(img)
    assert torch.equal(xa, xb) and not torch.equal(xa, xc)
    from shards.transforms import IMAGENET_MEAN, IMAGENET_STD

    raw = [xa[i] * IMAGENET_STD[i] + IMAGENET_MEAN[i] for i in range(3)]  # grayscale replicated
    assert torch.allclose(raw[0], raw[1], atol=1e-5) and torch.allclose(raw[1], raw[2], atol=1e-5)


def test_corrupt_and_missing_images_are_rejected_with_a_reason():
    with pytest.raises(ImageError) as err:
        encode_image(b"\xff\xd8\xff not a jpeg")
    assert err.value.reason == "corrupt"
    jpeg = tiny_records("ihm", "train", 1)[0].image
    with pytest.raises(ImageError):
        encode_image(jpeg[: len(jpeg) // 3])


def test_crash_mid_shard_leaves_nothing_under_final_names(tmp_path):
    recs = tiny_records("ihm", "train", 4)

    def crashing():
        yield from recs[:2]
        raise RuntimeError("executor lost")

    with pytest.raises(RuntimeError):
        write_shard_files(crashing(), str(tmp_path), task="ihm", split="train", records_per_shard=10)
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]


def test_truncated_shard_fails_eval_clearly_and_is_skipped_in_training(tiny, tmp_path, caplog):
    root, manifest = tiny
    broken = tmp_path / "broken"
    tiny_dataset(str(broken), tasks=("ihm",), records=7, records_per_shard=2)
    shard = broken / manifest["tasks"]["ihm"]["splits"]["val"]["shards"][0]["name"]
    shard.write_bytes(shard.read_bytes()[:1500])
    with pytest.raises(Exception, match="ihm-val-000000"):
        list(shard_dataset(str(broken), ReaderConfig(task="ihm", split="val")))
    train = ReaderConfig(task="ihm", split="val", train=True, exact=True)
    got = list(shard_dataset(str(broken), train))
    assert 5 <= len(got) < 7 and "skipping a bad record" in caplog.text


def test_record_round_trip_keeps_components():
    ehr = np.arange(2 * 76, dtype=np.float32).reshape(2, 76) / 7
    rec = Record(
        tar_key(3, "x:1:2.5"), ehr, np.array([1.0], np.float32), {"sample_id": "x:1:2.5", "stay_id": 1}
    )
    assert "." not in rec.key
    from shards.record import encode_record

    parts = dict(encode_record(rec))
    assert list(parts) == ["ehr.npy", "y.npy", "meta.json"]
    back = decode_record(parts)
    assert back["ehr"].dtype == np.float16 and back["cxr"] is None and back["meta"]["has_image"] is False


def test_missing_manifest_is_a_clear_error(tmp_path):
    from shards.manifest import ManifestError

    with pytest.raises(ManifestError, match="no committed shard set"):
        read_manifest(str(tmp_path))


def test_verify_files_only_finds_each_kind_of_damage(tiny, tmp_path, capsys):
    from shards import verify

    root, manifest = tiny
    assert verify.verify(str(root)) == []
    assert verify.main([str(root)]) == 0
    broken = tmp_path / "broken"
    tiny_dataset(str(broken), tasks=("ihm", "los", "decomp"), records=7, records_per_shard=2)
    (broken / "ihm" / "val" / ".tmp-deadbeef-ihm-val-000009.tar").write_bytes(b"half")  # ignored
    shards = manifest["tasks"]["los"]["splits"]["train"]["shards"]
    (broken / shards[0]["name"]).write_bytes((broken / shards[0]["name"]).read_bytes()[:-2048])
    (broken / shards[1]["index"]).unlink()
    problems = verify.verify(str(broken))
    assert any(shards[0]["name"] in p and "sha256" in p for p in problems)
    assert any(shards[1]["index"] in p and "missing" in p for p in problems)
    assert any(shards[0]["name"] in p and "size" in p for p in problems)
    assert len(problems) == 3, problems
    assert verify.main([str(broken)]) == 1
    assert "3 problem(s)" in capsys.readouterr().err
