"""Gold Delta tables -> WebDataset shards + manifest (the format lives in ``shards/``).

    python -m spark_jobs.write_shards tables=PATH out=PATH|s3://... [cxr=PATH] [task=ihm] [image_size=256]
    scripts/submit.sh --master spark://HOST:7077 spark_jobs.write_shards tables=... out=...

The job reads only gold tables (``samples_<task>``, ``normalizer_<task>``, ``windows_<task>``),
silver ``timeseries`` / ``cxr`` and the CXR files: what the ETL wrote, never recomputed here.

Plan (nothing big is collected to the driver: only per-split counts, normalizers, image errors
and the per-shard summaries come back):

1. Images: the distinct ``dicom_id`` of every task's samples, read once from the raw CXR tree
   (local or S3, through fsspec on the executors), resized once, kept as JPEG bytes with a status
   (``ok`` / ``missing`` / ``corrupt``); a bad image is counted and never fails the job.
2. Records per task: one per sample (ihm, pheno, radiology) or one per stay segment (decomp, los:
   samples grouped by stay and paired image, so each segment stores its history once).
   In paired mode a record whose image is bad is dropped (counted), in partial mode kept without.
3. EHR: each record's first ``n_bins`` rows of silver ``timeseries`` (tasks whose window ends
   between two bins, i.e. radiology: the rows of gold ``windows_<task>``), grouped per record.
4. Shards: records numbered per split in a hash order of their id (deterministic, mixed stays),
   cut into contiguous shards; each Spark partition writes its shards (temp name, then move).
5. ``manifest.json`` last; then files of an earlier run that the new manifest does not list go.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np

from conf import typed
from conf.tasks import TASK_NAMES, task_spec, unknown_tasks
from shards.manifest import MANIFEST, build_manifest, normalizer_entry, split_entry, write_manifest
from shards.record import N_FEATURES, ImageError, Record, encode_image, tar_key
from shards.store import ShardInfo, fs_and_path, join, write_shard
from spark_jobs import delta_io
from spark_jobs.session import SparkConfig

log = logging.getLogger("medmod.write_shards")


@dataclass
class ShardWriterConfig:
    tables: str = "data/etl"  # the ETL's out (bronze/silver/gold)
    out: str = "data/shards"
    cxr: str = ""  # MIMIC-CXR-JPG root (files/pXX/...); empty: where the ETL read its metadata
    task: str = ""  # one task; empty: every task of `tasks`
    tasks: list[str] = field(default_factory=lambda: list(TASK_NAMES))
    image_size: int = 256
    records_per_shard: int = 2000
    min_shards: int = 8  # per (task, split), when there are that many records
    paired: bool | None = None  # None: the ETL's samples.paired (gold commit metadata)
    spark: SparkConfig = field(default_factory=SparkConfig)

    def __post_init__(self) -> None:
        if self.task:
            self.tasks = [self.task]
        bad = unknown_tasks(self.tasks)
        if bad:
            raise typed.ConfigError(f"unknown task(s) {bad}; tasks are {list(TASK_NAMES)}")
        if self.image_size < 16:
            raise typed.ConfigError(f"image_size must be >= 16, got {self.image_size}")
        if self.records_per_shard < 1 or self.min_shards < 1:
            raise typed.ConfigError("records_per_shard and min_shards must be >= 1")


def load_config(words: list[str]) -> ShardWriterConfig:
    """conf/shards/default.yaml, then ``key=value`` words (unknown keys are errors)."""
    return typed.load(
        ShardWriterConfig, typed.load_yaml(typed.preset_path("shards", "default")), overrides=words
    )


# ---------------------------------------------------------------- paths and table metadata


def fsspec_url(spark_path: str) -> str:
    """A path as Spark writes it (``file:/x``, ``s3a://b/k``) -> the fsspec form."""
    if spark_path.startswith("file:"):
        return "/" + spark_path[len("file:") :].lstrip("/")
    if spark_path.startswith("s3a://"):
        return "s3://" + spark_path[len("s3a://") :]
    return spark_path


def spark_path(url: str) -> str:
    return "s3a://" + url[len("s3://") :] if url.startswith("s3://") else url


def table_path(cfg: ShardWriterConfig, layer: str, table: str) -> str:
    return spark_path(join(cfg.tables, layer, table))


def read_delta(spark, path: str):
    if not delta_io.exists(spark, path):
        raise FileNotFoundError(
            f"{path} is not a Delta table: run the ETL (python -m spark_jobs.pipeline) first"
        )
    return delta_io.read_table(spark, path)


def cxr_root(cfg: ShardWriterConfig, spark) -> str:
    if cfg.cxr:
        return cfg.cxr
    row = read_delta(spark, table_path(cfg, "bronze", "metadata")).select("_source").first()
    if row is None:
        raise FileNotFoundError("bronze/metadata is empty: give the CXR root as cxr=PATH")
    return fsspec_url(row["_source"]).rsplit("/", 1)[0]


# ---------------------------------------------------------------- images (read once, resize once)


def _load_images(rows: Iterator[Any], root: str, image_size: int) -> Iterator[tuple]:
    import fsspec

    for row in rows:
        url = join(root, row["path"])
        try:
            with fsspec.open(url, "rb") as fh:
                data = fh.read()
        except FileNotFoundError:
            yield row["dicom_id"], None, "missing"
            continue
        try:
            yield row["dicom_id"], encode_image(data, image_size), "ok"
        except ImageError as err:
            yield row["dicom_id"], None, err.reason


def image_table(spark, samples: list, cxr, root: str, image_size: int):
    """``dicom_id, jpg, image_status`` for every image any task uses (each read once)."""
    from pyspark.sql import functions as F

    used = samples[0].select("dicom_id")
    for df in samples[1:]:
        used = used.unionByName(df.select("dicom_id"))
    used = used.where(F.col("dicom_id").isNotNull()).distinct()
    paths = used.join(cxr.select("dicom_id", "path"), "dicom_id", "left")
    schema = "dicom_id string, jpg binary, image_status string"
    missing_path = paths.where(F.col("path").isNull()).select(
        "dicom_id", F.lit(None).cast("binary").alias("jpg"), F.lit("missing").alias("image_status")
    )
    have = paths.where(F.col("path").isNotNull())
    n = max(spark.sparkContext.defaultParallelism * 4, 1)
    loaded = have.repartition(n, "dicom_id").mapInPandas(
        partial(_load_images_pandas, root=root, image_size=image_size), schema
    )
    return loaded.unionByName(missing_path)


def _load_images_pandas(batches, root: str, image_size: int):
    import pandas as pd

    for pdf in batches:
        rows = list(_load_images(pdf.to_dict("records"), root, image_size))
        yield pd.DataFrame(rows, columns=["dicom_id", "jpg", "image_status"])


# ---------------------------------------------------------------- records


def record_table(task: str, samples):
    """One row per record: ``rec_id, split, stay_id, subject_id, dicom_id, n`` + labels/ids.

    Stay-level tasks: the sample itself. Hourly tasks: a segment = the samples of one stay with
    the same paired image (null-safe), arrays sorted by hour.
    """
    from pyspark.sql import functions as F

    if not task_spec(task).hourly:
        return samples.select(
            F.col("sample_id").alias("rec_id"),
            "split",
            "stay_id",
            "subject_id",
            "dicom_id",
            F.col("n_bins").alias("n"),
            F.array(F.col("y")).alias("ys"),
            F.array("sample_id").alias("sample_ids"),
            F.lit(None).cast("array<double>").alias("hours"),
            F.lit(None).cast("array<int>").alias("bins"),
            F.array("los_remaining_hours").alias("los"),
        )
    s = F.struct("hour", "n_bins", "y", "sample_id", "los_remaining_hours")
    grouped = samples.groupBy("split", "stay_id", "subject_id", "dicom_id").agg(
        F.sort_array(F.collect_list(s)).alias("s")
    )
    rec_id = F.concat_ws(
        ":", F.lit(task), F.col("stay_id").cast("string"), F.coalesce(F.col("dicom_id"), F.lit("none"))
    )
    return grouped.select(
        rec_id.alias("rec_id"),
        "split",
        "stay_id",
        "subject_id",
        "dicom_id",
        F.array_max("s.n_bins").alias("n"),
        F.col("s.y").alias("ys"),
        F.col("s.sample_id").alias("sample_ids"),
        F.col("s.hour").alias("hours"),
        F.col("s.n_bins").alias("bins"),
        F.col("s.los_remaining_hours").alias("los"),
    )


def ehr_rows(task: str, records, timeseries, windows):
    """``rec_id, ehr`` (array of (bin, x) structs, sorted) for every record with bins.

    ``windows``: gold ``windows_<task>`` for a task with per-sample windows (a record is one
    sample there), else None and the records' rows are cut from the whole-stay ``timeseries``.
    """
    from pyspark.sql import functions as F

    if task_spec(task).windowed:
        rows = windows.join(records.select(F.col("rec_id").alias("sample_id")), "sample_id").select(
            F.col("sample_id").alias("rec_id"), "bin", "x"
        )
    else:
        rows = (
            timeseries.join(records.select("rec_id", "stay_id", "n"), "stay_id")
            .where(F.col("bin") < F.col("n"))
            .select("rec_id", "bin", "x")
        )
    return rows.groupBy("rec_id").agg(F.sort_array(F.collect_list(F.struct("bin", "x"))).alias("ehr"))


def _to_record(row: Any, index: int, task: str) -> Record:
    """A joined row -> :class:`Record`; checks that the EHR holds exactly bins 0..n-1."""
    bins_x = row["ehr"] or []
    n = int(row["n"])
    if [b["bin"] for b in bins_x] != list(range(n)):
        raise ValueError(
            f"{row['rec_id']}: timeseries has bins {[b['bin'] for b in bins_x][:5]}... for a record of "
            f"{n} bins (silver timeseries and gold samples are out of step: re-run the ETL)"
        )
    ehr = np.asarray([b["x"] for b in bins_x], dtype=np.float32).reshape(n, N_FEATURES)
    spec = task_spec(task)
    multiclass = spec.is_multiclass
    ys = np.asarray(row["ys"], dtype=np.float32)
    meta: dict[str, Any] = {
        "stay_id": int(row["stay_id"]),
        "subject_id": int(row["subject_id"]),
        "split": row["split"],
        "dicom_id": row["dicom_id"] if row["jpg"] is not None else None,
    }
    if spec.hourly:
        y = ys.reshape(len(ys)).astype(np.int64) if multiclass else ys.reshape(len(ys), -1)
        meta["sample_ids"] = list(row["sample_ids"])
        if multiclass:
            meta["los_remaining_hours"] = [float(v) for v in row["los"]]
        hours = np.asarray(row["hours"], dtype=np.float32)
        bins = np.asarray(row["bins"], dtype=np.int32)
        jpg = bytes(row["jpg"]) if row["jpg"] is not None else None
        return Record(tar_key(index, row["rec_id"]), ehr, y, meta, jpg, hours, bins)
    meta["sample_id"] = row["sample_ids"][0]
    jpg = bytes(row["jpg"]) if row["jpg"] is not None else None
    return Record(tar_key(index, row["rec_id"]), ehr, ys.reshape(-1), meta, jpg)


def _write_partition(rows: Iterator[Any], root: str, task: str) -> Iterator[str]:
    """Rows sorted by (split, shard, rn) -> one shard per (split, shard); yields ShardInfo JSON."""
    current, batch = None, []
    for row in rows:
        key = (row["split"], int(row["shard"]))
        if key != current and batch:
            yield _flush(batch, root, task, current)
            batch = []
        current = key
        batch.append(row)
    if batch:
        yield _flush(batch, root, task, current)


def _flush(rows: list, root: str, task: str, key: tuple[str, int]) -> str:
    split, shard = key
    records = (_to_record(r, i, task) for i, r in enumerate(rows))
    return json.dumps(write_shard(records, root, task, split, shard).to_json())


# ---------------------------------------------------------------- the job


def shard_plan(records, cfg: ShardWriterConfig):
    """``rec_id, split, shard, rn``: records ordered by a hash of their id, cut into shards."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    counts = {r["split"]: r["count"] for r in records.groupBy("split").count().collect()}
    n_shards = {
        s: max(1, min(c, max(cfg.min_shards, math.ceil(c / cfg.records_per_shard))))
        for s, c in counts.items()
    }
    shards_col = F.create_map(*[x for s, n in n_shards.items() for x in (F.lit(s), F.lit(n))])
    count_col = F.create_map(*[x for s, c in counts.items() for x in (F.lit(s), F.lit(c))])
    w = Window.partitionBy("split").orderBy(F.xxhash64("rec_id"), "rec_id")
    light = records.select("rec_id", "split").withColumn("rn", F.row_number().over(w) - 1)
    shard = F.floor(F.col("rn") * shards_col[F.col("split")] / count_col[F.col("split")]).cast("int")
    return light.withColumn("shard", shard), n_shards


@dataclass
class TaskResult:
    splits: dict[str, dict[str, Any]]
    normalizer: dict[str, Any]
    image_errors: dict[str, str]


def write_task(spark, cfg: ShardWriterConfig, task: str, samples, images, timeseries, windows, paired: bool):
    from pyspark.sql import functions as F

    recs = record_table(task, samples).join(images, "dicom_id", "left")
    bad = F.col("dicom_id").isNotNull() & (F.coalesce(F.col("image_status"), F.lit("missing")) != "ok")
    n_samples = F.size("sample_ids")
    dropped = {
        r["split"]: int(r["n"] or 0)
        for r in recs.where(bad).groupBy("split").agg(F.sum(n_samples).alias("n")).collect()
    }
    errors = {
        r["dicom_id"]: r["image_status"]
        for r in recs.where(bad).select("dicom_id", "image_status").distinct().collect()
    }
    if paired:
        recs = recs.where(~bad)
    else:
        dropped = {}
    recs = recs.cache()
    plan, n_shards = shard_plan(recs, cfg)
    ehr = ehr_rows(task, recs, timeseries, windows)
    full = recs.join(plan, ["rec_id", "split"]).join(ehr, "rec_id", "left")
    n_parts = max(1, min(sum(n_shards.values()), spark.sparkContext.defaultParallelism * 4))
    written = (
        full.repartition(n_parts, "split", "shard")
        .sortWithinPartitions("split", "shard", "rn")
        .rdd.mapPartitions(partial(_write_partition, root=cfg.out, task=task))
        .collect()
    )
    recs.unpersist()
    infos: dict[str, list[ShardInfo]] = {}
    for text in written:
        info = ShardInfo(**json.loads(text))
        infos.setdefault(info.name.split("/")[1], []).append(info)
    splits = {
        s: split_entry(infos.get(s, []), task, dropped.get(s, 0)) for s in sorted(set(infos) | set(dropped))
    }
    norm_rows = read_delta(spark, table_path(cfg, "gold", f"normalizer_{task}")).orderBy("column").collect()
    normalizer = normalizer_entry(
        [r["column"] for r in norm_rows], [r["mean"] for r in norm_rows], [r["std"] for r in norm_rows]
    )
    return TaskResult(splits, normalizer, errors)


def remove_stale(root: str, manifest: dict[str, Any]) -> int:
    """Delete shard/index files under the manifest's task/split folders that it does not list."""
    fs, base = fs_and_path(root)
    keep = {
        f"{base.rstrip('/')}/{s[k]}"
        for t in manifest["tasks"].values()
        for sp in t["splits"].values()
        for s in sp["shards"]
        for k in ("name", "index")
    }
    removed = 0
    for task, info in manifest["tasks"].items():
        for split in info["splits"]:
            folder = f"{base.rstrip('/')}/{task}/{split}"
            if not fs.exists(folder):
                continue
            for path in fs.ls(folder, detail=False):
                name = path.rsplit("/", 1)[-1]
                if (name.endswith((".tar", ".idx")) or name.startswith(".tmp-")) and path not in keep:
                    fs.rm(path)
                    removed += 1
    return removed


def run(cfg: ShardWriterConfig, spark) -> dict[str, Any]:
    """Write every configured task's shards and the manifest; returns the manifest."""
    start = time.time()
    versions: dict[str, int] = {}

    def load(layer: str, table: str):
        path = table_path(cfg, layer, table)
        df = read_delta(spark, path)
        versions[f"{layer}/{table}"] = delta_io.last_commit_metadata(spark, path)[0]
        return df

    samples = {t: load("gold", f"samples_{t}") for t in cfg.tasks}
    for t in cfg.tasks:
        load("gold", f"normalizer_{t}")
    etl = delta_io.last_commit_metadata(spark, table_path(cfg, "gold", f"samples_{cfg.tasks[0]}"))[1].get(
        "config", {}
    )
    paired = etl.get("paired", True) if cfg.paired is None else cfg.paired
    root = cxr_root(cfg, spark)
    log.info("shards: tasks %s, CXR root %s, paired %s, out %s", cfg.tasks, root, paired, cfg.out)
    images = image_table(spark, list(samples.values()), load("silver", "cxr"), root, cfg.image_size).persist()
    timeseries = load("silver", "timeseries")
    windows = {t: load("gold", f"windows_{t}") for t in cfg.tasks if task_spec(t).windowed}
    results = {}
    for task in cfg.tasks:
        t0 = time.time()
        results[task] = write_task(
            spark, cfg, task, samples[task], images, timeseries, windows.get(task), paired
        )
        log.info(
            "shards: %s done in %.1fs: %s",
            task,
            time.time() - t0,
            {s: (e["records"], e["samples"]) for s, e in results[task].splits.items()},
        )
    images.unpersist()
    errors: dict[str, str] = {}
    for r in results.values():
        errors.update(r.image_errors)
    manifest = build_manifest(
        {t: r.splits for t, r in results.items()},
        {t: r.normalizer for t, r in results.items()},
        image_size=cfg.image_size,
        paired={t: paired for t in results},
        sources={
            "tables": cfg.tables,
            "cxr": root,
            "delta_versions": dict(sorted(versions.items())),
            "etl_samples_config": etl,
        },
        image_errors=errors,
    )
    write_manifest(cfg.out, manifest)
    removed = remove_stale(cfg.out, manifest)
    log.info(
        "shards: manifest written to %s in %.0fs (%d stale files removed, %d image errors)",
        join(cfg.out, MANIFEST),
        time.time() - start,
        removed,
        len(errors),
    )
    return manifest


def main(argv: list[str]) -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S", stream=sys.stderr
    )
    cfg = typed.from_command_line(argv, load_config, __doc__)
    if isinstance(cfg, int):
        return cfg
    from spark_jobs.session import build_spark

    spark = build_spark(cfg.spark)
    try:
        manifest = run(cfg, spark)
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except Exception as err:  # noqa: BLE001 - a Spark task error: its last line says what broke
        lines = [ln for ln in str(err).splitlines() if ln.strip()]
        detail = next((ln for ln in reversed(lines) if "Error" in ln), lines[-1] if lines else repr(err))
        print(f"error: write_shards failed (no manifest written): {detail.strip()}", file=sys.stderr)
        return 1
    finally:
        spark.stop()
    for task, info in manifest["tasks"].items():
        for split, e in info["splits"].items():
            print(
                f"{task:<10} {split:<6} records {e['records']:>8,} samples {e['samples']:>9,} shards {len(e['shards']):>4} dropped {e['dropped_samples']:>5}"
            )
    print(f"manifest: {join(cfg.out, MANIFEST)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
