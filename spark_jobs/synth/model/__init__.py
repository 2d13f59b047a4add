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

The model is split by what it draws: :mod:`.simulation` (patients, admissions, stays, outcomes,
diagnoses), :mod:`.series` (the chartevents / labevents rows of a stay) and :mod:`.studies`
(chest X-ray studies, findings, report labels).
"""

from spark_jobs.synth.model.series import Rows, StaySeries
from spark_jobs.synth.model.simulation import (
    DAY,
    HOUR,
    ICD,
    LATENTS,
    MORTALITY_BASE,
    MORTALITY_WEIGHTS,
    PHENOTYPE_MODEL,
    PHENOTYPES,
    Admission,
    ModelConfig,
    Patient,
    Quirks,
    Stay,
    drift,
    sigmoid,
    simulate_patient,
    subject_id_of,
)
from spark_jobs.synth.model.studies import (
    CHEXPERT_FROM_FINDINGS,
    PRESENT,
    Image,
    chexpert_labels,
    dicom_id,
    simulate_studies,
    study_findings,
)

__all__ = [
    "CHEXPERT_FROM_FINDINGS",
    "DAY",
    "HOUR",
    "ICD",
    "LATENTS",
    "MORTALITY_BASE",
    "MORTALITY_WEIGHTS",
    "PHENOTYPES",
    "PHENOTYPE_MODEL",
    "PRESENT",
    "Admission",
    "Image",
    "ModelConfig",
    "Patient",
    "Quirks",
    "Rows",
    "Stay",
    "StaySeries",
    "chexpert_labels",
    "dicom_id",
    "drift",
    "sigmoid",
    "simulate_patient",
    "simulate_studies",
    "study_findings",
    "subject_id_of",
]
