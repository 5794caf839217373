"""The SLURM executor: a profile's runs as SLURM job arrays through submitit (docs/scale-out.md).

One run per array task (``GridTask``); a preempted or timed-out job is requeued and resumes from the
run's checkpoint.pt. ``cluster: local`` runs the array on this machine with submitit's LocalExecutor
(that is how the tests exercise this path without SLURM). The jobs of a profile are recorded in
``<profile dir>/jobs.json``; ``job_states`` asks the cluster (one sacct call) which are still in flight.
"""

from __future__ import annotations

import contextlib
import datetime
import math
import os
import sys
import time
import traceback
from pathlib import Path

import submitit
from filelock import FileLock
from tqdm.auto import tqdm

from camri import rundir
from camri.executors import execute_spec, pid_alive
from camri.io import atomic_write_json, read_json
from camri.profile import SubmititOptions

JOBS_FILE = "jobs.json"


class GridTask(submitit.helpers.Checkpointable):
    """One run as a submitit job: trains it with output appended to ``<run dir>/log.txt``.

    On preemption or timeout submitit calls ``checkpoint()``, which requeues this same task: the requeued
    job calls ``train`` again, and train resumes from checkpoint.pt (written after every epoch), so at
    most one epoch is lost. The task holds no state of its own: the run directory is the state.
    """

    def __init__(self, spec):  # a camri.sweep.RunSpec
        self.spec = spec

    def __call__(self) -> str:
        spec = self.spec
        threads = os.environ.get("SLURM_CPUS_PER_TASK")
        if threads and "OMP_NUM_THREADS" not in os.environ:
            import torch

            torch.set_num_threads(int(threads))  # else torch counts every core of the node
        spec.out_dir.mkdir(parents=True, exist_ok=True)
        with (
            open(spec.out_dir / rundir.LOG, "a", buffering=1, encoding="utf-8") as log,
            contextlib.redirect_stdout(log),
            contextlib.redirect_stderr(log),
        ):
            try:
                return execute_spec(spec)
            except Exception:
                traceback.print_exc()  # into log.txt; submitit also keeps it in its own log and result
                raise
            except BaseException as stop:  # SystemExit when submitit requeues the job, KeyboardInterrupt
                print(
                    f"== camri grid: interrupted ({type(stop).__name__}); the run resumes from its checkpoint",
                    file=sys.stderr,
                )
                raise

    def checkpoint(self, *args, **kwargs) -> submitit.helpers.DelayedSubmission:
        return submitit.helpers.DelayedSubmission(GridTask(self.spec))


def read_jobs(root: Path) -> dict:
    """``{run key: {job_id, cluster, folder, submitted}}`` of the submitit jobs of a profile (jobs.json)."""
    path = root / JOBS_FILE
    return read_json(path).get("jobs", {}) if path.is_file() else {}


def _record_jobs(root: Path, entries: dict) -> None:
    root.mkdir(parents=True, exist_ok=True)
    # The lock serialises read-modify-write of jobs.json between submitters (two `camri grid` at once).
    with FileLock(root / (JOBS_FILE + ".lock")):
        jobs = read_jobs(root)
        jobs.update(entries)
        atomic_write_json(root / JOBS_FILE, {"jobs": jobs})  # atomic: readers never see half a file


def make_submitit_executor(options: SubmititOptions, root: Path, profile_name: str):
    """A ``submitit.AutoExecutor`` writing its files to ``<profile dir>/submitit/<job id>/``."""
    executor = submitit.AutoExecutor(
        folder=root / "submitit" / "%j",
        cluster=options.cluster,
        slurm_max_num_timeout=options.max_num_timeout,
        local_max_num_timeout=options.max_num_timeout,
    )
    parameters = dict(
        name=f"camri-{profile_name}",
        timeout_min=options.timeout_min,
        gpus_per_node=options.gpus_per_node,
        cpus_per_task=options.cpus_per_task,
        nodes=1,
        tasks_per_node=1,
        mem_gb=options.mem_gb,
        slurm_array_parallelism=options.array_parallelism,
        slurm_additional_parameters=dict(options.slurm_additional_parameters),
    )
    if options.partition:
        parameters["slurm_partition"] = options.partition
    if options.setup:
        parameters["slurm_setup"] = list(options.setup)
    executor.update_parameters(**parameters)
    return executor


