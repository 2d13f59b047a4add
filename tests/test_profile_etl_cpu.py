"""CPU seconds by process and thread kind: scripts/bench_common.py's TreeMonitor(threads=True),
which scripts/profile_etl_cpu.py prints for one ETL run."""

from __future__ import annotations

import ctypes
import functools
import importlib.util
import os
import shutil
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


_SPAWNER = """
public class Spawner {
    public static void main(String[] args) throws Exception {
        byte[] ballast = new byte[Integer.parseInt(args[0]) << 20];
        for (int i = 0; i < ballast.length; i += 4096) ballast[i] = 1;
        long end = System.nanoTime() + (long) (Double.parseDouble(args[1]) * 1e9);
        int spawned = 0;
        while (System.nanoTime() < end) {
            new ProcessBuilder("true").start().waitFor();
            spawned++;
        }
        System.out.println(spawned + " " + ballast[4096]);
    }
}
"""


@pytest.mark.skipif(shutil.which("java") is None or shutil.which("true") is None, reason="needs a JVM")
def test_a_jvm_child_between_fork_and_exec_does_not_count_the_jvm_twice(tmp_path):
    # Spark's JVM starts its helpers with posix_spawn: until the exec, the child shares the JVM's
    # memory and shows all of it as its own RSS. A JVM with 300 MiB touched spawns `true` in a
    # loop; the tree's peak must stay the JVM's own, not twice it.
    bc = _script("bench_common")
    (tmp_path / "Spawner.java").write_text(_SPAWNER)
    jvm = subprocess.Popen(
        ["java", "-Xmx1g", "Spawner.java", "300", "3"], cwd=tmp_path, stdout=subprocess.PIPE, text=True
    )
    time.sleep(1.5)  # the source compiles and the ballast is touched before the first sample
    with bc.TreeMonitor(jvm.pid, 0.02) as monitor:
        spawned = int(jvm.communicate(timeout=60)[0].split()[0])
    assert spawned > 100, spawned
    own = monitor.usage.peak_rss_by_kind["driver_python"]  # the monitor's root: the JVM itself
    assert own > 300 << 20
    assert monitor.usage.peak_rss < 1.3 * own, (monitor.usage.peak_rss_by_kind, spawned)
