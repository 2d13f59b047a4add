"""Declared layout of the raw MIMIC-IV and MIMIC-CXR-JPG files: paths, column order and types.

Pure Python (no Spark import) so that the generator, the ingest stage and the tests share one
declaration. Types are the logical types a reader must apply: ``long``, ``int``, ``double``,
``string``, ``timestamp`` (``YYYY-MM-DD HH:MM:SS``) and ``date`` (``YYYY-MM-DD``).
"""

from __future__ import annotations

from dataclasses import dataclass

from conf.tasks import CHEXPERT_LABELS  # the 14 label columns of the chexpert table, in file order

Column = tuple[str, str]


@dataclass(frozen=True)
class RawTable:
    name: str
    relpath: str  # path below the MIMIC-IV (or MIMIC-CXR) root, without ".csv.gz"
    columns: tuple[Column, ...]

    @property
    def column_names(self) -> list[str]:
        return [c for c, _ in self.columns]


_PATIENTS = (
    ("subject_id", "long"),
    ("gender", "string"),
    ("anchor_age", "int"),
    ("anchor_year", "int"),
    ("anchor_year_group", "string"),
    ("dod", "date"),
)


def _admissions(race_column: str, with_provider: bool) -> tuple[Column, ...]:
    cols: list[Column] = [
        ("subject_id", "long"),
        ("hadm_id", "long"),
        ("admittime", "timestamp"),
        ("dischtime", "timestamp"),
        ("deathtime", "timestamp"),
        ("admission_type", "string"),
    ]
    if with_provider:
        cols.append(("admit_provider_id", "string"))
    cols += [
        ("admission_location", "string"),
        ("discharge_location", "string"),
        ("insurance", "string"),
        ("language", "string"),
        ("marital_status", "string"),
        (race_column, "string"),
        ("edregtime", "timestamp"),
        ("edouttime", "timestamp"),
        ("hospital_expire_flag", "int"),
    ]
    return tuple(cols)


_ICUSTAYS = (
    ("subject_id", "long"),
    ("hadm_id", "long"),
    ("stay_id", "long"),
    ("first_careunit", "string"),
    ("last_careunit", "string"),
    ("intime", "timestamp"),
    ("outtime", "timestamp"),
    ("los", "double"),
)


def _chartevents(with_caregiver: bool) -> tuple[Column, ...]:
    cols: list[Column] = [("subject_id", "long"), ("hadm_id", "long"), ("stay_id", "long")]
    if with_caregiver:
        cols.append(("caregiver_id", "long"))
    cols += [
        ("charttime", "timestamp"),
        ("storetime", "timestamp"),
        ("itemid", "long"),
        ("value", "string"),
        ("valuenum", "double"),
        ("valueuom", "string"),
        ("warning", "int"),
    ]
    return tuple(cols)


def _labevents(with_provider: bool) -> tuple[Column, ...]:
    cols: list[Column] = [
        ("labevent_id", "long"),
        ("subject_id", "long"),
        ("hadm_id", "long"),
        ("specimen_id", "long"),
        ("itemid", "long"),
    ]
    if with_provider:
        cols.append(("order_provider_id", "string"))
    cols += [
        ("charttime", "timestamp"),
        ("storetime", "timestamp"),
        ("value", "string"),
        ("valuenum", "double"),
        ("valueuom", "string"),
        ("ref_range_lower", "double"),
        ("ref_range_upper", "double"),
        ("flag", "string"),
        ("priority", "string"),
        ("comments", "string"),
    ]
    return tuple(cols)


_DIAGNOSES = (
    ("subject_id", "long"),
    ("hadm_id", "long"),
    ("seq_num", "int"),
    ("icd_code", "string"),
    ("icd_version", "int"),
)
_D_ICD = (("icd_code", "string"), ("icd_version", "int"), ("long_title", "string"))
_D_ITEMS = (
    ("itemid", "long"),
    ("label", "string"),
    ("abbreviation", "string"),
    ("linksto", "string"),
    ("category", "string"),
    ("unitname", "string"),
    ("param_type", "string"),
    ("lownormalvalue", "double"),
    ("highnormalvalue", "double"),
)


def _d_labitems(with_loinc: bool) -> tuple[Column, ...]:
    cols: list[Column] = [
        ("itemid", "long"),
        ("label", "string"),
        ("fluid", "string"),
        ("category", "string"),
    ]
    if with_loinc:
        cols.append(("loinc_code", "string"))
    return tuple(cols)


def mimic_iv_tables(layout: str) -> dict[str, RawTable]:
    """The MIMIC-IV tables the benchmark reads or the generator writes, for ``layout`` v1|v2|v3."""
    if layout not in ("v1", "v2", "v3"):
        raise ValueError(f"unknown MIMIC-IV layout {layout!r}; expected v1, v2 or v3")
    v1 = layout == "v1"
    core = "core" if v1 else "hosp"
    tables = [
        RawTable("patients", f"{core}/patients", _PATIENTS),
        RawTable("admissions", f"{core}/admissions", _admissions("ethnicity" if v1 else "race", not v1)),
        RawTable("icustays", "icu/icustays", _ICUSTAYS),
        RawTable("chartevents", "icu/chartevents", _chartevents(not v1)),
        RawTable("labevents", "hosp/labevents", _labevents(not v1)),
        RawTable("diagnoses_icd", "hosp/diagnoses_icd", _DIAGNOSES),
        RawTable("d_icd_diagnoses", "hosp/d_icd_diagnoses", _D_ICD),
        RawTable("d_items", "icu/d_items", _D_ITEMS),
        RawTable("d_labitems", "hosp/d_labitems", _d_labitems(v1)),
    ]
    return {t.name: t for t in tables}


CXR_TABLES = {
    "metadata": RawTable(
        "metadata",
        "mimic-cxr-2.0.0-metadata",
        (
            ("dicom_id", "string"),
            ("subject_id", "long"),
            ("study_id", "long"),
            ("PerformedProcedureStepDescription", "string"),
            ("ViewPosition", "string"),
            ("Rows", "int"),
            ("Columns", "int"),
            ("StudyDate", "int"),
            ("StudyTime", "double"),
            ("ProcedureCodeSequence_CodeMeaning", "string"),
            ("ViewCodeSequence_CodeMeaning", "string"),
            ("PatientOrientationCodeSequence_CodeMeaning", "string"),
        ),
    ),
    "chexpert": RawTable(
        "chexpert",
        "mimic-cxr-2.0.0-chexpert",
        (("subject_id", "long"), ("study_id", "long")) + tuple((c, "double") for c in CHEXPERT_LABELS),
    ),
    "split": RawTable(
        "split",
        "mimic-cxr-2.0.0-split",
        (("dicom_id", "string"), ("study_id", "long"), ("subject_id", "long"), ("split", "string")),
    ),
}


def cxr_image_relpath(subject_id: int, study_id: int, dicom_id: str) -> str:
    """``files/p10/p10000032/s50414267/<dicom>.jpg`` as in MIMIC-CXR-JPG 2.0.0."""
    sid = str(subject_id)
    return f"files/p{sid[:2]}/p{sid}/s{study_id}/{dicom_id}.jpg"
