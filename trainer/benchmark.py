"""The benchmark protocol: learning-rate search and seeds for every task x model, and the SSL
rows (pretraining, epoch selection, linear probe and fine-tune), resumable, in one command;
every trial recorded in a table the reports are made from.

    python -m trainer.benchmark shards=DIR out=results [preset=quick|paper] [tasks=ihm,pheno]
        [models=uni_ehr,uni_cxr,early] [parallel=2] [ssl=false] [keep_last=true] [-- TRAINER WORDS...]

For each task x model (``conf/benchmark/<preset>.yaml``): ``trials`` runs at learning rates drawn
from the preset's range (seed 0; the draw is seeded by task, model and trial, so a rerun asks for
the same rates), the best by the task's validation selection metric, then the other seeds at
that rate. A model that starts from unimodal runs (early, MedFuse, late, ...) is given the
checkpoints of the selected unimodal runs of the same seed (``model.<slot>_ckpt=...``), so it
waits for them; the preset's ``model_args`` say which task an encoder comes from (the paper
pretrains the CXR encoder on radiology).

SSL rows (the preset's ``ssl`` section, ``SSLPreset``; ``ssl: null``, ``methods: []`` or
``ssl=false`` leave them out): per method, pretraining trials (``mode=pretrain ssl=<method>`` on
the pretraining task, seed 0, rates from ``pretrain_lr``) in ``runs/<pretrain task>/<method>/
search<i>/0``; the one with the lowest val loss is kept and, once every trial of the method
finished, its best epoch picked by ``trainer.selection`` (its probes under
``<kept run>/selection/``). Then per task, feature set (both / ehr / cxr: Tables 4 / 5 / 6) and
mode, probe and fine-tune searches (``mode=probe|finetune encoder=<kept run> features=...``) in
``runs/<task>/ssl_probe|ssl_finetune/<method>-<features>-search<i>/0``, which wait for that
selection as fusion waits for unimodal runs, and the other seeds at the selected rate in
``.../<method>-<features>-final/<seed>``. The pretraining run is not repeated per seed. As in
a supervised search, a failed pretraining trial leaves the best of the finished ones (the
failure stays in ``trials.parquet`` and the exit status); only when every pretraining trial of a
method failed are its selection, probes and fine-tunes blocked, nothing else.

Resumable: a trial whose run folder holds ``metrics.json`` of the same run identity
(``trainer.identity``) is not run again; an unfinished one resumes from its last checkpoint (the
trainer's own resume); an epoch selection whose ``selection.json`` is newer than its
pretraining run's ``metrics.json`` (and of the same task) is not run again. Trials run side by
side, ``parallel`` at a time (CPU processes; with GPUs, one per GPU), the runs that most others
wait for first (``Protocol.start_order``). ``OUT/trials.parquet`` has
one row per trial (task, model or SSL method, mode, features, run folder, learning rate, seed,
validation and test metrics, status); ``OUT/logs/`` each trial's output; the reports
(``scripts/report.py OUT``) are made from the table. A finished trial keeps ``best.pt`` (what
fusion models, probes, rescoring and Grad-CAM read) and loses ``last.pt``, its resume state
(with Adam three times ``best.pt``'s size; nothing here reads it once ``metrics.json`` is
there); ``keep_last=true`` keeps it.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import subprocess
import sys
import time
from collections import Counter
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from conf import typed
from conf.tasks import TASK_NAMES, task_spec

log = logging.getLogger("medmod.benchmark")
REPO = Path(__file__).resolve().parents[1]
TRIALS_FILE = "trials.parquet"
SEARCH, SEEDS, SELECT = "search", "seed", "select"
SUPERVISED, PRETRAIN, PROBE, FINETUNE = "supervised", "pretrain", "probe", "finetune"
FEATURE_SETS = ("both", "ehr", "cxr")


@dataclass
class LrRange:
    low: float = 1e-6
    high: float = 1e-2
    scale: Literal["uniform", "log"] = "uniform"


@dataclass
class SSLPreset:
    """The self-supervised rows (paper Tables 4-6): per method, ``pretrain_trials`` pretraining
    runs at rates drawn from ``pretrain_lr`` on ``pretrain_task``'s paired training samples, the
    one with the lowest val loss kept and its best epoch picked by ``trainer.selection`` (a quick
    val linear probe on ``select_task``); then on every task, per feature set, ``probe_trials``
    linear probes and ``finetune_trials`` fine-tunes (0: none) of that encoder at rates drawn
    from ``eval_lr``, the best by the task's val metric, and the other seeds at its rate."""

    methods: list[str] = field(default_factory=lambda: ["convirt", "vicreg", "align"])
    pretrain_task: str = "pheno"
    pretrain_trials: int = 10
    pretrain_lr: LrRange = field(default_factory=lambda: LrRange(1e-2, 1e-1, "uniform"))
    pretrain_train: list[str] = field(default_factory=list)  # more trainer words for pretraining
    select_task: str = ""  # the task of the epoch-selection probe; empty: pretrain_task
    select_train: list[str] = field(default_factory=list)  # more words for those probes
    probe_trials: int = 5
    finetune_trials: int = 5
    eval_lr: LrRange = field(default_factory=lambda: LrRange(1e-4, 1e-1, "uniform"))
    features: list[str] = field(default_factory=lambda: list(FEATURE_SETS))  # both: Table 4, ehr: 5, cxr: 6
    eval_train: list[str] = field(default_factory=list)  # more words for probe and fine-tune runs
    # Encoder words of every SSL run (e.g. model.ehr_hidden=...): the selection's probes, the
    # probes and fine-tunes build the encoders the pretraining run trained, so they need them too.
    encoder: list[str] = field(default_factory=list)

    def eval_modes(self) -> list[tuple[str, int]]:
        return [(m, n) for m, n in ((PROBE, self.probe_trials), (FINETUNE, self.finetune_trials)) if n > 0]


