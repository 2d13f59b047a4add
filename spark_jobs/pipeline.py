"""The ETL: raw MIMIC-IV + MIMIC-CXR -> bronze / silver / gold Delta tables (spark_jobs/TABLES.md).

    python -m spark_jobs.pipeline raw=PATH cxr=PATH out=PATH [etl=default|parity] [key=value ...]
    python -m spark_jobs.pipeline ... stages=[cohort,events]      # some stages only
    scripts/submit.sh --master spark://HOST:7077 spark_jobs.pipeline raw=... out=...

Every stage reads only what the previous one wrote, replaces its own tables atomically (a re-run
gives the same contents, a failed run leaves the previous version readable), stamps each commit
with the run id, config hash and code version, and records rows in / kept / rejected by reason in
``<out>/_quality``. Rejected rows themselves go to ``<out>/<layer>/quarantine``.
"""

from __future__ import annotations

import logging
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import partial, reduce
from typing import TYPE_CHECKING

from conf import typed
from conf.tasks import TASK_NAMES, task_spec, unknown_tasks
from spark_jobs import delta_io, ingest, resources
from spark_jobs.cohort import CohortConfig, build_stays
from spark_jobs.cxr import CxrConfig, build_cxr
from spark_jobs.events import EventsConfig, build_events
from spark_jobs.normalizer import NormalizerConfig, build_normalizer
from spark_jobs.parallel import in_parallel
from spark_jobs.quality import Checked
from spark_jobs.session import SparkConfig, build_spark, sql_conf_unless_set
from spark_jobs.tasks import TasksConfig, build_samples, first_event_hours, sample_windows
from spark_jobs.timeseries import check_events, discretize, discretize_windows

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

log = logging.getLogger("medmod.etl")
STAGES = ("ingest", "cohort", "events", "cxr", "timeseries", "tasks", "normalizer")
CACHE_COMPRESSED = "spark.sql.inMemoryColumnarStorage.compressed"


@dataclass
class IngestTuning:
    """How the ingest reads (never what it produces): see ``ingest.IngestConfig``."""

    concurrency: int = 0  # tables read / written side by side (0: one per core)
    spread: int = 0  # partitions a single-task input is spread over (0: auto, 1: off)
    reader: str = "auto"  # raw events csv parsed by arrow (local files) | spark | auto

    def __post_init__(self) -> None:
        bad = {k: v for k, v in (("concurrency", self.concurrency), ("spread", self.spread)) if v < 0}
        if bad:
            raise typed.ConfigError(f"ingest.{', ingest.'.join(bad)} must be >= 0, got {bad}")
        if self.reader not in ingest.READERS:
            raise typed.ConfigError(
                f"ingest.reader must be one of {', '.join(ingest.READERS)}, got {self.reader!r}"
            )


@dataclass
class PipelineConfig:
    raw: str = "data/synth"
    cxr: str = ""  # empty: the same root as raw (the synthetic layout keeps both together)
    out: str = "data/etl"
    layout: str = "auto"
    stages: list[str] = field(default_factory=lambda: list(STAGES))
    tasks: list[str] = field(default_factory=lambda: list(TASK_NAMES))
    spark: SparkConfig = field(default_factory=SparkConfig)
    ingest: IngestTuning = field(default_factory=IngestTuning)
    cohort: CohortConfig = field(default_factory=CohortConfig)
    events: EventsConfig = field(default_factory=EventsConfig)
    cxr_stage: CxrConfig = field(default_factory=CxrConfig)
    samples: TasksConfig = field(default_factory=TasksConfig)
    normalizer: NormalizerConfig = field(default_factory=NormalizerConfig)

    def __post_init__(self) -> None:
        unknown = [s for s in self.stages if s not in STAGES]
        if unknown:
            raise typed.ConfigError(f"unknown stage(s) {unknown}; stages are {list(STAGES)}")
        bad_tasks = unknown_tasks(self.tasks)
        if bad_tasks:
            raise typed.ConfigError(f"unknown task(s) {bad_tasks}; tasks are {list(TASK_NAMES)}")
        self.cxr = self.cxr or self.raw


