"""The synthetic MIMIC-IV / MIMIC-CXR generator: layout, quirks, truth, determinism, signal."""

from __future__ import annotations

import gzip
import io

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from spark_jobs.mimic_schema import CHEXPERT_LABELS, CXR_TABLES, cxr_image_relpath, mimic_iv_tables
from spark_jobs.synth_mimic import SynthConfig, generate

SCHEMA = mimic_iv_tables("v2")


def read(root, relpath: str) -> pd.DataFrame:
    return pd.read_csv(root / f"{relpath}.csv.gz", dtype=str, keep_default_na=False)


@pytest.fixture(scope="module")
def tables(synth_root):
    root, _, _ = synth_root
    out = {name: read(root, t.relpath) for name, t in SCHEMA.items()}
    out.update({name: read(root, t.relpath) for name, t in CXR_TABLES.items()})
    out["truth_stays"] = read(root, "_truth/stays")
    out["truth_images"] = read(root, "_truth/images")
    return out


def _parses(values: pd.Series, logical: str) -> bool:
    v = values[values != ""]
    if logical in ("long", "int"):
        return v.str.fullmatch(r"-?\d+").all()
    if logical == "double":
        return pd.to_numeric(v, errors="coerce").notna().all()
    if logical == "timestamp":
        return (
            v.str.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d").all()
            and pd.to_datetime(v, errors="coerce").notna().all()
        )
    if logical == "date":
        return v.str.fullmatch(r"\d{4}-\d\d-\d\d").all()
    return True


def test_columns_and_types_match_the_declared_schema(tables):
    for name, table in [*SCHEMA.items(), *CXR_TABLES.items()]:
        df = tables[name]
        assert list(df.columns) == table.column_names, name
        assert len(df) > 0, name
        for column, logical in table.columns:
            assert _parses(df[column], logical), f"{name}.{column} is not {logical}"


def test_counts_reported_equal_rows_written(synth_root, tables):
    _, _, counts = synth_root
    for name in ("patients", "admissions", "icustays", "chartevents", "labevents", "metadata"):
        assert counts[name] == len(tables[name]), name
    assert counts["images"] == len(tables["metadata"])


def test_hospital_structure_quirks(tables):
    adm, stays, pat = tables["admissions"], tables["icustays"], tables["patients"]
    assert adm.groupby("subject_id").size().max() > 1, "patients with several admissions"
    assert stays.groupby("hadm_id").size().max() > 1, "admissions with several ICU stays"
    assert (stays.first_careunit != stays.last_careunit).any(), "transfers"
    assert (pat.anchor_age.astype(int) < 18).any(), "minors"
    assert len(set(adm.hadm_id) - set(stays.hadm_id)) > 0, "admissions without an ICU stay"


def test_death_kinds(tables):
    adm = tables["admissions"].merge(tables["patients"][["subject_id", "dod"]], on="subject_id")
    stays = tables["icustays"]
    died = adm[adm.hospital_expire_flag == "1"]
    assert len(died) > 0
    last_out = stays.groupby("hadm_id").outtime.max()
    with_time = died[died.deathtime != ""].set_index("hadm_id")
    in_icu = (pd.to_datetime(with_time.deathtime) <= pd.to_datetime(last_out.reindex(with_time.index))).sum()
    after_icu = (
        pd.to_datetime(with_time.deathtime) > pd.to_datetime(last_out.reindex(with_time.index))
    ).sum()
    assert in_icu > 0 and after_icu > 0, "deaths in the ICU and in hospital after it"
    survivors = adm[(adm.hospital_expire_flag == "0") & (adm.dod != "")]
    assert (pd.to_datetime(survivors.dod) > pd.to_datetime(survivors.dischtime)).any(), (
        "deaths after discharge"
    )


def test_event_quirks(tables):
    ce, le = tables["chartevents"], tables["labevents"]
    item = ce.itemid.astype(int)
    num = pd.to_numeric(ce.valuenum, errors="coerce")
    assert (item == 223761).any() and num[item == 223761].median() > 90, "Fahrenheit temperatures"
    assert (item == 226531).any(), "weights in pounds"
    assert (item == 226707).any(), "heights in inches"
    assert num[item == 223835].max() > 1, "FiO2 in percent"
    assert (num[item == 220277] <= 1).any(), "SpO2 as a fraction now and then"
    assert ce.value[item.isin([220621, 225664, 226537]) & ce.valuenum.eq("")].str.match(r"[A-Za-z_]").any(), (
        "non-numeric glucose"
    )
    assert ce.value[item == 220179].str.contains("/").any(), "'a/b' blood pressure strings"
    assert ((num[item == 220045] <= 0) | (num[item == 220045] > 300)).any(), "impossible values"
    assert ce.duplicated(["stay_id", "itemid", "charttime"]).any(), "duplicate charttimes"
    gcs = ce.value[item == 220739]
    assert set(gcs) <= {"Spontaneously", "To Speech", "To Pain", "None"} and len(set(gcs)) > 1
    assert set(ce.value[item.isin([223951, 224308])]) <= {"Normal <3 Seconds", "Abnormal >3 Seconds"}
    assert (le.hadm_id == "").any(), "labevents with null hadm_id"
    assert (~item.isin(SYNTH_BENCHMARK_CHART_ITEMS)).mean() > 0.2, "plenty of rows for unused items"


