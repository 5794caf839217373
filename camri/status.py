"""``camri status``: each run of a profile as done, running, pending, failed or cancelled.

done: finished (summary.json: the only proof of success, whatever the job's state); running: a live run
lock (camri.executors.RunLock), or its submitit job runs; pending: its job is queued (or requeued), or
nothing was submitted yet; failed: started and stopped without summary.json, or its job ended without
it; cancelled: its job was cancelled (scancel) before the run finished. A failed or cancelled run comes
with the last lines of its log and the command that trains it again.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from camri import rundir
from camri.executors import lock_holder
from camri.executors.slurm import JobState, job_log, job_states, read_jobs
from camri.profile import Profile, add_profile_arguments, load_profile, profile_dir
from camri.sweep import BaselineNotFinished, RunSpec, choose_important, expand, methods_known

STATES = ("done", "running", "pending", "failed", "cancelled")
STOPPED = ("failed", "cancelled")  # the states shown with their log's last lines and a resubmit command
#: How many of a log's last lines a failed or cancelled run is shown with.
TAIL_LINES = 5
#: The start line execute_spec writes for each attempt of a run, with the submitit job it ran in.
_START = re.compile(r"^== camri grid: \S+ on ")
_JOB = re.compile(r", job (\S+?)(?:,|$)")


@dataclass
class StatusRow:
    key: str
    stage: str
    state: str  # one of STATES
    log: Path | None  # <run dir>/log.txt when it exists, else submitit's log of the run's job
    detail: str = ""  # done: accuracy; running, pending: where; failed, cancelled: why
    in_flight: bool = False  # a process trains it or its job is queued or running: not to submit again
    tail: list[str] = field(default_factory=list)  # failed, cancelled: the log's last lines
    cluster: str | None = None  # the submitit cluster of its recorded job (None: no job)


def _log_lines(path: Path) -> list[str]:
    """The non-blank lines of the last 50 kB of a log, or none."""
    try:
        with open(path, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 50000))
            return [line.rstrip() for line in f.read().decode(errors="replace").splitlines() if line.strip()]
    except OSError:
        return []


def _latest_attempt(lines: list[str]) -> list[str]:
    """The lines of a run's log from its latest attempt's start line on."""
    starts = [i for i, line in enumerate(lines) if _START.match(line)]
    return lines[starts[-1] if starts else 0 :]


def _attempt_job(attempt: list[str]) -> str | None:
    """The submitit job id the attempt ran in (from its start line), or None."""
    found = _JOB.search(attempt[0]) if attempt and _START.match(attempt[0]) else None
    return found.group(1) if found else None


def _last_error_line(attempt: list[str]) -> str:
    """Why an attempt stopped: its last exception line, or "" (a killed process leaves none)."""
    for line in reversed(attempt):
        line = line.strip()
        if re.match(r"^[\w.]+(Error|Exception|Interrupt|Exit)\b", line) or "interrupted" in line:
            return line
    return ""


def run_state(spec, job: dict | None = None, job_state: JobState | None = None) -> StatusRow:
    """The state of one run from its directory, its lock and its recorded submitit job (``job``, an entry
    of jobs.json, with its ``job_state`` from ``job_states``; asked here when not given)."""
    out = spec.out_dir
    log = out / rundir.LOG
    log_path = log if log.is_file() else None
    cluster = job["cluster"] if job is not None else None
    if rundir.is_finished(out):
        with contextlib.suppress(OSError, ValueError, KeyError):
            accuracy = rundir.read_summary(out)["accuracy"]
            return StatusRow(spec.key, spec.stage, "done", log_path, f"accuracy {accuracy:.4f}", cluster=cluster)
        return StatusRow(spec.key, spec.stage, "done", log_path, cluster=cluster)
    if job is not None and job_state is None:
        job_state = job_states({spec.key: job})[spec.key]
    phase = job_state.phase if job is not None else None
    where = f"{cluster} job {job['job_id']} {job_state.text}" if job is not None else ""
    epochs = f"epoch {rundir.epochs_done(out)}/{spec.config.epochs}"
    holder = lock_holder(out)
    if holder:
        detail = ", ".join(part for part in (where, f"pid {holder}", f"{epochs} done") if part)
        return StatusRow(spec.key, spec.stage, "running", log_path, detail, in_flight=True, cluster=cluster)
    attempt = _latest_attempt(_log_lines(log)) if log_path else []
    # An attempt that started in the job, holds no lock and left no summary ended in it: a run of a task of
    # several runs failed while the job trains the next one (the job is still in flight).
    ended_in_job = phase == "running" and _attempt_job(attempt) == str(job["job_id"])
    if phase in ("pending", "running") and not ended_in_job:
        detail = where if phase == "pending" else f"{where}; the run has not started in it yet"
        return StatusRow(spec.key, spec.stage, phase, log_path, detail, in_flight=True, cluster=cluster)
    if log_path is None and phase in (None, "unknown"):
        # Never started here, and no job known to have ended: still to do (or lost track of, e.g. sacct
        # forgot an old job: submitting it again is safe, the lock keeps one process on it).
        return StatusRow(spec.key, spec.stage, "pending", None, where or "not submitted", cluster=cluster)
    state = "cancelled" if phase == "ended" and job_state.text == "CANCELLED" else "failed"
    ended = f"{cluster} job {job['job_id']} ended ({job_state.text})" if phase == "ended" else ""
    if log_path is None:
        shown = job_log(job)
        reason, tail = f"{ended} before the run started; see {shown}", _log_lines(shown)[-TAIL_LINES:]
    else:
        shown, tail = log_path, attempt[-TAIL_LINES:]
        reason = _last_error_line(attempt) or "stopped without an error message (killed?)"
        reason = f"{ended}: {reason}" if ended else reason
    return StatusRow(
        spec.key,
        spec.stage,
        state,
        shown,
        f"{reason} [after {epochs}]",
        in_flight=ended_in_job,
        tail=tail,
        cluster=cluster,
    )


def status(profile: Profile | str, results_dir=None) -> list[StatusRow]:
    """One row per run of the profile (baseline, then methods), with its state. The methods stage is
    listed once its important classes are known (fixed, or the CE baseline finished)."""
    profile = load_profile(profile)
    root = profile_dir(profile, results_dir)
    specs = expand(profile, "baseline", results_dir=results_dir)
    with contextlib.suppress(BaselineNotFinished):
        specs += expand(
            profile, "methods", choose_important(profile, results_dir, record=False), results_dir=results_dir
        )
    return states(specs, read_jobs(root))


def states(specs: list[RunSpec], jobs: dict) -> list[StatusRow]:
    # Ask the cluster only about the jobs of unfinished runs: finished ones are known from their folder.
    unfinished = {s.key: jobs[s.key] for s in specs if s.key in jobs and not s.finished}
    states = job_states(unfinished)
    return [run_state(spec, unfinished.get(spec.key), states.get(spec.key)) for spec in specs]


def resubmit_command(profile: Profile, results_dir, cluster: str | None) -> str:
    """The command that trains a failed or cancelled run again, with whatever else of the profile is
    missing (finished runs are kept; an interrupted run resumes from its checkpoint): through submitit on
    ``cluster`` when the run had a job there, else through the local executor."""
    from camri.notebooks import profile_argument

    words = ["camri", "grid", "--profile", profile_argument(profile)]
    if results_dir is not None:
        words += ["--results-dir", str(Path(results_dir).expanduser().absolute())]
    if cluster is None:
        words += ["--executor", "local"]
    else:
        words += ["--executor", "submitit"]
        if cluster != profile.executor.submitit.cluster:
            words += ["--cluster", cluster]
    return shlex.join(words)


def format_status(rows: list[StatusRow], resubmit=None) -> str:
    """The table of ``camri status``: one line per run, a failed or cancelled run's log's last lines below
    it, and at the end the command that resubmits them (``resubmit(cluster)`` gives it; None: no line)."""
    counts = {state: sum(r.state == state for r in rows) for state in STATES}
    width = max([len(r.key) for r in rows] + [3])
    lines = [f"{'run':<{width}}  {'state':<9} detail / log"]
    for r in rows:
        detail = r.detail + (f"  log: {r.log}" if r.state in STOPPED and r.log else "")
        lines.append(f"{r.key:<{width}}  {r.state:<9} {detail}".rstrip())
        if r.state in STOPPED:
            lines += [f"{'':<{width}}  {'':<9} | {line}" for line in r.tail]
    lines.append(", ".join(f"{n} {state}" for state, n in counts.items()) + f" (of {len(rows)} runs)")
    if resubmit is not None:
        stopped = [r.cluster for r in rows if r.state in STOPPED and not r.in_flight]
        for cluster in dict.fromkeys(stopped):
            n = stopped.count(cluster)
            lines.append(f"to train the {n} failed or cancelled run(s) again: {resubmit(cluster)}")
    return "\n".join(lines)


def _status_command(args) -> int:
    profile = load_profile(args.profile)
    rows = status(profile, args.results_dir)
    if args.only:
        rows = [r for r in rows if r.state == args.only]
    print(format_status(rows, lambda cluster: resubmit_command(profile, args.results_dir, cluster)))
    if not methods_known(profile, args.results_dir):
        print("the methods stage is listed once the CE baseline has finished (its important classes come from it)")
    return 0


def add_cli(subparsers) -> None:
    stat = subparsers.add_parser(
        "status",
        help="done / running / pending / failed / cancelled per run of a profile",
        description="One line per run of a profile, with the scheduler's state of its submitit job; a failed or "
        "cancelled run shows its log's last lines, and the command that trains it again.",
    )
    add_profile_arguments(stat)
    stat.add_argument("--only", choices=STATES, default=None, help="list only the runs in this state")
    stat.set_defaults(func=_status_command)