@dataclass
class Preset:
    """A protocol (``conf/benchmark/<name>.yaml``)."""

    lr: LrRange = field(default_factory=LrRange)
    trials: dict[str, int] = field(default_factory=dict)  # by task; a task not named: 1
    seeds: int = 5
    models: list[str] = field(default_factory=list)
    train: list[str] = field(default_factory=list)  # trainer words for every run
    task_train: dict[str, list[str]] = field(default_factory=dict)  # more words by task
    model_args: dict[str, list[str]] = field(default_factory=dict)  # more words by model
    ssl: SSLPreset | None = None  # null (or methods: []): supervised rows only


@dataclass
class BenchmarkConfig:
    shards: str = ""
    out: str = "results"
    preset: str = "quick"
    tasks: list[str] = field(default_factory=list)  # empty: every task
    models: list[str] = field(default_factory=list)  # empty: the preset's
    parallel: int = 1
    gpus: int = 0  # > 0: one trial per GPU (CUDA_VISIBLE_DEVICES), parallel = gpus
    ssl: bool = True  # false: leave out the preset's SSL rows
    keep_last: bool = False  # keep a finished trial's checkpoints/last.pt (to extend it by hand)


@dataclass(frozen=True)
class Trial:
    """One trainer run of the protocol. SSL rows: ``model`` is the method (convirt, ...) and
    ``mode`` says which run of it: PRETRAIN (on the preset's pretraining task), SELECT (the
    epoch selection of the kept pretraining run: ``trainer.selection``), PROBE or FINETUNE (of
    that encoder on ``task`` with ``features``)."""

    task: str
    model: str
    stage: str  # SEARCH (seed 0, a drawn rate), SEEDS (another seed at the selected rate), SELECT
    index: int  # search: the trial number; seeds: the seed
    lr: float | None  # None: the model trains nothing (late fusion, the epoch selection)
    mode: str = SUPERVISED  # SUPERVISED | PRETRAIN | SELECT | PROBE | FINETUNE
    features: str = ""  # PROBE / FINETUNE: both | ehr | cxr

    @property
    def seed(self) -> int:
        return self.index if self.stage == SEEDS else 0

    @property
    def run_name(self) -> str:
        """The trainer's ``train.run_name``: probes and fine-tunes (the trainer's ssl_probe /
        ssl_finetune folders) name their method and features, ``convirt-both-search0``."""
        base = self.base_name
        return f"{self.model}-{self.features}-{base}" if self.mode in (PROBE, FINETUNE) else base

    @property
    def base_name(self) -> str:
        return f"search{self.index}" if self.stage == SEARCH else "final"

    @property
    def group(self) -> tuple[str, ...]:
        """The trials one selection picks among: a task x model; SSL: also mode and features."""
        if self.mode == SUPERVISED:
            return (self.task, self.model)
        return (self.task, self.model, self.mode, self.features)

    @property
    def key(self) -> str:
        if self.mode == SELECT:
            return f"{self.task}/{self.model}/select"
        if self.mode in (PROBE, FINETUNE):
            return f"{self.task}/{self.model}-{self.mode}-{self.features}/{self.base_name}/{self.seed}"
        return f"{self.task}/{self.model}/{self.run_name}/{self.seed}"


