"""Cohort rules of SPEC §2, phenotypes (§7) and splits (§8) on hand-made rows."""

from __future__ import annotations

import json
from datetime import date, datetime, timedelta

import pytest

from spark_jobs import resources
from spark_jobs.cohort import (
    STAYS_COLUMNS,
    CohortConfig,
    add_outcomes,
    add_phenotypes,
    assign_split_files,
    assign_split_hash,
    build_stays,
    read_split_list,
    select_stays,
)
from spark_jobs.mimic_schema import mimic_iv_tables

TABLES = mimic_iv_tables("v2")
T0 = datetime(2150, 1, 1, 8, 0, 0)


def frame(spark, table: str, rows: list[dict]):
    """A bronze-shaped DataFrame of ``table`` (v2 layout); unspecified columns are null."""
    spec = TABLES[table]
    schema = ", ".join(f"`{c}` {t}" for c, t in spec.columns)
    return spark.createDataFrame([tuple(r.get(c) for c in spec.column_names) for r in rows], schema)


def stay(stay_id, hadm_id, subject_id, first="MICU", last="MICU", hours=30.0, intime=T0):
    out = intime + timedelta(hours=hours) if hours is not None else None
    return dict(
        stay_id=stay_id,
        hadm_id=hadm_id,
        subject_id=subject_id,
        first_careunit=first,
        last_careunit=last,
        intime=intime,
        outtime=out,
    )


def admission(hadm_id, subject_id, deathtime=None, flag=0, days=10):
    return dict(
        hadm_id=hadm_id,
        subject_id=subject_id,
        admittime=T0 - timedelta(days=1),
        dischtime=T0 + timedelta(days=days),
        deathtime=deathtime,
        hospital_expire_flag=flag,
    )


def patient(subject_id, age=60, anchor_year=2150, dod=None, gender="F"):
    return dict(subject_id=subject_id, gender=gender, anchor_age=age, anchor_year=anchor_year, dod=dod)


def collect_checked(checked) -> tuple[list[dict], list[dict]]:
    """(kept, rejected) rows as dicts from ONE Spark action (each job costs seconds on a busy box)."""
    from pyspark.sql import functions as F

    def as_json(df, tag):
        row = F.to_json(F.struct(*df.columns), {"ignoreNullFields": "false"})
        return df.select(F.lit(tag).alias("tag"), row.alias("row"))

    rows = as_json(checked.kept, "kept").unionByName(as_json(checked.rejected, "rejected")).collect()
    return (
        [json.loads(r["row"]) for r in rows if r["tag"] == "kept"],
        [json.loads(r["row"]) for r in rows if r["tag"] == "rejected"],
    )


def reasons_by_stay(rejected) -> dict[int, str]:
    rows = rejected if isinstance(rejected, list) else rejected.collect()
    return {json.loads(r["record"])["stay_id"]: r["reason"] for r in rows}


def test_selection_reasons_and_row_count(spark):
    icu = frame(
        spark,
        "icustays",
        [
            stay(1, 10, 100),  # kept
            stay(2, 20, 200, first="MICU", last="SICU"),  # transfer
            stay(3, 30, 300),  # two stays in one admission
            stay(4, 30, 300, intime=T0 + timedelta(days=2)),
            stay(5, 40, 400, first="CCU", last="MICU"),  # a transfer does not count ...
            stay(6, 40, 400, intime=T0 + timedelta(days=2)),  # ... so this one is alone: kept
            stay(7, 70, 700),  # minor
            stay(8, 80, 800),  # no admission row
            stay(9, 90, 900, hours=-1.0),  # outtime before intime
            stay(11, 110, 1100, hours=None),  # no outtime
            stay(12, 120, 1200),  # no patient row
        ],
    )
    adm = frame(
        spark,
        "admissions",
        [
            admission(h, s)
            for h, s in [
                (10, 100),
                (20, 200),
                (30, 300),
                (40, 400),
                (70, 700),
                (90, 900),
                (110, 1100),
                (120, 1200),
            ]
        ],
    )
    pat = frame(
        spark, "patients", [patient(s) for s in (100, 200, 300, 400, 800, 900, 1100)] + [patient(700, age=17)]
    )

    out = select_stays(icu, adm, pat)
    kept, rejected = collect_checked(out)
    assert sorted(r["stay_id"] for r in kept) == [1, 6]
    assert reasons_by_stay(rejected) == {
        2: "transfer",
        3: "multiple_stays_in_admission",
        4: "multiple_stays_in_admission",
        5: "transfer",
        7: "minor",
        8: "missing_admission",
        9: "bad_times",
        11: "bad_times",
        12: "missing_patient",
    }
    assert len(kept) + len(rejected) == 11  # rows in = kept + rejected
    assert out.rejected.columns == ["stage", "source", "reason", "record"]
    assert {(r["stage"], r["source"]) for r in rejected} == {("cohort", "icustays")}


