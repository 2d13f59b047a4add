"""What the performance benchmarks share: running a measured child process, machine facts, and
appending a dated section to ``BENCHMARKS.md``.

Each measured run is a fresh child process (its own Spark driver JVM), so one size's JIT warm-up,
cached data or grown heap never flatters or burdens the next, and peak memory is that run's own.
The parent samples the child's whole process tree (Python driver, the JVM it starts, the Python
workers the JVM forks) with psutil.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import psutil

log = logging.getLogger("medmod.bench")
REPO = Path(__file__).resolve().parents[1]
BENCHMARKS_MD = REPO / "BENCHMARKS.md"
GIB = 1024**3

# MIMIC-IV v2.2 / MIMIC-CXR-JPG 2.0.0 sizes the extrapolations aim at.
MIMIC_CHARTEVENTS = 313_000_000
MIMIC_LABEVENTS = 118_000_000
MIMIC_EVENTS = MIMIC_CHARTEVENTS + MIMIC_LABEVENTS
# Share of those rows that are the benchmark's items (default item map). MIMIC-IV's own counts
# are credentialed; the reference item map (mimic3-benchmarks' itemid_to_variable_map.csv) lists
# MIMIC-III rows per item: the default map's chartevents items have 59.1M of MIMIC-III's 330.7M
# chartevents rows (17.9%), its labevents items 1.65M of 27.9M labevents rows (5.9%). MIMIC-IV
# is assumed to chart the same mix (an estimate, not a measurement).
MIMIC_CHART_WANTED_SHARE = 0.179
MIMIC_LAB_WANTED_SHARE = 0.059
MIMIC_WANTED_EVENTS = round(
    MIMIC_CHART_WANTED_SHARE * MIMIC_CHARTEVENTS + MIMIC_LAB_WANTED_SHARE * MIMIC_LABEVENTS
)
MIMIC_IMAGES = 377_000


@dataclass
class TreeUsage:
    """Peak resident memory of a process tree (sum over its processes at one instant; a JVM's child
    caught between fork and exec, which shares the JVM's memory, is left out) and the CPU seconds
    its processes used (their last sample; a process's children are not double counted)."""

    peak_rss: int = 0
    peak_rss_by_kind: dict[str, int] = field(default_factory=dict)
    cpu_s: float = 0.0
    samples: int = 0
    # With ``TreeMonitor(threads=True)``: CPU seconds of each thread, keyed (pid, tid), as
    # (``"<process kind>: <thread kind>"``, seconds) at the monitor's first sample and at its last
    # sample of that thread (a thread that ends keeps its last one).
    threads_at_start: dict[tuple[int, int], tuple[str, float]] = field(default_factory=dict)
    threads: dict[tuple[int, int], tuple[str, float]] = field(default_factory=dict)

    def thread_cpu_by_kind(self) -> dict[str, float]:
        """CPU seconds spent between the first and the last sample, summed by thread kind."""
        spent: dict[str, float] = {}
        for key, (kind, cpu) in self.threads.items():
            spent[kind] = spent.get(kind, 0.0) + cpu - self.threads_at_start.get(key, (kind, 0.0))[1]
        return spent


def _kind(proc: psutil.Process, root_pid: int) -> str:
    """driver_python (the root), jvm, python_workers or other (launcher shells, helpers)."""
    if proc.pid == root_pid:
        return "driver_python"
    if _is_jvm(proc):
        return "jvm"
    if proc.name().lower().startswith("python"):
        return "python_workers"
    return "other"


def _is_jvm(proc: psutil.Process) -> bool:
    return proc.name().lower().startswith("java")


def _is_launch_in_progress(proc: psutil.Process, parent: psutil.Process | None) -> bool:
    """A JVM's child between its fork and its exec: same program, same command line.

    The JVM starts every process (Python workers, Hadoop's ``chmod``/``readlink`` helpers) through
    ``posix_spawn``, whose child shares the JVM's memory until it execs: sampled in that instant it
    shows the JVM's whole RSS, which summed with the JVM's own doubled the "peak" of some runs.
    A process that a JVM really starts has a command line of its own once it runs.
    """
    if parent is None or not _is_jvm(parent):
        return False
    return proc.exe() == parent.exe() and proc.cmdline() == parent.cmdline()


def thread_kind(name: str) -> str:
    """A thread's name without its number: ``C2 CompilerThread1`` -> ``C2 CompilerThread``."""
    return re.sub(r"[\s#\-]*\d+$", "", name).strip() or name


def _thread_names(pid: int) -> dict[int, str]:
    """Thread id -> the name Linux keeps for it (15 characters), where /proc is readable."""
    names = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return names
    for tid in tids:
        try:
            names[int(tid)] = Path(f"/proc/{pid}/task/{tid}/comm").read_text().strip()
        except OSError:
            continue
    return names


class TreeMonitor:
    """Samples RSS and CPU time of ``pid`` and all its descendants every ``interval`` seconds;
    ``threads`` also records each thread's CPU time (Linux; see :class:`TreeUsage`)."""

    def __init__(self, pid: int, interval: float = 0.5, threads: bool = False) -> None:
        self.root = psutil.Process(pid)
        self.interval = interval
        self.with_threads = threads
        self.usage = TreeUsage()
        self._cpu: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="tree-monitor")

    def _sample(self) -> None:
        try:
            procs = [self.root, *self.root.children(recursive=True)]
        except psutil.Error:
            return
        total, by_kind, seen = 0, {}, set()
        by_pid = {proc.pid: proc for proc in procs}
        for proc in procs:
            if proc.pid in seen:
                continue
            seen.add(proc.pid)
            try:
                if _is_launch_in_progress(proc, by_pid.get(proc.ppid())):
                    continue
                with proc.oneshot():
                    rss = proc.memory_info().rss
                    times = proc.cpu_times()
                    kind = _kind(proc, self.root.pid)
                    if self.with_threads:
                        self._sample_threads(proc, kind)
            except psutil.Error:
                continue
            total += rss
            by_kind[kind] = by_kind.get(kind, 0) + rss
            self._cpu[proc.pid] = times.user + times.system
        u = self.usage
        u.samples += 1
        u.peak_rss = max(u.peak_rss, total)
        for kind, rss in by_kind.items():
            u.peak_rss_by_kind[kind] = max(u.peak_rss_by_kind.get(kind, 0), rss)
        u.cpu_s = sum(self._cpu.values())

    def _sample_threads(self, proc: psutil.Process, kind: str) -> None:
        names = _thread_names(proc.pid)
        for thread in proc.threads():
            # A Python worker's threads are one kind: the worker is the unit Spark schedules.
            what = kind if kind == "python_workers" else f"{kind}: {thread_kind(names.get(thread.id, '?'))}"
            self.usage.threads[(proc.pid, thread.id)] = (what, thread.user_time + thread.system_time)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self) -> TreeMonitor:
        self._sample()  # the first sample is taken before the measured work starts
        self.usage.threads_at_start = dict(self.usage.threads)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()  # what ran since the last sample (nothing if the tree has ended)


