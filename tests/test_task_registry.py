"""The task registry (conf/tasks.py) is the one list of tasks, and every layer agrees with it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from conf import typed
from conf.tasks import HOURLY_TASKS, TASK_NAMES, TASKS, TaskSpec, task_spec

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("conf", "spark_jobs", "shards", "trainer", "scripts")


def test_phenotype_labels_follow_the_ccs_resource():
    from spark_jobs import resources

    assert list(task_spec("pheno").labels) == resources.phenotype_names()


def test_radiology_labels_are_the_chexpert_columns_the_ingest_reads():
    from spark_jobs.mimic_schema import CXR_TABLES

    columns = [name for name, _ in CXR_TABLES["chexpert"].columns][2:]
    assert tuple(columns) == task_spec("radiology").labels


def test_los_buckets_agree_with_the_sample_builder_and_the_metrics():
    from spark_jobs.tasks import LOS_BUCKET_EDGES_DAYS
    from trainer.tasks import LOS_BUCKET_MEAN_HOURS

    los = task_spec("los")
    assert los.num_outputs == len(LOS_BUCKET_EDGES_DAYS) + 1 == len(LOS_BUCKET_MEAN_HOURS)
    assert los.label_width == 1


@pytest.mark.parametrize("name", TASK_NAMES)
def test_every_task_has_its_builder_normalizer_and_config(name):
    from spark_jobs.normalizer import ROWS
    from spark_jobs.tasks import BUILDERS
    from trainer.config import load_run_config

    spec = task_spec(name)
    assert spec.builder in BUILDERS and spec.normalizer in ROWS
    assert typed.load_yaml(typed.preset_path("task", name))["task"] == name
    assert load_run_config([f"task={name}"]).spec is spec
    assert spec.mode("sequence") == ("sequence" if spec.hourly else "sample")


def test_unknown_task_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown task 'mortality'; known: ihm, pheno"):
        task_spec("mortality")


def test_inconsistent_specs_are_refused():
    with pytest.raises(ValueError, match="num_classes"):
        TaskSpec("x", "binary", ("a",), False, "whole_stay", "auroc", "ihm", "stay_prefix", num_classes=3)
    with pytest.raises(ValueError, match="one label column"):
        TaskSpec(
            "x", "multiclass", ("a", "b"), False, "whole_stay", "kappa", "ihm", "stay_prefix", num_classes=3
        )


def test_hourly_tasks_are_derived_from_the_specs():
    assert HOURLY_TASKS == tuple(n for n in TASK_NAMES if TASKS[n].hourly) == ("decomp", "los")


# A literal naming this many tasks is a copy of the task list (maybe one short); fewer is a
# choice of some tasks (a test's or a benchmark's), which is fine.
COPY_OF_THE_LIST = len(TASK_NAMES) - 1


def _task_name_literals(path: Path) -> list[int]:
    """Line numbers of tuple/list/set literals that copy the task list."""
    tree = ast.parse(path.read_text(), str(path))
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Tuple | ast.List | ast.Set):
            names = [e.value for e in node.elts if isinstance(e, ast.Constant) and isinstance(e.value, str)]
            if len({n for n in names if n in TASKS}) >= COPY_OF_THE_LIST:
                lines.append(node.lineno)
    return lines


def test_the_task_names_are_spelled_as_a_list_in_one_module_only():
    found = {
        str(path.relative_to(REPO)): lines
        for package in PACKAGES
        for path in sorted((REPO / package).rglob("*.py"))
        if (lines := _task_name_literals(path))
    }
    # conf/tasks.py builds its names from the specs, so no module spells them out.
    assert found == {}, found


def test_the_literal_finder_can_fail(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text('TASKS = ("ihm", "pheno", "decomp", "los")\nSOME = ("ihm", "pheno", "x")\n')
    assert _task_name_literals(bad) == [1]
