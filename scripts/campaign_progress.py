"""Where a long campaign stands, from its run records only, and its finished runs committed as they finish
(issue 15: a campaign spans sessions, and what is not committed may be gone by the next one):

    .venv/bin/python scripts/campaign_progress.py results/gtsrb/gtsrb.yaml [more profiles] [--results-dir DIR]
    .venv/bin/python scripts/campaign_progress.py results/gtsrb/gtsrb.yaml --commit [--watch 60]

writes <profile dir>/progress.md: the important classes chosen so far, then every run of the profile (the
CE baseline, the methods once the baseline has chosen the classes, Fig. 3's two runs) in the order the grid
trains them, each with its state (done / epochs k of N / not started), test and validation accuracy, the
important class's test recall, its wall time, and the machine and dtype that trained it (config.json
segments). Nothing is typed: rerun it after each finished run and commit the file with the run's records.

--commit does that commit: one per finished run whose summary.json git does not track yet, holding the
run's records (camri.rundir.RECORDS, never its checkpoint) and the refreshed progress.md, with the message
"<profile> <run>: finished (test accuracy X)". Only those paths go into the commit (git commit -- PATHS), so
work staged beside it is left alone. --watch N repeats it every N seconds beside a running grid until every
run of the profiles is done; a git command that fails (another one holding the index lock) is retried next
round. The loop is a few lines of our own because what it must know, which runs are finished and which files
are their records, lives in camri.sweep and camri.rundir.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from camri import rundir, sweep
from camri.io import atomic_write_text
from camri.names import dataset_label
from camri.profile import load_profile, profile_dir


def _machine(config: dict | None) -> str:
    if not config:
        return ""
    seen = []
    for segment in config.get("segments", []):
        machine = segment.get("machine")
        text = "?" if machine is None else f"{machine['cpu']} ({machine['threads']} thread(s))"
        dtype = "bf16" if segment.get("amp_bf16") else "float32"
        seen.append(f"{text}, {dtype}")
    return "; ".join(dict.fromkeys(seen))


def _row(spec: sweep.RunSpec) -> str:
    config = rundir.read_config(spec.out_dir)
    epochs = spec.config.epochs
    if spec.finished:
        summary = rundir.read_summary(spec.out_dir)
        recall = ", ".join(f"{summary['classes'][c]} {summary['recall'][c]:.3f}" for c in summary["important"])
        validation = summary.get("validation") or {}
        val = f"{validation['accuracy']:.4f}" if "accuracy" in validation else "–"
        minutes = f"{summary['seconds'] / 60:.1f}" if "seconds" in summary else "–"
        cells = [spec.key, "done", f"{summary['accuracy']:.4f}", val, recall or "–", minutes, _machine(config)]
        return "| " + " | ".join(cells) + " |"
    done = rundir.epochs_done(spec.out_dir) if spec.out_dir.exists() else 0
    state = f"epoch {done} of {epochs}" if config else "not started"
    return f"| {spec.key} | {state} | | | | | {_machine(config)} |"


def _campaign(profile_path: str, results_dir=None) -> tuple:
    """The profile, its results folder, every run spec known so far, and the lines naming its important classes."""
    profile = load_profile(profile_path)
    root = profile_dir(profile, results_dir)
    specs = sweep.expand(profile, "baseline", results_dir=results_dir)
    try:
        important = sweep.choose_important(profile, results_dir, record=False)
    except sweep.BaselineNotFinished as waiting:
        lines = [
            f"Important classes of {dataset_label(waiting.dataset)}: not chosen yet, {len(waiting.missing)} of "
            f"its {waiting.total} CE baseline runs are not finished.",
            "",
        ]
    else:
        lines = []
        specs += sweep.expand(profile, "methods", important, results_dir=results_dir)
        chosen = json.loads((root / "important.json").read_text()) if (root / "important.json").is_file() else {}
        # The split the roles were ranked on: recorded in important.json since important.split exists.
        default_split = profile.role_split
        for dataset, rows in chosen.items():
            splits = {r.get("split", default_split) for r in rows if "recall_mean" in r}
            described = ", ".join(
                f"{r['role']} = {r.get('class_name', r['class_index'])} (CE {r.get('split', default_split)} recall "
                f"{r['recall_mean']:.3f})"
                if "recall_mean" in r
                else f"{r['role']} = {r['class_index']}"
                for r in rows
            )
            source = f"from CE on the {' and '.join(sorted(splits))} split" if splits else "fixed by the profile"
            lines += [f"Important classes of {dataset_label(dataset)} ({source}): {described}.", ""]
    specs += sweep.fig3_specs(profile, results_dir)
    return profile, root, specs, lines


def progress(profile_path: str, results_dir=None) -> Path:
    """Write and return ``<results>/<profile>/progress.md``."""
    profile, root, specs, important_lines = _campaign(profile_path, results_dir)
    finished = sum(s.finished for s in specs)
    lines = [
        f"# Progress of profile `{profile.name}`",
        "",
        f"Generated from the run records by `.venv/bin/python scripts/campaign_progress.py {profile_path}`.",
        "",
        *important_lines,
        f"{finished} of {len(specs)} runs done.",
        "",
        "| run | state | test accuracy | validation accuracy | important test recall | minutes | machine, dtype |",
        "|---|---|---|---|---|---|---|",
        *(_row(s) for s in specs),
        "",
    ]
    out = root / "progress.md"
    atomic_write_text(out, "\n".join(lines))
    return out


def _git(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True)


def _tracked(root: Path) -> set[Path]:
    """Every file below ``root`` that git tracks (one ``git ls-files`` for the whole profile)."""
    listed = _git(root, "ls-files", "-z", "--", ".").stdout
    return {(root / name).resolve() for name in listed.split("\0") if name}


def commit_finished(profile_path: str, results_dir=None) -> tuple[list[str], int]:
    """Commit each finished, not yet committed run of the profile (its records and progress.md, one commit per
    run). Returns the keys committed and how many known runs are not finished."""
    profile, root, specs, _ = _campaign(profile_path, results_dir)
    remaining = sum(not s.finished for s in specs)
    finished = [s for s in specs if s.finished]
    tracked = _tracked(root) if finished else set()
    new = [s for s in finished if (s.out_dir / rundir.SUMMARY).resolve() not in tracked]
    if not new:
        return [], remaining
    # Written once for the pass: it already counts every run committed below.
    progress_file = str(progress(profile_path, results_dir))
    for spec in new:
        records = [str(spec.out_dir / name) for name in rundir.RECORDS if (spec.out_dir / name).is_file()]
        accuracy = rundir.read_summary(spec.out_dir)["accuracy"]
        message = f"{profile.name} {spec.key}: finished (test accuracy {accuracy:.4f})"
        _git(root, "add", "--", *records, progress_file)
        _git(root, "commit", "-q", "-m", message, "--", *records, progress_file)
    return [s.key for s in new], remaining


def watch(profile_paths: list[str], results_dir=None, every_s: float = 60.0) -> None:
    """commit_finished for every profile, every ``every_s`` seconds, until all their runs are done."""
    while True:
        remaining = 0
        for path in profile_paths:
            try:
                committed, left = commit_finished(path, results_dir)
            except subprocess.CalledProcessError as error:
                print(f"{path}: {' '.join(error.cmd[:2])} failed ({error.stderr.strip()}); retrying", file=sys.stderr)
                remaining += 1
                continue
            for key in committed:
                print(f"{time.strftime('%H:%M:%S')} committed {key}", flush=True)
            remaining += left
        if remaining == 0 or every_s <= 0:
            return
        time.sleep(every_s)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("profiles", nargs="+", help="profile YAML files")
    parser.add_argument("--results-dir", help="results root (default: <repo>/results)")
    parser.add_argument("--commit", action="store_true", help="commit each finished run's records with progress.md")
    parser.add_argument(
        "--watch",
        type=float,
        default=0,
        metavar="SECONDS",
        help="with --commit: repeat every SECONDS until all runs are done",
    )
    args = parser.parse_args()
    if args.watch and not args.commit:
        parser.error("--watch repeats --commit: give both")
    if args.commit:
        watch(args.profiles, args.results_dir, args.watch)
    else:
        for path in args.profiles:
            print(progress(path, args.results_dir))
