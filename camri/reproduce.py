"""Headless reproduction: a profile's grid, then the numbered notebooks with papermill (``camri reproduce``),
and figure regeneration from stored results without training (``camri figures``).

``camri reproduce --profile demo``:
1. loads the profile (``camri.profile.load_profile``) and checks that every data set it needs is present or
   downloadable (``camri.data.check_available``), stopping at once with the fix if not;
2. trains what is missing: the grid (``camri.grid.run``: CE baseline, then the methods for the important
   classes chosen from it) and the two z_dim = 2 runs of Fig. 3 (the profile's ``fig3:`` section). With
   ``--executor submitit`` the runs are submitted and the command returns; run it again later: it submits
   what is still missing and, once everything is finished, goes on;
3. executes ``notebooks/NN_*.ipynb`` in order with papermill, in a Jupyter kernel of this Python
   (``ensure_kernel``), parameters from the profile's ``notebooks:`` section. Executed notebooks go to
   ``results/<profile>/notebooks/``, figures (PNG + PDF) to ``figures/``, tables (CSV + Markdown) to
   ``tables/``, Table 1 to ``results/<profile>/table1.{csv,md,tex}``. A failing notebook prints its
   failing cell and traceback, and the command exits non-zero.
Re-running skips finished runs and re-renders everything.

``camri figures --profile demo`` checks that every run is finished (else says which are missing and how to
train them) and executes the notebooks with ``TRAIN = False``: they only read stored runs. With
``--partial`` a campaign in progress renders from what has finished, every output marked PARTIAL.

The notebooks' helpers are ``camri.study`` (``open_study``: the profile, its folders, its runs, Fig. 3's
runs) and ``camri.analysis`` (tables); ``camri.notebooks`` executes them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from camri import data as camri_data
from camri import grid, rundir
from camri.executors.slurm import read_jobs, submit_submitit
from camri.notebooks import execute_notebooks, notebook_needs, profile_argument, select_notebooks
from camri.profile import EXECUTORS, Profile, add_profile_arguments, load_profile
from camri.status import run_state
from camri.study import MissingRunsError, check_finished, missing_message, train_fig3
from camri.sweep import STAGES, fig3_specs


# ---- the two commands ---------------------------------------------------------------------------------


def reproduce(
    profile: Profile | str,
    *,
    executor: str | None = None,
    results_dir=None,
    workers: int | None = None,
    notebook_dir=None,
    only: Sequence[str] | None = None,
    log: Callable[[str], None] = print,
) -> int:
    """``camri reproduce``: check the data, train what is missing, execute the notebooks. Returns the exit
    status: 0 done (or submitted, to be re-run later), 1 a run or a notebook failed."""
    profile = load_profile(profile)
    kind = executor or profile.executor.kind
    fig3_runs = fig3_specs(profile, results_dir)
    # 1. Every data set first: never fail on a missing download after hours of CE runs.
    grid.check_data(profile)
    camri_data.check_available(fig3_runs[0].config.dataset, profile.data_dir)
    # 2. Training.
    report = grid.run(profile, STAGES, executor=kind, wait=kind == "local", workers=workers, results_dir=results_dir)
    log(report.summary())
    jobs = read_jobs(report.root)
    unfinished = [s for s in fig3_runs if not s.finished]
    todo = [s for s in unfinished if not run_state(s, jobs.get(s.key)).in_flight]
    in_flight = {s.key for s in unfinished} - {s.key for s in todo}
    if todo:
        if kind == "local":
            stopped = train_fig3(profile, todo, workers)
            # A run another process trains (a live lock) is in flight; any other that stopped failed.
            busy = {s.key for s in stopped if run_state(s).in_flight}
            report.failed += [(s.key, s.out_dir / rundir.LOG) for s in stopped if s.key not in busy]
            in_flight |= busy
        else:
            in_flight |= set(submit_submitit(todo, profile.executor.submitit, report.root, profile.name))
    log(f"Fig. 3 runs: {sum(s.finished for s in fig3_runs)} of {len(fig3_runs)} done")
    if report.failed:
        log(
            "some runs failed (above: their logs); fix the cause and run the same command again: finished runs are kept"
        )
        return 1
    if report.running or report.waiting or in_flight:
        log(
            f"runs are submitted or still in flight. See `camri status --profile {profile_argument(profile)}`; "
            f"run `camri reproduce --profile {profile_argument(profile)}` again later: it submits what is "
            "still missing, and renders the notebooks once every run has finished."
        )
        return 0
    # 3. The notebooks.
    ok = execute_notebooks(profile, results_dir, train=True, notebook_dir=notebook_dir, only=only, log=log)
    return 0 if ok else 1


def figures(
    profile: Profile | str,
    *,
    results_dir=None,
    notebook_dir=None,
    only: Sequence[str] | None = None,
    partial: bool = False,
    log: Callable[[str], None] = print,
) -> int:
    """``camri figures``: re-execute the notebooks on stored results (TRAIN = False); nothing is trained.
    ``partial``: render from the finished runs while some of the methods stage are missing (the baseline
    must be finished); the outputs say PARTIAL and how many runs are missing."""
    profile = load_profile(profile)
    try:
        # Only what the chosen notebooks read (NOTEBOOK_NEEDS): Fig. 3 renders while the grid still runs.
        needs = notebook_needs(select_notebooks(notebook_dir, only))
        if needs & set(STAGES):
            check_finished(profile, results_dir, ["baseline"] if partial else [s for s in STAGES if s in needs])
        missing = [s.key for s in fig3_specs(profile, results_dir) if not s.finished] if "fig3" in needs else []
        if missing:
            raise MissingRunsError(missing_message(profile, missing, 2, "Fig. 3 runs"))
    except MissingRunsError as error:
        log(f"camri figures: {error}")
        return 1
    ok = execute_notebooks(
        profile, results_dir, train=False, notebook_dir=notebook_dir, only=only, partial=partial, log=log
    )
    return 0 if ok else 1


# ---- command line ------------------------------------------------------------------------------------


def _reproduce_command(args) -> int:
    return reproduce(
        args.profile,
        executor=args.executor,
        results_dir=args.results_dir,
        workers=args.workers,
        notebook_dir=args.notebooks,
        only=args.only,
    )


def _figures_command(args) -> int:
    return figures(
        args.profile, results_dir=args.results_dir, notebook_dir=args.notebooks, only=args.only, partial=args.partial
    )


def _common(parser) -> None:
    add_profile_arguments(parser)
    parser.add_argument(
        "--notebooks",
        default=None,
        metavar="DIR",
        help="folder of the numbered notebooks NN_*.ipynb (default: the checkout's notebooks/)",
    )
    parser.add_argument(
        "--only",
        nargs="+",
        default=None,
        metavar="NB",
        help="execute only these notebooks: numbers or names, e.g. --only 04 06_fig3_feature_circle",
    )


def add_cli(subparsers) -> None:
    parser = subparsers.add_parser(
        "reproduce",
        help="train a profile's runs and execute the notebooks: results/<profile>/",
        description="Check the data, train what is missing (the grid and Fig. 3's runs), then execute the "
        "numbered notebooks with papermill into results/<profile>/ (notebooks, figures, tables). "
        "Re-running skips finished runs and re-renders.",
    )
    _common(parser)
    parser.add_argument(
        "--executor",
        choices=EXECUTORS,
        default=None,
        help="default: the profile's executor.kind; submitit submits and returns",
    )
    parser.add_argument("--workers", type=int, default=None, help="local: parallel runs (default: the profile's)")
    parser.set_defaults(func=_reproduce_command)
    parser = subparsers.add_parser(
        "figures",
        help="regenerate every figure and table from stored results, without training",
        description="Execute the notebooks with TRAIN = False: they read the stored runs of the profile and "
        "re-render results/<profile>/figures, tables and notebooks. Missing runs are reported.",
    )
    _common(parser)
    parser.add_argument(
        "--partial",
        action="store_true",
        help="render from the finished runs while some of the methods stage are still missing (a campaign "
        "in progress); every table, figure and claims.md then says PARTIAL. The CE baseline must be finished",
    )
    parser.set_defaults(func=_figures_command)
