"""A chunk of simulated patients as MIMIC-shaped pandas tables (plus the ground truth).

Pure: ``chunk_tables(cfg, first, count, layout)`` returns DataFrames whose columns are exactly
those of ``spark_jobs.mimic_schema`` for the layout, with values already formatted the way the
real CSVs write them (timestamps ``YYYY-MM-DD HH:MM:SS``, empty for null).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from spark_jobs.mimic_schema import CHEXPERT_LABELS, CXR_TABLES, cxr_image_relpath, mimic_iv_tables
from spark_jobs.synth.cxr_render import FINDINGS, image_shape
from spark_jobs.synth.model import (
    DAY,
    HOUR,
    LATENTS,
    Admission,
    Image,
    ModelConfig,
    Patient,
    Rows,
    Stay,
    StaySeries,
    chexpert_labels,
    simulate_patient,
    simulate_studies,
)

TRUTH_COLUMNS = {
    "stays": [
        "subject_id",
        "hadm_id",
        "stay_id",
        "intime",
        "outtime",
        "los_hours",
        "age",
        "transfer",
        "stays_in_admission",
        "p_mortality",
        "died_in_hospital",
        "deathtime_true",
        "deathtime_recorded",
        "death_hours",
        "death_hours_true",
        "ventilated",
        "icd_version",
        "phenotypes",
        "pheno_oracle",
        *(f"latent_{k}" for k in (*LATENTS, "diab")),
    ],
    "images": [
        "dicom_id",
        "subject_id",
        "study_id",
        "hadm_id",
        "stay_id",
        "view",
        "study_time",
        "path",
        *(f"finding_{k}" for k in FINDINGS),
    ],
}


@dataclass
class ImageJob:
    relpath: str
    findings: dict[str, float]
    seed: int
    view: str


def _ts(seconds: int | None) -> str:
    """Epoch seconds -> 'YYYY-MM-DD HH:MM:SS'; '' for null, as in the MIMIC CSVs."""
    if seconds is None:
        return ""
    return str(np.datetime64(int(seconds), "s")).replace("T", " ")


def _ts_array(seconds: np.ndarray) -> np.ndarray:
    return pd.to_datetime(seconds, unit="s").strftime("%Y-%m-%d %H:%M:%S").to_numpy(dtype=object)


def _date(seconds) -> str:
    return "" if seconds is None else str(np.datetime64(int(seconds), "s").astype("datetime64[D]"))


def _select(rows: list[dict] | pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    df = rows if isinstance(rows, pd.DataFrame) else pd.DataFrame(rows)
    if df.empty:
        return pd.DataFrame({c: pd.Series(dtype=object) for c in columns})
    return df[columns]


def chunk_tables(cfg: ModelConfig, first: int, count: int, layout: str = "v2", image_size: int = 512):
    """Simulate patients ``first .. first+count-1``; return (tables, truth, image jobs)."""
    schema = mimic_iv_tables(layout)
    race_col = "ethnicity" if layout == "v1" else "race"
    patients, admissions, stays, diagnoses, truth_stays = [], [], [], [], []
    chart, labs = Rows(), Rows()
    metadata, chexpert, splits, truth_images, jobs = [], [], [], [], []
    for index in range(first, first + count):
        p = simulate_patient(cfg, index)
        rng = np.random.default_rng([cfg.seed, index, 3])
        patients.append(
            {
                "subject_id": p.subject_id,
                "gender": p.gender,
                "anchor_age": p.anchor_age,
                "anchor_year": p.anchor_year,
                "anchor_year_group": p.anchor_year_group,
                "dod": _date(p.dod),
            }
        )
        lab_counter = [0]
        for adm in p.admissions:
            admissions.append(_admission_row(p, adm, race_col))
            diagnoses += [
                {
                    "subject_id": p.subject_id,
                    "hadm_id": adm.hadm_id,
                    "seq_num": i + 1,
                    "icd_code": c,
                    "icd_version": adm.icd_version,
                }
                for i, c in enumerate(adm.codes)
            ]
            for st in adm.stays:
                stays.append(_stay_row(p, adm, st))
                truth_stays.append(_truth_stay(p, adm, st))
                series = StaySeries(rng, cfg, p, adm, st)
                series.chart(chart)
                series.labs(labs, lab_counter)
        for img in simulate_studies(cfg, p):
            _add_image(image_size, p, img, rng, metadata, chexpert, splits, truth_images, jobs)
    tables = {
        "patients": _select(patients, schema["patients"].column_names),
        "admissions": _select(admissions, schema["admissions"].column_names),
        "icustays": _select(stays, schema["icustays"].column_names),
        "diagnoses_icd": _select(diagnoses, schema["diagnoses_icd"].column_names),
        "chartevents": _events_frame(chart, schema["chartevents"].column_names),
        "labevents": _events_frame(labs, schema["labevents"].column_names),
        "metadata": _select(_dedupe_studies(metadata, False), CXR_TABLES["metadata"].column_names),
        "chexpert": _select(_dedupe_studies(chexpert, True), CXR_TABLES["chexpert"].column_names),
        "split": _select(splits, CXR_TABLES["split"].column_names),
    }
    truth = {
        "stays": _select(truth_stays, TRUTH_COLUMNS["stays"]),
        "images": _select(truth_images, TRUTH_COLUMNS["images"]),
    }
    return tables, truth, jobs


def _dedupe_studies(rows: list[dict], by_study: bool) -> list[dict]:
    if not by_study:
        return rows
    seen, out = set(), []
    for r in rows:
        if r["study_id"] not in seen:
            seen.add(r["study_id"])
            out.append(r)
    return out


def _admission_row(p: Patient, adm: Admission, race_col: str) -> dict:
    f = adm.fields
    return {
        "subject_id": p.subject_id,
        "hadm_id": adm.hadm_id,
        "admittime": _ts(adm.admittime),
        "dischtime": _ts(adm.dischtime),
        "deathtime": _ts(adm.deathtime if adm.died and adm.deathtime_recorded else None),
        "admission_type": f["admission_type"],
        "admit_provider_id": f["admit_provider_id"],
        "admission_location": f["admission_location"],
        "discharge_location": f["discharge_location"],
        "insurance": f["insurance"],
        "language": f["language"],
        "marital_status": f["marital_status"] or "",
        race_col: f["race"],
        "edregtime": _ts(f["edregtime"]),
        "edouttime": _ts(f["edouttime"]),
        "hospital_expire_flag": int(adm.died),
    }


def _stay_row(p: Patient, adm: Admission, st: Stay) -> dict:
    return {
        "subject_id": p.subject_id,
        "hadm_id": adm.hadm_id,
        "stay_id": st.stay_id,
        "first_careunit": st.first_careunit,
        "last_careunit": st.last_careunit,
        "intime": _ts(st.intime),
        "outtime": _ts(st.outtime),
        "los": f"{(st.outtime - st.intime) / DAY:.10g}",
    }


def _truth_stay(p: Patient, adm: Admission, st: Stay) -> dict:
    row = {
        "subject_id": p.subject_id,
        "hadm_id": adm.hadm_id,
        "stay_id": st.stay_id,
        "intime": _ts(st.intime),
        "outtime": _ts(st.outtime),
        "los_hours": (st.outtime - st.intime) / HOUR,
        "age": p.anchor_age,
        "transfer": int(st.first_careunit != st.last_careunit),
        "stays_in_admission": len(adm.stays),
        "p_mortality": adm.p_mortality,
        "died_in_hospital": int(adm.died),
        "deathtime_true": _ts(adm.deathtime),
        "deathtime_recorded": int(adm.deathtime_recorded),
        "death_hours": st.death_hours if st.death_hours is not None else np.nan,
        "death_hours_true": (adm.deathtime - st.intime) / HOUR if adm.deathtime is not None else np.nan,
        "ventilated": int(st.ventilated),
        "icd_version": adm.icd_version,
        "phenotypes": "".join(str(int(v)) for v in adm.phenotypes),
        "pheno_oracle": ";".join(f"{v:.6f}" for v in adm.pheno_oracle),
    }
    row.update({f"latent_{k}": v for k, v in adm.latents.items()})
    return row


def _events_frame(rows: Rows, columns: list[str]) -> pd.DataFrame:
    if not rows.cols:
        return _select([], columns)
    data = rows.concat()
    df = pd.DataFrame(
        {k: _ts_array(v) if k in ("charttime", "storetime") else v for k, v in data.items() if k in columns}
    )
    if "hadm_id" in df and (df["hadm_id"] < 0).any():
        df["hadm_id"] = pd.array(np.where(df["hadm_id"] < 0, None, df["hadm_id"]), dtype="Int64")
    return df[columns]


def _add_image(
    image_size: int, p: Patient, img: Image, rng, metadata, chexpert, splits, truth_images, jobs
) -> None:
    # Rows/Columns are those of the JPEG that will be written (long side = image_size).
    rows, cols = image_shape(img.seed, image_size)
    relpath = cxr_image_relpath(p.subject_id, img.study_id, img.dicom_id)
    when = pd.Timestamp(img.time, unit="s")
    study_time = when.hour * 10000 + when.minute * 100 + when.second + round(rng.random() * 0.998, 3)
    metadata.append(
        {
            "dicom_id": img.dicom_id,
            "subject_id": p.subject_id,
            "study_id": img.study_id,
            "PerformedProcedureStepDescription": "CHEST (PORTABLE AP)"
            if img.view == "AP"
            else "CHEST (PA AND LAT)",
            "ViewPosition": img.view or "",
            "Rows": rows,
            "Columns": cols,
            "StudyDate": int(when.strftime("%Y%m%d")),
            "StudyTime": f"{study_time:.3f}".rstrip("0").rstrip("."),
            "ProcedureCodeSequence_CodeMeaning": "CHEST (PORTABLE AP)"
            if img.view == "AP"
            else "CHEST (PA AND LAT)",
            "ViewCodeSequence_CodeMeaning": {
                "AP": "antero-posterior",
                "PA": "postero-anterior",
                "LATERAL": "lateral",
            }.get(img.view or "", ""),
            "PatientOrientationCodeSequence_CodeMeaning": "Erect" if img.view != "AP" else "Recumbent",
        }
    )
    labels = chexpert_labels(rng, img.findings, CHEXPERT_LABELS)
    # Written as MIMIC writes them: "1.0", "0.0", "-1.0" or blank.
    texts = ["" if v is None else f"{v:.1f}" for v in labels]
    chexpert.append(
        {"subject_id": p.subject_id, "study_id": img.study_id, **dict(zip(CHEXPERT_LABELS, texts))}
    )
    splits.append(
        {
            "dicom_id": img.dicom_id,
            "study_id": img.study_id,
            "subject_id": p.subject_id,
            "split": _cxr_split(p.subject_id),
        }
    )
    truth_images.append(
        {
            "dicom_id": img.dicom_id,
            "subject_id": p.subject_id,
            "study_id": img.study_id,
            "hadm_id": img.hadm_id,
            "stay_id": img.stay_id,
            "view": img.view or "",
            "study_time": when.strftime("%Y-%m-%d %H:%M:%S"),
            "path": relpath,
            **{f"finding_{k}": v for k, v in img.findings.items()},
        }
    )
    jobs.append(ImageJob(relpath, img.findings, img.seed, img.view or "AP"))


def _cxr_split(subject_id: int) -> str:
    # MIMIC-CXR's own split (by subject); the benchmark does not use it, but the file has it.
    r = (subject_id * 2654435761) % 1000
    return "test" if r < 10 else ("validate" if r < 18 else "train")
