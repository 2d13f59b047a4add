"""The benchmark's tables, from its trial table (``trainer.benchmark``): Markdown, CSV and LaTeX
in the paper's layout, mean +/- std over the seed runs of each task x model.

    python scripts/report.py RESULTS        # RESULTS/trials.parquet -> RESULTS/tables/

- ``table3``: supervised results (the paper's Table 3): per task its headline metrics
  (AUROC / AUPRC; LOS: kappa / MAD in hours);
- ``table10_ece``: expected calibration error (Table 10);
- ``table11_gain``: relative gain of the best multimodal model over the best unimodal one, per
  task and metric (Table 11; for MAD, lower is better, so the gain is the relative reduction;
  none against a unimodal value of 0);
- ``table8_cost``: trainable parameters (each model as its IHM run built it; the paper's count
  and the CXR encoder beside it), forward time per batch of 16 (median CPU seconds on this machine, one thread,
  IHM-shaped random inputs: 48 hours, 224 px) and IHM AUROC (Table 8);
- ``selection``: each task x model's search: trials, the selected learning rate and its
  validation metric, the run folders behind every cell;
- ``table4_ssl_multimodal``, ``table5_ssl_ehr``, ``table6_ssl_cxr`` (when the benchmark ran SSL
  rows): linear probe and fine-tune of each pretraining method on both modalities' / the EHR /
  the CXR features (Tables 4 / 5 / 6; Table 5 without radiology, Table 6 without LOS, as in the
  paper), under the best supervised model of that setting per task (multimodal / uni_ehr /
  uni_cxr models, by the task's first headline metric) and its name;
- ``ssl_selection``: each SSL search (pretraining per method, probe / fine-tune per task and
  feature set): trials, the selected rate, its validation value, the runs behind every cell.
A cell is ``mean ± std (n)`` over the seed runs that finished; std is the sample std (n - 1).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd

from conf.tasks import TASK_NAMES, task_spec

TRIALS_FILE = "trials.parquet"
LOWER_IS_BETTER = {"mad_hours", "ece"}
HEADLINE = {
    "binary": ("auroc", "auprc"),
    "multilabel": ("auroc_macro", "auprc_macro"),
    "multiclass": ("kappa", "mad_hours"),
}
LABELS = {
    "auroc": "AUROC",
    "auprc": "AUPRC",
    "auroc_macro": "AUROC",
    "auprc_macro": "AUPRC",
    "kappa": "Kappa",
    "mad_hours": "MAD (h)",
    "ece": "ECE",
}


def headline(task: str) -> tuple[str, ...]:
    """The task's reported metrics, by its kind (trainer.metrics.HEADLINE's names)."""
    return HEADLINE[task_spec(task).kind]


def read_trials(results: Path) -> pd.DataFrame:
    path = Path(results) / TRIALS_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: run `python -m trainer.benchmark out={results} ...` first"
        )
    return pd.read_parquet(path)


def supervised_rows(trials: pd.DataFrame) -> pd.DataFrame:
    """The supervised trials (a table written before the SSL rows has no ``mode`` column)."""
    return trials[trials["mode"] == "supervised"] if "mode" in trials else trials


def ssl_rows(trials: pd.DataFrame) -> pd.DataFrame:
    return trials[trials["mode"] != "supervised"] if "mode" in trials else trials.iloc[:0]


def seed_runs(trials: pd.DataFrame) -> pd.DataFrame:
    """The runs a reported cell averages: the selected trial and the other seeds, finished."""
    ok = trials["status"].isin(["done", "reused"]) & trials["selected"].astype(bool)
    return trials[ok]


def summary(values: pd.Series) -> tuple[float, float, int]:
    v = pd.to_numeric(values, errors="coerce").dropna()
    n = len(v)
    mean = float(v.mean()) if n else math.nan
    std = float(v.std(ddof=1)) if n > 1 else math.nan
    return mean, std, n


def test_summary(runs: pd.DataFrame, task: str, model: str, metric: str) -> tuple[float, float, int]:
    """Mean, std and count of ``test_<metric>`` over the runs of ``model`` on ``task``."""
    values = runs[(runs.task == task) & (runs.model == model)].get(f"test_{metric}", pd.Series(dtype=float))
    return summary(values)


def cell(mean: float, std: float, n: int) -> str:
    if n == 0:
        return "—"
    if math.isnan(std):
        return f"{mean:.3f} ({n})"
    return f"{mean:.3f} ± {std:.3f} ({n})"


def ordered(values: list[str], order: list[str]) -> list[str]:
    return [v for v in order if v in values] + sorted(v for v in values if v not in order)


def metric_table(runs: pd.DataFrame, metrics_of: Any, models: list[str], tasks: list[str]) -> pd.DataFrame:
    """Rows: models; columns: (task, metric); cells: mean ± std (n) of ``test_<metric>``."""
    columns = [(t, m) for t in tasks for m in metrics_of(t)]
    rows = []
    for model in models:
        rows.append([cell(*test_summary(runs, t, model, m)) for t, m in columns])
    index = pd.Index(models, name="model")
    return pd.DataFrame(rows, index=index, columns=[f"{t} {LABELS.get(m, m)}" for t, m in columns])


def is_unimodal(model: str) -> bool:
    from trainer.models import model_class
    from trainer.models.unimodal import UniCXR, UniEHR

    return issubclass(model_class(model), (UniEHR, UniCXR))


def gain_table(runs: pd.DataFrame, models: list[str], tasks: list[str]) -> pd.DataFrame:
    """Per task and headline metric: the best unimodal and best multimodal mean, relative gain."""
    rows = []
    for task in tasks:
        for metric in headline(task):
            means = {m: test_summary(runs, task, m, metric)[0] for m in models}
            means = {m: v for m, v in means.items() if not math.isnan(v)}
            uni = {m: v for m, v in means.items() if is_unimodal(m)}
            multi = {m: v for m, v in means.items() if not is_unimodal(m)}
            if not uni or not multi:
                continue
            pick = min if metric in LOWER_IS_BETTER else max
            best_uni, best_multi = pick(uni, key=uni.get), pick(multi, key=multi.get)
            u, v = uni[best_uni], multi[best_multi]
            better_by = u - v if metric in LOWER_IS_BETTER else v - u
            gain = better_by / abs(u) if u else math.nan
            rows.append(
                {
                    "task": task,
                    "metric": LABELS.get(metric, metric),
                    "best unimodal": f"{best_uni} {u:.3f}",
                    "best multimodal": f"{best_multi} {v:.3f}",
                    # a unimodal baseline at 0 (kappa of a constant prediction): no relative gain
                    "relative gain %": "—" if math.isnan(gain) else f"{100 * gain:+.1f}",
                }
            )
    return pd.DataFrame(rows)


def selection_table(trials: pd.DataFrame, tasks: list[str], models: list[str]) -> pd.DataFrame:
    """Per task x model: the search, the selected rate and its validation value, and the run
    folders every reported cell averages."""
    rows = []
    for task in tasks:
        metric = task_spec(task).selection_metric
        for model in models:
            group = trials[(trials.task == task) & (trials.model == model)]
            if group.empty:
                continue
            search = group[group.stage == "search"]
            chosen = search[search.selected.astype(bool)]
            best = chosen.iloc[0] if len(chosen) else None
            value = math.nan if best is None else best.get(f"val_{metric}", math.nan)
            rows.append(
                {
                    "task": task,
                    "model": model,
                    "trials": len(search),
                    "failed": int(group.status.isin(["failed", "blocked"]).sum()),
                    "selected lr": "—" if best is None or pd.isna(best.lr) else f"{best.lr:.2e}",
                    "val selection metric": "—" if pd.isna(value) else f"{metric} {value:.4f}",
                    "runs": "; ".join(group[group.selected.astype(bool)].run_dir.astype(str)),
                }
            )
    return pd.DataFrame(rows)


SSL_TABLES = {  # name -> (features, title, the supervised models it compares with, tasks left out)
    "table4_ssl_multimodal": ("both", "SSL with multimodal data", "multimodal", ("",)),
    "table5_ssl_ehr": ("ehr", "SSL with EHR data", "ehr", ("radiology",)),
    "table6_ssl_cxr": ("cxr", "SSL with CXR data", "cxr", ("los",)),
}
SSL_MODES = (("probe", "linear probe"), ("finetune", "fine-tune"))


def supervised_kind(model: str) -> str:
    if not is_unimodal(model):
        return "multimodal"
    from trainer.models import model_class
    from trainer.models.unimodal import UniCXR

    return "cxr" if issubclass(model_class(model), UniCXR) else "ehr"


def ssl_table(trials: pd.DataFrame, features: str, kind: str, tasks: list[str]) -> pd.DataFrame:
    """Rows: the best supervised model of ``kind`` per task (its cells, then its name), then
    per mode and method the seed runs of the probe / fine-tune on ``features``; columns: (task,
    headline metric); cells: mean ± std (n) of ``test_<metric>``."""
    columns = [(t, m) for t in tasks for m in headline(t)]
    names = [f"{t} {LABELS.get(m, m)}" for t, m in columns]
    supervised = seed_runs(supervised_rows(trials))
    best_cells, best_names = [], []
    for task, metric in columns:
        if metric != headline(task)[0]:
            best_cells.append(cell(*test_summary(supervised, task, best_names[-1], metric)))
            best_names.append(best_names[-1])
            continue
        candidates = [
            m for m in supervised[supervised.task == task].model.unique() if supervised_kind(m) == kind
        ]
        means = {m: test_summary(supervised, task, m, metric)[0] for m in candidates}
        means = {m: v for m, v in means.items() if not math.isnan(v)}
        pick = min if metric in LOWER_IS_BETTER else max
        best = pick(means, key=means.get) if means else ""
        best_cells.append(cell(*test_summary(supervised, task, best, metric)))
        best_names.append(best)
    rows = {"supervised (best)": best_cells, "supervised model": [n or "—" for n in best_names]}
    ssl = seed_runs(ssl_rows(trials))
    ssl = ssl[ssl.features == features] if "features" in ssl else ssl
    methods = ordered(list(ssl.model.unique()), ["convirt", "vicreg", "align"])
    for mode, label in SSL_MODES:
        runs = ssl[ssl["mode"] == mode] if "mode" in ssl else ssl
        for method in methods:
            if not runs[runs.model == method].empty:
                rows[f"{label} {method}"] = [cell(*test_summary(runs, t, method, m)) for t, m in columns]
    frame = pd.DataFrame.from_dict(rows, orient="index", columns=names)
    frame.index.name = "method"
    return frame


def ssl_tables(trials: pd.DataFrame, tasks: list[str]) -> dict[str, tuple[str, pd.DataFrame, bool]]:
    """Tables 4 / 5 / 6 for the feature sets the benchmark probed or fine-tuned, and the SSL
    selection table; none when it ran no SSL rows."""
    ssl = ssl_rows(trials)
    if ssl.empty:
        return {}
    tables = {}
    for name, (features, title, kind, left_out) in SSL_TABLES.items():
        if features in set(ssl.features):
            keep = [t for t in tasks if t not in left_out]
            title = f"{title}: linear probe and fine-tune, test set (mean ± std over seeds, n runs)"
            tables[name] = (title, ssl_table(trials, features, kind, keep), True)
    tables["ssl_selection"] = (
        "SSL searches (pretraining, probe, fine-tune) and the runs behind each cell",
        ssl_selection_table(ssl, ordered(list(ssl.task.unique()), list(TASK_NAMES))),
        False,
    )
    return tables


def ssl_selection_table(ssl: pd.DataFrame, tasks: list[str]) -> pd.DataFrame:
    """The selection table of the SSL searches: a pretraining method is ranked by its val loss
    (lowest kept), a probe or fine-tune by the task's val selection metric."""
    label = ssl.model + " " + ssl["mode"] + ssl.features.map(lambda f: f" {f}" if f else "")
    view = ssl[ssl["mode"] != "select"].assign(model=label[ssl["mode"] != "select"])
    frame = selection_table(view, tasks, sorted(view.model.unique()))
    pretrain = view[(view["mode"] == "pretrain") & view.selected.astype(bool)]
    for i, row in frame.iterrows():
        kept = pretrain[(pretrain.task == row.task) & (pretrain.model == row.model)]
        if len(kept):
            loss = kept.iloc[0].get("val_loss", math.nan)
            frame.loc[i, "val selection metric"] = "—" if pd.isna(loss) else f"loss {loss:.4f}"
    return frame