def load_preset(name: str) -> Preset:
    preset = typed.build(Preset, typed.load_yaml(typed.preset_path("benchmark", name)), "preset")
    unknown = sorted(set(preset.trials) - set(TASK_NAMES))
    if unknown:
        raise typed.ConfigError(f"preset {name!r}: trials for unknown task(s) {unknown}")
    return preset


def draw_lr(lr: LrRange, task: str, model: str, trial: int) -> float:
    """The learning rate of one search trial: seeded by what the trial is, so a rerun (or a
    resumed benchmark) draws the same rate, and adding a model changes no other model's rates."""
    rng = random.Random(f"{task}/{model}/{trial}")
    if lr.scale == "log":
        return float(math.exp(rng.uniform(math.log(lr.low), math.log(lr.high))))
    return float(rng.uniform(lr.low, lr.high))


def is_trainable(model: str) -> bool:
    from trainer.models import model_class

    return bool(getattr(model_class(model), "trainable", True))


def search_trials(preset: Preset, task: str, model: str) -> list[Trial]:
    if not is_trainable(model):
        return [Trial(task, model, SEARCH, 0, None)]
    count = preset.trials.get(task, 1)
    return [Trial(task, model, SEARCH, i, draw_lr(preset.lr, task, model, i)) for i in range(count)]


def pretrain_trials(ssl: SSLPreset, method: str) -> list[Trial]:
    task = ssl.pretrain_task
    return [
        Trial(task, method, SEARCH, i, draw_lr(ssl.pretrain_lr, task, f"{method}-{PRETRAIN}", i), PRETRAIN)
        for i in range(ssl.pretrain_trials)
    ]


def eval_trials(ssl: SSLPreset, task: str, method: str, mode: str, features: str) -> list[Trial]:
    """The probe or fine-tune search of one pretraining method on ``task`` with ``features``."""
    count = dict(ssl.eval_modes()).get(mode, 0)
    name = f"{method}-{mode}-{features}"
    return [
        Trial(task, method, SEARCH, i, draw_lr(ssl.eval_lr, task, name, i), mode, features)
        for i in range(count)
    ]


def select_trial(ssl: SSLPreset, method: str) -> Trial:
    return Trial(ssl.pretrain_task, method, SELECT, 0, None, SELECT)


def upstream(preset: Preset, task: str, model: str) -> dict[str, tuple[str, str, str]]:
    """The unimodal runs ``model`` starts from on ``task``: slot -> (config field, task, model)."""
    from trainer.models import model_class, model_config

    args = typed.parse_overrides(preset.model_args.get(model, []))
    cfg = model_config(model, args.get("model", {}))
    return {
        slot: (need.path_field, need.source_task(cfg, task), need.model)
        for slot, need in model_class(model).checkpoint_inputs(cfg).items()
    }


@dataclass
class Outcome:
    trial: Trial
    status: str  # done | reused | failed | blocked
    run_dir: str = ""
    seconds: float = 0.0
    metrics: dict[str, Any] = field(default_factory=dict)
    error: str = ""

    @property
    def finished(self) -> bool:
        """Trained here or reused from an earlier run: its run folder holds its results."""
        return self.status in ("done", "reused")

    def val(self, name: str) -> float:
        return metric_value(self.metrics, "val", name)

    @property
    def selection_value(self) -> float:
        """What the selection among this trial's group ranks, higher is better: the task's val
        selection metric; a pretraining run: minus its val loss."""
        if self.trial.mode == PRETRAIN:
            return -self.val("loss")
        return self.val(task_spec(self.trial.task).selection_metric)


def metric_value(metrics: dict[str, Any], split: str, name: str) -> float:
    try:
        return float(metrics[split]["metrics"][name]["value"])
    except (KeyError, TypeError, ValueError):
        return float("nan")


