"""The whole ETL on the synthetic fixture, checked against the generator's ground truth.

The truth (``_truth/``) is written by the generator from its latent model and is never read by
the ETL, so agreement here means the pipeline recovered what was planted.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from spark_jobs import resources
from spark_jobs.synth.model import PHENOTYPES
from tests.reference_discretizer import discretize as reference_discretize

LOS_EDGES_DAYS = [1, 2, 3, 4, 5, 6, 7, 8, 14]


@pytest.fixture(scope="module")
def truth(synth_root):
    root, _, _ = synth_root
    stays = pd.read_csv(root / "_truth" / "stays.csv.gz").set_index("stay_id")
    images = pd.read_csv(root / "_truth" / "images.csv.gz")
    return stays, images


def gold(spark, etl_run, table: str) -> pd.DataFrame:
    out, _ = etl_run
    return spark.read.format("delta").load(f"{out}/{table}").toPandas()


def test_cohort_is_the_truth_cohort(spark, etl_run, truth):
    stays, _ = truth
    silver = gold(spark, etl_run, "silver/stays").set_index("stay_id")
    expected = stays[(stays.transfer == 0) & (stays.age >= 18)]
    # one stay per admission after transfers are dropped
    expected = expected[expected.groupby("hadm_id").hadm_id.transform("size") == 1]
    assert set(silver.index) == set(expected.index)
    joined = silver.join(stays, rsuffix="_truth")
    assert np.allclose(joined.los_hours, joined.los_hours_truth, atol=1 / 60)
    assert (joined.mortality == joined.died_in_hospital).all()
    assert set(silver.split) == {"train", "val", "test"}
    assert silver.groupby("subject_id").split.nunique().max() == 1


def test_ihm_labels_follow_true_deaths(spark, etl_run, truth):
    stays, _ = truth
    ihm = gold(spark, etl_run, "gold/samples_ihm")
    assert len(ihm) > 0
    t = stays.loc[ihm.stay_id]
    assert (t.los_hours.values >= 48).all()
    assert (ihm.y.map(lambda y: int(y[0])).values == t.died_in_hospital.values).all()


def test_decompensation_labels_follow_true_death_times(spark, etl_run, truth):
    stays, _ = truth
    d = gold(spark, etl_run, "gold/samples_decomp")
    t = stays.loc[d.stay_id]
    dies = (t.died_in_hospital.values == 1) & (t.deathtime_recorded.values == 1)
    expected = dies & (t.death_hours_true.values - d.hour.values < 24)
    assert (d.y.map(lambda y: int(y[0])).values == expected.astype(int)).all()
    assert expected.sum() > 0, "the fixture must contain positive decompensation samples"
    lived = np.where(np.isnan(t.death_hours_true.values), np.inf, t.death_hours_true.values)
    assert (d.hour.values <= np.minimum(t.los_hours.values, lived) + 1e-6).all()
    assert (d.hour.values > 4).all()


def test_los_buckets_follow_true_stay_lengths(spark, etl_run, truth):
    stays, _ = truth
    los = gold(spark, etl_run, "gold/samples_los")
    remaining = stays.loc[los.stay_id].los_hours.values - los.hour.values
    assert np.allclose(los.los_remaining_hours.values, remaining, atol=1 / 60)
    expected = np.searchsorted(LOS_EDGES_DAYS, remaining / 24, side="right")
    assert (los.y.map(lambda y: int(y[0])).values == expected).all()


def test_phenotype_labels_are_the_planted_groups(spark, etl_run, truth):
    stays, _ = truth
    pheno = gold(spark, etl_run, "gold/samples_pheno")
    names = resources.phenotype_names()
    order = [PHENOTYPES.index(n) for n in names]
    planted = stays.loc[pheno.stay_id].phenotypes.astype(str).str.zfill(len(PHENOTYPES))
    for y, bits in zip(pheno.y, planted):
        assert [int(v) for v in y] == [int(bits[i]) for i in order]


def test_causal_pairing_never_looks_ahead(spark, etl_run, truth):
    _, images = truth
    for task in ("decomp", "los", "ihm"):
        s = gold(spark, etl_run, f"gold/samples_{task}")
        paired = s[s.has_image == 1]
        assert len(paired) > 0
        assert (paired.cxr_hours <= paired.hour + 1e-9).all(), task
        assert (paired.cxr_hours >= 0).all(), task
    ap = images[images.view == "AP"]
    assert set(s.dicom_id.dropna()) <= set(ap.dicom_id)


def test_radiology_samples_are_the_ap_images_inside_stays(spark, etl_run, truth):
    stays, images = truth
    rad = gold(spark, etl_run, "gold/samples_radiology")
    cohort = set(gold(spark, etl_run, "silver/stays").stay_id)
    ap = images[(images.view == "AP") & images.stay_id.isin(cohort)]
    assert set(rad.dicom_id) == set(ap.dicom_id)
    assert all(len(y) == 14 for y in rad.y)


def test_rows_are_accounted_for(etl_run):
    _, reports = etl_run
    for rep in reports:
        if rep.stage in ("ingest", "cohort", "events", "cxr"):
            assert rep.rows_in == rep.kept + rep.rejected_total or rep.stage == "events", rep


def test_events_stage_balances(spark, etl_run):
    _, reports = etl_run
    (rep,) = [r for r in reports if r.stage == "events"]
    derived = gold(spark, etl_run, "silver/events").source.eq("derived").sum()
    assert rep.rows_in + derived == rep.kept + rep.rejected_total


def test_timeseries_matches_the_plain_reference(spark, etl_run):
    out, _ = etl_run
    stays = gold(spark, etl_run, "silver/stays").set_index("stay_id")
    some = sorted(stays.index)[:: max(1, len(stays) // 6)][:6]
    events = (
        spark.read.format("delta")
        .load(f"{out}/silver/events")
        .where(f"stay_id IN ({','.join(map(str, some))})")
        .toPandas()
    )
    ts = (
        spark.read.format("delta")
        .load(f"{out}/silver/timeseries")
        .where(f"stay_id IN ({','.join(map(str, some))})")
        .toPandas()
    )
    for stay_id in some:
        ev = events[events.stay_id == stay_id].to_dict("records")
        expected = np.array(reference_discretize(ev, stays.loc[stay_id].los_hours), dtype=np.float32)
        got = ts[ts.stay_id == stay_id].sort_values("bin")
        matrix = np.stack(got.x.values) if len(got) else np.zeros((0, 76), np.float32)
        assert matrix.shape == expected.shape, stay_id
        assert np.allclose(matrix, expected, atol=1e-4), stay_id


def test_quality_table_records_each_stage(spark, etl_run):
    q = gold(spark, etl_run, "_quality")
    assert {"ingest", "cohort", "events", "cxr", "timeseries", "tasks", "normalizer"} <= set(q.stage)
    assert q.run_id.nunique() == 1


def test_bronze_commits_carry_the_run_id(spark, etl_run):
    from delta.tables import DeltaTable

    out, _ = etl_run
    q = gold(spark, etl_run, "_quality")
    (run_id,) = set(q[q.stage == "ingest"].run_id)
    for table in ("patients", "chartevents", "quarantine"):
        (commit,) = (
            DeltaTable.forPath(spark, f"{out}/bronze/{table}").history(1).select("userMetadata").collect()
        )
        meta = json.loads(commit["userMetadata"])
        assert (meta["stage"], meta["run_id"]) == ("ingest", run_id), table
        assert meta["config"]["itemids"] and meta["config_hash"]


def test_rerunning_a_stage_replaces_not_appends(spark, etl_run):
    from spark_jobs.pipeline import Pipeline

    out, _ = etl_run
    before = gold(spark, etl_run, "silver/stays").sort_values("stay_id").reset_index(drop=True)
    quarantine_before = spark.read.format("delta").load(f"{out}/silver/quarantine").count()
    cfg = _config(out, stages=["cohort"])
    pipe = Pipeline(cfg, spark)
    pipe.run()
    assert list(pipe.stage_seconds) == ["cohort", "_quality"]
    assert all(s > 0 for s in pipe.stage_seconds.values())
    after = gold(spark, etl_run, "silver/stays").sort_values("stay_id").reset_index(drop=True)
    pd.testing.assert_frame_equal(before, after)
    assert spark.read.format("delta").load(f"{out}/silver/quarantine").count() == quarantine_before
    history = spark.sql(f"DESCRIBE HISTORY delta.`{out}/silver/stays`").toPandas()
    assert len(history) == 2 and history.userMetadata.str.contains('"stage": "cohort"').all()


def test_normalizer_is_finite_and_from_train_rows(spark, etl_run):
    norm = gold(spark, etl_run, "gold/normalizer_ihm")
    assert len(norm) == 12 and norm["std"].gt(0).all() and norm["mean"].map(math.isfinite).all()


def _config(out, **overrides):
    from spark_jobs.pipeline import load_config

    words = [f"out={out}", "spark.shuffle_partitions=2"] + [f"{k}={v}" for k, v in overrides.items()]
    return load_config(words)