def run_model(run_dir: str | Path) -> tuple[Any, str]:
    """The model a run trained, rebuilt from its ``config.yaml`` with random weights (no
    checkpoint files are read: parameter counts and timing do not depend on the weights)."""
    import yaml

    from trainer.models import create_model, model_class, model_config

    cfg = yaml.safe_load((Path(run_dir) / "config.yaml").read_text())
    name, resolved = cfg["model"]["name"], dict(cfg["model"].get("resolved") or {})
    if "init" in model_class(name).config_class.__dataclass_fields__:
        resolved["init"] = "random"
    return create_model(name, model_config(name, resolved), task_spec(cfg["task"])), name


def cxr_encoder_name(net: Any) -> str:
    """The CXR encoder a model was built with (the paper counts ResNet-34's parameters; the quick
    preset builds ResNet-18), or "—" for a model without one."""
    config = getattr(net, "config", None)
    return getattr(config, "cxr_encoder", "—") if hasattr(net, "cxr_encoder") else "—"


def cost_table(runs: pd.DataFrame, models: list[str], timing: bool) -> pd.DataFrame:
    """Table 8 from the IHM seed-0 runs: trainable parameters, inference time, IHM AUROC."""
    import statistics

    import torch

    from trainer.models.paper import PAPER_MILLIONS
    from trainer.models.timing import make_batch, time_forward, trainable_parameters

    ihm = runs[runs.task == "ihm"]
    batch = make_batch(16, 48, 224) if timing else None
    rows = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for model in models:
            first = ihm[(ihm.model == model) & (ihm.seed == 0)]
            if first.empty:
                continue
            params = seconds = encoder = "—"
            if (Path(first.iloc[0].run_dir) / "config.yaml").is_file():
                net, _ = run_model(first.iloc[0].run_dir)
                params = f"{trainable_parameters(net) / 1e6:.3f}"
                encoder = cxr_encoder_name(net)
                if batch is not None:
                    seconds = f"{statistics.median(time_forward(net, batch, warmup=1, repeats=3)[1]):.3f}"
            paper = PAPER_MILLIONS.get(model)
            rows.append(
                {
                    "model": model,
                    "trainable (M)": params,
                    "paper (M)": "—" if paper is None else f"{paper:.2f}",
                    "CXR encoder": encoder,
                    "CPU s / batch of 16": seconds,
                    "IHM AUROC": cell(*test_summary(ihm, "ihm", model, "auroc")),
                }
            )
    finally:
        torch.set_num_threads(threads)
    return pd.DataFrame(rows)