def test_age_from_intime_and_min_age(spark):
    intime = datetime(2152, 3, 1)
    icu = frame(spark, "icustays", [stay(1, 10, 100, intime=intime), stay(2, 20, 200, intime=intime)])
    adm = frame(
        spark,
        "admissions",
        [
            dict(admission(h, s), admittime=intime - timedelta(days=1), dischtime=intime + timedelta(days=9))
            for h, s in [(10, 100), (20, 200)]
        ],
    )
    # subject 100: 17 in 2150, so 19 at a 2152 intime; subject 200: 18 in 2152.
    pat = frame(
        spark, "patients", [patient(100, age=17, anchor_year=2150), patient(200, age=18, anchor_year=2152)]
    )

    # (plain anchor_age, the default, is covered by stay 7 of the test above)
    shifted_kept, shifted_rejected = collect_checked(
        select_stays(icu, adm, pat, CohortConfig(age_from_intime=True, min_age=19))
    )
    assert [(r["stay_id"], r["age"]) for r in shifted_kept] == [(1, 19)]
    assert reasons_by_stay(shifted_rejected) == {2: "minor"}


def _outcome_rows(spark):
    admit, disch = T0 - timedelta(days=1), T0 + timedelta(days=5)
    schema = (
        "stay_id long, admittime timestamp, dischtime timestamp, intime timestamp, outtime timestamp, "
        "deathtime timestamp, hospital_expire_flag int, dod date"
    )
    rows = [
        (1, admit, disch, T0, T0 + timedelta(hours=36), T0 + timedelta(hours=40), 1, None),  # deathtime
        (2, admit, disch, T0, T0 + timedelta(hours=36), None, 1, None),  # flag only
        (3, admit, disch, T0, T0 + timedelta(hours=36), None, 0, date(2150, 1, 3)),  # dod only
        (4, admit, disch, T0, T0 + timedelta(hours=36), None, 0, date(2150, 3, 1)),  # dod after discharge
        (
            5,
            admit,
            disch,
            T0,
            T0 + timedelta(hours=36),
            disch + timedelta(days=2),
            0,
            None,
        ),  # after discharge
        (6, admit, disch, T0, T0 + timedelta(hours=36), None, 0, None),  # survived
    ]
    return spark.createDataFrame(rows, schema)


def test_mortality_los_and_death_hours(spark):
    rows = {r["stay_id"]: r for r in add_outcomes(_outcome_rows(spark)).collect()}
    assert {k: r["mortality"] for k, r in rows.items()} == {1: 1, 2: 1, 3: 0, 4: 0, 5: 0, 6: 0}
    assert rows[1]["los_hours"] == pytest.approx(36.0)
    assert rows[1]["death_hours"] == pytest.approx(40.0)
    assert rows[2]["death_hours"] is None

    with_dod = {
        r["stay_id"]: r["mortality"] for r in add_outcomes(_outcome_rows(spark), count_dod=True).collect()
    }
    assert with_dod == {1: 1, 2: 1, 3: 1, 4: 0, 5: 0, 6: 0}

    parity = CohortConfig.parity()
    reference = {
        r["stay_id"]: r["mortality"]
        for r in add_outcomes(_outcome_rows(spark), parity.count_dod, parity.count_expire_flag).collect()
    }
    assert reference == {1: 1, 2: 0, 3: 1, 4: 0, 5: 0, 6: 0}, "the references never read the flag"


