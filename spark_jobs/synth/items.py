"""Dictionary rows of the synthetic MIMIC-IV: the items the generator charts.

Benchmark items are the MIMIC-IV (MetaVision) itemids of SPEC §3, with their real labels and
units, so that the ETL's item map applies unchanged to real and synthetic data. The "other"
items stand for the bulk of chartevents/labevents the benchmark never uses: the ETL must filter
them out and count them.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ChartItem:
    itemid: int
    label: str
    abbreviation: str
    category: str
    unitname: str | None
    param_type: str


@dataclass(frozen=True)
class LabItem:
    itemid: int
    label: str
    fluid: str
    category: str
    unit: str | None


CHART_ITEMS = {
    # variable -> items (first is the usual one)
    "hr": [ChartItem(220045, "Heart Rate", "HR", "Routine Vital Signs", "bpm", "Numeric")],
    "sbp_art": [
        ChartItem(
            220050, "Arterial Blood Pressure systolic", "ABPs", "Routine Vital Signs", "mmHg", "Numeric"
        )
    ],
    "dbp_art": [
        ChartItem(
            220051, "Arterial Blood Pressure diastolic", "ABPd", "Routine Vital Signs", "mmHg", "Numeric"
        )
    ],
    "mbp_art": [
        ChartItem(220052, "Arterial Blood Pressure mean", "ABPm", "Routine Vital Signs", "mmHg", "Numeric")
    ],
    "sbp_nbp": [
        ChartItem(
            220179, "Non Invasive Blood Pressure systolic", "NBPs", "Routine Vital Signs", "mmHg", "Numeric"
        )
    ],
    "dbp_nbp": [
        ChartItem(
            220180, "Non Invasive Blood Pressure diastolic", "NBPd", "Routine Vital Signs", "mmHg", "Numeric"
        )
    ],
    "mbp_nbp": [
        ChartItem(
            220181, "Non Invasive Blood Pressure mean", "NBPm", "Routine Vital Signs", "mmHg", "Numeric"
        )
    ],
    "rr": [ChartItem(220210, "Respiratory Rate", "RR", "Respiratory", "insp/min", "Numeric")],
    "rr_total": [
        ChartItem(224690, "Respiratory Rate (Total)", "RR (Total)", "Respiratory", "insp/min", "Numeric")
    ],
    "spo2": [ChartItem(220277, "O2 saturation pulseoxymetry", "SpO2", "Respiratory", "%", "Numeric")],
    "sao2": [ChartItem(220227, "Arterial O2 Saturation", "Art O2 Sat", "Labs", "%", "Numeric")],
    "fio2": [ChartItem(223835, "Inspired O2 Fraction", "FiO2", "Respiratory", None, "Numeric")],
    "temp_f": [
        ChartItem(223761, "Temperature Fahrenheit", "Temperature F", "Routine Vital Signs", "°F", "Numeric")
    ],
    "temp_c": [
        ChartItem(223762, "Temperature Celsius", "Temperature C", "Routine Vital Signs", "°C", "Numeric")
    ],
    "weight_daily": [ChartItem(224639, "Daily Weight", "Daily Weight", "General", "kg", "Numeric")],
    "weight_adm": [
        ChartItem(226512, "Admission Weight (Kg)", "Admission Weight (Kg)", "General", "kg", "Numeric")
    ],
    "weight_lbs": [
        ChartItem(226531, "Admission Weight (lbs.)", "Admission Weight (lbs.)", "General", "lbs", "Numeric")
    ],
    "height_in": [ChartItem(226707, "Height", "Height", "General", "Inch", "Numeric")],
    "height_cm": [ChartItem(226730, "Height (cm)", "Height (cm)", "General", "cm", "Numeric")],
    "gcs_eye": [ChartItem(220739, "GCS - Eye Opening", "GCS - Eye Opening", "Neurological", None, "Text")],
    "gcs_verbal": [
        ChartItem(223900, "GCS - Verbal Response", "GCS - Verbal Response", "Neurological", None, "Text")
    ],
    "gcs_motor": [
        ChartItem(223901, "GCS - Motor Response", "GCS - Motor Response", "Neurological", None, "Text")
    ],
    "glucose_serum": [ChartItem(220621, "Glucose (serum)", "Glucose (serum)", "Labs", "mg/dL", "Numeric")],
    "glucose_finger": [
        ChartItem(
            225664,
            "Glucose finger stick (range 70-100)",
            "Glucose FS",
            "Routine Vital Signs",
            "mg/dL",
            "Numeric",
        )
    ],
    "glucose_wb": [
        ChartItem(226537, "Glucose (whole blood)", "Glucose (whole blood)", "Labs", "mg/dL", "Numeric")
    ],
    "ph_art": [ChartItem(223830, "PH (Arterial)", "PH (Arterial)", "Labs", "units", "Numeric")],
    "ph_ven": [ChartItem(220274, "PH (Venous)", "PH (Venous)", "Labs", "units", "Numeric")],
    "crr_r": [ChartItem(223951, "Capillary Refill R", "Cap Refill R", "Skin - Assessment", None, "Text")],
    "crr_l": [ChartItem(224308, "Capillary Refill L", "Cap Refill L", "Skin - Assessment", None, "Text")],
}

# Charted hourly-ish in every stay, never used by the benchmark.
OTHER_CHART_ITEMS = [
    ChartItem(220046, "Heart rate Alarm - High", "HR Alarm - High", "Alarms", "bpm", "Numeric"),
    ChartItem(220047, "Heart Rate Alarm - Low", "HR Alarm - Low", "Alarms", "bpm", "Numeric"),
    ChartItem(220048, "Heart Rhythm", "Heart Rhythm", "Routine Vital Signs", None, "Text"),
    ChartItem(
        223769, "O2 Saturation Pulseoxymetry Alarm - High", "SpO2 Alarm - High", "Alarms", "%", "Numeric"
    ),
    ChartItem(
        223770, "O2 Saturation Pulseoxymetry Alarm - Low", "SpO2 Alarm - Low", "Alarms", "%", "Numeric"
    ),
    ChartItem(224641, "Alarms On", "Alarms On", "Alarms", None, "Checkbox"),
    ChartItem(228096, "Richmond-RAS Scale", "Richmond-RAS Scale", "Pain/Sedation", None, "Text"),
    ChartItem(224650, "Ectopy Type 1", "Ectopy Type 1", "Routine Vital Signs", None, "Text"),
]

LAB_ITEMS = {
    "spo2_bg": LabItem(50817, "Oxygen Saturation", "Blood", "Blood Gas", "%"),
    "glucose_bg": LabItem(50809, "Glucose", "Blood", "Blood Gas", "mg/dL"),
    "glucose_chem": LabItem(50931, "Glucose", "Blood", "Chemistry", "mg/dL"),
    "ph_bg": LabItem(50820, "pH", "Blood", "Blood Gas", "units"),
    "ph_other": LabItem(50831, "pH", "Other Body Fluid", "Blood Gas", "units"),
    "glucose_urine": LabItem(51478, "Glucose", "Urine", "Hematology", "mg/dL"),
    "ph_urine": LabItem(51491, "pH", "Urine", "Hematology", "units"),
}

OTHER_LAB_ITEMS = [
    LabItem(50912, "Creatinine", "Blood", "Chemistry", "mg/dL"),
    LabItem(50971, "Potassium", "Blood", "Chemistry", "mEq/L"),
    LabItem(50983, "Sodium", "Blood", "Chemistry", "mEq/L"),
    LabItem(51222, "Hemoglobin", "Blood", "Hematology", "g/dL"),
    LabItem(51301, "White Blood Cells", "Blood", "Hematology", "K/uL"),
    LabItem(50813, "Lactate", "Blood", "Blood Gas", "mmol/L"),
]

# MetaVision GCS strings with their scores (the numeric score is what MIMIC-IV puts in valuenum).
GCS_EYE = {4: "Spontaneously", 3: "To Speech", 2: "To Pain", 1: "None"}
GCS_VERBAL = {
    5: "Oriented",
    4: "Confused",
    3: "Inappropriate Words",
    2: "Incomprehensible sounds",
    1: "No Response",
}
GCS_VERBAL_INTUBATED = "No Response-ETT"
GCS_MOTOR = {
    6: "Obeys Commands",
    5: "Localizes Pain",
    4: "Flex-withdraws",
    3: "Abnormal Flexion",
    2: "Abnormal extension",
    1: "No response",
}
CRR_NORMAL = "Normal <3 Seconds"
CRR_ABNORMAL = "Abnormal >3 Seconds"


def all_chart_items() -> list[ChartItem]:
    return [item for items in CHART_ITEMS.values() for item in items] + OTHER_CHART_ITEMS


def all_lab_items() -> list[LabItem]:
    return list(LAB_ITEMS.values()) + OTHER_LAB_ITEMS
