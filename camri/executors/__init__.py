"""Executors: where a profile's runs train (docs/scale-out.md).

- ``camri.executors.local``: a pool of worker processes on this machine, one process per run.
- ``camri.executors.slurm``: a SLURM job array through submitit (or submitit's local cluster).

Both train a run with ``execute_spec`` under the run's lock (``RunLock``), so two workers never train
the same run at once, and ``lock_holder`` tells ``camri status`` which runs are being trained now.
"""

from __future__ import annotations

import datetime
import os
import socket
import sys
import time
from pathlib import Path

from filelock import FileLock, Timeout
from tqdm.auto import tqdm

from camri import rundir


class RunLock:
    """An exclusive lock (filelock's ``flock``) on ``<run dir>/.grid.lock``, held while a run trains.

    The kernel drops it when the process dies (crash, SIGKILL, preemption), so a live lock means a live
    run: ``lock_holder`` probes it, and a second worker given the same run (two ``camri grid`` at once, a
    duplicate submission) backs off instead of training it twice. The file holds host and pid for people.
    (On a file system without flock, filelock falls back to its soft lock and warns.)
    """

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / rundir.LOCK
        self.lock = FileLock(self.path)

    def acquire(self, wait_s: float = 10.0) -> bool:
        """Take the lock, waiting up to ``wait_s`` (``lock_holder`` holds it for microseconds when probing)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.lock.acquire(timeout=wait_s, poll_interval=0.2)
        except Timeout:
            return False
        self.path.write_text(f"{socket.gethostname()} {os.getpid()}\n")  # a second handle: the lock is kept
        return True

    def release(self) -> None:
        if self.lock.is_locked:
            self.lock.release()  # the file stays (removing it would race with the next worker)


def lock_holder(run_dir: Path) -> str | None:
    """``"host:pid"`` of the live process training ``run_dir``, or None."""
    path = Path(run_dir) / rundir.LOCK
    try:
        holder = path.read_text(errors="replace").strip() or "?"
    except FileNotFoundError:
        return None
    probe = FileLock(path)
    try:
        probe.acquire(timeout=0)
    except Timeout:
        return holder.replace(" ", ":")
    probe.release()
    return None


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class _NoBarTqdm(tqdm):
    """tqdm without bars: a run's log file gets the per-epoch lines (``tqdm.write``), not bar redraws."""

    def __init__(self, *args, **kwargs):
        kwargs["disable"] = True
        super().__init__(*args, **kwargs)


def execute_spec(spec, lock: RunLock | None = None, job: str | None = None) -> str:
    """Train ``spec`` (a ``camri.sweep.RunSpec``) in this process, under its run lock (``lock``: one
    already held); output goes to the current stdout/stderr. ``job``: the submitit job id this runs in,
    named in the log's start line (``camri status`` tells from it which job the latest attempt was in).

    Returns ``"done"``, or ``"busy"`` when another live process holds the run. Exceptions propagate."""
    from camri import train as camri_train

    if lock is None:
        lock = RunLock(spec.out_dir)
        if not lock.acquire():
            print(
                f"camri grid: {spec.key} is being trained by another process ({lock_holder(spec.out_dir)}); "
                "leaving it to that one",
                file=sys.stderr,
                flush=True,
            )
            return "busy"
    saved_tqdm = camri_train.tqdm
    try:
        stamp = datetime.datetime.now().isoformat(timespec="seconds")
        gpus = os.environ.get("CUDA_VISIBLE_DEVICES")
        print(
            f"== camri grid: {spec.key} on {socket.gethostname()}, pid {os.getpid()}, {stamp}"
            + (f", job {job}" if job is not None else "")
            + (f", CUDA_VISIBLE_DEVICES={gpus}" if gpus is not None else ""),
            file=sys.stderr,
            flush=True,
        )
        camri_train.tqdm = _NoBarTqdm  # this process does nothing else; see _NoBarTqdm
        wall, cpu = time.perf_counter(), time.process_time()
        summary = camri_train.train(spec.config, spec.out_dir)
        print(
            f"== camri grid: {spec.key} done: accuracy {summary['accuracy']:.4f}, "
            f"{time.perf_counter() - wall:.1f} s wall, {time.process_time() - cpu:.1f} s CPU",
            file=sys.stderr,
            flush=True,
        )
        return "done"
    finally:
        camri_train.tqdm = saved_tqdm
        lock.release()
