"""The generative model of the synthetic MIMIC-IV / MIMIC-CXR: one patient at a time, pure numpy.

Every patient is simulated from its own random stream ``default_rng([seed, patient_index])``, so
a patient's rows do not depend on which Spark task, chunk or machine produced them.

The planted signal (per admission, standard normal unless noted):
- ``sev``   general severity: heart rate, blood pressure, respiratory rate, temperature (EHR);
- ``neuro`` neurological state: GCS only (EHR-only signal);
- ``card``  cardiac state: blood pressure, heart rate (EHR) and cardiomegaly / edema (image);
- ``resp``  respiratory state: SpO2, RR, FiO2 (EHR) and consolidation (image);
- ``img``   a state seen only on the radiograph: effusion, pneumothorax, lesions (image-only);
- ``diab``  diabetes (0/1): glucose.
In-hospital death has logit ``MORTALITY_BASE + MORTALITY_WEIGHTS . latents``, so both modalities
carry information the other lacks. Death (and the last hours' deterioration of the vitals) drives
decompensation; severity drives length of stay; phenotype groups and findings follow the latents.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy.signal import lfilter

from spark_jobs.synth import items as I

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
    return json.loads((Path(__file__).with_name("icd_codes.json")).read_text())


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


def dicom_id(rng: np.random.Generator) -> str:
    return "-".join(f"{v:08x}" for v in rng.integers(0, 2**32, size=5, dtype=np.uint64))


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


# ----------------------------------------------------------------------------------------------
# Time series of one stay
# ----------------------------------------------------------------------------------------------


@dataclass
class Rows:
    """Column arrays of event rows (chartevents or labevents) accumulated for a chunk."""

    cols: dict[str, list] = field(default_factory=dict)

    def add(self, **arrays) -> None:
        for key, arr in arrays.items():
            self.cols.setdefault(key, []).append(np.asarray(arr))

    def concat(self) -> dict[str, np.ndarray]:
        return {k: np.concatenate(v) for k, v in self.cols.items()}


def _ar_noise(rng, n: int, sd: float, phi: float = 0.8) -> np.ndarray:
    z = rng.normal(size=n)
    return lfilter([sd * np.sqrt(1 - phi**2)], [1.0, -phi], z)


def _drift(hours: np.ndarray, death_hours: float | None, onset: float) -> np.ndarray:
    """0 before deterioration sets in, rising to 1 at death: the decompensation signal."""
    if death_hours is None:
        return np.zeros_like(hours)
    return np.clip(1.0 - (death_hours - hours) / onset, 0.0, 1.0) ** 1.5


def _grid(rng, start_h: float, end_h: float, every_h: float, jitter_min: float = 8.0, keep: float = 0.97):
    """Chart times every ``every_h`` hours with jitter; a few planned measurements are skipped."""
    hours = np.arange(start_h, end_h, every_h)
    hours = hours + rng.normal(0, jitter_min / 60.0, size=len(hours))
    return np.sort(hours[rng.random(len(hours)) < keep])


def _fmt(values: np.ndarray, decimals: int) -> np.ndarray:
    return np.round(values, decimals)


class StaySeries:
    """Builds the chartevents and labevents rows of one stay."""

    def __init__(self, rng, cfg: ModelConfig, patient: Patient, adm: Admission, stay: Stay):
        self.rng, self.cfg, self.q = rng, cfg, cfg.quirks
        self.patient, self.adm, self.stay = patient, adm, stay
        self.los_h = (stay.outtime - stay.intime) / HOUR
        self.lat = adm.latents
        self.onset = float(rng.uniform(12, 48))

    # values in canonical units at given hours
    def _state(self, hours: np.ndarray, name: str) -> np.ndarray:
        rng, lat = self.rng, self.lat
        d = _drift(hours, self.stay.death_hours, self.onset)
        n = len(hours)
        if name == "hr":
            return 86 + 9 * lat["sev"] + 4 * lat["card"] + 28 * d + _ar_noise(rng, n, 7)
        if name == "sbp":
            return 118 - 9 * lat["sev"] - 7 * lat["card"] - 32 * d + _ar_noise(rng, n, 11)
        if name == "rr":
            return 19 + 3 * lat["resp"] + 1.5 * lat["sev"] + 8 * d + _ar_noise(rng, n, 2.5)
        if name == "spo2":
            return np.minimum(
                100, 97.5 - 1.8 * lat["resp"] - 0.6 * lat["sev"] - 7 * d + _ar_noise(rng, n, 1.0)
            )
        if name == "temp":
            return 36.9 + 0.45 * lat["sev"] + 0.4 * d + _ar_noise(rng, n, 0.3)
        if name == "glucose":
            return 118 + 70 * lat["diab"] + 10 * lat["sev"] + _ar_noise(rng, n, 22, 0.5)
        if name == "ph":
            return 7.40 - 0.035 * lat["sev"] - 0.03 * lat["resp"] - 0.09 * d + _ar_noise(rng, n, 0.025, 0.5)
        if name == "gcs":
            return 15 - 3.0 * np.maximum(lat["neuro"] + 0.3, 0) - 6 * d + _ar_noise(rng, n, 0.8)
        if name == "fio2":
            return 0.3 + 0.12 * max(lat["resp"], 0) + 0.3 * d + _ar_noise(rng, n, 0.05)
        if name == "crr":
            return 0.6 * lat["sev"] + 2.0 * d + rng.normal(size=n) * 0.7
        raise KeyError(name)

    def chart(self, out: Rows) -> None:
        rng, st = self.rng, self.stay
        start, end = -1.5, self.los_h + 1.5  # a few events fall outside the stay, as in MIMIC
        hourly = _grid(rng, start, end, 1.0)
        self._numeric(out, "hr", hourly, 220045, self._state(hourly, "hr"), 0, "bpm")
        rr = self._state(hourly, "rr")
        self._numeric(out, "rr", hourly, 220210 if rng.random() < 0.8 else 224690, rr, 0, "insp/min")
        self._spo2(out, hourly)
        self._blood_pressure(out, hourly, "nbp", (220179, 220180, 220181))
        if st.ventilated or rng.random() < 0.3:
            art = _grid(rng, start, end, 1.0, keep=0.9)
            self._blood_pressure(out, art, "art", (220050, 220051, 220052))
        self._temperature(out, _grid(rng, start, end, 4.0))
        self._gcs(out, _grid(rng, start, end, 2.0 if self.lat["neuro"] > 0.5 else 4.0))
        if st.ventilated:
            self._fio2(out, _grid(rng, start, end, 3.0))
            gas = _grid(rng, start, end, 6.0)
            self._numeric(out, "ph", gas, 223830, self._state(gas, "ph"), 2, "units")
            self._numeric(out, "spo2", gas, 220227, self._state(gas, "spo2"), 0, "%")
        if rng.random() < 0.5:
            fs = _grid(rng, start, end, 6.0)
            self._numeric(out, "glucose", fs, 225664, self._state(fs, "glucose"), 0, "mg/dL")
        serum = _grid(rng, start, end, 12.0)
        self._numeric(
            out,
            "glucose",
            serum,
            220621 if rng.random() < 0.7 else 226537,
            self._state(serum, "glucose"),
            0,
            "mg/dL",
        )
        if rng.random() < 0.2:
            ven = _grid(rng, start, end, 12.0)
            self._numeric(out, "ph", ven, 220274, self._state(ven, "ph") - 0.04, 2, "units")
        if rng.random() < 0.4:
            self._crr(out, _grid(rng, start, end, 6.0))
        self._weight_height(out)
        for k in range(self.cfg.unused_scale):  # extra copies charted later within the hour
            self._unused_chart(out, hourly + k / self.cfg.unused_scale)

    def labs(self, out: Rows, counter: list[int]) -> None:
        rng = self.rng
        start, end = -12.0, self.los_h + 6.0  # labs drawn before the ICU and after it, too
        draws = _grid(rng, start, end, 6.0 if self.stay.ventilated else 12.0)
        self._lab(out, counter, draws, I.LAB_ITEMS["glucose_chem"], self._state(draws, "glucose"), 0)
        if self.stay.ventilated:
            self._lab(out, counter, draws, I.LAB_ITEMS["ph_bg"], self._state(draws, "ph"), 2)
            self._lab(out, counter, draws, I.LAB_ITEMS["spo2_bg"], self._state(draws, "spo2"), 0)
            self._lab(out, counter, draws, I.LAB_ITEMS["glucose_bg"], self._state(draws, "glucose"), 0)
        if rng.random() < 0.1:
            other = _grid(rng, start, end, 24.0)
            self._lab(out, counter, other, I.LAB_ITEMS["ph_other"], self._state(other, "ph"), 2)
        urine = _grid(rng, start, end, 24.0, keep=0.6)
        self._lab(out, counter, urine, I.LAB_ITEMS["ph_urine"], rng.uniform(5.0, 7.5, len(urine)), 1)
        self._lab_text(out, counter, urine, I.LAB_ITEMS["glucose_urine"], "NEG")
        for k in range(self.cfg.unused_scale):
            for item in I.OTHER_LAB_ITEMS:
                at = draws + k / self.cfg.unused_scale
                self._lab(out, counter, at, item, rng.normal(10, 3, len(draws)).clip(0.1), 1)

    # -- chart helpers ----------------------------------------------------------------------------
    def _emit(self, out: Rows, hours, itemid, value, valuenum, uom) -> None:
        rng, st = self.rng, self.stay
        n = len(hours)
        if n == 0:
            return
        charttime = st.intime + np.round(np.asarray(hours) * HOUR).astype(np.int64)
        charttime = charttime - charttime % 60  # MIMIC charttimes are on the minute
        storetime = charttime + rng.integers(0, 3600, n)
        out.add(
            subject_id=np.full(n, self.patient.subject_id),
            hadm_id=np.full(n, self.adm.hadm_id),
            stay_id=np.full(n, st.stay_id),
            caregiver_id=rng.integers(1000, 99999, n),
            charttime=charttime,
            storetime=storetime,
            itemid=np.full(n, itemid),
            value=np.asarray(value, dtype=object),
            valuenum=np.asarray(valuenum, dtype=float),
            valueuom=np.full(n, uom, dtype=object),
            warning=np.zeros(n, dtype=np.int64),
        )
        self._duplicates(out, charttime, itemid, value, valuenum, uom)

    def _duplicates(self, out: Rows, charttime, itemid, value, valuenum, uom) -> None:
        rng = self.rng
        dup = np.flatnonzero(rng.random(len(charttime)) < self.q.duplicate)
        if len(dup) == 0:
            return
        n = len(dup)
        vn = np.asarray(valuenum, dtype=float)[dup]
        val = np.asarray(value, dtype=object)[dup]
        # A numeric reading is re-charted slightly differently; text items (GCS, CRR) are repeated as is.
        numeric = val == _num_text(vn)
        vn = np.where(numeric, np.round(vn * rng.uniform(0.97, 1.03, n), 2), vn)
        val = np.where(numeric, _num_text(vn), val)
        out.add(
            subject_id=np.full(n, self.patient.subject_id),
            hadm_id=np.full(n, self.adm.hadm_id),
            stay_id=np.full(n, self.stay.stay_id),
            caregiver_id=rng.integers(1000, 99999, n),
            charttime=charttime[dup],
            storetime=charttime[dup] + 3600 + rng.integers(0, 3600, n),
            itemid=np.full(n, itemid),
            value=val.astype(object),
            valuenum=vn,
            valueuom=np.full(n, uom, dtype=object),
            warning=np.zeros(n, dtype=np.int64),
        )

    def _numeric(self, out: Rows, kind: str, hours, itemid, values, decimals, uom) -> None:
        rng = self.rng
        v = _fmt(np.asarray(values, dtype=float), decimals)
        bad = rng.random(len(v)) < self.q.impossible
        v[bad] = np.round(v[bad] * rng.choice([10.0, -1.0, 0.0], bad.sum()), decimals)
        text = _num_text(v)
        if kind == "glucose":
            nn = rng.random(len(v)) < self.q.non_numeric
            text[nn] = rng.choice(["ERROR", "NotDone", "___"], nn.sum())
            v[nn] = np.nan
        self._emit(out, hours, itemid, text, v, uom)

    def _spo2(self, out: Rows, hours) -> None:
        v = np.round(self._state(hours, "spo2"))
        frac = self.rng.random(len(v)) < self.q.spo2_fraction
        v[frac] = v[frac] / 100.0
        self._emit(out, hours, 220277, _num_text(v), v, "%")

    def _blood_pressure(self, out: Rows, hours, kind: str, itemids) -> None:
        rng = self.rng
        sbp = np.round(self._state(hours, "sbp"))
        dbp = np.round(0.55 * sbp + 2 + rng.normal(0, 4, len(hours)))
        mbp = np.round((sbp + 2 * dbp) / 3 + rng.normal(0, 2, len(hours)))
        s_text = _num_text(sbp)
        if kind == "nbp":  # "a/b" strings: the reference cleaner splits them
            ab = rng.random(len(sbp)) < self.q.bp_string
            s_text[ab] = [f"{int(a)}/{int(b)}" for a, b in zip(sbp[ab], dbp[ab])]
            sbp = sbp.copy()
            sbp[ab] = np.nan
        self._emit(out, hours, itemids[0], s_text, sbp, "mmHg")
        self._numeric(out, "dbp", hours, itemids[1], dbp, 0, "mmHg")
        self._numeric(out, "mbp", hours, itemids[2], mbp, 0, "mmHg")

    def _temperature(self, out: Rows, hours) -> None:
        c = self._state(hours, "temp")
        in_f = self.rng.random(len(hours)) < 0.8
        if in_f.any():
            self._numeric(out, "temp", hours[in_f], 223761, c[in_f] * 9 / 5 + 32, 1, "°F")
        if (~in_f).any():
            self._numeric(out, "temp", hours[~in_f], 223762, c[~in_f], 1, "°C")

    def _fio2(self, out: Rows, hours) -> None:
        frac = np.clip(self._state(hours, "fio2"), 0.21, 1.0)
        pct = np.round(frac * 100 / 5) * 5  # MIMIC-IV charts FiO2 in percent, in steps
        as_fraction = self.rng.random(len(pct)) < 0.01
        pct[as_fraction] = pct[as_fraction] / 100.0
        self._emit(out, hours, 223835, _num_text(pct), pct, None)

    def _gcs(self, out: Rows, hours) -> None:
        rng = self.rng
        total = np.clip(np.round(self._state(hours, "gcs")), 3, 15).astype(int)
        eye = np.clip(np.round(total * 4 / 15 + rng.normal(0, 0.4, len(total))), 1, 4).astype(int)
        motor = np.clip(np.round(total * 6 / 15 + rng.normal(0, 0.4, len(total))), 1, 6).astype(int)
        verbal = np.clip(total - eye - motor, 1, 5).astype(int)
        keep = [rng.random(len(total)) > 0.05 for _ in range(3)]
        eye_t = np.array([I.GCS_EYE[v] for v in eye], dtype=object)
        motor_t = np.array([I.GCS_MOTOR[v] for v in motor], dtype=object)
        verbal_t = np.array([I.GCS_VERBAL[v] for v in verbal], dtype=object)
        if self.stay.ventilated:
            verbal_t[:] = I.GCS_VERBAL_INTUBATED
            verbal = np.ones_like(verbal)
        for (text, score, itemid), k in zip(
            ((eye_t, eye, 220739), (verbal_t, verbal, 223900), (motor_t, motor, 223901)), keep
        ):
            self._emit(out, hours[k], itemid, text[k], score[k].astype(float), None)

    def _crr(self, out: Rows, hours) -> None:
        abnormal = self._state(hours, "crr") > 1.0
        text = np.where(abnormal, I.CRR_ABNORMAL, I.CRR_NORMAL).astype(object)
        self._emit(
            out, hours, 223951 if self.rng.random() < 0.5 else 224308, text, np.full(len(hours), np.nan), None
        )

    def _weight_height(self, out: Rows) -> None:
        rng = self.rng
        kg = float(np.clip(rng.normal(81, 18), 35, 200))
        first = np.array([rng.uniform(0, 2)])
        if rng.random() < 0.7:
            self._numeric(out, "weight", first, 226512, [kg], 1, "kg")
        else:
            self._numeric(out, "weight", first, 226531, [kg / 0.453592], 1, "lbs")
        if rng.random() < 0.5 and self.los_h > 24:
            daily = np.arange(24.0, self.los_h, 24.0)
            self._numeric(out, "weight", daily, 224639, kg + rng.normal(0, 1.5, len(daily)), 1, "kg")
        if rng.random() < 0.6:
            cm = float(np.clip(rng.normal(170, 10), 140, 205))
            at = np.array([rng.uniform(0, 4)])
            if rng.random() < 0.5:
                self._numeric(out, "height", at, 226730, [cm], 0, "cm")
            else:
                self._numeric(out, "height", at, 226707, [cm / 2.54], 0, "Inch")

    def _unused_chart(self, out: Rows, hourly) -> None:
        rng = self.rng
        n = len(hourly)
        self._emit(
            out, hourly, 220048, np.full(n, "SR (Sinus Rhythm)", dtype=object), np.full(n, np.nan), None
        )
        self._emit(out, hourly, 224641, np.full(n, "Yes", dtype=object), np.full(n, np.nan), None)
        every4 = hourly[::4]
        for item, level, uom in (
            (220046, 120.0, "bpm"),
            (220047, 50.0, "bpm"),
            (223769, 100.0, "%"),
            (223770, 90.0, "%"),
        ):
            v = np.full(len(every4), level)
            self._emit(out, every4, item, _num_text(v), v, uom)
        rass = rng.integers(-3, 2, len(every4))
        self._emit(
            out, every4, 228096, np.array([f"{r} " for r in rass], dtype=object), rass.astype(float), None
        )

    # -- lab helpers ------------------------------------------------------------------------------
    def _lab(self, out: Rows, counter: list[int], hours, item: I.LabItem, values, decimals) -> None:
        rng = self.rng
        v = _fmt(np.asarray(values, dtype=float), decimals)
        text = _num_text(v)
        if item.itemid in (50820, 50831):
            nn = rng.random(len(v)) < self.q.non_numeric
            text[nn] = "HEMOLYZED"
            v[nn] = np.nan
        self._lab_rows(out, counter, hours, item, text, v)

    def _lab_text(self, out: Rows, counter: list[int], hours, item: I.LabItem, text: str) -> None:
        n = len(hours)
        self._lab_rows(out, counter, hours, item, np.full(n, text, dtype=object), np.full(n, np.nan))

    def _lab_rows(self, out: Rows, counter: list[int], hours, item: I.LabItem, text, valuenum) -> None:
        rng, st = self.rng, self.stay
        n = len(hours)
        if n == 0:
            return
        charttime = st.intime + np.round(np.asarray(hours) * HOUR).astype(np.int64)
        charttime -= charttime % 60
        ids = np.arange(counter[0], counter[0] + n)
        counter[0] += n
        hadm = np.where(rng.random(n) < self.q.lab_null_hadm, -1, self.adm.hadm_id)
        out.add(
            labevent_id=self.patient.index * 1_000_000 + ids,
            subject_id=np.full(n, self.patient.subject_id),
            hadm_id=hadm,
            specimen_id=self.patient.index * 1_000_000 + 500_000 + ids,
            itemid=np.full(n, item.itemid),
            order_provider_id=np.full(n, None, dtype=object),
            charttime=charttime,
            storetime=charttime + rng.integers(1800, 4 * 3600, n),
            value=np.asarray(text, dtype=object),
            valuenum=np.asarray(valuenum, dtype=float),
            valueuom=np.full(n, item.unit, dtype=object),
            ref_range_lower=np.full(n, np.nan),
            ref_range_upper=np.full(n, np.nan),
            flag=np.full(n, None, dtype=object),
            priority=np.full(n, "ROUTINE", dtype=object),
            comments=np.full(n, None, dtype=object),
        )


def _num_text(values: np.ndarray) -> np.ndarray:
    """Numbers as MIMIC writes them in ``value``: no trailing zeros, empty for NaN."""
    return np.array(
        ["" if np.isnan(v) else f"{v:.10g}" for v in np.asarray(values, dtype=float)], dtype=object
    )


# ----------------------------------------------------------------------------------------------
# Chest X-ray studies
# ----------------------------------------------------------------------------------------------


@dataclass
class Image:
    dicom_id: str
    study_id: int
    view: str | None
    time: int
    findings: dict[str, float]
    seed: int
    stay_id: int | None
    hadm_id: int | None


def study_findings(rng, latents: dict[str, float] | None, drift: float, ventilated: bool) -> dict[str, float]:
    """True finding severities in [0, 1] at the time of a study."""
    lat = latents or {
        "sev": -1.0,
        "neuro": -1.0,
        "card": rng.normal() - 0.5,
        "resp": -1.0,
        "img": rng.normal() - 0.8,
    }
    u = rng.normal(size=4) * 0.15
    return {
        "cardiomegaly": float(np.clip(0.45 * (lat["card"] - 0.4) + u[0], 0, 1)),
        "effusion": float(np.clip(0.45 * (lat["img"] - 0.4) + 0.15 * max(lat["card"], 0) + u[1], 0, 1)),
        "consolidation": float(np.clip(0.45 * (lat["resp"] - 0.5) + u[2], 0, 1)),
        "edema": float(np.clip(0.35 * (lat["card"] - 0.8) + 0.5 * drift + u[3], 0, 1)),
        "pneumothorax": float(np.clip(0.6 * (lat["img"] - 1.5), 0, 1)),
        "atelectasis": float(rng.uniform(0.3, 0.8)) if rng.random() < 0.15 else 0.0,
        "lung_lesion": float(np.clip(0.5 * (lat["img"] - 1.2), 0, 1))
        or (float(rng.uniform(0.3, 0.7)) if rng.random() < 0.03 else 0.0),
        "fracture": float(rng.uniform(0.4, 1.0)) if rng.random() < 0.03 else 0.0,
        "support_devices": 1.0 if ventilated else 0.0,
    }


def simulate_studies(cfg: ModelConfig, patient: Patient) -> list[Image]:
    """CXR studies before, during and after the ICU stays, AP/PA/LATERAL, some stays without any."""
    rng = np.random.default_rng([cfg.seed, patient.index, 7])
    images: list[Image] = []
    study_no = 0

    def add_study(t: int, latents, drift, ventilated, views, stay_id, hadm_id):
        nonlocal study_no
        study_id = 50_000_000 + patient.index * 32 + study_no
        study_no += 1
        findings = study_findings(rng, latents, drift, ventilated)
        for k, view in enumerate(views):
            seed = int(np.random.SeedSequence([cfg.seed, patient.index, study_id, k]).generate_state(1)[0])
            images.append(
                Image(
                    dicom_id(rng),
                    study_id,
                    view,
                    t,
                    findings,
                    seed,
                    stay_id,
                    hadm_id,
                )
            )

    for adm in patient.admissions:
        for st in adm.stays:
            if rng.random() > 0.72 or study_no > 28:
                continue  # a stay without any image
            los_h = (st.outtime - st.intime) / HOUR
            n = 1 + rng.poisson(0.35 * los_h / 24)
            for _ in range(min(n, 6)):
                h = float(rng.uniform(-6, los_h + 6))
                d = float(_drift(np.array([h]), st.death_hours, 36.0)[0])
                r = rng.random()
                views = ["AP"] if r < 0.85 else (["AP", "LATERAL"] if r < 0.93 else ["PA", "LATERAL"])
                if rng.random() < 0.01:
                    views = [None]
                inside = 0.0 <= h <= los_h
                add_study(
                    st.intime + int(h * HOUR),
                    adm.latents,
                    d,
                    st.ventilated,
                    views,
                    st.stay_id if inside else None,
                    adm.hadm_id,
                )
    for _ in range(int(rng.integers(0, 3))):
        adm = patient.admissions[int(rng.integers(len(patient.admissions)))]
        offset = int(rng.uniform(-365, 365) * DAY)
        t = (adm.admittime if offset < 0 else adm.dischtime) + offset
        views = ["PA", "LATERAL"] if rng.random() < 0.75 else ["AP"]
        add_study(t, None, 0.0, False, views, None, None)
    return images


CHEXPERT_FROM_FINDINGS = {
    "Atelectasis": ("atelectasis",),
    "Cardiomegaly": ("cardiomegaly",),
    "Consolidation": ("consolidation",),
    "Edema": ("edema",),
    "Enlarged Cardiomediastinum": ("cardiomegaly",),
    "Fracture": ("fracture",),
    "Lung Lesion": ("lung_lesion",),
    "Lung Opacity": ("consolidation", "edema", "atelectasis", "lung_lesion"),
    "Pleural Effusion": ("effusion",),
    "Pneumonia": ("consolidation",),
    "Pneumothorax": ("pneumothorax",),
    "Support Devices": ("support_devices",),
}
PRESENT = 0.25  # a finding at or above this severity is "present" (what a reader would report)


def chexpert_labels(rng, findings: dict[str, float], names) -> list[float | None]:
    """Noisy report labels: 1 / 0 / -1 (uncertain) / None (not mentioned), like CheXpert's labeler."""
    labels: list[float | None] = []
    any_finding = any(v >= PRESENT for k, v in findings.items() if k != "support_devices")
    for name in names:
        if name == "No Finding":
            labels.append(None if any_finding else 1.0)
            continue
        if name == "Pleural Other":
            labels.append(1.0 if rng.random() < 0.01 else None)
            continue
        present = max(findings[f] for f in CHEXPERT_FROM_FINDINGS[name]) >= PRESENT
        if name in ("Enlarged Cardiomediastinum", "Pneumonia"):
            present = present and rng.random() < 0.6
        r = rng.random()
        if present:
            labels.append(1.0 if r < 0.85 else (-1.0 if r < 0.95 else None))
        else:
            labels.append(0.0 if r < 0.3 else (-1.0 if r < 0.32 else None))
    return labels
