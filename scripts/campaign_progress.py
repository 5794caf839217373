"""Where a long campaign stands, from its run records only (issue 15: a campaign spans sessions):

    .venv/bin/python scripts/campaign_progress.py results/gtsrb/gtsrb.yaml [more profiles] [--results-dir DIR]

writes <profile dir>/progress.md: the important classes chosen so far, then every run of the profile (the
CE baseline, the methods once the baseline has chosen the classes, Fig. 3's two runs) in the order the grid
trains them, each with its state (done / epochs k of N / not started), test and validation accuracy, the
important class's test recall, its wall time, and the machine and dtype that trained it (config.json
segments). Nothing is typed: rerun it after each finished run and commit the file with the run's records.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from camri import rundir, sweep
from camri.io import atomic_write_text
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


def progress(profile_path: str, results_dir=None) -> Path:
    """Write and return ``<results>/<profile>/progress.md``."""
    profile = load_profile(profile_path)
    root = profile_dir(profile, results_dir)
    specs = sweep.expand(profile, "baseline", results_dir=results_dir)
    lines = [
        f"# Progress of profile `{profile.name}`",
        "",
        f"Generated from the run records by `.venv/bin/python scripts/campaign_progress.py {profile_path}`.",
        "",
    ]
    try:
        important = sweep.choose_important(profile, results_dir, record=False)
    except sweep.BaselineNotFinished as waiting:
        lines += [f"Important classes: not chosen yet ({waiting}).", ""]
    else:
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
            lines += [f"Important classes of {dataset} ({source}): {described}.", ""]
    specs += sweep.fig3_specs(profile, results_dir)
    finished = sum(s.finished for s in specs)
    lines += [
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


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("profiles", nargs="+", help="profile YAML files")
    parser.add_argument("--results-dir", help="results root (default: <repo>/results)")
    args = parser.parse_args()
    for path in args.profiles:
        print(progress(path, args.results_dir))
