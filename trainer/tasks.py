"""The trainer's view of the tasks: the shared registry (``conf.tasks``) plus the LOS bucket means.

The task facts (output width, loss kind, selection metric, hourly or not) live in ``conf.tasks``;
this module adds what only the trainer's metrics need.
"""

from __future__ import annotations

from conf.tasks import TASKS, TaskSpec, task_spec

__all__ = ["LOS_BUCKET_MEAN_HOURS", "TASKS", "TaskSpec", "task_spec"]

# Mean remaining stay (hours) of each LOS bucket, for the mean absolute deviation (SPEC §9).
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
