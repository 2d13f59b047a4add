"""A real Spark standalone cluster (one master, N workers, one by default) on 127.0.0.1 for tests.

Every daemon is a ``spark-class`` subprocess from the venv's pyspark, each in its own process
group, so that stopping the group also takes down the executor JVMs and Python workers the worker
launched. Stopping is idempotent and also registered with ``atexit``: a failing test, an error
during start-up or an interrupted session leaves no JVM behind. ``StandaloneCluster.kill_worker``
SIGKILLs one worker with everything it started (worker JVM, its executor JVMs, their Python
workers), as a machine that dies would.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from spark_jobs.class_archive import spark_home

HOST = "127.0.0.1"
REPO = Path(__file__).resolve().parents[1]
SUBMIT = REPO / "scripts" / "submit.sh"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return "(no log)"
    return "\n".join(text[-lines:])


def _stop_group(proc: subprocess.Popen, grace_s: float = 15.0) -> None:
    """SIGTERM the process group, SIGKILL whatever is left after ``grace_s``; reap the leader."""
    pgid = proc.pid  # start_new_session: the leader's pid is the group id
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 10.0)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, sig)
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            # Members can outlive the leader (an executor finishing its shutdown hook).
            if proc.poll() is not None:
                try:
                    os.killpg(pgid, 0)
                except ProcessLookupError:
                    return
            time.sleep(0.2)


def _pdeathsig_setter() -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the child get SIGTERM when the test process dies, even by
    SIGKILL (Linux only). It survives spark-class's final ``exec java``; the JVM's shutdown hooks
    then stop the executors it launched. libc is loaded here, in the parent: the child of a
    threaded parent (py4j) must not import anything between fork and exec.
    """
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    prctl = ctypes.CDLL(None, use_errno=True).prctl
    pr_set_pdeathsig, sigterm = 1, int(signal.SIGTERM)

    def set_pdeathsig() -> None:
        prctl(pr_set_pdeathsig, sigterm)

    return set_pdeathsig


_DIE_WITH_PARENT = _pdeathsig_setter()


def spawn(args: Sequence[str], log: Path, env: dict[str, str]) -> subprocess.Popen:
    """Start ``args`` in a new session (own process group), stdout and stderr into ``log``."""
    with open(log, "wb") as fh:
        return subprocess.Popen(
            list(args),
            stdout=fh,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
            preexec_fn=_DIE_WITH_PARENT,
        )


