"""CPU seconds by process and thread kind: scripts/bench_common.py's TreeMonitor(threads=True),
which scripts/profile_etl_cpu.py prints for one ETL run."""

from __future__ import annotations

import ctypes
import functools
import importlib.util
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"


@functools.cache
def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _burn(seconds: float) -> None:
    start = time.thread_time()
    while time.thread_time() - start < seconds:
        pass


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("C2 CompilerThread1", "C2 CompilerThread"),
        ("Executor task launch worker-12", "Executor task launch worker"),
        ("GC Thread#3", "GC Thread"),
        ("Thread-7", "Thread"),
        ("dag-scheduler-event-loop", "dag-scheduler-event-loop"),
    ],
)
def test_thread_numbers_are_dropped_from_the_kind(name, kind):
    assert _script("bench_common").thread_kind(name) == kind


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="thread names come from Linux's /proc")
def test_a_thread_is_counted_by_its_name_from_the_first_sample_on():
    bc = _script("bench_common")
    warmed, monitor_started, burned, done = (threading.Event() for _ in range(4))

    def burner() -> None:
        ctypes.CDLL(None).prctl(15, b"burner-3")  # PR_SET_NAME: Python does not name OS threads
        _burn(0.8)  # before the monitor's first sample: not counted
        warmed.set()
        monitor_started.wait()
        _burn(1.0)
        burned.set()
        done.wait()  # alive at the monitor's last sample, so that sample holds all of it

    thread = threading.Thread(target=burner)
    thread.start()
    warmed.wait()
    with bc.TreeMonitor(os.getpid(), 0.1, threads=True) as monitor:
        monitor_started.set()
        burned.wait()
    done.set()
    thread.join()
    spent = monitor.usage.thread_cpu_by_kind()
    assert 0.9 <= spent["driver_python: burner"] <= 1.3, spent


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="thread names come from Linux's /proc")
def test_cpu_of_a_child_that_ended_counts_up_to_its_last_sample():
    bc = _script("bench_common")
    with bc.TreeMonitor(os.getpid(), 0.1, threads=True) as monitor:
        child = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "import time\nt = time.process_time()\nwhile time.process_time() - t < 1.5: pass",
            ]
        )
        child.wait()
    spent = monitor.usage.thread_cpu_by_kind()
    assert 1.0 <= spent["python_workers"] <= 2.0, spent