SYNTH_BENCHMARK_CHART_ITEMS = [
    220045,
    220050,
    220051,
    220052,
    220179,
    220180,
    220181,
    220210,
    224690,
    220277,
    220227,
    223835,
    223761,
    223762,
    224639,
    226512,
    226531,
    226707,
    226730,
    220739,
    223900,
    223901,
    220621,
    225664,
    226537,
    223830,
    220274,
    223951,
    224308,
]


def test_events_outside_their_stay(tables):
    ce = tables["chartevents"].merge(tables["icustays"][["stay_id", "intime", "outtime"]], on="stay_id")
    t = pd.to_datetime(ce.charttime)
    assert (t < pd.to_datetime(ce.intime)).any() and (t > pd.to_datetime(ce.outtime)).any()


def test_cxr_quirks(tables):
    meta = tables["metadata"]
    assert {"AP", "PA", "LATERAL"} <= set(meta.ViewPosition)
    truth_img = tables["truth_images"]
    stays = tables["icustays"]
    assert set(stays.stay_id) - set(truth_img.stay_id), "stays without any image"
    t = pd.to_datetime(truth_img.study_time)
    span = stays.merge(truth_img[["subject_id", "study_time"]], on="subject_id")
    before = pd.to_datetime(span.study_time) < pd.to_datetime(span.intime)
    during = (pd.to_datetime(span.study_time) >= pd.to_datetime(span.intime)) & (
        pd.to_datetime(span.study_time) <= pd.to_datetime(span.outtime)
    )
    assert before.any() and during.any() and len(t)
    # StudyTime is HHMMSS.fff without zero padding, as in MIMIC-CXR: some have fewer than 6 digits
    whole = meta.StudyTime.str.split(".").str[0]
    assert (whole.str.len() < 6).any()
    assert set(tables["chexpert"][list(CHEXPERT_LABELS)].stack()) <= {"", "1.0", "0.0", "-1.0"}


def test_diagnoses_mix_icd_versions_and_groups(tables):
    import yaml

    from spark_jobs.resources import __file__ as resources_init

    dx = tables["diagnoses_icd"]
    assert set(dx.icd_version) == {"9", "10"}
    groups = yaml.safe_load(open(resources_init.replace("__init__.py", "phenotypes.yaml")))
    assert groups, "phenotype resource"
    assert dx.groupby("hadm_id").size().max() >= 3


def test_truth_is_consistent_with_tables(synth_root, tables):
    root, _, _ = synth_root
    adm = tables["admissions"].set_index("hadm_id")
    died = adm[(adm.hospital_expire_flag == "1") & (adm.deathtime != "")]
    d = pd.to_datetime(died.deathtime)
    assert ((d >= pd.to_datetime(died.admittime)) & (d <= pd.to_datetime(died.dischtime))).all()
    st = tables["icustays"].join(adm[["admittime", "dischtime"]], on="hadm_id")
    assert (pd.to_datetime(st.intime) >= pd.to_datetime(st.admittime)).all()
    assert (pd.to_datetime(st.outtime) <= pd.to_datetime(st.dischtime)).all()
    truth = tables["truth_stays"].set_index("stay_id")
    assert set(truth.index) == set(tables["icustays"].stay_id)
    merged = truth.join(adm[["hospital_expire_flag"]], on="hadm_id")
    assert (merged.died_in_hospital == merged.hospital_expire_flag).all()
    meta = tables["metadata"]
    for row in meta.sample(40, random_state=0).itertuples():
        path = root / cxr_image_relpath(int(row.subject_id), int(row.study_id), row.dicom_id)
        with Image.open(path) as im:
            assert im.mode == "L" and im.size == (int(row.Columns), int(row.Rows))


def test_planted_signal_is_learnable(tables):
    from sklearn.metrics import roc_auc_score

    truth = tables["truth_stays"]
    p = truth.p_mortality.astype(float)
    y = truth.died_in_hospital.astype(int)
    assert 0.04 < y.mean() < 0.3
    assert roc_auc_score(y, p) > 0.7
    ce = tables["chartevents"]
    hr = ce[ce.itemid == "220045"].assign(v=lambda d: pd.to_numeric(d.valuenum)).groupby("stay_id").v.median()
    sev = truth.set_index("stay_id").latent_sev.astype(float).reindex(hr.index.astype(str))
    assert np.corrcoef(hr.values, sev.values)[0, 1] > 0.4


def _decompressed(path) -> bytes:
    with gzip.open(path) as fh:
        return fh.read()


