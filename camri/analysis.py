"""Tables of runs for the notebooks: Markdown tables, per-setting tables, relative angle variances, the
panels of Fig. 3 and pooled angles. Every number comes from ``camri.protocol`` or the run folders
(``camri.rundir``); this module only arranges them."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

from camri import names, rundir


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return "–" if math.isnan(value) else f"{value:.4g}"
    if isinstance(value, (tuple, list)):
        return ", ".join(_cell(v) for v in value)
    return str(value).replace("|", "\\|").replace("\n", " ")


def markdown_table(frame, *, index: bool = False) -> str:
    """A DataFrame as a GitHub Markdown table (numbers to 4 significant digits, NaN as –)."""
    frame = frame.reset_index() if index else frame
    header = "| " + " | ".join(map(str, frame.columns)) + " |"
    rule = "|" + "---|" * len(frame.columns)
    rows = ["| " + " | ".join(_cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *rows])


def pooled_angles(paths: Sequence[str | os.PathLike]):
    """θ (degrees) and labels of the test samples of several runs (e.g. one setting's seeds), pooled."""
    import numpy as np

    arrays = [rundir.read_angles(p) for p in paths]
    return (np.concatenate([a["theta_deg"] for a in arrays]), np.concatenate([a["labels"] for a in arrays]))


def settings_table(
    runs, dataset: str, important, *, methods: Sequence[str], tolerance: float, split: str = "validation"
):
    """One row per setting of ``methods`` (display names) of ``dataset``: method, hyperparameters, n_seeds,
    accuracy mean / std, qualified (maintains accuracy), then the mean recall of each important class
    (``important``: rows with role, class_index, class_name) as ``recall <role>: <class>``. For methods
    trained per important class (CAMRI, WCE, CRWWCE) a setting has a value only in its own class's column."""
    import pandas as pd

    from camri import protocol

    keys = ["method", "hyperparameters"]
    table = None
    for role, index, name in important[["role", "class_index", "class_name"]].itertuples(index=False):
        cell = protocol.cell_settings(runs, dataset, int(index), tolerance=tolerance, split=split)
        cell = cell[cell["method"].isin(methods)]
        column = f"recall {role}: {name}"
        part = cell[keys + ["n_seeds", "accuracy_mean", "accuracy_std", "qualified"]].assign(
            **{column: cell["recall_mean"], f"{column} (std)": cell["recall_std"]}
        )
        if table is None:
            table = part
        else:
            table = table.merge(part, on=keys + ["n_seeds", "accuracy_mean", "accuracy_std", "qualified"], how="outer")
    if table is None:
        return pd.DataFrame(columns=keys)
    order = {m: i for i, m in enumerate(methods)}
    return table.sort_values(
        ["method", "hyperparameters"], key=lambda c: c.map(order) if c.name == "method" else c, kind="stable"
    ).reset_index(drop=True)


def relative_variance_table(runs, selections, methods: Sequence[str] = ("CE", "ArcFace", "CAMRI")):
    """Per data set × important class × method (its "maintaining" choice of ``protocol.select_all``): the
    relative angle variance of the important class (its θ variance / the mean of the other classes'; from
    each run's summary.json), mean and sample std over seeds, and the ratio's parts, means over seeds: the
    class's mean θ to its weight and its θ variance, and the other classes' mean per-class θ variance (the
    denominator). Columns: cell, dataset, role, class_index, class_name, method, hyperparameters, n_seeds,
    relative_variance, relative_variance_std, angle_mean_deg, angle_var_deg2, others_var_deg2."""
    import numpy as np
    import pandas as pd

    from camri import protocol
    from camri.metrics import others_mean_variance

    by_path = runs.set_index("path")
    rows = []
    chosen = selections[(selections["selection"] == "maintaining") & selections["method"].isin(methods)]
    for row in chosen.itertuples(index=False):
        c = int(row.class_index)
        values = [float(by_path.at[p, "relative_angle_variance"].get(str(c), np.nan)) for p in row.paths]
        # The parts, because a ratio near CE's can hide a class pulled toward its weight while its spread
        # and the other classes' both grew (CIFAR-10's cat: docs/reproduction.md).
        variances = [[float(v) for v in by_path.at[p, "angle_var_deg2"]] for p in row.paths]
        rows.append(
            {
                "cell": f"{names.display_dataset(row.dataset)} {row.role}: {row.class_name}",
                "dataset": row.dataset,
                "role": row.role,
                "class_index": row.class_index,
                "class_name": row.class_name,
                "method": row.method,
                "hyperparameters": row.hyperparameters,
                "n_seeds": len(values),
                "relative_variance": float(np.mean(values)),
                "relative_variance_std": float(np.std(values, ddof=1)) if len(values) > 1 else np.nan,
                "angle_mean_deg": float(np.mean([by_path.at[p, "angle_mean_deg"][c] for p in row.paths])),
                "angle_var_deg2": float(np.mean([v[c] for v in variances])),
                "others_var_deg2": float(np.mean([others_mean_variance(v, c) for v in variances])),
            }
        )
    columns = [
        "cell",
        "dataset",
        "role",
        "class_index",
        "class_name",
        "method",
        "hyperparameters",
        "n_seeds",
        "relative_variance",
        "relative_variance_std",
        "angle_mean_deg",
        "angle_var_deg2",
        "others_var_deg2",
    ]
    table = pd.DataFrame(rows, columns=columns)
    order = {m: i for i, m in enumerate(methods)}
    return (
        table.sort_values("method", key=lambda c: c.map(order), kind="stable")
        .sort_values(
            ["dataset", "role"],
            key=lambda c: c.map({r: i for i, r in enumerate(protocol.ROLES)}) if c.name == "role" else c,
            kind="stable",
        )
        .reset_index(drop=True)
    )


def fig3_panels(run_dirs: Mapping[str, str | os.PathLike]):
    """What Fig. 3 shows, from its finished runs ({method: run dir}, e.g. ``Study.fig3_runs()``):
    (panels for ``geometry.plot_fig3``, class names, important class indices, a table with each run's
    data set, accuracy, the important class's recall, its share of the circle and its relative angle
    variance)."""
    import pandas as pd

    from camri.geometry import circle_share

    panels, rows, classes, important = {}, [], None, []
    summaries = {method: rundir.read_summary(d) for method, d in run_dirs.items()}
    for summary in summaries.values():
        important = important or list(summary["important"])
        classes = classes or list(summary["classes"])
    for method, directory in run_dirs.items():
        summary = summaries[method]
        angles = rundir.read_angles(directory)
        if "features2d" not in angles:
            raise ValueError(f"{directory} was not trained with z_dim = 2: Fig. 3 needs 2-D features")
        weights = rundir.read_head_weight(directory)
        for c in important:
            rows.append(
                {
                    "method": method,
                    "dataset": summary["dataset"],
                    "accuracy": summary["accuracy"],
                    "class": classes[c],
                    "recall": summary["recall"][c],
                    "circle_share": circle_share(weights, c) if weights is not None else float("nan"),
                    "relative_variance": summary["relative_angle_variance"].get(str(c), float("nan")),
                    "epochs": summary["epochs_completed"],
                }
            )
        recall = ", ".join(f"recall[{classes[c]}] {summary['recall'][c]:.3f}" for c in important)
        panels[f"{method}: {recall}, accuracy {summary['accuracy']:.3f}"] = {
            "features2d": angles["features2d"],
            "labels": angles["labels"],
            "weights": weights,
        }
    return panels, classes, important, pd.DataFrame(rows)


def fig3_title(summary, min_accuracy: float) -> tuple[str, bool]:
    """The title of Fig. 3 from ``fig3_panels``' table, and whether the figure counts: both runs at or
    above ``min_accuracy`` test accuracy. Below it the title says plainly that the runs are under-trained,
    so that an untrained geometry is never read as the paper's effect."""
    datasets = ", ".join(dict.fromkeys(names.dataset_label(d) for d in summary["dataset"]))
    low = summary.drop_duplicates("method")
    low = low[low["accuracy"] < min_accuracy]
    if low.empty:
        return f"Fig. 3 on {datasets}: z_dim = 2, every run at test accuracy >= {min_accuracy:g}", True
    which = ", ".join(f"{r.method} {r.accuracy:.3f}" for r in low.itertuples())
    return (
        f"UNDER-TRAINED, does not show the paper's effect\n{datasets}: test accuracy {which} "
        f"< {min_accuracy:g} (fig3.min_accuracy)",
        False,
    )


def compare_selections(by_validation, by_test):
    """The "maintaining" choices of two ``select_all`` results side by side, per data set × role × method:
    class_validation / class_test (the important class each chose), setting_validation / setting_test,
    recall_validation / recall_test (the test recall each reports) and differs (class or setting differ). Where
    one split has no maintaining choice, its setting column says so and its class and recall are empty."""
    keys = ["dataset", "role", "method"]
    columns = {"class_name": "class", "hyperparameters": "setting", "recall_mean": "recall"}
    frames = []
    for frame, suffix in ((by_validation, "validation"), (by_test, "test")):
        maintaining = frame[frame["selection"] == "maintaining"]
        frames.append(
            maintaining[keys + list(columns)].rename(columns={c: f"{name}_{suffix}" for c, name in columns.items()})
        )
    both = frames[0].merge(frames[1], on=keys, how="outer")
    # A side with no "maintaining" row (a +bias row where no bias, not even 0, reaches the threshold:
    # posthoc.tune_bias returns None) says so, instead of a bare "–" a reader cannot tell from a bug.
    for suffix in ("validation", "test"):
        both.loc[both[f"class_{suffix}"].isna(), f"setting_{suffix}"] = f"no setting maintains accuracy on {suffix}"
    both["differs"] = (both["class_validation"] != both["class_test"]) | (
        both["setting_validation"] != both["setting_test"]
    )
    return both.reset_index(drop=True)


def seed_counts(selections) -> tuple[int, int]:
    """(fewest, most) seeds among the "maintaining" choices: the paper averaged ten trials, and below five a
    mean ± std is a rough estimate (notebook 04 says so)."""
    counts = selections.loc[selections["selection"] == "maintaining", "n_seeds"]
    return (int(counts.min()), int(counts.max())) if len(counts) else (0, 0)


def epoch_curves(runs, dataset: str, class_index: int):
    """Test accuracy and important-class recall after every epoch, per setting, over seeds.

    Reads each run's metrics.csv (docs/run-format.md) for the settings of ``protocol.cell_settings(runs,
    dataset, class_index)``. One row per setting × epoch, columns: method, loss, hyperparameters, epoch, n_seeds,
    accuracy_mean, accuracy_std, recall_mean, recall_std (std: sample, ddof = 1; NaN for one seed). With
    short budgets a run's final epoch is one noisy sample of a fluctuating curve; the curve shows whether
    a gap is a trend or noise.
    """
    import pandas as pd

    from camri import protocol

    settings = protocol.cell_settings(runs, dataset, class_index, split="test")  # the settings; curves are test
    class_name = runs[runs["dataset"] == dataset]["classes"].iloc[0][class_index]
    column = f"recall_{class_name}"
    rows = []
    for setting in settings.to_dict("records"):
        frames = []
        for path in setting["paths"]:
            metrics = rundir.read_metrics(path)
            if column not in metrics:
                raise ValueError(f"{path}/metrics.csv has no column {column!r}: not a run of {dataset!r}?")
            frames.append(metrics[["epoch", "test_accuracy", column]].rename(columns={column: "recall"}))
        for epoch, group in pd.concat(frames).groupby("epoch", sort=True):
            rows.append(
                {
                    "method": setting["method"],
                    "loss": setting["loss"],
                    "hyperparameters": setting["hyperparameters"],
                    "epoch": int(epoch),
                    "n_seeds": len(group),
                    "accuracy_mean": group["test_accuracy"].mean(),
                    "accuracy_std": group["test_accuracy"].std(ddof=1),
                    "recall_mean": group["recall"].mean(),
                    "recall_std": group["recall"].std(ddof=1),
                }
            )
    return pd.DataFrame(
        rows,
        columns=[
            "method",
            "loss",
            "hyperparameters",
            "epoch",
            "n_seeds",
            "accuracy_mean",
            "accuracy_std",
            "recall_mean",
            "recall_std",
        ],
    )
