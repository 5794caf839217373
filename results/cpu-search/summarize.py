"""Tables and figures of the issue-9 search (docs/reproduction.md), from the finished runs only:

    .venv/bin/python results/cpu-search/summarize.py

writes results/cpu-search/<part>/settings.md (every setting of the cell: mean ± std over seeds of cat's
recall and the accuracy, "maintains accuracy" by the protocol's rule, cat's relative angle variance), <part>/curves.csv and
<part>/curves.png (per-epoch means over seeds, camri.analysis.epoch_curves), <part>/angles.md (per run,
the angles between cat's test features and its weight vector, in degrees), <part>/table1.csv/.md/.tex
(the protocol's choice per method, camri.protocol.table1), for part = epochs, margins,
scales. All numbers come from camri.protocol; this file only formats them.
"""

from pathlib import Path

import numpy as np
import pandas as pd

from camri import analysis, names, plots, protocol
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


def late_markdown(curves: pd.DataFrame, last: int = 5) -> str:
    """Mean over the last ``last`` epochs (and the seeds): a final epoch alone is one sample of a curve that
    swings by tenths of recall from epoch to epoch at this budget."""
    epochs = int(curves["epoch"].max())
    window = curves[curves["epoch"] > epochs - min(last, epochs // 2)]
    first = int(window["epoch"].min())
    lines = [f"\nMean over epochs {first}–{epochs} and the seeds (per-epoch test metrics, metrics.csv):\n",
             "| method | setting | cat recall | accuracy |", "|---|---|---|---|"]
    for (method, hyper), part in window.groupby(["method", "hyperparameters"], sort=False):
        lines.append(f"| {method} | {hyper or '–'} | {part['recall_mean'].mean():.3f} | {part['accuracy_mean'].mean():.4f} |")
    return "\n".join(lines) + "\n"


def paired_epochs_markdown(runs: pd.DataFrame, settings: pd.DataFrame) -> str:
    """How often each setting's cat recall and accuracy beat CE's, paired by seed and epoch over the second
    half of training (metrics.csv)."""
    def metrics(path):
        return pd.read_csv(Path(path) / "metrics.csv").set_index("epoch")

    ce_rows = settings[settings["method"] == "CE"].iloc[0]
    ce = {seed: metrics(path) for seed, path in zip(ce_rows["seeds"], ce_rows["paths"])}
    column = f"recall_{runs['classes'].iloc[0][CAT]}"
    lines = ["\nPaired with CE by seed and epoch over the second half of training:\n",
             "| method | setting | pairs | cat recall higher | accuracy higher |", "|---|---|---|---|---|"]
    for row in settings[settings["method"] != "CE"].itertuples():
        pairs = recall_wins = accuracy_wins = 0
        for seed, path in zip(row.seeds, row.paths):
            if seed not in ce:
                continue
            mine, base = metrics(path), ce[seed]
            last = int(min(mine.index.max(), base.index.max()))
            for epoch in range(last // 2 + 1, last + 1):
                pairs += 1
                recall_wins += mine.at[epoch, column] > base.at[epoch, column]
                accuracy_wins += mine.at[epoch, "test_accuracy"] > base.at[epoch, "test_accuracy"]
        lines.append(f"| {row.method} | {row.hyperparameters} | {pairs} | {recall_wins} | {accuracy_wins} |")
    return "\n".join(lines) + "\n"


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
        lines.append(f"| {run.method} {names.format_hyperparameters(run.loss, run._asdict())} | {run.seed} | "
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
        curves = analysis.epoch_curves(runs, DATASET, CAT)
        atomic_write_text(HERE / part / "settings.md", settings_markdown(settings, runs) + late_markdown(curves)
                          + paired_epochs_markdown(runs, settings))
        atomic_write_text(HERE / part / "curves.csv", curves.to_csv(index=False, float_format="%.4f"))
        epochs = int(curves["epoch"].max())
        plots.save_figure(plots.plot_epoch_curves(
            curves, class_name="cat", title=f"CIFAR-10 (JPEG), width 1/8, {epochs} epochs: {part}"),
            HERE / part / "curves")
        # The protocol's Table 1 cell (cat as worst1, the paper's role for it): each method's best setting
        # among those maintaining accuracy, beside the paper's numbers.
        selections = protocol.select_all(runs, roles=["worst1"], important={DATASET: ["cat"]})
        protocol.write_table1(protocol.table1(selections), HERE / part)
        header = ["| run | seed | epochs | cat: mean / var | correctly classified cats | misclassified cats "
                  "| other classes' var | cat var / others' |", "|---|---|---|---|---|---|---|---|"]
        atomic_write_text(HERE / part / "angles.md", "\n".join(header + angle_rows(runs)) + "\n")
        print(f"{part}: {len(runs)} runs, {len(settings)} settings -> {part}/settings.md, curves.csv, curves.png")


if __name__ == "__main__":
    main()