def submit_submitit(specs: list, options: SubmititOptions, root: Path, profile_name: str) -> dict:
    """Submit ``specs`` as job arrays (one run per task, at most ``max_array_size`` tasks per array); record
    ``{key: job}`` in jobs.json after each array and return the jobs."""
    submitted = {}
    if not specs:
        return submitted
    executor = make_submitit_executor(options, root, profile_name)
    if executor.cluster == "local" and len(specs) > options.array_parallelism:
        # submitit's LocalExecutor starts every job at once: 2,000 runs would be 2,000 processes.
        found = "" if options.cluster == "local" else " (SLURM was not found here: no srun on PATH)"
        raise ValueError(
            f"submitit's local cluster{found} would start all {len(specs)} runs at once, more than "
            f"executor.submitit.array_parallelism = {options.array_parallelism}: use "
            "--executor local (a pool of workers) on this machine"
        )
    for start in range(0, len(specs), options.max_array_size):
        chunk = specs[start : start + options.max_array_size]
        jobs = executor.submit_array([GridTask(spec) for spec in chunk])
        stamp = datetime.datetime.now().isoformat(timespec="seconds")
        # Recorded per array, so an error in a later sbatch still leaves the earlier arrays known.
        _record_jobs(
            root,
            {
                spec.key: {
                    "job_id": str(job.job_id),
                    "cluster": executor.cluster,
                    "folder": str(job.paths.folder),
                    "submitted": stamp,
                }
                for spec, job in zip(chunk, jobs)
            },
        )
        submitted.update({spec.key: job for spec, job in zip(chunk, jobs)})
    return submitted


# SLURM states of a job that is queued or running (anything else has ended).
_SLURM_LIVE = {
    "PENDING",
    "RUNNING",
    "REQUEUED",
    "REQUEUE_FED",
    "REQUEUE_HOLD",
    "CONFIGURING",
    "COMPLETING",
    "SUSPENDED",
    "RESIZING",
    "STAGE_OUT",
    "SIGNALING",
    "RESV_DEL_HOLD",
    "SPECIAL_EXIT",
    "PREEMPTED",
}
#: A job sacct does not list yet (just submitted) counts as in flight for this long after its submission.
_SACCT_GRACE_S = 600


def job_states(jobs: dict) -> dict[str, tuple[bool | None, str]]:
    """``{run key: (in flight?, state text)}`` for recorded submitit jobs; in flight None when it cannot be
    known (sacct unavailable, or it forgot an old job). One sacct call covers every SLURM job."""
    states: dict[str, tuple[bool | None, str]] = {}
    slurm = {key: entry for key, entry in jobs.items() if entry.get("cluster") == "slurm"}
    if slurm:
        from submitit.slurm.slurm import SlurmInfoWatcher

        watcher = SlurmInfoWatcher(delay_s=0)  # our own watcher: one call now, not one per job
        for entry in slurm.values():
            watcher.register_job(str(entry["job_id"]))
        watcher.update()  # logs a warning and leaves every state UNKNOWN when sacct fails
        now = time.time()
        for key, entry in slurm.items():
            state = (watcher.get_state(str(entry["job_id"]), mode="cache") or "UNKNOWN").split()[0].upper()
            if state == "UNKNOWN":
                try:
                    age = now - datetime.datetime.fromisoformat(entry.get("submitted", "")).timestamp()
                except ValueError:
                    age = math.inf
                states[key] = (True, "SUBMITTED") if age < _SACCT_GRACE_S else (None, state)
            else:
                states[key] = (state in _SLURM_LIVE, state)
    for key, entry in jobs.items():
        if key in states:
            continue
        job_id = str(entry.get("job_id"))
        if entry.get("cluster") == "local":
            # The LocalExecutor's job id is the pid of its controller process on the submitting machine.
            if (Path(entry["folder"]) / f"{job_id}_0_result.pkl").exists():
                states[key] = (False, "FINISHED")
            else:
                alive = job_id.isdigit() and pid_alive(int(job_id)) and _is_local_controller(job_id)
                states[key] = (alive, "RUNNING" if alive else "ENDED")
        else:
            states[key] = (False, "FINISHED")  # debug: ran inside the submitting process
    return states


def _is_local_controller(pid: str) -> bool:
    """Is ``pid`` a live (not zombie) submitit local controller? Guards against a reused pid. Without
    /proc (macOS) a live pid is taken at its word."""
    proc = Path(f"/proc/{pid}")
    if not Path("/proc/self").exists():
        return True
    try:
        state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        return state != "Z" and b"submitit.local._local" in (proc / "cmdline").read_bytes()
    except (OSError, IndexError):
        return False


def wait_submitit(jobs: dict, specs: dict, bar: tqdm | None = None, poll_s: float = 1.0) -> dict:
    """Wait for every job; return {key: done|failed}. The bar advances as runs finish."""
    outcome: dict[str, str] = {}
    while len(outcome) < len(jobs):
        for key, job in jobs.items():
            if key in outcome:
                continue
            if specs[key].finished or job.done():
                outcome[key] = "done" if specs[key].finished else "failed"
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(failed=sum(v == "failed" for v in outcome.values()), refresh=False)
        if len(outcome) < len(jobs):
            # SLURM's state comes from sacct, which submitit caches; poll less often there.
            time.sleep(poll_s if all(isinstance(j, submitit.LocalJob) for j in jobs.values()) else max(poll_s, 30))
    return outcome