def test_phenotypes_by_icd_version(spark):
    names = resources.phenotype_names()
    sepsis = names.index("Septicemia (except in labor)")
    htn = names.index("Essential hypertension")
    shock = names.index("Shock")
    stays = spark.createDataFrame([(1, 10), (2, 20), (3, 30)], "stay_id long, hadm_id long")
    dx = frame(
        spark,
        "diagnoses_icd",
        [
            dict(subject_id=1, hadm_id=10, seq_num=1, icd_code="0380", icd_version=9),  # sepsis
            dict(subject_id=1, hadm_id=10, seq_num=2, icd_code="I10", icd_version=10),  # hypertension
            dict(subject_id=1, hadm_id=10, seq_num=3, icd_code="99999", icd_version=9),  # no group
            dict(
                subject_id=2, hadm_id=20, seq_num=1, icd_code="4019", icd_version=10
            ),  # ICD-9 code, wrong version
            dict(subject_id=2, hadm_id=20, seq_num=2, icd_code="R57.0", icd_version=10),  # shock, dotted
        ],
    )
    got = {r["stay_id"]: r["phenotypes"] for r in add_phenotypes(stays, dx).collect()}
    assert len(names) == 25 and all(len(v) == 25 for v in got.values())
    expect1 = [0] * 25
    expect1[sepsis] = expect1[htn] = 1
    expect2 = [0] * 25
    expect2[shock] = 1
    assert got == {1: expect1, 2: expect2, 3: [0] * 25}


def test_hash_split_deterministic_and_proportional(spark):
    subjects = spark.range(4000).withColumnRenamed("id", "subject_id")
    a = {r["subject_id"]: r["split"] for r in assign_split_hash(subjects).collect()}
    b = {r["subject_id"]: r["split"] for r in assign_split_hash(subjects.repartition(3)).collect()}
    assert a == b
    counts = {s: sum(1 for v in a.values() if v == s) / len(a) for s in ("train", "val", "test")}
    assert counts["train"] == pytest.approx(0.7, abs=0.03)
    assert counts["val"] == pytest.approx(0.1, abs=0.02)
    assert counts["test"] == pytest.approx(0.2, abs=0.025)
    other = {r["subject_id"]: r["split"] for r in assign_split_hash(subjects, salt="another").collect()}
    assert other != a


def test_split_from_files(spark, tmp_path):
    stays = spark.createDataFrame([(1,), (2,), (3,), (4,)], "subject_id long")
    test_list = spark.createDataFrame([(1, 1), (2, 0), (3, 0)], "subject_id long, flag int")
    val_list = spark.createDataFrame([(2, 1), (3, 0)], "subject_id long, flag int")
    got = {r["subject_id"]: r["split"] for r in assign_split_files(stays, test_list, val_list).collect()}
    assert got == {1: "test", 2: "val", 3: "train", 4: "train"}

    path = tmp_path / "test.csv"
    path.write_text("7,1\n8,0\n")
    assert sorted(tuple(r) for r in read_split_list(spark, str(path)).collect()) == [(7, 1), (8, 0)]


def test_build_stays_contract_and_reference_split(spark):
    # 14851532 is flagged 1 in the shipped MedMod test list.
    icu = frame(spark, "icustays", [stay(1, 10, 14851532), stay(2, 20, 777, first="MICU", last="CCU")])
    died = T0 + timedelta(hours=20)
    adm = frame(spark, "admissions", [admission(10, 14851532, deathtime=died, flag=1), admission(20, 777)])
    pat = frame(spark, "patients", [patient(14851532), patient(777)])
    dx = frame(
        spark,
        "diagnoses_icd",
        [dict(subject_id=14851532, hadm_id=10, seq_num=1, icd_code="78552", icd_version=9)],
    )
    out = build_stays(icu, adm, pat, dx, CohortConfig.parity(split_method="files"))

    assert tuple(out.kept.columns) == STAYS_COLUMNS
    types = dict(out.kept.dtypes)
    assert types["stay_id"] == "bigint" and types["age"] == "int" and types["phenotypes"] == "array<int>"
    assert types["dod"] == "date" and types["los_hours"] == "double" and types["mortality"] == "int"
    kept, rejected = collect_checked(out)
    (row,) = kept
    assert row["split"] == "test" and row["mortality"] == 1 and row["los_hours"] == pytest.approx(30.0)
    assert row["phenotypes"][resources.phenotype_names().index("Shock")] == 1
    assert sum(row["phenotypes"]) == 1
    assert reasons_by_stay(rejected) == {2: "transfer"}


def test_config_rejects_bad_split_method():
    with pytest.raises(ValueError):
        CohortConfig(split_method="random")