@dataclass
class ChildRun:
    result: dict
    wall_s: float
    usage: TreeUsage


def run_child(script: Path, spec: dict, log_path: Path, interval: float = 0.5) -> ChildRun:
    """Run ``script --child SPEC.json`` in a fresh process under a :class:`TreeMonitor`.

    The child writes its result as JSON to ``spec["result"]``; its stdout/stderr go to ``log_path``
    (the Spark logs of a failed run are there, not lost in the benchmark's own output).
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    spec_path = log_path.with_suffix(".spec.json")
    result_path = log_path.with_suffix(".result.json")
    spec = dict(spec, result=str(result_path))
    spec_path.write_text(json.dumps(spec, indent=2))
    result_path.unlink(missing_ok=True)
    start = time.perf_counter()
    with open(log_path, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, str(script), "--child", str(spec_path)], stdout=out, stderr=subprocess.STDOUT
        )
        with TreeMonitor(proc.pid, interval) as monitor:
            rc = proc.wait()
    wall = time.perf_counter() - start
    if rc != 0 or not result_path.exists():
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-30:])
        raise RuntimeError(f"benchmark child failed (exit {rc}); log {log_path}:\n{tail}")
    return ChildRun(json.loads(result_path.read_text()), wall, monitor.usage)


def dir_bytes(path: Path) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                continue
    return total


def _java_version() -> str:
    try:
        out = subprocess.run(["java", "-version"], capture_output=True, text=True, timeout=30)
        return (out.stderr or out.stdout).splitlines()[0].strip()
    except (OSError, subprocess.SubprocessError, IndexError):
        return "unknown"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "not installed"


def _git_describe() -> str:
    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty", "--abbrev=12"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def machine_facts() -> dict[str, str]:
    """What a reader needs to compare a number with their own: cores, RAM, versions, load."""
    vm = psutil.virtual_memory()
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return {
        "cpu": _cpu_model(),
        "cores": f"{psutil.cpu_count(logical=True)} logical / {psutil.cpu_count(logical=False)} physical",
        "ram": f"{vm.total / GIB:.1f} GiB ({vm.available / GIB:.1f} GiB available at start)",
        "os": platform.platform(),
        "python": platform.python_version(),
        "pyspark": _version("pyspark"),
        "delta-spark": _version("delta-spark"),
        "java": _java_version(),
        "code": _git_describe(),
        "load average at start (1/5/15 min)": load,
    }


def command_line() -> str:
    """The command as typed, relative to the repository root where possible."""
    script = Path(sys.argv[0]).resolve()
    try:
        shown = str(script.relative_to(REPO))
    except ValueError:
        shown = str(script)
    args = " ".join(_quote(a) for a in sys.argv[1:])
    return f"python {shown} {args}".strip()


def _quote(arg: str) -> str:
    import shlex

    return shlex.quote(arg)


def table(headers: list[str], rows: list[list[object]], numbers: bool = True) -> str:
    """A GitHub markdown table: first column left-aligned (labels), the others right-aligned
    (``numbers``) or left-aligned (text)."""
    align = ["---"] + ["---:" if numbers else "---"] * (len(headers) - 1)
    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def mib(n: float) -> str:
    return f"{n / 1024**2:,.0f} MiB"


def duration(seconds: float) -> str:
    """1234 s -> '20.6 min'; big values in hours or days, so extrapolations read at a glance."""
    if seconds < 120:
        return f"{seconds:,.1f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:,.1f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:,.1f} h"
    return f"{seconds / 86400:,.1f} days"


def append_section(text: str, path: Path = BENCHMARKS_MD) -> None:
    """Append ``text`` to BENCHMARKS.md (created with a short preamble if absent)."""
    if not path.exists():
        path.write_text(
            "# Benchmarks\n\n"
            "Dated sections appended by `scripts/bench_synth.py` (synthetic data generator) and\n"
            "`scripts/bench_etl.py` (the ETL). Each section records its exact command and machine;\n"
            "compare numbers only between sections from comparable machines.\n"
        )
    with open(path, "a") as fh:
        fh.write("\n" + text.rstrip() + "\n")


def publish(facts: dict[str, str], render: Callable[[dict[str, str]], str], write: bool) -> str:
    """Close a run: note the load average at its end in ``facts``, render the report, print it
    and (``write``) append it to BENCHMARKS.md. Returns the text."""
    facts["load average at end (1/5/15 min)"] = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    text = render(facts)
    print(text)
    if write:
        append_section(text)
        log.info("appended to %s", BENCHMARKS_MD)
    return text


def now_utc() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def split_trainer_words(argv: list[str] | None) -> tuple[list[str], list[str]]:
    """A script's own arguments and the trainer words after ``--`` (``sys.argv`` when None)."""
    argv = sys.argv[1:] if argv is None else argv
    if "--" not in argv:
        return argv, []
    cut = argv.index("--")
    return argv[:cut], argv[cut + 1 :]


def setup_logging() -> None:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S", stream=sys.stderr
    )