def to_markdown(frame: pd.DataFrame, index: bool) -> str:
    data = frame.reset_index() if index else frame
    head = [str(c) for c in data.columns]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in data.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def to_latex(frame: pd.DataFrame, index: bool) -> str:
    data = frame.reset_index() if index else frame

    def esc(v: Any) -> str:
        text = str(v).replace("±", "$\\pm$")
        for ch in ("_", "%", "&", "#"):
            text = text.replace(ch, "\\" + ch)
        return text

    lines = ["\\begin{tabular}{" + "l" * len(data.columns) + "}", "\\toprule"]
    lines.append(" & ".join(esc(c) for c in data.columns) + " \\\\")
    lines.append("\\midrule")
    lines += [" & ".join(esc(v) for v in row) + " \\\\" for row in data.itertuples(index=False)]
    lines += ["\\bottomrule", "\\end{tabular}"]
    return "\n".join(lines) + "\n"


def write_table(frame: pd.DataFrame, folder: Path, name: str, title: str, index: bool) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{name}.md", folder / f"{name}.csv", folder / f"{name}.tex"]
    paths[0].write_text(f"### {title}\n\n" + to_markdown(frame, index))
    frame.to_csv(paths[1], index=index)
    paths[2].write_text(to_latex(frame, index))
    return paths


