"""The local executor: a pool of worker processes on this machine, one process per run.

Each run trains in its own process, forked from a fork server with torch imported (so it starts in
milliseconds; a crash, a kill or an out-of-memory error costs only that run, where one dead worker would
break a whole ProcessPoolExecutor). Its output goes to ``<run dir>/log.txt``. With GPUs each worker is
pinned to one through ``CUDA_VISIBLE_DEVICES`` (``workers_per_gpu`` of them share one GPU). The pool
waits on the workers' process sentinels (``multiprocessing.connection.wait``), not on a timer.
"""

from __future__ import annotations

import math
import os
import signal
import sys
import threading
import traceback
from multiprocessing.connection import wait
from pathlib import Path

from tqdm.auto import tqdm

from camri import rundir
from camri.executors import RunLock, execute_spec, lock_holder

#: Exit status of a local worker that found its run being trained by another process.
BUSY_EXIT = 3
#: The CPU default of the local executor: one single-threaded worker per CPU, up to this many. On 2 cores
#: two 1-thread runs train +14% (width 0.25) to +43% (width 0.125) more images/s than one 2-thread run
#: (docs/performance.md); beyond 8 workers, memory (each holds its data set) and the unmeasured many-core
#: case argue for several threads per worker instead.
CPU_WORKERS_MAX = 8


def _cgroup_cpu_limit() -> float | None:
    """The CPU quota of this process's cgroup in CPUs (cgroup v2 cpu.max, or v1 cfs quota), or None."""
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read_text())
        period = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text())
        return quota / period if quota > 0 and period > 0 else None
    except (OSError, ValueError):
        return None