class Protocol:
    """The trial graph: what may run now, what was selected, and the trainer words of a trial."""

    def __init__(self, cfg: BenchmarkConfig, preset: Preset, extra: list[str]):
        self.cfg, self.preset, self.extra = cfg, preset, extra
        self.tasks = cfg.tasks or list(TASK_NAMES)
        self.models = cfg.models or preset.models
        ssl = preset.ssl if cfg.ssl else None
        self.ssl: SSLPreset | None = ssl if ssl is not None and ssl.methods else None
        self.outcomes: dict[Trial, Outcome] = {}
        self.pending: list[Trial] = []
        self.selected: dict[tuple[str, ...], Trial] = {}
        self.check_plan()
        self.dependents = Counter(
            (src_task, src_model)
            for task in self.tasks
            for model in self.models
            for _field, src_task, src_model in upstream(preset, task, model).values()
        )
        if self.ssl is not None:  # the long pole first: pretraining, then what waits for it
            for method in self.ssl.methods:
                self.pending += pretrain_trials(self.ssl, method)
        for task in self.tasks:
            for model in self.models:
                self.pending += search_trials(preset, task, model)
        if self.ssl is not None:
            for task in self.tasks:
                for method in self.ssl.methods:
                    for mode, _count in self.ssl.eval_modes():
                        for features in self.ssl.features:
                            self.pending += eval_trials(self.ssl, task, method, mode, features)

    @property
    def runs_dir(self) -> Path:
        return Path(self.cfg.out) / "runs"

    def check_plan(self) -> None:
        """Every unimodal run a model needs is part of the plan: a clear error now, not a
        fusion trial waiting forever. The SSL section names pretraining models and tasks."""
        for task in self.tasks:
            task_spec(task)
            for model in self.models:
                for _field, src_task, src_model in upstream(self.preset, task, model).values():
                    if src_model not in self.models or src_task not in self.tasks:
                        raise typed.ConfigError(
                            f"{model} on {task} starts from {src_model} on {src_task}, which this "
                            f"benchmark does not train: add {src_model} to models and {src_task} to tasks"
                        )
        if self.ssl is None:
            return
        from trainer.models import list_models, model_class

        ssl = self.ssl
        wrong = [m for m in ssl.methods if m not in list_models() or model_class(m).kind != PRETRAIN]
        if wrong:
            methods = [m for m in list_models() if model_class(m).kind == PRETRAIN]
            raise typed.ConfigError(f"ssl.methods: {wrong} are not pretraining models ({methods})")
        for name in ("pretrain_task", "select_task"):
            if getattr(ssl, name) and getattr(ssl, name) not in TASK_NAMES:
                raise typed.ConfigError(f"ssl.{name}: unknown task {getattr(ssl, name)!r}")
        bad = [f for f in ssl.features if f not in FEATURE_SETS]
        if bad or not ssl.features:
            raise typed.ConfigError(f"ssl.features: {ssl.features} must be some of {list(FEATURE_SETS)}")
        if ssl.pretrain_trials < 1:
            raise typed.ConfigError("ssl.pretrain_trials must be >= 1 (or ssl.methods: [] for no SSL rows)")

    def start_order(self) -> list[Trial]:
        """Pending trials in the order to start them: SSL pretraining and its epoch selection,
        then the unimodal runs that most fusion runs wait for (in the shipped presets
        radiology's uni_cxr feeds early and MedFuse on every task), then the rest as queued, so
        that what waits on a run can start sooner. Ties keep queue order: trial lengths are not
        known in advance."""

        def rank(trial: Trial) -> tuple[int, int]:
            if trial.mode in (PRETRAIN, SELECT):
                return (0, 0)
            waiting = self.dependents[(trial.task, trial.model)] if trial.mode == SUPERVISED else 0
            return (1, -waiting) if waiting else (2, 0)

        return sorted(self.pending, key=rank)

    def search_size(self, trial: Trial) -> int:
        if trial.mode == PRETRAIN:
            return len(pretrain_trials(self.ssl, trial.model))
        if trial.mode in (PROBE, FINETUNE):
            return len(eval_trials(self.ssl, trial.task, trial.model, trial.mode, trial.features))
        return len(search_trials(self.preset, trial.task, trial.model))

    def source_trial(self, task: str, model: str, seed: int) -> Trial | None:
        """The selected run of ``model`` on ``task`` for ``seed`` (None: not selected yet):
        seed 0 is the best search trial itself, another seed its rate rerun with that seed."""
        best = self.selected.get((task, model))
        if best is None:
            return None
        return best if seed == 0 else Trial(task, model, SEEDS, seed, best.lr)

    def encoder_trial(self, method: str) -> Trial | None:
        """The kept pretraining run of ``method`` once its epoch selection finished, else None."""
        done = self.outcomes.get(select_trial(self.ssl, method))
        if done is None or not done.finished:
            return None
        return self.selected.get((self.ssl.pretrain_task, method, PRETRAIN, ""))

    def inputs(self, trial: Trial) -> dict[str, Trial] | None:
        """By config field, the finished upstream trial of each input; None while one is not.
        The epoch selection starts from the kept pretraining run; a probe or fine-tune from
        that run once its selection finished (``encoder=``)."""
        if trial.mode == PRETRAIN:
            return {}
        if trial.mode == SELECT:
            kept = self.selected.get((trial.task, trial.model, PRETRAIN, ""))
            return None if kept is None else {"encoder": kept}
        if trial.mode in (PROBE, FINETUNE):
            kept = self.encoder_trial(trial.model)
            return None if kept is None else {"encoder": kept}
        found: dict[str, Trial] = {}
        for path_field, task, model in upstream(self.preset, trial.task, trial.model).values():
            source = self.source_trial(task, model, trial.seed)
            if source is None:
                return None
            done = self.outcomes.get(source)
            if done is None or not done.finished:
                return None
            found[path_field] = source
        return found

    def blocked_by(self, trial: Trial) -> str | None:
        """The failed upstream trial that means ``trial`` can never run: for a fusion model, a
        failed run of a unimodal model it starts from; for an epoch selection, its method's
        pretraining trials all failed; for a probe or fine-tune, its failed (or blocked)
        selection. Nothing else waits on them: other methods and models go on."""
        if trial.mode == PRETRAIN:
            return None
        if trial.mode == SELECT:  # as in a supervised search: the best finished trial is kept
            ended = [o for t, o in self.outcomes.items() if t.mode == PRETRAIN and t.model == trial.model]
            if len(ended) < len(pretrain_trials(self.ssl, trial.model)):
                return None
            if any(o.finished for o in ended):
                return None
            return f"every {trial.model} pretraining trial failed ({ended[0].trial.key}: {ended[0].error})"
        if trial.mode in (PROBE, FINETUNE):
            selection = select_trial(self.ssl, trial.model)
            done = self.outcomes.get(selection)
            if done is not None and done.status in ("failed", "blocked"):
                return done.error if done.status == "blocked" else f"{trial.model} epoch selection failed"
            return self.blocked_by(selection)
        for _field, task, model in upstream(self.preset, trial.task, trial.model).values():
            if any(
                o.status in ("failed", "blocked")
                for t, o in self.outcomes.items()
                if (t.task, t.model, t.mode) == (task, model, SUPERVISED)
            ):
                return f"{model} on {task} failed"
        return None

    def run_dir(self, trial: Trial) -> Path:
        """The trainer's run folder (``RunConfig.run_dir``); an epoch selection's is that of
        the pretraining run it selects in (``selection.json``, ``checkpoints/selected.pt``)."""
        if trial.mode == SELECT:
            kept = self.selected.get((trial.task, trial.model, PRETRAIN, ""))
            return self.run_dir(kept) if kept is not None else Path()
        folder = {PROBE: "ssl_probe", FINETUNE: "ssl_finetune"}.get(trial.mode, trial.model)
        return self.runs_dir / trial.task / folder / trial.run_name / str(trial.seed)

    def common_words(self, task: str) -> list[str]:
        return [
            f"data.shards={self.cfg.shards}",
            "train.progress=never",
            *self.preset.train,
            *self.preset.task_train.get(task, []),
        ]

    def words(self, trial: Trial, inputs: dict[str, Trial]) -> list[str]:
        if trial.mode != SUPERVISED:
            return self.ssl_words(trial, inputs)
        from trainer.runtime import run_checkpoint

        words = [f"task={trial.task}", f"model={trial.model}", f"data.shards={self.cfg.shards}"]
        words += [
            f"train.runs_dir={self.runs_dir}",
            f"train.run_name={trial.run_name}",
            f"train.seed={trial.seed}",
        ]
        if trial.lr is not None:
            words.append(f"optim.lr={trial.lr!r}")
        words += ["train.progress=never", *self.preset.train, *self.preset.task_train.get(trial.task, [])]
        words += self.preset.model_args.get(trial.model, [])
        for path_field, source in inputs.items():
            ckpt = run_checkpoint(self.runs_dir, source.task, source.model, source.seed, source.run_name)
            words.append(f"model.{path_field}={ckpt}")
        return words + self.extra

    def ssl_words(self, trial: Trial, inputs: dict[str, Trial]) -> list[str]:
        """Pretraining: ``mode=pretrain ssl=<method>``; the epoch selection: ``trainer.selection``
        words (its probes in ``<pretraining run>/selection/``, so no two runs share a folder);
        probe / fine-tune: ``mode=probe|finetune encoder=<pretraining run> features=...``."""
        ssl = self.ssl
        assert ssl is not None
        if trial.mode == SELECT:
            encoder = self.run_dir(inputs["encoder"])
            task = ssl.select_task or ssl.pretrain_task
            words = [f"encoder={encoder}", f"task={task}", f"train.runs_dir={encoder / 'selection'}"]
            return words + self.common_words(task) + ssl.encoder + ssl.select_train + self.extra
        run = [
            f"train.runs_dir={self.runs_dir}",
            f"train.run_name={trial.run_name}",
            f"train.seed={trial.seed}",
        ]
        run.append(f"optim.lr={trial.lr!r}")
        if trial.mode == PRETRAIN:
            words = [f"mode={PRETRAIN}", f"ssl={trial.model}", f"task={trial.task}", *run]
            return words + self.common_words(trial.task) + ssl.encoder + ssl.pretrain_train + self.extra
        encoder = self.run_dir(inputs["encoder"])
        words = [
            f"mode={trial.mode}",
            f"task={trial.task}",
            f"encoder={encoder}",
            f"features={trial.features}",
        ]
        return words + run + self.common_words(trial.task) + ssl.encoder + ssl.eval_train + self.extra

    def record(self, outcome: Outcome) -> None:
        """A finished trial; when the last search trial of a group is in, select and queue
        what follows: the seeds (supervised, probe, fine-tune), the epoch selection of the kept
        pretraining run."""
        self.outcomes[outcome.trial] = outcome
        t = outcome.trial
        if t in self.pending:
            self.pending.remove(t)
        if t.stage != SEARCH:
            return
        group = [o for tr, o in self.outcomes.items() if tr.stage == SEARCH and tr.group == t.group]
        if len(group) < self.search_size(t):
            return
        best = select(group)
        if best is not None:
            self.selected[t.group] = best
        if t.mode == PRETRAIN:  # queued even when none finished: blocked_by then says why
            self.pending.append(select_trial(self.ssl, t.model))
            return
        if best is None:
            return
        self.pending += [
            Trial(t.task, t.model, SEEDS, s, best.lr, t.mode, t.features) for s in range(1, self.preset.seeds)
        ]


