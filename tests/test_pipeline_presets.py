"""The parity preset on a MIMIC-IV v1.0-layout input: runs end to end and differs where it should."""

from __future__ import annotations

import pytest

from spark_jobs.pipeline import Pipeline, load_config
from spark_jobs.synth_mimic import SynthConfig, generate


@pytest.fixture(scope="module")
def parity_run(spark, tmp_path_factory):
    base = tmp_path_factory.mktemp("parity")
    raw = base / "raw"
    generate(SynthConfig(out=str(raw), patients=60, seed=11, layout="v1", images=False), spark)
    out = base / "tables"
    cfg = load_config(["etl=parity", f"raw={raw}", f"out={out}", "spark.shuffle_partitions=2"])
    reports = Pipeline(cfg, spark).run()
    return str(out), reports


def _table(spark, out, name):
    return spark.read.format("delta").load(f"{out}/{name}").toPandas()


def test_v1_layout_is_detected_and_ingested(parity_run):
    _, reports = parity_run
    ingested = {r.table: r for r in reports if r.stage == "ingest"}
    assert ingested["admissions"].kept == ingested["admissions"].rows_in > 0
    assert ingested["chartevents"].kept > 0


GCS_COMPONENTS = {
    "Glascow coma scale eye opening",
    "Glascow coma scale motor response",
    "Glascow coma scale verbal response",
}


def test_parity_keeps_what_the_default_cleans(spark, parity_run):
    out, _ = parity_run
    events = _table(spark, out, "silver/events")
    quarantine = _table(spark, out, "silver/quarantine")
    # What the absences below are about is there: GCS components to derive from, labs, rejects.
    assert GCS_COMPONENTS <= set(events.variable), "GCS components are charted"
    assert (events.source == "labevents").any() and (events.source == "chartevents").any()
    assert events.itemid.isin([51478, 51491]).any(), "parity map keeps urine glucose/pH"
    reasons = set(quarantine.reason)
    assert {"duplicate", "null_hadm_id", "item_not_in_map"} <= reasons, reasons
    assert not (events.source == "derived").any(), "parity derives no GCS total"
    assert "outlier" not in reasons, "parity applies no outlier ranges"
    assert not events.itemid.isin([223951, 224308]).any(), "parity map has no MetaVision capillary refill"


def test_last_in_stay_pairing_can_look_ahead(spark, parity_run):
    out, _ = parity_run
    decomp = _table(spark, out, "gold/samples_decomp")
    paired = decomp[decomp.has_image == 1]
    assert len(paired) > 0
    # every hour of a stay carries the stay's last image, also when it was taken later
    assert (paired.groupby("stay_id").dicom_id.nunique() == 1).all()
    assert (paired.cxr_hours > paired.hour).any()
