"""Synthetic MIMIC-IV + MIMIC-CXR-JPG generator (a Spark job).

    python -m spark_jobs.synth_mimic --out DIR --patients N --seed S [--layout v1|v2]
                                     [--image-size 512] [--no-images] [--unused-scale 1]
                                     [--master spark://...]

Writes the MIMIC-IV layout (``hosp/``, ``icu/``; ``core/`` for v1) as ``.csv.gz``, the
MIMIC-CXR-JPG 2.0.0 tables and ``files/pXX/pSUBJECT/sSTUDY/DICOM.jpg``, and the ground truth
under ``DIR/_truth/`` (outside the MIMIC layout; the ETL never reads it).

How it scales: patients are cut into fixed chunks; each Spark task simulates one chunk and
writes one gzip member per table (and the chunk's images) straight to the output file system;
the driver then joins the members in chunk order into one ``.csv.gz`` per table (concatenated
gzip members are one valid gzip stream). Memory is bounded by the chunk, not the data size, and
every patient is simulated from its own random stream, so contents do not depend on partitions.
"""

from __future__ import annotations

import argparse
import gzip
import json
import logging
import time
from dataclasses import asdict, dataclass

import fsspec
import pandas as pd

from spark_jobs.mimic_schema import CXR_TABLES, mimic_iv_tables
from spark_jobs.synth import items
from spark_jobs.synth.model import ICD, ModelConfig
from spark_jobs.synth.tables import TRUTH_COLUMNS, ImageJob, chunk_tables

log = logging.getLogger("medmod.synth")
GENERATOR_VERSION = "1"


@dataclass(frozen=True)
class SynthConfig:
    out: str
    patients: int = 300
    seed: int = 0
    layout: str = "v2"
    image_size: int = 512
    images: bool = True
    chunk_size: int = 64
    partitions: int = 0  # 0: one Spark task per chunk
    jpeg_quality: int = 90
    # Copies of the rows of items the benchmark never uses (see ModelConfig.unused_scale).
    unused_scale: int = 1


def _csv_member(df: pd.DataFrame, header: bool) -> bytes:
    text = df.to_csv(index=False, header=header, na_rep="", float_format="%.10g", lineterminator="\n")
    if not header and not len(df):
        return b""
    # mtime=0: the same rows always give the same bytes.
    return gzip.compress(text.encode(), compresslevel=6, mtime=0)


def _part_path(out: str, table: str, chunk: int) -> str:
    return f"{out}/_parts/{table}/{chunk:06d}.csv.gz"


def _render_images(cfg: SynthConfig, jobs: list[ImageJob]) -> int:
    from spark_jobs.synth.cxr_render import encode_jpeg, render_cxr

    fs, root = fsspec.core.url_to_fs(cfg.out)
    for job in jobs:
        arr = render_cxr(job.findings, job.seed, long_side=cfg.image_size, view=job.view)
        path = f"{root}/{job.relpath}"
        fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
        with fs.open(path, "wb") as fh:
            fh.write(encode_jpeg(arr, quality=cfg.jpeg_quality))
    return len(jobs)


def write_chunk(cfg: SynthConfig, chunk: int) -> dict[str, int]:
    """Simulate one chunk of patients and write its gzip members (and images). Idempotent."""
    first = chunk * cfg.chunk_size
    count = min(cfg.chunk_size, cfg.patients - first)
    tables, truth, jobs = chunk_tables(
        ModelConfig(seed=cfg.seed, unused_scale=cfg.unused_scale), first, count, cfg.layout, cfg.image_size
    )
    fs, root = fsspec.core.url_to_fs(cfg.out)
    counts = {}
    for name, df in [*tables.items(), *((f"_truth_{k}", v) for k, v in truth.items())]:
        path = _part_path(root, name, chunk)
        fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
        with fs.open(path, "wb") as fh:
            fh.write(_csv_member(df, header=False))
        counts[name] = len(df)
    counts["images"] = _render_images(cfg, jobs) if cfg.images else 0
    return counts


def _header_member(columns: list[str]) -> bytes:
    return _csv_member(pd.DataFrame(columns=columns), header=True)


def _assemble(cfg: SynthConfig, name: str, columns: list[str], dest_rel: str, n_chunks: int) -> None:
    """Join the chunk members of ``name`` into ``dest_rel`` (atomic: temp name, then move)."""
    fs, root = fsspec.core.url_to_fs(cfg.out)
    dest = f"{root}/{dest_rel}"
    fs.makedirs(dest.rsplit("/", 1)[0], exist_ok=True)
    tmp = dest + ".tmp"
    with fs.open(tmp, "wb") as out:
        out.write(_header_member(columns))
        for chunk in range(n_chunks):
            with fs.open(_part_path(root, name, chunk), "rb") as part:
                while block := part.read(1 << 22):
                    out.write(block)
    fs.mv(tmp, dest)


