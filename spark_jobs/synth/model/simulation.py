"""Patients, admissions, ICU stays, outcomes and diagnoses: the latent state everything else
(vital signs, images, labels) is drawn from."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

HOUR = 3600
DAY = 24 * HOUR
LATENTS = ("sev", "neuro", "card", "resp", "img")
MORTALITY_BASE = -3.1
MORTALITY_WEIGHTS = {"sev": 0.9, "neuro": 0.8, "card": 0.4, "resp": 0.4, "img": 1.0}

CAREUNITS = (
    "Medical Intensive Care Unit (MICU)",
    "Surgical Intensive Care Unit (SICU)",
    "Cardiac Vascular Intensive Care Unit (CVICU)",
    "Medical/Surgical Intensive Care Unit (MICU/SICU)",
    "Coronary Care Unit (CCU)",
    "Trauma SICU (TSICU)",
    "Neuro Surgical Intensive Care Unit (Neuro SICU)",
)
ADMISSION_TYPES = (
    "EW EMER.",
    "URGENT",
    "ELECTIVE",
    "OBSERVATION ADMIT",
    "SURGICAL SAME DAY ADMISSION",
    "DIRECT EMER.",
)
ADMISSION_LOCATIONS = (
    "EMERGENCY ROOM",
    "TRANSFER FROM HOSPITAL",
    "PHYSICIAN REFERRAL",
    "WALK-IN/SELF REFERRAL",
)
DISCHARGE_LOCATIONS = (
    "HOME",
    "HOME HEALTH CARE",
    "SKILLED NURSING FACILITY",
    "REHAB",
    "CHRONIC/LONG TERM ACUTE CARE",
)
INSURANCE = ("Medicare", "Medicaid", "Other")
MARITAL = ("MARRIED", "SINGLE", "WIDOWED", "DIVORCED", None)
RACES = ("WHITE", "BLACK/AFRICAN AMERICAN", "HISPANIC/LATINO - PUERTO RICAN", "ASIAN", "OTHER", "UNKNOWN")
YEAR_GROUPS = ("2008 - 2010", "2011 - 2013", "2014 - 2016", "2017 - 2019", "2020 - 2022")

# Phenotype logit: base + weights on latents (names as in LATENTS plus "diab").
PHENOTYPE_MODEL = {
    "Septicemia (except in labor)": (-2.0, {"sev": 0.9}),
    "Diabetes mellitus without complication": (-2.4, {"diab": 2.6}),
    "Diabetes mellitus with complications": (-3.2, {"diab": 2.2}),
    "Disorders of lipid metabolism": (-0.9, {"card": 0.3}),
    "Fluid and electrolyte disorders": (-0.8, {"sev": 0.6}),
    "Essential hypertension": (-0.6, {"card": 0.2}),
    "Hypertension with complications and secondary hypertension": (-1.8, {"card": 0.6}),
    "Acute myocardial infarction": (-2.6, {"card": 0.8}),
    "Coronary atherosclerosis and other heart disease": (-1.0, {"card": 0.8}),
    "Conduction disorders": (-2.6, {"card": 0.4}),
    "Cardiac dysrhythmias": (-0.7, {"card": 0.6}),
    "Congestive heart failure; nonhypertensive": (-1.6, {"card": 1.2}),
    "Acute cerebrovascular disease": (-2.6, {"neuro": 1.4}),
    "Pneumonia (except that caused by tuberculosis or sexually transmitted disease)": (-2.0, {"resp": 1.2}),
    "Chronic obstructive pulmonary disease and bronchiectasis": (-2.0, {"resp": 0.6}),
    "Pleurisy; pneumothorax; pulmonary collapse": (-2.6, {"img": 1.0}),
    "Respiratory failure; insufficiency; arrest (adult)": (-1.8, {"resp": 1.0, "sev": 0.5}),
    "Other lower respiratory disease": (-2.6, {"resp": 0.4}),
    "Other upper respiratory disease": (-3.0, {}),
    "Other liver diseases": (-2.4, {"sev": 0.3}),
    "Gastrointestinal hemorrhage": (-2.6, {}),
    "Acute and unspecified renal failure": (-1.4, {"sev": 0.7}),
    "Chronic kidney disease": (-2.0, {"card": 0.3}),
    "Complications of surgical procedures or medical care": (-2.0, {}),
    "Shock": (-2.6, {"sev": 1.0, "card": 0.4}),
}
PHENOTYPES = tuple(PHENOTYPE_MODEL)


@dataclass(frozen=True)
class Quirks:
    """Rates of the real-data defects the ETL must handle (per value unless noted)."""

    impossible: float = 0.002
    non_numeric: float = 0.005
    spo2_fraction: float = 0.005
    bp_string: float = 0.002
    duplicate: float = 0.005
    lab_null_hadm: float = 0.05
    minor_patient: float = 0.04
    transfer_stay: float = 0.08
    second_stay: float = 0.10
    no_icu_admission: float = 0.10
    death_without_deathtime: float = 0.02
    death_after_discharge: float = 0.08


@dataclass(frozen=True)
class ModelConfig:
    seed: int = 0
    quirks: Quirks = field(default_factory=Quirks)
    # How many times the items the benchmark never uses are charted (0: never). 1 gives ~26% of
    # chartevents rows to unused items; MIMIC's share is far higher (~82%, from the reference item
    # map's MIMIC-III counts), which 13 matches: the ETL benchmark uses it so that the ingest
    # reads a MIMIC-like mix.
    unused_scale: int = 1


def _load_icd_codes() -> dict:
    return json.loads((Path(__file__).parents[1] / "icd_codes.json").read_text())


ICD = _load_icd_codes()


def _groups_of_codes(version: int) -> dict[str, list[str]]:
    """code -> benchmark groups containing it (the truth labels follow the ETL's own rule)."""
    groups: dict[str, list[str]] = {}
    for group in PHENOTYPES:
        for code in ICD["benchmark_groups"][group][f"icd{version}"]:
            groups.setdefault(code, []).append(group)
    return groups


_GROUPS_OF = {9: _groups_of_codes(9), 10: _groups_of_codes(10)}


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def subject_id_of(index: int, rng: np.random.Generator) -> int:
    # Spaced and jittered like real ids; the index keeps them unique, 8 digits up to ~137k patients.
    return 10_000_000 + index * 73 + int(rng.integers(73))


@dataclass
class Stay:
    stay_id: int
    intime: int  # epoch seconds
    outtime: int
    first_careunit: str
    last_careunit: str
    ventilated: bool
    death_hours: float | None = None  # death time relative to intime, if the patient dies in it


@dataclass
class Admission:
    hadm_id: int
    admittime: int
    dischtime: int
    latents: dict[str, float]
    stays: list[Stay]
    died: bool
    deathtime: int | None  # true death time (None: survived the admission)
    deathtime_recorded: bool
    icd_version: int
    p_mortality: float
    pheno_oracle: np.ndarray
    codes: list[str]
    phenotypes: np.ndarray  # 25 labels implied by the codes
    fields: dict[str, object]


@dataclass
class Patient:
    index: int
    subject_id: int
    gender: str
    anchor_age: int
    anchor_year: int
    anchor_year_group: str
    dod: int | None
    admissions: list[Admission]


def _year_start(year: int) -> int:
    return int(np.datetime64(f"{year}-01-01T00:00:00", "s").astype(np.int64))


def simulate_patient(cfg: ModelConfig, index: int) -> Patient:
    """Demographics, admissions, ICU stays, outcomes and diagnoses of one patient."""
    rng = np.random.default_rng([cfg.seed, index])
    q = cfg.quirks
    subject_id = subject_id_of(index, rng)
    minor = rng.random() < q.minor_patient
    anchor_age = int(rng.integers(1, 18)) if minor else int(np.clip(rng.normal(64, 16), 18, 91))
    anchor_year = int(rng.integers(2110, 2187))
    diab = float(rng.random() < 0.25)
    n_adm = int(rng.choice([1, 2, 3], p=[0.7, 0.2, 0.1]))
    t = _year_start(anchor_year) + int(rng.integers(0, 2 * 365)) * DAY + int(rng.integers(0, DAY))
    admissions: list[Admission] = []
    dod = None
    for j in range(n_adm):
        adm = _simulate_admission(rng, q, subject_id, index, j, t, diab)
        admissions.append(adm)
        if adm.died:
            dod = adm.deathtime
            break
        t = adm.dischtime + int(rng.integers(30, 400)) * DAY
    if dod is None and rng.random() < q.death_after_discharge:
        dod = admissions[-1].dischtime + int(rng.integers(1, 365)) * DAY
    return Patient(
        index=index,
        subject_id=subject_id,
        gender=str(rng.choice(["F", "M"])),
        anchor_age=anchor_age,
        anchor_year=anchor_year,
        anchor_year_group=str(rng.choice(YEAR_GROUPS)),
        dod=dod,
        admissions=admissions,
    )


def _simulate_admission(rng, q: Quirks, subject_id: int, index: int, j: int, admittime: int, diab: float):
    latents = {k: float(rng.normal()) for k in LATENTS}
    latents["diab"] = diab
    logit = MORTALITY_BASE + sum(w * latents[k] for k, w in MORTALITY_WEIGHTS.items())
    p_mortality = float(sigmoid(logit))
    died = bool(rng.random() < p_mortality)
    hadm_id = 20_000_000 + index * 4 + j
    n_stays = 0 if rng.random() < q.no_icu_admission else (2 if rng.random() < q.second_stay else 1)
    stays: list[Stay] = []
    t = admittime + int(rng.uniform(0.5, 48) * HOUR)
    for k in range(n_stays):
        los_h = float(
            np.exp(
                3.75
                + 0.3 * latents["sev"]
                + 0.2 * latents["resp"]
                + 0.15 * latents["neuro"]
                + 0.65 * rng.normal()
            )
        )
        los_h = float(np.clip(los_h, 5.0, 45 * 24.0))
        first = str(rng.choice(CAREUNITS))
        last = (
            str(rng.choice([c for c in CAREUNITS if c != first])) if rng.random() < q.transfer_stay else first
        )
        ventilated = bool(rng.random() < sigmoid(latents["resp"] + 0.5 * latents["sev"] - 0.3))
        stay = Stay(30_000_000 + index * 8 + j * 2 + k, t, t + int(los_h * HOUR), first, last, ventilated)
        stays.append(stay)
        t = stay.outtime + int(rng.uniform(12, 96) * HOUR)
    deathtime = None
    if died and stays:
        last_stay = stays[-1]
        if rng.random() < 0.65:  # dies in the ICU: the stay ends shortly after death
            death = last_stay.outtime - int(rng.uniform(0, 1.5) * HOUR)
            death = max(death, last_stay.intime + HOUR)
        else:
            death = last_stay.outtime + int(rng.uniform(6, 5 * 24) * HOUR)
        last_stay.death_hours = (death - last_stay.intime) / HOUR
        deathtime = death
        dischtime = max(death, last_stay.outtime)  # the record closes when the body leaves the unit
    elif died:
        deathtime = t + int(rng.uniform(6, 10 * 24) * HOUR)
        dischtime = deathtime
    else:
        dischtime = t + int(rng.uniform(6, 12 * 24) * HOUR)
    icd_version = 9 if rng.random() < 0.55 else 10
    pheno_oracle = np.array(
        [sigmoid(base + sum(w * latents[k] for k, w in ws.items())) for base, ws in PHENOTYPE_MODEL.values()]
    )
    codes = _draw_codes(rng, pheno_oracle, icd_version)
    phenotypes = np.zeros(len(PHENOTYPES), dtype=np.int8)
    for code in codes:
        for g in _GROUPS_OF[icd_version].get(code, []):
            phenotypes[PHENOTYPES.index(g)] = 1
    edreg = None if rng.random() < 0.5 else admittime - int(rng.uniform(1, 8) * HOUR)
    fields = {
        "admission_type": str(rng.choice(ADMISSION_TYPES)),
        "admit_provider_id": f"P{int(rng.integers(10000, 99999))}",
        "admission_location": str(rng.choice(ADMISSION_LOCATIONS)),
        "discharge_location": "DIED" if died else str(rng.choice(DISCHARGE_LOCATIONS)),
        "insurance": str(rng.choice(INSURANCE)),
        "language": "ENGLISH" if rng.random() < 0.9 else "?",
        "marital_status": MARITAL[int(rng.integers(len(MARITAL)))],
        "race": str(rng.choice(RACES)),
        "edregtime": edreg,
        "edouttime": None if edreg is None else admittime - int(rng.uniform(0, 1) * HOUR),
    }
    recorded = not (died and rng.random() < q.death_without_deathtime)
    return Admission(
        hadm_id,
        admittime,
        dischtime,
        latents,
        stays,
        died,
        deathtime,
        recorded,
        icd_version,
        p_mortality,
        pheno_oracle,
        codes,
        phenotypes,
        fields,
    )


def _draw_codes(rng, pheno_oracle: np.ndarray, version: int) -> list[str]:
    codes = []
    for g, p in zip(PHENOTYPES, pheno_oracle):
        if rng.random() < p:
            pool = ICD["benchmark_groups"][g][f"icd{version}"]
            codes += [str(c) for c in rng.choice(pool, size=int(rng.integers(1, 3)), replace=False)]
    other = ICD[f"other_icd{version}"]
    codes += [str(c) for c in rng.choice(other, size=int(rng.integers(2, 9)), replace=False)]
    order = rng.permutation(len(codes))
    return list(dict.fromkeys(codes[i] for i in order))


def drift(hours: np.ndarray, death_hours: float | None, onset: float) -> np.ndarray:
    """0 before deterioration sets in, rising to 1 at death: the decompensation signal."""
    if death_hours is None:
        return np.zeros_like(hours)
    return np.clip(1.0 - (death_hours - hours) / onset, 0.0, 1.0) ** 1.5