def test_same_seed_same_contents_whatever_the_partitioning(spark, tmp_path):
    a = SynthConfig(out=str(tmp_path / "a"), patients=20, seed=3, image_size=64, chunk_size=7, partitions=2)
    b = SynthConfig(out=str(tmp_path / "b"), patients=20, seed=3, image_size=64, chunk_size=20, partitions=1)
    c = SynthConfig(
        out=str(tmp_path / "c"), patients=20, seed=4, image_size=64, chunk_size=20, partitions=1, images=False
    )
    for cfg in (a, b, c):
        generate(cfg, spark)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert any(str(f).endswith(".jpg") for f in files)
    for rel in files:
        if rel.name == "manifest.json":
            continue
        left, right = tmp_path / "a" / rel, tmp_path / "b" / rel
        if rel.suffix == ".gz":
            assert _decompressed(left) == _decompressed(right), rel
        else:
            assert left.read_bytes() == right.read_bytes(), rel
    chart = "icu/chartevents.csv.gz"
    assert _decompressed(tmp_path / "a" / chart) != _decompressed(tmp_path / "c" / chart)


def test_v1_layout(spark, tmp_path):
    cfg = SynthConfig(out=str(tmp_path / "v1"), patients=5, seed=1, layout="v1", images=False)
    generate(cfg, spark)
    v1 = mimic_iv_tables("v1")
    for name in ("patients", "admissions", "chartevents", "labevents"):
        header = pd.read_csv(tmp_path / "v1" / f"{v1[name].relpath}.csv.gz", nrows=0).columns
        assert list(header) == v1[name].column_names
    assert (tmp_path / "v1" / "core" / "admissions.csv.gz").exists()
    assert "ethnicity" in v1["admissions"].column_names


def test_bad_arguments_fail_clearly(spark, tmp_path):
    with pytest.raises(ValueError, match="patients"):
        generate(SynthConfig(out=str(tmp_path / "x"), patients=0), spark)
    with pytest.raises(ValueError, match="layout"):
        generate(SynthConfig(out=str(tmp_path / "x"), patients=3, layout="v9"), spark)


def test_delta_round_trip_of_a_generated_table(spark, synth_root, tmp_path):
    from pyspark.sql import functions as F

    root, _, _ = synth_root
    path = str(tmp_path / "icustays_delta")
    df = spark.read.csv(
        str(root / "icu" / "icustays.csv.gz"), header=True, schema=_spark_schema(SCHEMA["icustays"])
    )
    df.write.format("delta").mode("overwrite").save(path)
    df.where(F.col("los") > 2).write.format("delta").mode("overwrite").save(path)
    v0 = spark.read.format("delta").option("versionAsOf", 0).load(path)
    v1 = spark.read.format("delta").load(path)
    assert v0.count() == len(pd.read_csv(root / "icu" / "icustays.csv.gz")) > v1.count() > 0
    assert sorted(v0.columns) == sorted(SCHEMA["icustays"].column_names)


def _spark_schema(table) -> str:
    types = {
        "long": "bigint",
        "int": "int",
        "double": "double",
        "string": "string",
        "timestamp": "timestamp",
        "date": "date",
    }
    return ", ".join(f"`{c}` {types[t]}" for c, t in table.columns)


def test_gzip_members_concatenate_into_one_valid_stream(synth_root):
    root, _, _ = synth_root
    raw = (root / "icu" / "chartevents.csv.gz").read_bytes()
    text = gzip.decompress(raw).decode()
    lines = text.splitlines()
    assert lines[0] == ",".join(SCHEMA["chartevents"].column_names)
    assert len(lines) - 1 == len(pd.read_csv(io.BytesIO(raw), compression="gzip"))


def test_unused_scale_multiplies_only_the_rows_of_unused_items():
    """``unused_scale`` k charts the unused items k times (0: never) and leaves the benchmark's
    items alone, so a MIMIC-like mix only adds rows the ETL filters out. Counts are compared
    loosely: the extra rows draw from the stay's random stream (duplicate quirks, later stays)."""
    from spark_jobs import resources
    from spark_jobs.synth.model import ModelConfig
    from spark_jobs.synth.tables import chunk_tables

    used = {(m.itemid, m.linksto) for p in resources.ITEM_MAP_PRESETS for m in resources.item_map(p)}

    def counts(scale: int) -> dict[str, tuple[int, int]]:
        tables, _, _ = chunk_tables(ModelConfig(seed=3, unused_scale=scale), 0, 6)
        out = {}
        for name in ("chartevents", "labevents"):
            is_used = tables[name]["itemid"].astype(int).map(lambda i, n=name: (i, n) in used)
            out[name] = (int(is_used.sum()), int((~is_used).sum()))
        return out

    none, one, three = counts(0), counts(1), counts(3)
    for name in ("chartevents", "labevents"):
        assert none[name][1] == 0 and one[name][1] > 100
        assert 2.8 < three[name][1] / one[name][1] < 3.2
        assert abs(three[name][0] - none[name][0]) <= 0.1 * none[name][0]
    with pytest.raises(ValueError, match="unused-scale"):
        generate(SynthConfig(out="/nonexistent", patients=3, unused_scale=-1), None)
