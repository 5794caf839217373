"""``camri grid``: train the runs of a profile that are not finished, locally or on a SLURM cluster.

The pipeline, one module per step (docs/profiles.md, docs/scale-out.md):

- ``camri.profile``: the profile (YAML) as a validated model;
- ``camri.sweep``: its runs (``RunSpec``), their folders, and the important classes chosen from the CE
  baseline;
- ``camri.executors.local`` / ``camri.executors.slurm``: where they train (a local pool of processes, or
  a submitit job array);
- ``camri.status``: which are done, running, pending, failed or cancelled;
- ``camri.rundir``: what one run folder holds.

``run`` trains the CE baseline first, then the other methods for the important classes chosen from it
(both at once when the profile fixes the classes)::

    report = run(load_profile("demo"), executor="local", workers=2)
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from camri import data as camri_data
from camri import rundir
from camri.executors.local import run_local
from camri.executors.slurm import read_jobs, submit_submitit, wait_submitit
from camri.losses import LOSSES
from camri.profile import EXECUTORS, Profile, add_profile_arguments, load_profile, profile_dir, save_profile
from camri.status import states
from camri.sweep import STAGES, BaselineNotFinished, RunSpec, choose_important, expand, methods_known


def count_runs(profile: Profile | str, results_dir=None) -> dict:
    """How many runs the profile has: ``{"baseline": n, "methods": n, "total": n, "by_method": {loss: n},
    "assumed_classes": bool}``. Before the baseline has chosen them, each data set is assumed to get
    len(important.roles) distinct important classes (``assumed_classes`` True)."""
    profile = load_profile(profile)
    try:
        important, assumed = choose_important(profile, results_dir, record=False), False
    except BaselineNotFinished:
        important = {
            d: profile.important.classes.get(d, list(range(len(profile.important.roles)))) for d in profile.datasets
        }
        important = {d: list(range(len(v))) if any(isinstance(c, str) for c in v) else v for d, v in important.items()}
        assumed = True
    specs = expand(profile, "all", important, results_dir=results_dir)
    by_method = {
        loss: sum(s.config.loss == loss for s in specs) for loss in LOSSES if any(s.config.loss == loss for s in specs)
    }
    baseline = sum(s.stage == "baseline" for s in specs)
    return {
        "baseline": baseline,
        "methods": len(specs) - baseline,
        "total": len(specs),
        "by_method": by_method,
        "assumed_classes": assumed,
    }


# ---- run -----------------------------------------------------------------------------------------------


@dataclass
class GridReport:
    """What ``run`` did. ``complete``: every run of the requested stages is finished."""

    profile: str
    root: Path
    total: int = 0  # runs of the stages that could be expanded
    done: list = field(default_factory=list)  # keys finished (before or now)
    failed: list = field(default_factory=list)  # (key, log path) of runs that stopped without summary
    running: list = field(default_factory=list)  # keys submitted or already in flight, not waited for
    waiting: list = field(default_factory=list)  # stages that could not be expanded yet, with why
    important: dict = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        return not (self.failed or self.running or self.waiting)

    def summary(self) -> str:
        lines = [
            f"{self.profile}: {len(self.done)} of {self.total} runs done, {len(self.failed)} failed, "
            f"{len(self.running)} in flight ({self.root})"
        ]
        lines += [f"  failed: {key}  log: {log}" for key, log in self.failed]
        lines += [f"  waiting: {why}" for why in self.waiting]
        return "\n".join(lines)


def _check_stored_configs(specs: list[RunSpec]) -> None:
    """Stop before launching anything when a run folder holds a run of another configuration (the profile
    was edited after runs were made): every such run would fail, one by one, after its start-up."""
    conflicts = []
    for spec in specs:
        record = rundir.read_config(spec.out_dir)
        diff = sorted(rundir.config_conflicts(record, spec.config.identity())) if record else []
        if diff:
            conflicts.append(f"{spec.key} ({', '.join(diff)})")
    if conflicts:
        raise ValueError(
            f"{len(conflicts)} run folders hold runs of another configuration, e.g. {conflicts[0]}: "
            "the profile changed after they ran. Give the profile another name, or delete those "
            "folders to start them over."
        )


def check_data(profile: Profile) -> None:
    """camri.data.check_available for every data set of the profile: raises DataError (with the fix) at
    once, not after hours of CE runs."""
    for dataset in profile.datasets:
        camri_data.check_available(dataset, profile.data_dir, image_size=profile.train.get("image_size"))


def run_local_specs(profile: Profile, specs: list[RunSpec], workers: int | None = None, bar=None) -> dict[str, str]:
    """``run_local`` with the profile's executor settings: ``workers`` (else the profile's) and its
    ``workers_per_gpu``. Every local run of a profile (the grid, Fig. 3) goes through here."""
    return run_local(specs, workers or profile.executor.workers, profile.executor.workers_per_gpu, bar)


def run(
    profile: Profile | str,
    stages=STAGES,
    executor: str | None = None,
    wait: bool = True,
    *,
    workers: int | None = None,
    results_dir=None,
    progress: bool = True,
) -> GridReport:
    """Train the runs of ``stages`` that are not finished, and report.

    Finished runs (summary.json) are not launched, nor are runs already in flight (a live lock or a
    submitit job queued or running). ``executor``: ``local`` or ``submitit`` (default: the profile's).
    With submitit and ``wait=False`` the runs are submitted and ``run`` returns; run it again later to
    submit what is still missing, including the methods stage once the baseline has finished (its
    important classes come from the baseline). ``workers`` overrides the profile's local worker count.
    """
    profile = load_profile(profile)
    stages = (stages,) if isinstance(stages, str) else tuple(stages)
    if "all" in stages:
        stages = STAGES
    for stage in stages:
        if stage not in STAGES:
            raise ValueError(f"unknown stage {stage!r}: allowed are {', '.join(STAGES)}, all")
    kind = executor or profile.executor.kind
    if kind not in EXECUTORS:
        raise ValueError(f"unknown executor {kind!r}: allowed are {', '.join(EXECUTORS)}")
    if kind == "local" and not wait:
        raise ValueError(
            "the local executor trains in this process's workers: it cannot return before they "
            "finish (wait=False is for executor='submitit')"
        )
    check_data(profile)
    root = profile_dir(profile, results_dir)
    save_profile(profile, results_dir)
    report = GridReport(profile=profile.name, root=root)
    wanted = [stage for stage in STAGES if stage in stages]
    # Everything goes out in one batch when the important classes are known now (fixed by the profile,
    # or the baseline has finished); otherwise the baseline first, and the methods once it is done.
    together = "methods" not in wanted or methods_known(profile, results_dir)
    for batch in [wanted] if together else [[stage] for stage in wanted]:
        if "methods" in batch:
            try:
                report.important = choose_important(profile, results_dir)
            except BaselineNotFinished as why:
                report.waiting.append(f"methods stage: {why}")
                break
        specs = [
            spec
            for stage in batch
            for spec in expand(profile, stage, report.important or None, results_dir=results_dir)
        ]
        _check_stored_configs(specs)
        todo = []
        for spec, row in zip(specs, states(specs, read_jobs(root))):
            if row.state == "done":
                report.done.append(spec.key)
            elif row.in_flight:
                report.running.append(spec.key)  # someone else's worker, or an earlier submission
            else:
                todo.append(spec)
        report.total += len(specs)
        bar = tqdm(
            total=len(specs),
            initial=len(specs) - len(todo),
            desc=f"{profile.name} {'+'.join(batch)}",
            unit="run",
            disable=not progress,
            file=sys.stderr,
            dynamic_ncols=True,
        )
        try:
            if kind == "local":
                outcome = run_local_specs(profile, todo, workers, bar)
            else:
                submitted = submit_submitit(todo, profile.executor.submitit, root, profile.name)
                if not wait:
                    report.running += list(submitted)
                    if "methods" in wanted and "methods" not in batch:
                        report.waiting.append(
                            "methods stage: waits for the CE baseline (its important classes "
                            "come from it); run the same command again when it has finished"
                        )
                        break
                    continue
                outcome = wait_submitit(submitted, {s.key: s for s in todo}, bar, profile.executor.submitit.poll_s)
        finally:
            bar.close()
        for spec in todo:
            result = outcome.get(spec.key)
            if result == "done":
                report.done.append(spec.key)
            elif result == "busy":
                report.running.append(spec.key)
            elif result == "failed":
                report.failed.append((spec.key, spec.out_dir / rundir.LOG))
    return report


# ---- command line --------------------------------------------------------------------------------------


def _grid_command(args) -> int:
    profile = load_profile(args.profile)
    if args.cluster is not None:
        profile.executor.submitit.cluster = args.cluster
    stages = STAGES if args.stage == "all" else (args.stage,)
    if args.dry_run:
        counts = count_runs(profile, args.results_dir)
        note = (
            (
                f" (assuming {len(profile.important.roles)} important class(es) per data set, chosen from the "
                "baseline later)"
            )
            if counts["assumed_classes"]
            else ""
        )
        print(
            f"profile {profile.name}: {counts['total']} runs = {counts['baseline']} baseline (CE) + "
            f"{counts['methods']} methods{note}"
        )
        print("  " + ", ".join(f"{loss} {n}" for loss, n in counts["by_method"].items()))
        return 0
    report = run(
        profile,
        stages,
        executor=args.executor,
        wait=not args.no_wait,
        workers=args.workers,
        results_dir=args.results_dir,
    )
    print(report.summary())
    if report.failed:
        return 1
    return 0


def add_cli(subparsers) -> None:
    grid = subparsers.add_parser(
        "grid",
        help="train a profile's grid of runs (what is missing), locally or on SLURM",
        description="Train every run of a profile that is not finished: the CE baseline, then the other methods "
        "for the important classes chosen from it. docs/profiles.md, docs/scale-out.md.",
    )
    add_profile_arguments(grid)
    grid.add_argument("--executor", choices=EXECUTORS, default=None, help="default: the profile's executor.kind")
    grid.add_argument(
        "--workers",
        type=int,
        default=None,
        help="local: parallel runs (default: the profile's, else one per GPU; on CPU one per available CPU, at most 8)",
    )
    grid.add_argument("--stage", choices=STAGES + ("all",), default="all")
    grid.add_argument("--no-wait", action="store_true", help="submitit: submit and return")
    grid.add_argument(
        "--cluster",
        choices=("slurm", "local", "debug"),
        default=None,
        help="submitit: override executor.submitit.cluster (local: run the job array on this machine)",
    )
    grid.add_argument("--dry-run", action="store_true", help="count the runs (per method) and exit")
    grid.set_defaults(func=_grid_command)