def _static_tables(layout: str) -> dict[str, pd.DataFrame]:
    """Dictionary tables: d_items, d_labitems, d_icd_diagnoses."""
    schema = mimic_iv_tables(layout)
    d_items = pd.DataFrame(
        [
            {
                "itemid": it.itemid,
                "label": it.label,
                "abbreviation": it.abbreviation,
                "linksto": "chartevents",
                "category": it.category,
                "unitname": it.unitname,
                "param_type": it.param_type,
                "lownormalvalue": None,
                "highnormalvalue": None,
            }
            for it in sorted(items.all_chart_items(), key=lambda i: i.itemid)
        ]
    )
    d_lab = pd.DataFrame(
        [
            {
                "itemid": it.itemid,
                "label": it.label,
                "fluid": it.fluid,
                "category": it.category,
                "loinc_code": "",
            }
            for it in sorted(items.all_lab_items(), key=lambda i: i.itemid)
        ]
    )
    icd_rows = []
    for group, codes in ICD["benchmark_groups"].items():
        for version in (9, 10):
            icd_rows += [
                {"icd_code": c, "icd_version": version, "long_title": f"{group} (synthetic title)"}
                for c in codes[f"icd{version}"]
            ]
    for version in (9, 10):
        icd_rows += [
            {"icd_code": c, "icd_version": version, "long_title": "Other condition (synthetic title)"}
            for c in ICD[f"other_icd{version}"]
        ]
    d_icd = (
        pd.DataFrame(icd_rows)
        .drop_duplicates(["icd_code", "icd_version"])
        .sort_values(["icd_version", "icd_code"])
    )
    return {
        "d_items": d_items[schema["d_items"].column_names],
        "d_labitems": d_lab[schema["d_labitems"].column_names],
        "d_icd_diagnoses": d_icd[schema["d_icd_diagnoses"].column_names],
    }


def _write_static(cfg: SynthConfig) -> None:
    fs, root = fsspec.core.url_to_fs(cfg.out)
    schema = mimic_iv_tables(cfg.layout)
    for name, df in _static_tables(cfg.layout).items():
        dest = f"{root}/{schema[name].relpath}.csv.gz"
        fs.makedirs(dest.rsplit("/", 1)[0], exist_ok=True)
        with fs.open(dest, "wb") as fh:
            fh.write(_csv_member(df, header=True))


def generate(cfg: SynthConfig, spark) -> dict[str, int]:
    """Run the generator on ``spark``; return row counts per table (and images)."""
    from spark_jobs.progress import spark_progress

    if cfg.patients < 1:
        raise ValueError("--patients must be at least 1")
    if cfg.unused_scale < 0:
        raise ValueError(f"--unused-scale must be 0 or more, got {cfg.unused_scale}")
    if cfg.layout not in ("v1", "v2"):
        raise ValueError(f"--layout must be v1 or v2, got {cfg.layout!r}")
    n_chunks = -(-cfg.patients // cfg.chunk_size)
    slices = cfg.partitions or n_chunks
    fs, root = fsspec.core.url_to_fs(cfg.out)
    fs.makedirs(root, exist_ok=True)
    with spark_progress(spark, "synth_mimic"):
        per_chunk = (
            spark.sparkContext.parallelize(range(n_chunks), slices)
            .map(lambda c: write_chunk(cfg, c))
            .collect()
        )
    counts = {k: sum(c[k] for c in per_chunk) for k in per_chunk[0]}
    schema = mimic_iv_tables(cfg.layout)
    for name in ("patients", "admissions", "icustays", "diagnoses_icd", "chartevents", "labevents"):
        _assemble(cfg, name, schema[name].column_names, f"{schema[name].relpath}.csv.gz", n_chunks)
    for name, table in CXR_TABLES.items():
        _assemble(cfg, name, table.column_names, f"{table.relpath}.csv.gz", n_chunks)
    for name, columns in TRUTH_COLUMNS.items():
        _assemble(cfg, f"_truth_{name}", columns, f"_truth/{name}.csv.gz", n_chunks)
    _write_static(cfg)
    fs.rm(f"{root}/_parts", recursive=True)
    manifest = {"generator_version": GENERATOR_VERSION, "config": asdict(cfg), "counts": counts}
    with fs.open(f"{root}/_truth/manifest.json", "w") as fh:
        json.dump(manifest, fh, indent=2)
    return counts


def main(argv: list[str] | None = None) -> int:
    from spark_jobs.session import SparkConfig, build_spark

    parser = argparse.ArgumentParser(
        prog="python -m spark_jobs.synth_mimic", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--out", required=True, help="output root (local path or s3://bucket/prefix)")
    parser.add_argument("--patients", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--layout", choices=["v1", "v2"], default="v2", help="MIMIC-IV v1.0 (core/, ethnicity) or v2.x"
    )
    parser.add_argument("--image-size", type=int, default=512, help="long side of the JPEGs in pixels")
    parser.add_argument("--no-images", action="store_true", help="write CXR tables but no JPEG files")
    parser.add_argument(
        "--unused-scale",
        type=int,
        default=1,
        help="copies of the rows of items the benchmark never uses (0: none; 13: about MIMIC's mix, "
        "~18%% of chartevents rows are the benchmark's items)",
    )
    parser.add_argument("--chunk-size", type=int, default=64, help="patients per Spark task")
    parser.add_argument("--partitions", type=int, default=0, help="Spark partitions (default: one per chunk)")
    parser.add_argument("--master", default="local[*]", help="Spark master (ignored under spark-submit)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    cfg = SynthConfig(
        out=args.out.rstrip("/"),
        patients=args.patients,
        seed=args.seed,
        layout=args.layout,
        image_size=args.image_size,
        images=not args.no_images,
        chunk_size=args.chunk_size,
        partitions=args.partitions,
        unused_scale=args.unused_scale,
    )
    spark = build_spark(SparkConfig(master=args.master, app_name="medmod-synth"))
    start = time.time()
    counts = generate(cfg, spark)
    elapsed = time.time() - start
    rows = sum(v for k, v in counts.items() if not k.startswith("_") and k != "images")
    print(f"synthetic MIMIC written to {cfg.out} in {elapsed:.1f}s ({rows / elapsed:,.0f} rows/s)")
    for name, n in counts.items():
        print(f"  {name:<16} {n:>12,}")
    spark.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