@dataclass
class StageReport:
    stage: str
    table: str
    rows_in: int
    kept: int
    rejected: dict[str, int] = field(default_factory=dict)

    @property
    def rejected_total(self) -> int:
        return sum(self.rejected.values())


class Pipeline:
    """Runs the stages of one ETL run and keeps their reports."""

    def __init__(self, cfg: PipelineConfig, spark):
        self.cfg, self.spark = cfg, spark
        self.run_id = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:6]
        self.reports: list[StageReport] = []
        # Wall seconds per stage of the last run() (and "_quality"), in the order they ran.
        self.stage_seconds: dict[str, float] = {}

    # -- paths and I/O -----------------------------------------------------------------------------
    def path(self, layer: str, table: str) -> str:
        return f"{self.cfg.out.rstrip('/')}/{layer}/{table}"

    def read(self, layer: str, table: str):
        path = self.path(layer, table)
        if not delta_io.exists(self.spark, path):
            raise FileNotFoundError(
                f"{path} is not a Delta table: run the stage that writes {layer}/{table} first "
                f"(stages: {list(STAGES)})"
            )
        return delta_io.read_table(self.spark, path)

    def metadata(self, stage: str, stage_cfg) -> dict:
        return {
            "stage": stage,
            "run_id": self.run_id,
            "code_version": delta_io.code_version(),
            "config_hash": delta_io.config_hash(typed.to_dict(self.cfg)),
            "config": typed.to_dict(stage_cfg),
        }

    def write(self, stage: str, layer: str, table: str, df, stage_cfg, partition_by=None) -> int:
        return delta_io.write_table(
            df, self.path(layer, table), self.metadata(stage, stage_cfg), partition_by
        )

    def quarantine(self, stage: str, layer: str, rejected, stage_cfg) -> dict[str, dict[str, int]]:
        """Replace the slice of ``<layer>/quarantine`` written by ``stage`` (and its sub-stages,
        e.g. ``tasks.ihm``); return {stage: {"source:reason": n}}."""
        path = self.path(layer, "quarantine")
        mine = f"(stage = '{stage}' OR stage LIKE '{stage}.%')"
        existing = delta_io.exists(self.spark, path)
        delta_io.write_table(
            rejected, path, self.metadata(stage, stage_cfg), replace_where=mine if existing else None
        )
        rows = (
            delta_io.read_table(self.spark, path)
            .where(mine)
            .groupBy("stage", "source", "reason")
            .count()
            .collect()
        )
        out: dict[str, dict[str, int]] = {}
        for r in rows:
            out.setdefault(r["stage"], {})[f"{r['source']}:{r['reason']}"] = r["count"]
        return out

    def report(self, rep: StageReport) -> None:
        self.reports.append(rep)
        log.info(
            "%s/%s: in %d, kept %d, rejected %d %s",
            rep.stage,
            rep.table,
            rep.rows_in,
            rep.kept,
            rep.rejected_total,
            rep.rejected or "",
        )

    def checked_stage(
        self, stage: str, layer: str, table: str, checked: Checked, rows_in: int, stage_cfg, partition_by=None
    ):
        try:
            kept = self.write(stage, layer, table, checked.kept, stage_cfg, partition_by)
            rejected = self.quarantine(stage, layer, checked.rejected, stage_cfg).get(stage, {})
        finally:
            checked.release()
        self.report(StageReport(stage, table, rows_in, kept, rejected))
        return kept

    def count(self, layer: str, table: str) -> int:
        return self.read(layer, table).count()

    # -- stages --------------------------------------------------------------------------------
    def ingest(self) -> None:
        cfg = ingest.IngestConfig(
            raw=self.cfg.raw,
            cxr=self.cfg.cxr,
            layout=self.cfg.layout,
            itemids=sorted(
                set(resources.all_itemids("chartevents")) | set(resources.all_itemids("labevents"))
            ),
            concurrency=self.cfg.ingest.concurrency,
            spread=self.cfg.ingest.spread,
            reader=self.cfg.ingest.reader,
        )
        counts = ingest.run(self.spark, cfg, self.cfg.out, self.metadata("ingest", cfg))
        for name, c in counts.items():
            rejected = {"rejected": c["rejected"]} if c["rejected"] else {}
            if c.get("filtered_out"):
                rejected["filtered_out:unused_item"] = c["filtered_out"]
            self.report(StageReport("ingest", name, c["rows_in"], c["kept"], rejected))

    def cohort(self) -> None:
        b = lambda t: self.read("bronze", t)  # noqa: E731
        checked = build_stays(
            b("icustays"), b("admissions"), b("patients"), b("diagnoses_icd"), self.cfg.cohort
        )
        self.checked_stage(
            "cohort", "silver", "stays", checked, self.count("bronze", "icustays"), self.cfg.cohort
        )

    def events(self) -> None:
        chart, lab = self.read("bronze", "chartevents"), self.read("bronze", "labevents")
        rows_in = self.count("bronze", "chartevents") + self.count("bronze", "labevents")
        # The ranked events both halves are written from stay in Spark's cache between the two
        # writes: cached as they are, not compressed column by column, which costs more than
        # the memory it saves (BENCHMARKS.md).
        with sql_conf_unless_set(self.spark, CACHE_COMPRESSED, "false"):
            checked = build_events(chart, lab, self.read("silver", "stays"), self.cfg.events, persist=True)
            self.checked_stage("events", "silver", "events", checked, rows_in, self.cfg.events)

    def cxr(self) -> None:
        checked = build_cxr(
            self.read("bronze", "metadata"), self.read("bronze", "chexpert"), self.cfg.cxr_stage
        )
        self.checked_stage(
            "cxr", "silver", "cxr", checked, self.count("bronze", "metadata"), self.cfg.samples
        )

    def timeseries(self) -> None:
        events, stays = self.read("silver", "events"), self.read("silver", "stays")
        ts_cfg = self.cfg.samples.timeseries()
        # Events outside every window are counted (not stored again: silver/events keeps them).
        unused = check_events(events, stays, ts_cfg).rejected.groupBy("reason").count().collect()
        rows = self.write("timeseries", "silver", "timeseries", discretize(events, stays, ts_cfg), ts_cfg)
        self.report(
            StageReport(
                "timeseries",
                "timeseries",
                self.count("silver", "events"),
                rows,
                {f"events_not_used:{r['reason']}": r["count"] for r in unused},
            )
        )

    def tasks(self) -> None:
        stays, events, cxr = (
            self.read("silver", "stays"),
            self.read("silver", "events"),
            self.read("silver", "cxr"),
        )
        first = first_event_hours(events, stays, self.cfg.samples)
        first_path = self.path("silver", "first_event")
        self.write("tasks", "silver", "first_event", first, self.cfg.samples)
        first = delta_io.read_table(self.spark, first_path)
        n_stays = stays.count()

        def one_task(task: str) -> tuple[DataFrame, list[StageReport]]:
            checked = build_samples(task, stays, first, cxr, self.cfg.samples)
            kept = self.write("tasks", "gold", f"samples_{task}", checked.kept, self.cfg.samples, ["split"])
            reports = [StageReport("tasks", f"samples_{task}", n_stays, kept)]
            if task_spec(task).windowed:
                reports.append(self.windows(task, events))
            return checked.rejected, reports

        # The tasks' tables are independent: written side by side (see spark_jobs.parallel).
        done = in_parallel(
            self.spark, [partial(one_task, t) for t in self.cfg.tasks], len(self.cfg.tasks), "tasks"
        )
        for _, reports in done:
            for rep in reports:
                self.report(rep)
        if done:
            rejected_all = reduce(lambda a, b: a.unionByName(b), [rejected for rejected, _ in done])
            by_stage = self.quarantine("tasks", "gold", rejected_all, self.cfg.samples)
            for rep in self.reports:
                if rep.stage == "tasks":
                    rep.rejected = by_stage.get("tasks." + rep.table.removeprefix("samples_"), {})

    def windows(self, task: str, events) -> StageReport:
        """Gold ``windows_<task>``: the EHR matrix of every sample whose window ends between two
        bins (radiology: at the image time), discretized once here for the normalizer and the
        shards, which read it instead of discretizing again."""
        samples = self.read("gold", f"samples_{task}")
        rows = discretize_windows(events, sample_windows(samples), self.cfg.samples.timeseries())
        n = self.write("tasks", "gold", f"windows_{task}", rows, self.cfg.samples)
        return StageReport("tasks", f"windows_{task}", n, n)

    def normalizer(self) -> None:
        timeseries = self.read("silver", "timeseries")

        def one_task(task: str) -> StageReport:
            samples = self.read("gold", f"samples_{task}")
            rows = self.read("gold", f"windows_{task}") if task_spec(task).windowed else timeseries
            stats = build_normalizer(task, samples, rows, self.cfg.normalizer)
            n = self.write("normalizer", "gold", f"normalizer_{task}", stats, self.cfg.normalizer)
            return StageReport("normalizer", f"normalizer_{task}", n, n)

        tasks = self.cfg.tasks
        for rep in in_parallel(self.spark, [partial(one_task, t) for t in tasks], len(tasks), "normalizer"):
            self.report(rep)

    # -- driver --------------------------------------------------------------------------------
    def run(self) -> list[StageReport]:
        """Run the configured stages in order, then write ``_quality``; ``stage_seconds`` holds
        the wall time of each (the quality table as ``_quality``), for benchmarks and logs."""
        steps: dict[str, Callable[[], None]] = {s: getattr(self, s) for s in STAGES}
        self.stage_seconds = {}
        for stage in STAGES:
            if stage in self.cfg.stages:
                log.info("stage %s ...", stage)
                self._timed(stage, steps[stage])
                log.info("stage %s done in %.1fs", stage, self.stage_seconds[stage])
        self._timed("_quality", self.write_quality)
        return self.reports

    def _timed(self, name: str, step: Callable[[], None]) -> None:
        start = time.perf_counter()
        try:
            step()
        finally:
            self.stage_seconds[name] = time.perf_counter() - start

    def write_quality(self) -> None:
        rows = []
        for rep in self.reports:
            rows += [
                (self.run_id, rep.stage, rep.table, "rows_in", "", rep.rows_in),
                (self.run_id, rep.stage, rep.table, "kept", "", rep.kept),
            ]
            rows += [
                (self.run_id, rep.stage, rep.table, "rejected", reason, n)
                for reason, n in rep.rejected.items()
            ]
        if not rows:
            return
        df = self.spark.createDataFrame(
            rows, "run_id string, stage string, table string, metric string, reason string, count long"
        )
        path = f"{self.cfg.out.rstrip('/')}/_quality"
        stages = ", ".join(f"'{s}'" for s in {r.stage for r in self.reports})
        replace = f"stage IN ({stages})" if delta_io.exists(self.spark, path) else None
        delta_io.write_table(df, path, {"run_id": self.run_id, "stage": "quality"}, replace_where=replace)


