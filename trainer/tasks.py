"""The five benchmark tasks as the trainer and the models see them (SPEC §7).

One table instead of if/elif chains on task names: output width, loss kind, the metric that
selects the best checkpoint, and whether the task is hourly (segments in the shards).
"""

from __future__ import annotations

from dataclasses import dataclass

LOS_BUCKET_MEAN_HOURS = (
    11.450379,
    35.070846,
    59.206531,
    83.382723,
    107.487817,
    131.579534,
    155.643957,
    179.660558,
    254.306624,
    585.325890,
)


@dataclass(frozen=True)
class TaskSpec:
    name: str
    num_outputs: int
    kind: str  # "binary" | "multilabel" | "multiclass"
    hourly: bool
    selection_metric: str  # the val metric that picks the best checkpoint

    @property
    def is_multiclass(self) -> bool:
        return self.kind == "multiclass"


TASKS: dict[str, TaskSpec] = {
    spec.name: spec
    for spec in (
        TaskSpec("ihm", 1, "binary", hourly=False, selection_metric="auroc"),
        TaskSpec("pheno", 25, "multilabel", hourly=False, selection_metric="auroc_macro"),
        TaskSpec("decomp", 1, "binary", hourly=True, selection_metric="auroc"),
        TaskSpec("los", 10, "multiclass", hourly=True, selection_metric="kappa"),
        TaskSpec("radiology", 14, "multilabel", hourly=False, selection_metric="auroc_macro"),
    )
}


def task_spec(name: str) -> TaskSpec:
    try:
        return TASKS[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r}; known: {', '.join(TASKS)}") from None
