"""spark_jobs.write_shards on hand-made Delta tables: 3 stays, 5 images (one corrupt, one missing)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest

from shards.reader import ReaderConfig, shard_dataset
from spark_jobs import verify_shards, write_shards

SPLIT = {1: "train", 2: "val", 3: "test"}
IMAGES = {"d1": 1, "d2": 2, "d3a": 3, "d3b": 3, "dmissing": 1}


def _x(stay: int, b: int) -> list[float]:
    rng = np.random.default_rng([stay, b])
    return [float(v) for v in rng.normal(size=76).astype(np.float32)]


def _jpeg(size: tuple[int, int]) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(size).integers(0, 255, size[::-1], dtype=np.uint8)).save(
        buf, "JPEG"
    )
    return buf.getvalue()


def _save(spark, rows, schema: str, path: Path, meta: dict | None = None) -> None:
    writer = spark.createDataFrame(rows, schema).coalesce(1).write.format("delta").mode("overwrite")
    writer.option("userMetadata", json.dumps(meta or {})).save(str(path))


def _ihm():
    return [
        (f"ihm:{s}:8", SPLIT[s], s, 10 * s, 8.0, 8, [float(s % 2)], None, d)
        for s, d in ((1, "d1"), (2, "d2"), (3, "d3a"))
    ]


def _decomp():
    rows = []
    for s, hours in (
        (1, {5: "d1", 6: "d1", 7: "d1", 8: "dmissing", 9: "dmissing"}),
        (3, {5: "d3a", 6: "d3a", 7: "d3b", 8: "d3b", 9: "d3b"}),
    ):
        for h, d in hours.items():
            rows.append((f"decomp:{s}:{h}", SPLIT[s], s, 10 * s, float(h), h, [float(h >= 8)], None, d))
    return rows


SAMPLES = "sample_id string, split string, stay_id long, subject_id long, hour double, n_bins int, y array<float>, los_remaining_hours double, dicom_id string"


@pytest.fixture(scope="module")
def tiny_tables(spark, tmp_path_factory):
    base = tmp_path_factory.mktemp("tiny-tables")
    cxr = base / "cxr"
    for dicom, stay in IMAGES.items():
        path = cxr / f"files/p1/p{stay}/s{stay}/{dicom}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        if dicom == "d2":
            path.write_bytes(_jpeg((300, 280))[:200])  # truncated: corrupt
        elif dicom != "dmissing":
            path.write_bytes(_jpeg((300, 280) if dicom != "d3b" else (260, 400)))
    tables = base / "tables"
    _save(
        spark,
        [(f"file:{cxr}/mimic-cxr-2.0.0-metadata.csv.gz",)],
        "_source string",
        tables / "bronze/metadata",
    )
    paths = [(d, f"files/p1/p{s}/s{s}/{d}.jpg") for d, s in IMAGES.items()]
    _save(spark, paths, "dicom_id string, path string", tables / "silver/cxr")
    ts = [(s, b, _x(s, b)) for s in (1, 2, 3) for b in range(10)]
    _save(spark, ts, "stay_id long, bin int, x array<float>", tables / "silver/timeseries")
    etl = {"config": {"paired": True, "timestep": 1.0, "pairing": "causal"}}
    _save(spark, _ihm(), SAMPLES, tables / "gold/samples_ihm", etl)
    _save(spark, _decomp(), SAMPLES, tables / "gold/samples_decomp", etl)
    norm = [(c, 0.5, 2.0, 10) for c in (2, 3, *range(49, 59))]
    for task in ("ihm", "decomp"):
        _save(spark, norm, "column int, mean double, std double, n long", tables / f"gold/normalizer_{task}")
    return str(tables)


@pytest.fixture(scope="module")
def written(spark, tiny_tables, tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny-shards") / "out"
    cfg = write_shards.ShardWriterConfig(
        tables=tiny_tables, out=str(out), tasks=["ihm", "decomp"], min_shards=2, image_size=64
    )
    return out, cfg, write_shards.run(cfg, spark)


def test_manifest_counts_drops_and_image_errors(written):
    _, _, m = written
    assert m["image_errors"] == {"d2": "corrupt", "dmissing": "missing"}
    ihm = m["tasks"]["ihm"]["splits"]
    assert (ihm["train"]["samples"], ihm["test"]["samples"], ihm["val"]["samples"]) == (1, 1, 0)
    assert ihm["val"]["dropped_samples"] == 1 and ihm["val"]["shards"] == []
    dec = m["tasks"]["decomp"]["splits"]
    assert (dec["test"]["records"], dec["test"]["samples"]) == (2, 5)
    assert (dec["train"]["records"], dec["train"]["samples"], dec["train"]["dropped_samples"]) == (1, 3, 2)
    assert dec["test"]["prevalence"] == [pytest.approx(2 / 5)]
    assert m["tasks"]["ihm"]["normalizer"]["mean"] == [0.5] * 12
    assert set(m["sources"]["delta_versions"]) >= {"gold/samples_ihm", "silver/timeseries", "silver/cxr"}


def test_segments_hold_each_history_once_and_expand_to_the_rows(written):
    out, _, _ = written
    segs = list(shard_dataset(str(out), ReaderConfig(task="decomp", split="test", mode="sequence")))
    by_first = {s["sample_id"][0]: s for s in segs}
    assert sorted(by_first) == ["decomp:3:5", "decomp:3:7"]
    late = by_first["decomp:3:7"]
    assert late["sample_id"] == ["decomp:3:7", "decomp:3:8", "decomp:3:9"]
    assert late["hours"].tolist() == [7.0, 8.0, 9.0] and late["y"][:, 0].tolist() == [0.0, 1.0, 1.0]
    assert len(late["ehr"]) == 9 and late["bins"].tolist() == [7, 8, 9]
    raw = np.asarray([_x(3, b) for b in range(9)], dtype=np.float16).astype(np.float32)
    cols = [2, 3, *range(49, 59)]
    raw[:, cols] = (raw[:, cols] - 0.5) / 2.0
    np.testing.assert_allclose(late["ehr"].numpy(), raw, rtol=0, atol=1e-6)
    assert late["has_image"] and late["image"].shape == (3, 224, 224)


def test_verify_accepts_the_set_with_its_counted_drops(spark, written):
    out, cfg, _ = written
    assert verify_shards.verify_with_tables(str(out), cfg.tables, spark=spark) == []
