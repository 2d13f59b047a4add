"""The benchmark's tasks: one registry that every layer reads (SPEC §7).

Pure Python (no Spark, no torch), so that the ETL (``spark_jobs``), the shard format (``shards``)
and the trainer share one list of tasks and one set of facts about each. Adding a task means: its
sample builder in ``spark_jobs.tasks``, one :class:`TaskSpec` here, ``conf/task/<name>.yaml`` and
tests; every other layer follows this table instead of its own if/elif on task names.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

TaskKind = Literal["binary", "multilabel", "multiclass"]
# Where a sample's EHR window ends; ``image_time`` windows cut a stay between two bins, so they
# are discretized per sample (gold ``windows_<task>``) instead of read from the whole-stay matrix.
Window = Literal["first_hours", "whole_stay", "sample_hour", "image_time"]

CHEXPERT_LABELS = (
    "Atelectasis",
    "Cardiomegaly",
    "Consolidation",
    "Edema",
    "Enlarged Cardiomediastinum",
    "Fracture",
    "Lung Lesion",
    "Lung Opacity",
    "No Finding",
    "Pleural Effusion",
    "Pleural Other",
    "Pneumonia",
    "Pneumothorax",
    "Support Devices",
)

# The 25 HCUP CCS groups in label order (spark_jobs/resources/phenotypes.yaml holds their codes;
# a test keeps the two in step).
PHENOTYPE_LABELS = (
    "Septicemia (except in labor)",
    "Diabetes mellitus without complication",
    "Diabetes mellitus with complications",
    "Disorders of lipid metabolism",
    "Fluid and electrolyte disorders",
    "Essential hypertension",
    "Hypertension with complications and secondary hypertension",
    "Acute myocardial infarction",
    "Coronary atherosclerosis and other heart disease",
    "Conduction disorders",
    "Cardiac dysrhythmias",
    "Congestive heart failure; nonhypertensive",
    "Acute cerebrovascular disease",
    "Pneumonia (except that caused by tuberculosis or sexually transmitted disease)",
    "Chronic obstructive pulmonary disease and bronchiectasis",
    "Pleurisy; pneumothorax; pulmonary collapse",
    "Respiratory failure; insufficiency; arrest (adult)",
    "Other lower respiratory disease",
    "Other upper respiratory disease",
    "Other liver diseases",
    "Gastrointestinal hemorrhage",
    "Acute and unspecified renal failure",
    "Chronic kidney disease",
    "Complications of surgical procedures or medical care",
    "Shock",
)

LOS_BUCKETS = 10  # remaining-stay buckets (-inf,1), [1,2) ... [8,14), [14,inf) days


@dataclass(frozen=True)
class TaskSpec:
    """What every layer needs to know about a task.

    ``labels`` name the stored label columns (``y`` in the gold table and the shards); a
    multiclass task stores one class index and predicts ``num_classes`` logits.
    """

    name: str
    kind: TaskKind
    labels: tuple[str, ...]
    hourly: bool  # one sample per stay hour; shards hold stay segments
    window: Window
    selection_metric: str  # the val metric that picks the best checkpoint
    builder: str  # key of the sample builder in spark_jobs.tasks.BUILDERS
    normalizer: Literal["stay_prefix", "latest_window"]  # key in spark_jobs.normalizer.ROWS
    num_classes: int = 0  # multiclass only

    def __post_init__(self) -> None:
        if (self.kind == "multiclass") != (self.num_classes > 0):
            raise ValueError(f"task {self.name}: num_classes is for multiclass tasks only")
        if self.kind == "multiclass" and len(self.labels) != 1:
            raise ValueError(f"task {self.name}: a multiclass task stores one label column")

    @property
    def is_multiclass(self) -> bool:
        return self.kind == "multiclass"

    @property
    def label_width(self) -> int:
        """Stored label columns per sample (LOS: 1, the bucket)."""
        return len(self.labels)

    @property
    def num_outputs(self) -> int:
        """Logits the model predicts per sample."""
        return self.num_classes if self.is_multiclass else self.label_width

    @property
    def windowed(self) -> bool:
        """EHR windows discretized per sample (gold ``windows_<task>``), not cut from the stay matrix."""
        return self.window == "image_time"

    def mode(self, hourly_mode: str) -> str:
        """The forward mode a run uses: hourly tasks follow ``train.hourly_mode``, others ``sample``."""
        return hourly_mode if self.hourly else "sample"


TASKS: dict[str, TaskSpec] = {
    spec.name: spec
    for spec in (
        TaskSpec(
            "ihm",
            "binary",
            ("in_hospital_mortality",),
            hourly=False,
            window="first_hours",
            selection_metric="auroc",
            builder="ihm",
            normalizer="stay_prefix",
        ),
        TaskSpec(
            "pheno",
            "multilabel",
            PHENOTYPE_LABELS,
            hourly=False,
            window="whole_stay",
            selection_metric="auroc_macro",
            builder="pheno",
            normalizer="stay_prefix",
        ),
        TaskSpec(
            "decomp",
            "binary",
            ("decompensation_24h",),
            hourly=True,
            window="sample_hour",
            selection_metric="auroc",
            builder="decomp",
            normalizer="stay_prefix",
        ),
        TaskSpec(
            "los",
            "multiclass",
            ("los_bucket",),
            hourly=True,
            window="sample_hour",
            selection_metric="kappa",
            builder="los",
            normalizer="stay_prefix",
            num_classes=LOS_BUCKETS,
        ),
        TaskSpec(
            "radiology",
            "multilabel",
            CHEXPERT_LABELS,
            hourly=False,
            window="image_time",
            selection_metric="auroc_macro",
            builder="radiology",
            normalizer="latest_window",
        ),
    )
}
TASK_NAMES: tuple[str, ...] = tuple(TASKS)
HOURLY_TASKS: tuple[str, ...] = tuple(n for n, s in TASKS.items() if s.hourly)


def task_spec(name: str) -> TaskSpec:
    try:
        return TASKS[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r}; known: {', '.join(TASKS)}") from None


def unknown_tasks(names: list[str] | tuple[str, ...]) -> list[str]:
    return [n for n in names if n not in TASKS]
