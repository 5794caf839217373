"""``camri status``: each run of a profile as done, running, failed or pending.

done: finished (summary.json); running: a live run lock (camri.executors.RunLock), or a submitit job
queued or running; failed: started and stopped without summary.json (its log and last error line);
pending: not started.
"""

from __future__ import annotations

import contextlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

from camri import rundir
from camri.executors import lock_holder
from camri.executors.slurm import job_states, read_jobs
from camri.profile import Profile, add_profile_arguments, load_profile, profile_dir
from camri.sweep import BaselineNotFinished, RunSpec, choose_important, expand, methods_known

STATES = ("done", "running", "failed", "pending")


@dataclass
class StatusRow:
    key: str
    stage: str
    state: str  # done | running | failed | pending
    log: Path | None  # <run dir>/log.txt when it exists
    detail: str = ""  # done: accuracy; running: who; failed: the last error line


def _last_error_line(log: Path) -> str:
    """Why the latest attempt of a run stopped: the last exception line of its log after the latest
    "== camri grid:" start line, or "" (a killed process leaves none)."""
    try:
        with open(log, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 50000))
            lines = [line.strip() for line in f.read().decode(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    starts = [i for i, line in enumerate(lines) if line.startswith("== camri grid:") and " on " in line]
    for line in reversed(lines[starts[-1] if starts else 0 :]):
        if re.match(r"^[\w.]+(Error|Exception|Interrupt|Exit)\b", line) or "interrupted" in line:
            return line
    return ""


def run_state(spec, job: dict | None = None, job_state: tuple[bool | None, str] | None = None) -> StatusRow:
    """The state of one run from its directory, its lock and its recorded submitit job (``job``, an entry
    of jobs.json, with its ``job_state`` from ``job_states``; computed here when not given)."""
    out = spec.out_dir
    log = out / rundir.LOG
    log_path = log if log.is_file() else None
    if rundir.is_finished(out):
        with contextlib.suppress(OSError, ValueError, KeyError):
            accuracy = rundir.read_summary(out)["accuracy"]
            return StatusRow(spec.key, spec.stage, "done", log_path, f"accuracy {accuracy:.4f}")
        return StatusRow(spec.key, spec.stage, "done", log_path)
    holder = lock_holder(out)
    if holder:
        return StatusRow(
            spec.key,
            spec.stage,
            "running",
            log_path,
            f"pid {holder}, epoch {rundir.epochs_done(out)}/{spec.config.epochs} done",
        )
    if job is not None and job_state is None:
        job_state = job_states({spec.key: job})[spec.key]
    live, state = job_state if job is not None else (False, "")
    if live:
        return StatusRow(spec.key, spec.stage, "running", log_path, f"{job['cluster']} job {job['job_id']} {state}")
    if log_path is None and (job is None or live is None):
        # Never started here, and no job known to have ended: still to do (or lost track of, e.g. sacct
        # forgot an old job: re-running submits it again, and the lock keeps one process on it).
        return StatusRow(
            spec.key,
            spec.stage,
            "pending",
            None,
            f"{job['cluster']} job {job['job_id']} {state}" if job is not None else "",
        )
    if log_path is None:
        reason = f"{job['cluster']} job {job['job_id']} ended ({state}) before the run started; see {job['folder']}"
    else:
        reason = _last_error_line(log) or "stopped without an error message (killed?)"
    return StatusRow(
        spec.key,
        spec.stage,
        "failed",
        log_path,
        f"{reason} [after epoch {rundir.epochs_done(out)}/{spec.config.epochs}]",
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


def format_status(rows: list[StatusRow]) -> str:
    counts = {state: sum(r.state == state for r in rows) for state in STATES}
    width = max([len(r.key) for r in rows] + [3])
    lines = [f"{'run':<{width}}  {'state':<8} detail / log"]
    for r in rows:
        detail = r.detail + (f"  log: {r.log}" if r.state == "failed" and r.log else "")
        lines.append(f"{r.key:<{width}}  {r.state:<8} {detail}".rstrip())
    lines.append(", ".join(f"{n} {state}" for state, n in counts.items()) + f" (of {len(rows)} runs)")
    return "\n".join(lines)


def _status_command(args) -> int:
    profile = load_profile(args.profile)
    rows = status(profile, args.results_dir)
    if args.only:
        rows = [r for r in rows if r.state == args.only]
    print(format_status(rows))
    if not methods_known(profile, args.results_dir):
        print("the methods stage is listed once the CE baseline has finished (its important classes come from it)")
    return 0


def add_cli(subparsers) -> None:
    stat = subparsers.add_parser(
        "status",
        help="done / running / failed / pending per run of a profile",
        description="One line per run of a profile; a failed run shows its log and last error line.",
    )
    add_profile_arguments(stat)
    stat.add_argument("--only", choices=STATES, default=None, help="list only the runs in this state")
    stat.set_defaults(func=_status_command)