def select(outcomes: list[Outcome], metric: str | None = None) -> Trial | None:
    """The search trial with the best validation ``metric`` (all of this task's metrics in the
    selection are higher-is-better: AUROC, kappa; None: each trial's own selection value, for
    a pretraining run its lowest val loss); None when none finished."""
    finished = [o for o in outcomes if o.finished]
    if not finished:
        return None

    def value(o: Outcome) -> float:
        v = o.selection_value if metric is None else o.val(metric)
        return -math.inf if math.isnan(v) else v

    # an undefined value ranks below every defined one; ties go to the lower trial number
    return max(finished, key=lambda o: (value(o), -o.trial.index)).trial


def finished_metrics(run_dir: Path, words: list[str]) -> dict[str, Any] | None:
    """``metrics.json`` of the run in ``run_dir`` when that run finished and is the run these
    words ask for (the same identity); None: it has to be run (or resumed)."""
    metrics_file = run_dir / "metrics.json"
    if not metrics_file.is_file():
        return None
    from shards.manifest import read_manifest
    from trainer import identity as run_id
    from trainer.config import load_run_config

    stored = run_id.stored_identity(run_dir)
    if stored is None:
        return None
    cfg = load_run_config(words)
    keys = run_id.training_identity(cfg, read_manifest(cfg.data.shards))
    if run_id.differences(stored.keys, keys):
        return None
    return json.loads(metrics_file.read_text())