def build_tables(trials: pd.DataFrame, timing: bool = True) -> dict[str, tuple[str, pd.DataFrame, bool]]:
    """name -> (title, table, whether the index is a column) from a trial table; ``timing``:
    measure Table 8's inference times (seconds per model on a CPU)."""
    everything, trials = trials, supervised_rows(trials)
    runs = seed_runs(trials)
    # the pretraining task is a column only where something was trained or probed on it
    evaluated = ssl_rows(everything)
    evaluated = evaluated[evaluated["mode"].isin(["probe", "finetune"])] if "mode" in evaluated else evaluated
    tasks = ordered(list(set(trials.task) | set(evaluated.task)), list(TASK_NAMES))
    models = ordered(list(trials.model.unique()), _registry_order())
    return {
        "table3": (
            "Supervised, test set (mean ± std over seeds, n runs)",
            metric_table(runs, headline, models, tasks),
            True,
        ),
        "table10_ece": (
            "Expected calibration error, test set",
            metric_table(runs, lambda t: ("ece",), models, tasks),
            True,
        ),
        "table11_gain": (
            "Best multimodal vs best unimodal (relative gain)",
            gain_table(runs, models, tasks),
            False,
        ),
        "table8_cost": (
            "Trainable parameters, inference time, IHM AUROC",
            cost_table(runs, models, timing),
            False,
        ),
        "selection": (
            "Learning-rate search and the runs behind each cell",
            selection_table(trials, tasks, models),
            False,
        ),
        **ssl_tables(everything, tasks),
    }