def summary(reports: list[StageReport]) -> str:
    """The short table printed at the end of a run."""
    lines = [f"{'stage':<11} {'table':<22} {'rows in':>12} {'kept':>12} {'rejected':>10}  top reasons"]
    for rep in reports:
        top = sorted(rep.rejected.items(), key=lambda kv: -kv[1])[:3]
        reasons = ", ".join(f"{k} {v:,}" for k, v in top)
        lines.append(
            f"{rep.stage:<11} {rep.table:<22} {rep.rows_in:>12,} {rep.kept:>12,} {rep.rejected_total:>10,}  {reasons}"
        )
    return "\n".join(lines)


def load_config(words: list[str]) -> PipelineConfig:
    """``etl=<preset>`` picks conf/etl/<preset>.yaml (default: default); other words override it."""
    preset = "default"
    rest = []
    for word in words:
        if word.startswith("etl="):
            preset = word.split("=", 1)[1]
        else:
            rest.append(word)
    return typed.load(PipelineConfig, typed.load_yaml(typed.preset_path("etl", preset)), overrides=rest)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S", stream=sys.stderr
    )
    cfg = typed.from_command_line(sys.argv[1:] if argv is None else argv, load_config, __doc__)
    if isinstance(cfg, int):
        return cfg
    spark = build_spark(cfg.spark)
    start = time.time()
    try:
        reports = Pipeline(cfg, spark).run()
    except (ingest.IngestError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    finally:
        elapsed = time.time() - start
    print(summary(reports))
    print(f"ETL finished in {elapsed:.0f}s; tables under {cfg.out}")
    spark.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