def die_with_parent() -> None:
    """In the trial's process before it starts: end it when the benchmark dies (Linux), so a
    killed benchmark leaves no trainer writing into a run folder that its rerun trains again."""
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def trial_program(trial: Trial) -> list[str]:
    """The trainer; for a model with nothing to train (late fusion), its scoring into the run
    folder (``trainer.rescore task=... model=...``); for an epoch selection ``trainer.selection``."""
    if trial.mode == SELECT:
        return [sys.executable, "-m", "trainer.selection"]
    if trial.lr is None:  # scored like a trained run: val for the selection, then test
        return [sys.executable, "-m", "trainer.rescore", "split=val,test"]
    return [sys.executable, "trainer/train.py"]


def finished_selection(run_dir: Path, words: list[str]) -> dict[str, Any] | None:
    """The epoch selection in pretraining run ``run_dir`` when it is done for this run as it is
    now (newer than its ``metrics.json``, on the task these words ask for); as trial metrics:
    the best epoch's val selection metric."""
    path, metrics = run_dir / "selection.json", run_dir / "metrics.json"
    if not (path.is_file() and metrics.is_file() and (run_dir / "checkpoints" / "selected.pt").is_file()):
        return None
    if path.stat().st_mtime_ns < metrics.stat().st_mtime_ns:
        return None  # the pretraining run was trained again after it
    found = json.loads(path.read_text())
    if f"task={found.get('task')}" not in words:
        return None
    best = found["scores"][found["best"]]
    return {"val": {"metrics": {found["metric"]: {"value": best}}}, "selection": found}


def run_trial(trial: Trial, words: list[str], run_dir: Path, logs: Path, env: dict[str, str]) -> Outcome:
    """One trainer process, or the reuse of its finished run; any failure is the trial's
    outcome (the other trials go on)."""
    try:
        return _run_trial(trial, words, run_dir, logs, env)
    except Exception as err:  # noqa: BLE001 - reported in the trial table, not a crash of the rest
        log.exception("trial %s", trial.key)
        return Outcome(trial, "failed", str(run_dir), error=f"{type(err).__name__}: {err}"[:300])