def _registry_order() -> list[str]:
    """Unimodal models first (EHR before CXR), then the fusion models by name."""
    from trainer.models import list_models

    names = list(list_models())
    return sorted(names, key=lambda m: (not is_unimodal(m), "cxr" in m, m))


def side_by_side(named: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """The same models in several benchmarks (paired vs partial shards; LSTM vs transformer
    encoders): per model and task, each headline metric of each benchmark side by side, over the
    tasks and models all of them ran."""
    named = {name: supervised_rows(frame) for name, frame in named.items()}
    runs = {name: seed_runs(frame) for name, frame in named.items()}
    frames = list(named.values())
    tasks = ordered(sorted(set.intersection(*(set(f.task) for f in frames))), list(TASK_NAMES))
    models = ordered(sorted(set.intersection(*(set(f.model) for f in frames))), _registry_order())
    rows = []
    for model in models:
        row: dict[str, str] = {"model": model}
        for task in tasks:
            for metric in headline(task):
                for name, frame in runs.items():
                    row[f"{task} {LABELS[metric]} {name}"] = cell(*test_summary(frame, task, model, metric))
        rows.append(row)
    return pd.DataFrame(rows)


def write_reports(
    results: Path,
    timing: bool = True,
    figures: bool = True,
    shards: str | None = None,
    partial: Path | None = None,
    transformer: Path | None = None,
) -> list[Path]:
    """Every table of ``results/trials.parquet`` under ``results/tables``; the Markdown files
    also joined in ``results/tables/README.md``. ``partial`` / ``transformer``: the results
    folder of the same benchmark on partial shards / with transformer encoders, for the paired
    vs partial table and Table 9."""
    folder = Path(results) / "tables"
    paths: list[Path] = []
    joined = []
    trials = read_trials(results)
    tables = build_tables(trials, timing)
    if partial is not None:
        title = "Paired (this benchmark) vs partial shards (missing images), test set"
        both = {"paired": trials, "partial": read_trials(partial)}
        tables["paired_vs_partial"] = (title, side_by_side(both), False)
    if transformer is not None:
        title = "LSTM / ResNet encoders (this benchmark) vs transformer encoders, test set"
        both = {"LSTM": trials, "transformer": read_trials(transformer)}
        tables["table9_transformer"] = (title, side_by_side(both), False)
    for name, (title, frame, index) in tables.items():
        written = write_table(frame, folder, name, title, index)
        joined.append(written[0].read_text())
        paths += written
    (folder / "README.md").write_text("\n".join(joined))
    if figures:
        from trainer.figures import write_figures, write_training_curves

        supervised = seed_runs(supervised_rows(trials))
        paths += write_figures(supervised, Path(results) / "figures")
        paths += write_training_curves(supervised, Path(results) / "figures")
        if shards:
            from shards.manifest import read_manifest
            from trainer.figures import write_label_distributions

            paths += write_label_distributions(read_manifest(shards), Path(results) / "figures")
    return [folder / "README.md", *paths]
