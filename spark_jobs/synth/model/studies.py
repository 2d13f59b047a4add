"""Chest X-ray studies of one patient: when they are taken, their views, the true findings at
that time and the noisy report labels CheXpert's labeler would give."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from spark_jobs.synth.model.simulation import DAY, HOUR, ModelConfig, Patient, drift


def dicom_id(rng: np.random.Generator) -> str:
    return "-".join(f"{v:08x}" for v in rng.integers(0, 2**32, size=5, dtype=np.uint64))


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
                d = float(drift(np.array([h]), st.death_hours, 36.0)[0])
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