def available_cpus() -> int:
    """The CPUs this process may use: its affinity mask (taskset, SLURM, a container's cpuset), capped by
    its cgroup's CPU quota (docker --cpus, Kubernetes limits); os.cpu_count() counts every core of the
    machine, which oversubscribes a limited job."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    limit = _cgroup_cpu_limit()
    if limit is not None:
        cpus = min(cpus, math.floor(limit))
    return max(1, cpus)


def visible_gpus(device: str) -> list[str]:
    """GPU ids the workers can be pinned to: CUDA_VISIBLE_DEVICES's entries, or 0..count-1; none for CPU runs."""
    if device in ("cpu", "mps"):
        return []
    import torch

    count = torch.cuda.device_count()
    if count == 0:
        return []
    listed = [d.strip() for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    return listed[:count] if listed else [str(i) for i in range(count)]


def worker_slots(workers: int | None, workers_per_gpu: int = 1, device: str = "auto") -> list[str | None]:
    """One entry per parallel worker: the CUDA_VISIBLE_DEVICES value it gets (None: no GPU).

    Default: ``workers_per_gpu`` workers on each GPU; without GPUs one worker per available CPU, at most
    CPU_WORKERS_MAX (each then gets cpus // workers threads, see threads_per_worker). Workers are dealt
    round robin over the GPUs, so 4 workers on 2 GPUs put 2 on each."""
    gpus = visible_gpus(device)
    if workers is None:
        workers = len(gpus) * workers_per_gpu if gpus else min(available_cpus(), CPU_WORKERS_MAX)
    return [gpus[i % len(gpus)] if gpus else None for i in range(workers)]


def threads_per_worker(n_workers: int) -> int:
    # Share the CPUs: N workers each with all CPUs' threads would oversubscribe them.
    if os.environ.get("OMP_NUM_THREADS", "").isdigit():
        return max(1, int(os.environ["OMP_NUM_THREADS"]))
    return max(1, available_cpus() // n_workers)


def raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def _worker(spec_json: str, cuda_devices: str | None, threads: int) -> None:
    """The body of one worker process: one run, its output appended to ``<run dir>/log.txt``.
    Exit status 0: done; BUSY_EXIT: another process trains it."""
    # The pool stops its workers with SIGTERM (Ctrl-C, a failure of the pool): log it as an interruption,
    # and let train's atomic writes clean up, as for Ctrl-C.
    signal.signal(signal.SIGTERM, raise_interrupt)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    if cuda_devices is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = cuda_devices  # read when CUDA starts, which is after this
    import torch

    from camri.sweep import RunSpec

    torch.set_num_threads(threads)  # OpenMP read OMP_NUM_THREADS when the server imported torch
    spec = RunSpec.from_json(spec_json)
    lock = RunLock(spec.out_dir)
    if not lock.acquire(wait_s=2.0):
        sys.exit(BUSY_EXIT)
    # Send this process's output, Python's and native code's alike, to the log (appended on every attempt).
    log = os.open(spec.out_dir / rundir.LOG, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(log)
    sys.stdout = open(1, "w", buffering=1, encoding="utf-8", errors="replace", closefd=False)
    sys.stderr = open(2, "w", buffering=1, encoding="utf-8", errors="replace", closefd=False)
    code = 0
    try:
        execute_spec(spec, lock)
    except KeyboardInterrupt:
        print("== camri grid: interrupted; the run resumes from its checkpoint next time", file=sys.stderr)
        code = 130
    except BaseException:
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    sys.exit(code)


def _fork_context():
    """multiprocessing's fork server, with torch and camri imported once in it (see _worker)."""
    import multiprocessing

    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["camri.train", "camri.sweep", "camri.executors.local"])
    return context


def run_local(
    specs: list, workers: int | None = None, workers_per_gpu: int = 1, bar: tqdm | None = None
) -> dict[str, str]:
    """Run ``specs`` (``camri.sweep.RunSpec`` s) in worker processes, at most len(slots) at a time.
    Returns {key: done|failed|busy}."""
    device = specs[0].config.device if specs else "auto"
    slots = worker_slots(workers, workers_per_gpu, device)
    threads = threads_per_worker(len(slots))
    context = _fork_context()
    queue = list(specs)
    running: dict[int, tuple] = {}  # slot -> (process, spec)
    outcome: dict[str, str] = {}

    def finish(spec, result: str) -> None:
        outcome[spec.key] = result
        if bar is not None:
            bar.update(1)
            bar.set_postfix(failed=sum(v == "failed" for v in outcome.values()), refresh=False)

    # SIGTERM (`kill`, `timeout`, a batch system stopping this command) must stop the workers too, as
    # Ctrl-C does: they are the fork server's children, not ours, and would otherwise train on unwatched.
    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, raise_interrupt) if in_main else None
    try:
        while queue or running:
            for slot in range(len(slots)):
                if slot in running or not queue:
                    continue
                spec = queue.pop(0)
                if lock_holder(spec.out_dir):  # another pool, or a submitit job, trains it now
                    finish(spec, "busy")
                    continue
                spec.out_dir.mkdir(parents=True, exist_ok=True)
                process = context.Process(
                    target=_worker, args=(spec.to_json(), slots[slot], threads), name=f"camri-grid {spec.key}"
                )
                process.start()
                running[slot] = (process, spec)
            if not running:
                continue
            ended = set(wait([process.sentinel for process, _ in running.values()]))
            for slot, (process, spec) in list(running.items()):
                if process.sentinel not in ended:
                    continue
                process.join()
                del running[slot]
                if process.exitcode == BUSY_EXIT:
                    finish(spec, "busy")
                else:
                    finish(spec, "done" if rundir.is_finished(spec.out_dir) else "failed")
    finally:
        # Interrupted (Ctrl-C reaches the workers too) or failed: stop the workers, keep their checkpoints.
        for process, _ in running.values():
            if process.is_alive():
                process.terminate()
        for process, _ in running.values():
            process.join(timeout=30)
            if process.is_alive():
                process.kill()
                process.join()
        if in_main:
            signal.signal(signal.SIGTERM, previous)
    return outcome