class Bounded:
    """A command in its own process group, started now and given ``timeout_s`` to finish.

    Its output is drained by a thread, so the caller can do other work meanwhile (e.g. run the
    same job in local mode) and collect the result with ``wait()``. Whatever the outcome (done,
    timed out, or the caller failing before ``wait()``: use it as a context manager), the whole
    group is stopped at the end: spark-submit's JVM, the Python driver it forks, and anything
    they left running.
    """

    def __init__(
        self,
        args: Sequence[str],
        timeout_s: float,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ):
        self.args, self.timeout_s = list(args), timeout_s
        self.proc = subprocess.Popen(
            self.args,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
            env=env,
            cwd=cwd,
            start_new_session=True,
            preexec_fn=_DIE_WITH_PARENT,
        )
        self._deadline = time.monotonic() + timeout_s
        self._output: tuple[str, str] = ("", "")
        self._reader = threading.Thread(target=self._drain, name="bounded-output", daemon=True)
        self._reader.start()

    def _drain(self) -> None:
        self._output = self.proc.communicate()

    def stop(self) -> None:
        """Stop the process group (idempotent: a group already gone costs one failed kill)."""
        _stop_group(self.proc, grace_s=5.0)
        self._reader.join(timeout=30)

    def wait(self) -> subprocess.CompletedProcess:
        """The finished command; AssertionError (group stopped) when it runs past its timeout."""
        self._reader.join(timeout=max(0.0, self._deadline - time.monotonic()))
        timed_out = self._reader.is_alive()
        self.stop()
        out, err = self._output
        if timed_out:
            raise AssertionError(
                f"{' '.join(self.args)} ran past {self.timeout_s:.0f}s\n"
                f"--- stdout\n{out[-4000:]}\n--- stderr\n{err[-4000:]}"
            )
        return subprocess.CompletedProcess(self.args, self.proc.returncode, out, err)

    def __enter__(self) -> Bounded:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def run_bounded(
    args: Sequence[str], timeout_s: float, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess:
    """``subprocess.run`` that, on timeout, kills the whole process group (spark-submit's JVM and
    the Python driver it forks), not only the direct child."""
    with Bounded(args, timeout_s, env, cwd) as running:
        return running.wait()


def _processes() -> dict[int, tuple[str, int, int]]:
    """pid -> (state letter R/S/Z/..., parent pid, process group) of every process (Linux /proc)."""
    table = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # gone meanwhile
            continue
        # pid (comm) state ppid pgrp ...: comm may hold spaces and parentheses, split after it.
        state, ppid, pgrp = stat[stat.rindex(")") + 2 :].split()[:3]
        table[int(entry.name)] = (state, int(ppid), int(pgrp))
    return table


def _tree_groups(pgid: int) -> set[int]:
    """Group ``pgid`` and the groups of all descendants of its members. PySpark's daemon, which
    forks an executor's Python workers, moves itself into a group of its own (``os.setpgid``)."""
    table = _processes()
    tree = {pid for pid, (_, _, pgrp) in table.items() if pgrp == pgid}
    grew = True
    while grew:
        more = {pid for pid, (_, ppid, _) in table.items() if ppid in tree} - tree
        tree |= more
        grew = bool(more)
    return {table[pid][2] for pid in tree} - {os.getpgrp()}  # never the caller's own group


def _members(groups: set[int]) -> dict[int, str]:
    """pid -> state letter of every process in ``groups``."""
    return {pid: state for pid, (state, _, pgrp) in _processes().items() if pgrp in groups}


@dataclass(frozen=True)
class Worker:
    index: int
    workdir: Path  # its SPARK_WORKER_DIR: <app id>/<executor id>/ with each executor's stdout, stderr
    log: Path
    webui: str  # http://127.0.0.1:PORT, the worker's ``webuiaddress`` in the master's JSON
    proc: subprocess.Popen = field(compare=False, repr=False)

    @property
    def pgid(self) -> int:
        """Its process group: the worker JVM and the executor JVMs it launched (each executor's
        PySpark daemon and Python workers form a group of their own, see ``kill_worker``)."""
        return self.proc.pid  # start_new_session: the leader's pid is the group id


@dataclass(frozen=True)
class StandaloneCluster:
    url: str  # spark://127.0.0.1:PORT, what --master takes
    webui: str  # http://127.0.0.1:PORT
    # Logs (master.log, worker.log, worker-1.log, ...) and worker 0's SPARK_WORKER_DIR (work/);
    # worker i > 0 works in work-<i>/.
    workdir: Path
    workers: tuple[Worker, ...] = ()

    def state(self) -> dict:
        """The master's JSON status (workers, aliveworkers, activeapps, completedapps, ...)."""
        with urllib.request.urlopen(f"{self.webui}/json/", timeout=5) as resp:
            return json.load(resp)

    def worker_state(self, worker: Worker) -> str | None:
        """What the master says of ``worker``: ALIVE, DEAD, ... (None: not registered)."""
        for entry in self.state().get("workers", []):
            if entry.get("webuiaddress") == worker.webui:
                return entry.get("state")
        return None

    def kill_worker(self, index: int, timeout_s: float = 30.0) -> dict[int, str]:
        """SIGKILL worker ``index`` with everything it started, at once, as a machine that dies:
        its process group (worker JVM, executor JVMs) and the groups of their descendants (each
        executor's PySpark daemon and Python workers). No shutdown hook runs: the worker cannot
        tell the master nor stop its executors. Waits until none of it runs; returns the processes
        killed (pid -> state before the kill)."""
        worker = self.workers[index]
        groups = _tree_groups(worker.pgid)
        members = _members(groups)
        for group in groups:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(group, signal.SIGKILL)
        worker.proc.wait(timeout=timeout_s)  # our child: reap it
        deadline = time.monotonic() + timeout_s
        # The others were the worker's descendants: init reaps them; a zombie runs nothing.
        while running := {pid: s for pid, s in _members(groups).items() if s != "Z"}:
            if time.monotonic() > deadline:
                raise RuntimeError(f"worker {index}: processes still running after SIGKILL: {running}")
            time.sleep(0.1)
        return members

    def worker_running(self, path: str | Path) -> Worker:
        """The worker whose work dir holds ``path`` (an executor's, or a task's, working directory)."""
        for worker in self.workers:
            if Path(path).is_relative_to(worker.workdir):
                return worker
        raise LookupError(f"{path} is under no worker's work dir")

    def logs(self, lines: int = 40) -> str:
        names = ["master.log", *(w.log.name for w in self.workers)] if self.workers else ["master.log"]
        return "\n".join(
            f"--- {name} (last {lines} lines)\n{tail(self.workdir / name, lines)}" for name in names
        )

    def __str__(self) -> str:
        return self.url


def daemon_env(workdir: Path) -> dict[str, str]:
    conf = workdir / "conf"  # empty: no spark-defaults.conf / spark-env.sh from anywhere else
    conf.mkdir(exist_ok=True)
    (workdir / "work").mkdir(exist_ok=True)
    env = dict(os.environ)
    env.update(
        SPARK_HOME=str(spark_home()),
        SPARK_CONF_DIR=str(conf),
        SPARK_LOCAL_IP=HOST,
        SPARK_WORKER_DIR=str(workdir / "work"),
        SPARK_LOG_DIR=str(workdir),
        SPARK_DAEMON_MEMORY="512m",
        # A port already taken is an error here, not a silent move to the next port.
        SPARK_MASTER_OPTS="-Dspark.port.maxRetries=0",
        SPARK_WORKER_OPTS="-Dspark.port.maxRetries=0",
        PYSPARK_PYTHON=sys.executable,
    )
    return env


def _wait_until(
    cluster: StandaloneCluster,
    procs: dict[str, subprocess.Popen],
    what: str,
    ready: Callable[[dict], bool],
    deadline: float,
) -> None:
    """Poll the master's JSON until ``ready(state)``; fail fast if a daemon dies, with log tails."""
    last_error = "no answer yet"
    while time.monotonic() < deadline:
        for name, proc in procs.items():
            if proc.poll() is not None:
                raise RuntimeError(
                    f"spark standalone {name} exited with {proc.returncode} during start-up\n{cluster.logs()}"
                )
        try:
            if ready(cluster.state()):
                return
            last_error = "answered, not ready"
        except (OSError, ValueError) as err:  # URLError is an OSError
            last_error = repr(err)
        time.sleep(0.5)
    raise RuntimeError(f"{what}: not within the start-up timeout ({last_error})\n{cluster.logs()}")


@contextlib.contextmanager
def standalone_cluster(
    workdir: Path,
    cores: int = 1,
    memory: str = "1g",
    start_timeout_s: float = 120.0,
    workers: int = 1,
) -> Iterator[StandaloneCluster]:
    """Run a master and ``workers`` workers (``cores`` and ``memory`` each) on 127.0.0.1 until
    the block ends; yield the cluster once every worker has registered."""
    spark_class = str(spark_home() / "bin" / "spark-class")
    env = daemon_env(workdir)
    port, webui_port = free_port(), free_port()
    master = StandaloneCluster(f"spark://{HOST}:{port}", f"http://{HOST}:{webui_port}", workdir)
    procs: dict[str, subprocess.Popen] = {}

    def stop() -> None:
        # Workers first, so that they do not spend the grace period reconnecting to a dead master.
        for name in [*sorted(n for n in procs if n != "master"), "master"]:
            if name in procs:
                _stop_group(procs.pop(name))

    atexit.register(stop)
    try:
        procs["master"] = spawn(
            [
                spark_class,
                "org.apache.spark.deploy.master.Master",
                "--host",
                HOST,
                "--port",
                str(port),
                "--webui-port",
                str(webui_port),
            ],
            workdir / "master.log",
            env,
        )
        deadline = time.monotonic() + start_timeout_s
        # The worker's first registration retry comes 5-15 s after a miss: start it once the master answers.
        _wait_until(master, procs, f"master web UI {master.webui}", lambda state: True, deadline)
        started = []
        for index in range(workers):
            # Worker 0 keeps the one-worker layout (work/, worker.log) that callers look into.
            suffix = f"-{index}" if index else ""
            work = workdir / f"work{suffix}"
            work.mkdir(exist_ok=True)
            worker_webui_port = free_port()
            procs[f"worker{suffix}"] = proc = spawn(
                [
                    spark_class,
                    "org.apache.spark.deploy.worker.Worker",
                    master.url,
                    "--host",
                    HOST,
                    "--cores",
                    str(cores),
                    "--memory",
                    memory,
                    "--work-dir",
                    str(work),
                    "--webui-port",
                    str(worker_webui_port),
                ],
                workdir / f"worker{suffix}.log",
                env,
            )
            started.append(
                Worker(
                    index, work, workdir / f"worker{suffix}.log", f"http://{HOST}:{worker_webui_port}", proc
                )
            )
        cluster = dataclasses.replace(master, workers=tuple(started))
        _wait_until(
            cluster,
            procs,
            f"{workers} worker(s) registered with {cluster.url}",
            lambda state: state.get("aliveworkers", 0) >= workers,
            deadline,
        )
        yield cluster
    finally:
        stop()
        atexit.unregister(stop)