def _run_trial(trial: Trial, words: list[str], run_dir: Path, logs: Path, env: dict[str, str]) -> Outcome:
    """One trainer process; its output goes to ``logs/<trial>.log``."""
    start = time.perf_counter()
    done = finished_selection if trial.mode == SELECT else finished_metrics
    reused = done(run_dir, words)
    if reused is not None:
        return Outcome(trial, "reused", str(run_dir), 0.0, reused)
    logs.mkdir(parents=True, exist_ok=True)
    log_file = logs / (trial.key.replace("/", "_") + ".log")
    with log_file.open("w") as out:
        out.write("$ " + " ".join([*trial_program(trial), *words]) + "\n")
        out.flush()
        code = subprocess.call(
            [*trial_program(trial), *words],
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            preexec_fn=die_with_parent,
        )
    seconds = time.perf_counter() - start
    metrics_file = run_dir / "metrics.json"
    if trial.mode == SELECT:
        metrics = finished_selection(run_dir, words) if code == 0 else None
    else:
        metrics = json.loads(metrics_file.read_text()) if code == 0 and metrics_file.is_file() else None
    if metrics is None:
        tail = [line for line in log_file.read_text().splitlines() if line.strip()][-1:]
        return Outcome(
            trial, "failed", str(run_dir), seconds, error=f"exit {code}: {' '.join(tail)[:300]} ({log_file})"
        )
    return Outcome(trial, "done", str(run_dir), seconds, metrics)


def trial_row(o: Outcome, selected: set[Trial]) -> dict[str, Any]:
    t = o.trial
    row: dict[str, Any] = {
        "task": t.task,
        "model": t.model,  # SSL rows: the pretraining method
        "mode": t.mode,  # supervised | pretrain | select | probe | finetune
        "features": t.features,  # probe / finetune: both | ehr | cxr
        "stage": t.stage,
        "trial": t.index if t.stage == SEARCH else None,
        "seed": t.seed,
        "lr": t.lr,
        "status": o.status,
        "selected": t in selected,
        "run_dir": o.run_dir,
        "seconds": round(o.seconds, 2),
        "error": o.error,
    }
    for split in ("val", "test"):
        for name, m in ((o.metrics.get(split) or {}).get("metrics") or {}).items():
            row[f"{split}_{name}"] = m.get("value")
            if split == "test":
                row[f"test_{name}_ci_low"] = m.get("ci_low")
                row[f"test_{name}_ci_high"] = m.get("ci_high")
    return row


def write_trials(protocol: Protocol, out: Path) -> Path:
    """The trial table, replaced atomically (a reader never sees half of it)."""
    import pandas as pd

    chosen = set(protocol.selected.values())
    chosen |= {t for t in protocol.outcomes if t.stage == SEEDS}
    rows = [trial_row(o, chosen) for o in protocol.outcomes.values()]
    order = ["task", "mode", "model", "features", "stage", "seed", "trial"]
    frame = pd.DataFrame(rows).sort_values(order, na_position="last")
    out.mkdir(parents=True, exist_ok=True)
    path = out / TRIALS_FILE
    tmp = path.with_name(path.name + ".tmp")
    frame.to_parquet(tmp, index=False)
    tmp.replace(path)
    return path


def device_env(slot: int, gpus: int) -> dict[str, str]:
    env = dict(os.environ)
    if gpus > 0:
        env["CUDA_VISIBLE_DEVICES"] = str(slot % gpus)
    else:
        # N trainers side by side on N cores: one intra-op thread each, not N each.
        env.setdefault("OMP_NUM_THREADS", "1")
    return env


