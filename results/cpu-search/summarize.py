"""Tables and figures of the issue-9 search (docs/reproduction.md), from the finished runs only:

    .venv/bin/python results/cpu-search/summarize.py

writes results/cpu-search/<part>/settings.md (every setting of the cell: mean ± std over seeds of cat's
recall and the accuracy, "maintains accuracy" by the protocol's rule, cat's relative angle variance), <part>/curves.csv and
<part>/curves.png (per-epoch means over seeds, camri.protocol.epoch_curves), <part>/angles.md (per run,
the angles between cat's test features and its weight vector, in degrees), for part = epochs, margins,
scales. All numbers come from camri.protocol; this file only formats them.
"""

from pathlib import Path

import numpy as np
import pandas as pd

from camri import plots, protocol
from camri.io import atomic_write_text

HERE = Path(__file__).resolve().parent
DATASET = "imagefolder:/work/shared/data/cifar10-jpeg.zip"
CAT = 3


def settings_markdown(settings: pd.DataFrame, runs: pd.DataFrame) -> str:
    # cat's angle variance over the other classes' (summary.json; Fig. 4's statistic), mean over seeds
    rav = {path: value[str(CAT)] for path, value in zip(runs["path"], runs["relative_angle_variance"])}
    lines = ["| method | setting | seeds | cat recall | accuracy | maintains accuracy | cat relative angle variance "
             "| per seed (recall / accuracy) |", "|---|---|---|---|---|---|---|---|"]
    for row in settings.itertuples():
        per_seed = ", ".join(f"{r:.3f} / {a:.4f}" for r, a in zip(row.recalls, row.accuracies))
        std = lambda v: "" if pd.isna(v) else f" ± {v:.3f}"  # noqa: E731
        lines.append(f"| {row.method} | {row.hyperparameters or '–'} | {row.n_seeds} | "
                     f"{row.recall_mean:.3f}{std(row.recall_std)} | {row.accuracy_mean:.4f}{std(row.accuracy_std)} | "
                     f"{'yes' if row.qualified else 'no'} | {sum(rav[p] for p in row.paths) / len(row.paths):.2f} | {per_seed} |")
    threshold = settings["accuracy_threshold"].iloc[0]
    return "\n".join(lines) + f"\n\nAccuracy threshold (mean CE accuracy − 0.005): {threshold:.4f}.\n"


def angle_rows(runs: pd.DataFrame) -> list[str]:
    """Per run: the angles (degrees) between cat's test features and cat's weight vector, for all cats, the
    correctly classified and the misclassified ones, against the other classes' mean variance."""
    lines = []
    for run in runs.sort_values(["loss", "seed"]).itertuples():
        arrays = np.load(Path(run.path) / "angles.npz")
        theta, labels, predicted = arrays["theta_deg"], arrays["labels"], arrays["logits"].argmax(1)
        cat, right = labels == CAT, (labels == CAT) & (predicted == CAT)
        others = np.mean([theta[labels == k].var() for k in np.unique(labels) if k != CAT])
        cells = [f"{theta[m].mean():.1f} / {theta[m].var():.0f}" for m in (cat, right, cat & ~right)]
        lines.append(f"| {run.method} {protocol.format_hyperparameters(run.loss, run._asdict())} | {run.seed} | "
                     f"{run.epochs} | {' | '.join(cells)} | {others:.0f} | {theta[cat].var() / others:.2f} |")
    return lines


def main() -> None:
    for part in ("epochs", "margins", "scales"):
        root = HERE / part / "runs"
        if not root.is_dir():
            continue
        runs = protocol.load_runs(root)
        if runs.empty or "ce" not in set(runs["loss"]):
            continue
        settings = protocol.cell_settings(runs, DATASET, CAT)
        atomic_write_text(HERE / part / "settings.md", settings_markdown(settings, runs))
        curves = protocol.epoch_curves(runs, DATASET, CAT)
        atomic_write_text(HERE / part / "curves.csv", curves.to_csv(index=False, float_format="%.4f"))
        epochs = int(curves["epoch"].max())
        plots.save_figure(plots.plot_epoch_curves(
            curves, class_name="cat", title=f"CIFAR-10 (JPEG), width 1/8, {epochs} epochs: {part}"),
            HERE / part / "curves")
        header = ["| run | seed | epochs | cat: mean / var | correctly classified cats | misclassified cats "
                  "| other classes' var | cat var / others' |", "|---|---|---|---|---|---|---|---|"]
        atomic_write_text(HERE / part / "angles.md", "\n".join(header + angle_rows(runs)) + "\n")
        print(f"{part}: {len(runs)} runs, {len(settings)} settings -> {part}/settings.md, curves.csv, curves.png")


if __name__ == "__main__":
    main()
