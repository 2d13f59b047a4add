"""scripts/profile_etl_cpu.py: CPU seconds by process and thread kind, read from /proc."""

from __future__ import annotations

import functools
import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest


@functools.cache
def _profiler():
    path = Path(__file__).resolve().parent.parent / "scripts" / "profile_etl_cpu.py"
    spec = importlib.util.spec_from_file_location("profile_etl_cpu", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["profile_etl_cpu"] = module
    spec.loader.exec_module(module)
    return module


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
    assert _profiler().thread_kind(name) == kind


def test_stat_line_with_spaces_and_parentheses_in_the_name():
    tick = _profiler().CLOCK_TICK
    fields = ["S"] + ["0"] * 10 + [str(3 * tick), str(tick)] + ["0"] * 30
    name, cpu = _profiler().stat_cpu("4242 (a (b) c) " + " ".join(fields))
    assert (name, cpu) == ("a (b) c", 4.0)


def test_cpu_of_a_child_that_ended_counts_up_to_its_last_sample():
    prof = _profiler()
    before, seen = {}, {}
    prof.sample(os.getpid(), before)
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import time\nt = time.process_time()\nwhile time.process_time() - t < 1.5: pass",
        ]
    )
    time.sleep(0.2)
    while child.poll() is None:
        prof.sample(os.getpid(), seen)
        time.sleep(0.1)
    spent = prof.by_kind(before, seen)
    assert 1.0 <= spent["python worker: python"] <= 2.0, spent