def execute(protocol: Protocol) -> int:
    """Run the trial graph to the end; returns the number of failed or blocked trials."""
    out = Path(protocol.cfg.out)
    gpus = protocol.cfg.gpus
    width = gpus if gpus > 0 else max(1, protocol.cfg.parallel)
    running: dict[Future, tuple[Trial, int]] = {}
    free = list(range(width))
    with ThreadPoolExecutor(max_workers=width) as pool:
        while protocol.pending or running:
            for trial in protocol.start_order():
                if not free:
                    break
                reason = protocol.blocked_by(trial)
                if reason:
                    protocol.pending.remove(trial)
                    protocol.record(Outcome(trial, "blocked", error=reason))
                    continue
                inputs = protocol.inputs(trial)
                if inputs is None:
                    continue
                protocol.pending.remove(trial)
                slot = free.pop()
                words = protocol.words(trial, inputs)
                fut = pool.submit(
                    run_trial, trial, words, protocol.run_dir(trial), out / "logs", device_env(slot, gpus)
                )
                running[fut] = (trial, slot)
            if not running:
                if protocol.pending:  # nothing can start and nothing runs: a dependency never finished
                    for trial in protocol.pending:
                        protocol.record(Outcome(trial, "blocked", error="an input run was never selected"))
                    protocol.pending = []
                break
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for fut in done:
                trial, slot = running.pop(fut)
                free.append(slot)
                outcome = fut.result()
                # a reused run may still hold its resume state: the benchmark that trained it
                # can have been killed between the trainer's exit and this line
                if outcome.finished and not protocol.cfg.keep_last:
                    drop_resume_state(Path(outcome.run_dir))
                protocol.record(outcome)
                log_outcome(outcome, len(protocol.outcomes), len(protocol.pending) + len(running))
            write_trials(protocol, out)
    write_trials(protocol, out)
    return sum(o.status in ("failed", "blocked") for o in protocol.outcomes.values())


def drop_resume_state(run_dir: Path) -> int:
    """Remove a finished run's ``last.pt`` when its ``best.pt`` is there; returns the bytes
    freed. A rerun reuses the run by its ``metrics.json`` and ``run.json``, and everything
    downstream reads ``best.pt`` (or an SSL run's kept epochs), so only the resume state goes."""
    from trainer.components import Checkpointer

    folder = run_dir / Checkpointer.FOLDER
    last = folder / Checkpointer.LAST
    if not (last.is_file() and (folder / Checkpointer.BEST).is_file()):
        return 0
    size = last.stat().st_size
    last.unlink()
    return size


def log_outcome(o: Outcome, finished: int, left: int) -> None:
    t = o.trial
    lr = "-" if t.lr is None else f"{t.lr:.2e}"
    sel = "loss" if t.mode == PRETRAIN else task_spec(t.task).selection_metric
    detail = o.error if o.error else f"val {sel} {o.val(sel):.4f}, {o.seconds:.0f} s"
    log.info("[%d done, %d to go] %s lr=%s %s: %s", finished, left, t.key, lr, o.status, detail)


USAGE = __doc__


def load_config(words: list[str]) -> tuple[BenchmarkConfig, list[str]]:
    """``key=value`` words of the benchmark, then ``--`` and words for every trainer run."""
    if "--" in words:
        cut = words.index("--")
        words, extra = words[:cut], words[cut + 1 :]
    else:
        extra = []
    raw = typed.parse_overrides(words)
    for key in ("tasks", "models"):
        if isinstance(raw.get(key), str):
            raw[key] = [w for w in raw[key].split(",") if w]
    cfg = typed.build(BenchmarkConfig, raw)
    if not cfg.shards:
        raise typed.ConfigError("shards=DIR (or s3://...) is required: the shard set every trial trains on")
    if cfg.parallel < 1:
        raise typed.ConfigError(f"parallel must be >= 1, got {cfg.parallel}")
    unknown = [t for t in cfg.tasks if t not in TASK_NAMES]
    if unknown:
        raise typed.ConfigError(f"unknown task(s) {unknown}; tasks: {list(TASK_NAMES)}")
    return cfg, extra


def main(argv: list[str] | None = None) -> int:
    from trainer.distributed import setup_logging
    from trainer.models import list_models

    words = sys.argv[1:] if argv is None else argv
    loaded = typed.from_command_line(words, load_config, USAGE)
    if isinstance(loaded, int):
        return loaded
    cfg, extra = loaded
    setup_logging(0)
    try:
        preset = load_preset(cfg.preset)
        unknown = [m for m in (cfg.models or preset.models) if m not in list_models()]
        if unknown:
            raise typed.ConfigError(f"unknown model(s) {unknown}; models: {list_models()}")
        protocol = Protocol(cfg, preset, extra)
    except typed.ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    log.info(
        "benchmark %s: %d task(s) x %d model(s), SSL methods %s, %d search trial(s), %d seed(s) -> %s",
        cfg.preset,
        len(protocol.tasks),
        len(protocol.models),
        protocol.ssl.methods if protocol.ssl else "none",
        len(protocol.pending),
        preset.seeds,
        cfg.out,
    )
    failed = execute(protocol)
    log.info("trials: %s", Path(cfg.out) / TRIALS_FILE)
    if failed:
        log.error("%d trial(s) failed or were blocked: see the status and error columns", failed)
        return 1
    from trainer.report import write_reports

    for path in write_reports(Path(cfg.out), shards=cfg.shards):
        log.info("report: %s", path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
