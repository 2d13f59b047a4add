"""spark_jobs.write_shards over the session's ETL run, and spark_jobs.verify_shards against the gold tables."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from conf.tasks import TASK_NAMES
from shards.manifest import read_manifest
from shards.reader import ReaderConfig, shard_dataset
from shards.record import decode_record
from shards.verify import _records
from spark_jobs import verify_shards, write_shards

pytestmark = pytest.mark.slow


def _cfg(tables: str, out: Path, **kw) -> write_shards.ShardWriterConfig:
    return write_shards.ShardWriterConfig(
        tables=tables, out=str(out), records_per_shard=40, min_shards=3, **kw
    )


@pytest.fixture(scope="module")
def shard_run(spark, etl_run, tmp_path_factory):
    tables, _ = etl_run
    out = tmp_path_factory.mktemp("shards") / "all"
    manifest = write_shards.run(_cfg(tables, out), spark)
    return tables, out, manifest


def _gold_counts(spark, tables: str, task: str) -> dict[str, int]:
    df = write_shards.read_delta(spark, f"{tables}/gold/samples_{task}")
    return {r["split"]: r["count"] for r in df.groupBy("split").count().collect()}


def test_counts_equal_gold_for_every_task_and_split(spark, shard_run):
    tables, _, manifest = shard_run
    for task in TASK_NAMES:
        got = {s: e["samples"] for s, e in manifest["tasks"][task]["splits"].items()}
        assert got == _gold_counts(spark, tables, task), task
        assert manifest["sources"]["delta_versions"][f"gold/samples_{task}"] >= 0
    hourly = manifest["tasks"]["decomp"]["splits"]["train"]
    assert hourly["records"] < hourly["samples"]  # segments, not one record per hour


def test_verify_passes_and_catches_a_modified_shard(spark, shard_run, tmp_path):
    tables, out, manifest = shard_run
    assert verify_shards.verify_with_tables(str(out), tables, spark=spark) == []
    broken = tmp_path / "broken"
    shutil.copytree(out, broken)
    shard = broken / manifest["tasks"]["ihm"]["splits"]["test"]["shards"][0]["name"]
    shard.write_bytes(shard.read_bytes()[:-1024])
    problems = verify_shards.verify_with_tables(str(broken), tables, spark=spark)
    assert any("ihm-test-000000" in p and "sha256" in p for p in problems)
    assert any("gold samples not in the shards" in p for p in problems)
    assert verify_shards.main([str(broken), f"tables={tables}"]) == 1


@pytest.mark.parametrize("task", ["decomp", "los"])
def test_segments_expand_to_exactly_the_delta_rows(spark, shard_run, task):
    tables, out, _ = shard_run
    gold = write_shards.read_delta(spark, f"{tables}/gold/samples_{task}").select(
        "sample_id", "split", "hour", "y"
    )
    want = sorted((r["split"], r["sample_id"], float(r["hour"]), float(r["y"][0])) for r in gold.collect())
    got = []
    for split in ("train", "val", "test"):
        cfg = ReaderConfig(task=task, split=split, mode="sequence")
        for seg in shard_dataset(str(out), cfg):
            for sid, hour, y in zip(
                seg["sample_id"],
                seg["hours"].tolist(),
                seg["y"].reshape(len(seg["hours"]), -1)[:, 0].tolist(),
                strict=True,
            ):
                got.append((split, sid, float(hour), float(y)))
    assert sorted(got) == want


def test_ehr_is_the_timeseries_prefix_in_float16(spark, shard_run):
    tables, out, manifest = shard_run
    ts = write_shards.read_delta(spark, f"{tables}/silver/timeseries")
    shard = manifest["tasks"]["pheno"]["splits"]["val"]["shards"][0]
    records = [decode_record(parts) for _, parts, _ in _records(str(out / shard["name"]))]
    stays = [r["meta"]["stay_id"] for r in records]
    rows = ts.where(ts.stay_id.isin(stays)).collect()
    by_stay: dict[int, dict[int, list[float]]] = {}
    for r in rows:
        by_stay.setdefault(r["stay_id"], {})[r["bin"]] = r["x"]
    for rec in records:
        bins = by_stay[rec["meta"]["stay_id"]]
        want = np.asarray([bins[b] for b in range(len(rec["ehr"]))], dtype=np.float16)
        np.testing.assert_array_equal(rec["ehr"], want)
        assert len(rec["ehr"]) == len(bins)  # phenotyping: the whole stay
        assert rec["meta"]["has_image"] and rec["cxr"][:2] == b"\xff\xd8"


def test_radiology_ehr_is_its_gold_window(spark, shard_run):
    """Radiology windows end at the image time: the shards hold the ETL's gold windows, not a
    prefix of the whole-stay matrix (whose last bin may hold later events)."""
    tables, out, manifest = shard_run
    windows = write_shards.read_delta(spark, f"{tables}/gold/windows_radiology")
    shard = manifest["tasks"]["radiology"]["splits"]["train"]["shards"][0]
    records = [decode_record(parts) for _, parts, _ in _records(str(out / shard["name"]))]
    ids = [r["meta"]["sample_id"] for r in records]
    by_sample: dict[str, dict[int, list[float]]] = {}
    for r in windows.where(windows.sample_id.isin(ids)).collect():
        by_sample.setdefault(r["sample_id"], {})[r["bin"]] = r["x"]
    assert records and set(by_sample) <= set(ids)
    for rec in records:
        bins = by_sample.get(rec["meta"]["sample_id"], {})
        assert len(rec["ehr"]) == len(bins)
        want = np.asarray([bins[b] for b in range(len(bins))], dtype=np.float16).reshape(len(bins), -1)
        np.testing.assert_array_equal(rec["ehr"].reshape(len(bins), -1), want)


def test_rerun_gives_identical_files(spark, shard_run, tmp_path):
    tables, out, manifest = shard_run
    again = write_shards.run(_cfg(tables, tmp_path / "again", task="ihm"), spark)
    assert again["tasks"]["ihm"] == manifest["tasks"]["ihm"]
    for split in again["tasks"]["ihm"]["splits"].values():
        for s in split["shards"]:
            assert (tmp_path / "again" / s["name"]).read_bytes() == (out / s["name"]).read_bytes()


def _damaged_cxr_tree(synth_root, tmp_path, spark, tables) -> tuple[Path, str, str]:
    root, _, _ = synth_root
    cxr = tmp_path / "cxr"
    shutil.copytree(Path(root) / "files", cxr / "files")
    ihm = write_shards.read_delta(spark, f"{tables}/gold/samples_ihm").where("split = 'train'")
    dicoms = [r["dicom_id"] for r in ihm.select("dicom_id").distinct().orderBy("dicom_id").limit(2).collect()]
    paths = {
        r["dicom_id"]: r["path"]
        for r in write_shards.read_delta(spark, f"{tables}/silver/cxr")
        .where(f"dicom_id in ('{dicoms[0]}', '{dicoms[1]}')")
        .collect()
    }
    (cxr / paths[dicoms[0]]).write_bytes(b"\xff\xd8\xff\xe0 truncated")
    (cxr / paths[dicoms[1]]).unlink()
    return cxr, dicoms[0], dicoms[1]


def test_bad_images_are_counted_dropped_when_paired_kept_when_partial(spark, etl_run, synth_root, tmp_path):
    tables, _ = etl_run
    cxr, corrupt, missing = _damaged_cxr_tree(synth_root, tmp_path, spark, tables)
    ihm = write_shards.read_delta(spark, f"{tables}/gold/samples_ihm")
    n_bad = ihm.where(ihm.dicom_id.isin([corrupt, missing])).count()
    paired = write_shards.run(_cfg(tables, tmp_path / "paired", task="ihm", cxr=str(cxr)), spark)
    assert paired["image_errors"] == {corrupt: "corrupt", missing: "missing"}
    train = paired["tasks"]["ihm"]["splits"]["train"]
    assert (
        train["dropped_samples"] == n_bad
        and train["samples"] == _gold_counts(spark, tables, "ihm")["train"] - n_bad
    )
    assert verify_shards.verify_with_tables(str(tmp_path / "paired"), tables, spark=spark) == []
    partial = write_shards.run(
        _cfg(tables, tmp_path / "partial", task="ihm", cxr=str(cxr), paired=False), spark
    )
    ptrain = partial["tasks"]["ihm"]["splits"]["train"]
    assert ptrain["samples"] == _gold_counts(spark, tables, "ihm")["train"]
    assert ptrain["with_image"] == ptrain["samples"] - n_bad and ptrain["dropped_samples"] == 0
    assert read_manifest(str(tmp_path / "partial"))["tasks"]["ihm"]["paired"] is False
