"""The SLURM executor: a profile's runs as SLURM job arrays through submitit (docs/scale-out.md).

Each array task (``GridTask``) trains ``runs_per_job`` runs one after another; a preempted or timed-out
job is requeued, skips its finished runs and resumes the interrupted one from its checkpoint.pt.
``cluster: local`` runs the array on this machine with submitit's LocalExecutor (that is how the tests
exercise this path without SLURM). The jobs of a profile are recorded in ``<profile dir>/jobs.json``;
``job_states`` asks the cluster (one sacct call) where each stands.
"""

from __future__ import annotations

import contextlib
import datetime
import math
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import NamedTuple

import submitit
from filelock import FileLock
from tqdm.auto import tqdm

from camri import rundir
from camri.executors import execute_spec, pid_alive
from camri.io import atomic_write_json, read_json
from camri.profile import SubmititOptions

JOBS_FILE = "jobs.json"


class GridTask(submitit.helpers.Checkpointable):
    """One array task: its runs, trained one after another, each with its output appended to its
    ``<run dir>/log.txt``.

    A finished run (summary.json) is skipped without touching its folder, so a job started again after
    some of its runs finished (``scontrol requeue`` from outside, a preemption) trains only the others and
    never overwrites a finished run. On preemption or timeout submitit calls ``checkpoint()``, which
    requeues this same task: the requeued job skips the finished runs and resumes the interrupted one from
    its checkpoint.pt (written after every epoch), so at most one epoch is lost. The task holds no state
    of its own: the run directories are the state. A run that raises does not keep the task's later runs
    from training; the task raises at the end, so the job ends as failed.
    """

    def __init__(self, specs: list):  # camri.sweep.RunSpec s
        self.specs = list(specs)

    def __call__(self) -> list[str]:
        threads = os.environ.get("SLURM_CPUS_PER_TASK")
        if threads and "OMP_NUM_THREADS" not in os.environ:
            import torch

            torch.set_num_threads(int(threads))  # else torch counts every core of the node
        job_id = submitit.JobEnvironment().job_id
        outcomes, errors = [], []
        for spec in self.specs:
            if spec.finished:
                print(f"== camri grid: {spec.key} is finished; skipped", flush=True)  # to submitit's log
                outcomes.append("done")
                continue
            try:
                outcomes.append(_train_logged(spec, job_id))
            except Exception as error:
                errors.append((spec.key, error))
                outcomes.append("failed")
        if errors:
            raise RuntimeError(
                f"{len(errors)} of the {len(self.specs)} runs of this job failed "
                f"({', '.join(key for key, _ in errors)}); each one's traceback is in its log.txt"
            ) from errors[0][1]
        return outcomes

    def checkpoint(self, *args, **kwargs) -> submitit.helpers.DelayedSubmission:
        return submitit.helpers.DelayedSubmission(GridTask(self.specs))


def _train_logged(spec, job_id: str) -> str:
    """``execute_spec`` with this process's output appended to the run's log.txt."""
    spec.out_dir.mkdir(parents=True, exist_ok=True)
    with (
        open(spec.out_dir / rundir.LOG, "a", buffering=1, encoding="utf-8") as log,
        contextlib.redirect_stdout(log),
        contextlib.redirect_stderr(log),
    ):
        try:
            return execute_spec(spec, job=job_id)
        except Exception as error:
            if _requeue_cut_short(error):
                _log_interrupted("preempted; SLURM ended submitit's requeue call")
            else:
                traceback.print_exc()  # into log.txt; submitit also keeps the job's error in its own log
            raise
        except BaseException as stop:  # SystemExit when submitit requeues the job, KeyboardInterrupt
            _log_interrupted(type(stop).__name__)
            raise


def _log_interrupted(why: str) -> None:
    print(f"== camri grid: interrupted ({why}); the run resumes from its checkpoint", file=sys.stderr)


def _requeue_cut_short(error: BaseException) -> bool:
    """Whether ``error`` is submitit's own ``scontrol requeue`` call, killed by the requeue it asked for.
    On a preemption signal submitit saves the checkpoint and then runs ``scontrol requeue``; SLURM ends the
    whole job, that child included, sometimes before the call returns, so the handler raises
    CalledProcessError instead of SystemExit although the job is requeued (seen on the local SLURM cluster
    of tests/test_slurm.py). That is an interruption, not a failure of the run."""
    cmd = getattr(error, "cmd", None)
    return (
        isinstance(error, subprocess.CalledProcessError)
        and isinstance(cmd, list | tuple)
        and list(cmd[:2]) == ["scontrol", "requeue"]
    )


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


def check_partition_has_gpus(options: SubmititOptions) -> None:
    """Stop with what to change when ``gpus_per_node`` > 0 asks for GPUs on a partition whose nodes have
    none: sbatch's own refusal is cryptic ("Invalid generic resource (gres) specification" or "Requested
    node configuration is not available"). sinfo lists each partition's generic resources (GRES), where
    SLURM's GPUs are ``gpu:...``; when sinfo cannot answer, or the partition is unknown, sbatch decides."""
    if options.gpus_per_node == 0:
        return
    try:
        listing = subprocess.run(
            ["sinfo", "-h", "-o", "%P|%G"], capture_output=True, text=True, timeout=60, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return
    wanted = set(options.partition.split(",")) if options.partition else None
    # sinfo marks the default partition with a '*'; a partition may span several lines (node groups).
    gres = {
        resources.strip()
        for name, resources in (line.split("|", 1) for line in listing.splitlines() if "|" in line)
        if (name.rstrip("*") in wanted if wanted else name.endswith("*"))
    }
    if gres and not any("gpu" in resources for resources in gres):
        where = f"partition {options.partition}" if options.partition else "the cluster's default partition"
        raise ValueError(
            f"executor.submitit.gpus_per_node is {options.gpus_per_node}, but {where} has no GPUs (its nodes' "
            f"GRES: {', '.join(sorted(gres))}): set gpus_per_node: 0 to train on CPUs, or name a partition "
            "with GPUs in executor.submitit.partition (sinfo -o '%P %G' lists each partition's GRES)"
        )


def submit_submitit(specs: list, options: SubmititOptions, root: Path, profile_name: str) -> dict:
    """Submit ``specs`` as job arrays: ``runs_per_job`` consecutive runs per task, at most ``max_array_size``
    tasks per array. Records ``{key: job}`` in jobs.json after each array and returns it (the runs of one
    task share its job)."""
    submitted = {}
    if not specs:
        return submitted
    executor = make_submitit_executor(options, root, profile_name)
    per_job = options.runs_per_job
    tasks = [specs[start : start + per_job] for start in range(0, len(specs), per_job)]
    if executor.cluster == "local" and len(tasks) > options.array_parallelism:
        # submitit's LocalExecutor starts every job at once: 2,000 runs would be 2,000 processes.
        found = "" if options.cluster == "local" else " (SLURM was not found here: no srun on PATH)"
        raise ValueError(
            f"submitit's local cluster{found} would start all {len(tasks)} jobs at once, more than "
            f"executor.submitit.array_parallelism = {options.array_parallelism}: use "
            "--executor local (a pool of workers) on this machine"
        )
    if executor.cluster == "slurm":
        check_partition_has_gpus(options)
    for start in range(0, len(tasks), options.max_array_size):
        chunk = tasks[start : start + options.max_array_size]
        jobs = executor.submit_array([GridTask(task) for task in chunk])
        stamp = datetime.datetime.now().isoformat(timespec="seconds")
        entries = {spec.key: job for task, job in zip(chunk, jobs) for spec in task}
        # Recorded per array, so an error in a later sbatch still leaves the earlier arrays known.
        _record_jobs(
            root,
            {
                key: {
                    "job_id": str(job.job_id),
                    "cluster": executor.cluster,
                    "folder": str(job.paths.folder),
                    "submitted": stamp,
                }
                for key, job in entries.items()
            },
        )
        submitted.update(entries)
    return submitted


class JobState(NamedTuple):
    """Where a recorded job stands: ``phase`` pending (queued, requeued, suspended), running, ended, or
    unknown (sacct cannot say: it is unavailable, or it forgot an old job); ``text`` is the scheduler's
    word for it (PENDING, RUNNING, CANCELLED, TIMEOUT, ...)."""

    phase: str
    text: str

    @property
    def in_flight(self) -> bool:
        return self.phase in ("pending", "running")


# SLURM states of a job that waits (to start, or to go on) and of one that runs; anything else has ended.
_SLURM_WAITING = {
    "PENDING",
    "REQUEUED",
    "REQUEUE_FED",
    "REQUEUE_HOLD",
    "RESV_DEL_HOLD",
    "SPECIAL_EXIT",
    "PREEMPTED",
    "SUSPENDED",
}
_SLURM_RUNNING = {"RUNNING", "CONFIGURING", "COMPLETING", "RESIZING", "STAGE_OUT", "SIGNALING"}
#: A job sacct does not list yet (just submitted) counts as pending for this long after its submission.
_SACCT_GRACE_S = 600


def _slurm_phase(state: str) -> str:
    if state in _SLURM_WAITING:
        return "pending"
    return "running" if state in _SLURM_RUNNING else "ended"


def job_states(jobs: dict) -> dict[str, JobState]:
    """``{run key: JobState}`` for recorded submitit jobs (entries of jobs.json). One sacct call covers
    every SLURM job."""
    states: dict[str, JobState] = {}
    slurm = {key: entry for key, entry in jobs.items() if entry.get("cluster") == "slurm"}
    if slurm:
        from submitit.slurm.slurm import SlurmInfoWatcher

        watcher = SlurmInfoWatcher(delay_s=0)  # our own watcher: one call now, not one per job
        for entry in slurm.values():
            watcher.register_job(str(entry["job_id"]))
        watcher.update()  # logs a warning and leaves every state UNKNOWN when sacct fails
        now = time.time()
        for key, entry in slurm.items():
            # "CANCELLED by 0": the first word is the state.
            state = (watcher.get_state(str(entry["job_id"]), mode="cache") or "UNKNOWN").split()[0].upper()
            if state == "UNKNOWN":
                try:
                    age = now - datetime.datetime.fromisoformat(entry.get("submitted", "")).timestamp()
                except ValueError:
                    age = math.inf
                states[key] = JobState("pending", "SUBMITTED") if age < _SACCT_GRACE_S else JobState("unknown", state)
            else:
                states[key] = JobState(_slurm_phase(state), state)
    for key, entry in jobs.items():
        if key in states:
            continue
        job_id = str(entry.get("job_id"))
        if entry.get("cluster") == "local":
            # The LocalExecutor's job id is the pid of its controller process on the submitting machine.
            if (Path(entry["folder"]) / f"{job_id}_0_result.pkl").exists():
                states[key] = JobState("ended", "FINISHED")
            else:
                alive = job_id.isdigit() and pid_alive(int(job_id)) and _is_local_controller(job_id)
                states[key] = JobState("running", "RUNNING") if alive else JobState("ended", "ENDED")
        else:
            states[key] = JobState("ended", "FINISHED")  # debug: ran inside the submitting process
    return states


def job_log(entry: dict) -> Path:
    """submitit's stderr log of a recorded job (its Python's log and tracebacks, SLURM's messages)."""
    return submitit.core.utils.JobPaths(entry["folder"], job_id=str(entry["job_id"])).stderr


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


def wait_submitit(jobs: dict, specs: dict, bar: tqdm | None = None, poll_s: float = 30) -> dict:
    """Wait for every job; return {key: done|failed}. The bar advances as runs finish. Every ``poll_s``
    (on submitit's local and debug clusters every second) it looks for the runs' summary.json and asks
    submitit whether the jobs ended (submitit spaces its sacct calls out by itself)."""
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
            local = all(isinstance(job, submitit.LocalJob | submitit.DebugJob) for job in jobs.values())
            time.sleep(1.0 if local else poll_s)
    return outcome
