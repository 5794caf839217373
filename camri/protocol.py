"""The paper's protocol as tested code: finished runs → important classes → chosen settings (Table 1 is
built from them in ``camri.tables``). Every step is a plain function on pandas DataFrames::

    runs = apply_report(load_runs("results/paper/runs"))  # one row per finished run (summary.json present)
    todo = unfinished_runs("results/paper/runs")          # started (config.json) but not finished
    choose_important(runs, "cifar10")                     # worst1 / worst2 / median from the CE baseline
    sel = select_all(runs, tolerance=0.005, bias=True)    # the chosen setting per dataset × role × method
    tables.write_table1(tables.table1(sel), "results/paper")  # table1.csv (the contract), .md, .tex
    cell_settings(runs, "cifar10", 3)                     # every setting's (recall, accuracy) point of a cell

``split`` ("validation", the default, or "test", the paper's) says where the classes and settings are
chosen; the reported numbers are always test. Each function's docstring gives its columns; every rule
(ranking and ties, the median for even K, "maintaining accuracy", the best setting, the +bias rows, spread)
is stated, with its reason, in docs/protocol.md, and tested in tests/test_protocol.py and
tests/test_validation.py; the per-epoch curves are ``camri.analysis.epoch_curves``. Beyond the paper:
``camri.significance`` (paired intervals), ``camri.posthoc`` (the bias search), ``camri.claims`` (claims.md).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from camri import posthoc, rundir
from camri.config import with_legacy_values
from camri.losses import LOSSES, ROLES
from camri.names import DATASET_NAMES, display_dataset, format_hyperparameters

DEFAULT_TOLERANCE = 0.005

# Fields that must agree among the runs of a data set: mixing, say, 30- and 300-epoch runs in one
# average would be silently wrong, so it is an error and the caller filters the runs first.
EXPERIMENT_FIELDS = (
    "validation_fraction",
    "split_seed",
    "validation_groups",
    "epochs",
    "batch_size",
    "lr",
    "lr_schedule",
    "width",
    "z_dim",
    "bn_momentum",
    "augment",
    "image_size",
)
# The CIFAR-10 classes of the authors' shipped configurations. Which class plays which role is inferred
# from the printed recalls (their cat run ends at recall 0.789 ≈ Table 1's worst1); the GTSRB and AwA2
# classes are not public.
PAPER_IMPORTANT_CLASSES = {"CIFAR-10": {"worst1": "cat", "worst2": "dog", "median": "airplane"}}

RUN_COLUMNS = (
    "path",
    "dataset",
    "loss",
    "method",
    "important",
    "margin",
    "scale",
    "weight",
    "fp_weight",
    "seed",
    "classes",
    "accuracy",
    "recall",
    "val_accuracy",
    "val_recall",
)
# Where the choices are made (docs/protocol.md): on the validation split (default), or on the test set as
# the paper does; Table 1 always reports test.
SELECTIONS = ("validation", "test")
REPORTS = ("final", "last_k")
# Per split: the run columns of its final accuracy and recall vector, and its metrics.csv columns.
_SPLIT_COLUMNS = {
    "test": ("accuracy", "recall", "test_accuracy", "recall_"),
    "validation": ("val_accuracy", "val_recall", "val_accuracy", "val_recall_"),
}
# Mean accuracies are sums of fractions; a setting exactly at the threshold must not fail on rounding.
_ACCURACY_EPS = 1e-9


# ---- runs ----------------------------------------------------------------------------------------------


def _run_row(config: Mapping, summary: Mapping | None, directory: Path) -> dict:
    """One run as a flat dict: the config fields, then the summary's (which win), hashable where grouped.
    The validation split's final accuracy and recall are ``val_accuracy`` / ``val_recall`` (None for a run
    without one)."""
    row = with_legacy_values(dict(config))
    if summary is not None:
        row.update({k: v for k, v in summary.items() if k not in ("config", "validation")})
        validation = summary.get("validation") or {}
        row["val_accuracy"] = validation.get("accuracy")
        row["val_recall"] = validation.get("recall")
    row["path"] = str(directory)
    row["method"] = LOSSES[row["loss"]].display if row.get("loss") in LOSSES else row.get("loss")
    row["important"] = tuple(int(c) for c in row.get("important") or ())
    # One margin or one per important class; a scalar is accepted too.
    row["margin"] = tuple(float(m) for m in np.atleast_1d(row.get("margin", ())))
    row["classes"] = tuple(row.get("classes") or ())
    return row


def _frame(rows: list[dict]) -> pd.DataFrame:
    frame = pd.DataFrame(rows)
    for column in RUN_COLUMNS:
        if column not in frame:
            frame[column] = pd.Series(dtype=object)
    return frame[list(RUN_COLUMNS) + [c for c in frame.columns if c not in RUN_COLUMNS]]


def load_runs(root: str | Path) -> pd.DataFrame:
    """Every finished run below ``root`` (a directory holding summary.json), one row each (see module doc)."""
    rows = []
    for directory in rundir.finished_dirs(root):
        summary = rundir.read_summary(directory)
        rows.append(_run_row(summary["config"], summary, directory))
    return _frame(rows)


def unfinished_runs(root: str | Path) -> pd.DataFrame:
    """Runs below ``root`` that have config.json but no summary.json (not finished), same columns as
    ``load_runs`` with accuracy and recall empty."""
    rows = []
    for directory in rundir.unfinished_dirs(root):
        stored = rundir.read_config(directory)
        # The trainer nests the TrainConfig under "config" beside version fields and the class names.
        config = {**stored.get("config", stored), "classes": stored.get("classes")}
        rows.append(_run_row(config, None, directory))
    return _frame(rows)


def _dataset_runs(runs: pd.DataFrame, dataset: str) -> pd.DataFrame:
    subset = runs[runs["dataset"] == dataset]
    for field in EXPERIMENT_FIELDS:
        if field in subset and subset[field].nunique(dropna=False) > 1:
            values = sorted(map(str, subset[field].unique()))
            raise ValueError(
                f"the runs of data set {dataset!r} differ in {field} ({', '.join(values)}): "
                f"select one experiment first, e.g. runs[runs[{field!r}] == ...]"
            )
    return subset


def _check_unique_seeds(runs: pd.DataFrame) -> None:
    duplicated = runs[runs["seed"].duplicated(keep=False)]
    if not duplicated.empty:
        raise ValueError(
            "several finished runs of one setting share a seed (copies?): " + ", ".join(sorted(duplicated["path"]))
        )


def _check_split(runs: pd.DataFrame, split: str) -> None:
    """A ValueError naming the runs that lack ``split``'s metrics, and how to get them."""
    if split not in SELECTIONS:
        raise ValueError(f"selection must be one of {', '.join(SELECTIONS)}; got {split!r}")
    if split == "validation" and not runs.empty:
        missing = runs[runs["val_accuracy"].isna()]
        if not missing.empty:
            shown = ", ".join(sorted(missing["path"])[:3]) + (" ..." if len(missing) > 3 else "")
            raise ValueError(
                f"selection on the validation split, but {len(missing)} of {len(runs)} runs have no validation "
                f"metrics ({shown}): they were trained without a validation split (validation_fraction 0, or "
                "before camri made one). Delete those run folders and train them again (`camri grid --profile "
                "P`, with validation_fraction > 0), or set protocol.selection: test in the profile for the "
                "paper's test-set selection"
            )


def apply_report(runs: pd.DataFrame, report: str = "final", last_k: int = 5) -> pd.DataFrame:
    """``runs`` with each run's accuracy and recall (test, and validation where present) as ``report``
    says: "final" = the last epoch's (as stored, unchanged); "last_k" = the mean over the last ``last_k``
    epochs of metrics.csv, beyond the paper: a final epoch is one noisy sample of a fluctuating curve."""
    if report not in REPORTS:
        raise ValueError(f"report must be one of {', '.join(REPORTS)}; got {report!r}")
    if last_k < 1:
        raise ValueError(f"last_k must be >= 1; got {last_k}")
    if report == "final" or runs.empty:
        return runs
    runs = runs.copy()
    for i, run in runs.iterrows():
        tail = rundir.read_metrics(run["path"]).tail(last_k)
        for acc, recall, acc_column, recall_prefix in _SPLIT_COLUMNS.values():
            if acc_column in tail:
                runs.at[i, acc] = float(tail[acc_column].mean())
                runs.at[i, recall] = [float(tail[f"{recall_prefix}{name}"].mean()) for name in run["classes"]]
    return runs


# ---- important classes ---------------------------------------------------------------------------------


def class_recalls(runs: pd.DataFrame, dataset: str, loss: str = "ce", *, split: str = "validation") -> pd.DataFrame:
    """Per-class recall on ``split`` of the ``loss`` runs of ``dataset`` over seeds, sorted from lowest mean.

    Columns: class_index, class_name, recall_mean, recall_std (sample, ddof=1), n_seeds, rank (0 = lowest).
    Equal means (to 12 decimals, so that float summation order cannot split a true tie) are ordered by
    class index, lower first.
    """
    baseline = _dataset_runs(runs, dataset)
    baseline = baseline[baseline["loss"] == loss]
    if baseline.empty:
        raise ValueError(
            f"no finished {loss!r} runs of data set {dataset!r}: the important classes and the "
            "accuracy threshold need that baseline"
        )
    _check_unique_seeds(baseline)
    _check_split(baseline, split)
    column = _SPLIT_COLUMNS[split][1]
    recall = pd.DataFrame([np.asarray(r, dtype=float) for r in baseline[column]])  # (seeds, K)
    table = pd.DataFrame(
        {
            "class_index": np.arange(recall.shape[1]),
            "class_name": list(baseline["classes"].iloc[0]),
            "recall_mean": recall.mean().to_numpy(),
            "recall_std": recall.std(ddof=1).to_numpy(),
            "n_seeds": len(baseline),
        }
    )
    order = np.lexsort((table["class_index"], table["recall_mean"].round(12)))
    return table.iloc[order].reset_index(drop=True).assign(rank=lambda t: t.index)


def choose_important(runs: pd.DataFrame, dataset: str, *, split: str = "validation") -> pd.DataFrame:
    """The important classes of ``dataset`` from its CE runs' recall on ``split``: rows worst1, worst2, median.

    Columns: role, class_index, class_name, recall_mean, recall_std, n_seeds, rank, paper_class (the
    authors' class for that role where known, else None), next_class_name / next_recall_mean (the class
    ranked just above, how close the choice was). median = sorted position (K − 1) // 2.
    """
    ranking = class_recalls(runs, dataset, split=split)
    k = len(ranking)
    if k < 3:
        raise ValueError(f"data set {dataset!r} has {k} classes; worst1, worst2 and median need at least 3")
    positions = {"worst1": 0, "worst2": 1, "median": (k - 1) // 2}
    chosen = ranking.iloc[list(positions.values())].reset_index(drop=True)
    chosen.insert(0, "role", list(positions))
    following = ranking.iloc[[p + 1 for p in positions.values()]].reset_index(drop=True)
    chosen["next_class_name"] = following["class_name"]
    chosen["next_recall_mean"] = following["recall_mean"]
    paper = PAPER_IMPORTANT_CLASSES.get(display_dataset(dataset), {})
    chosen["paper_class"] = [paper.get(role) for role in positions]
    return chosen


# ---- settings and selection ----------------------------------------------------------------------------

SETTING_COLUMNS = [
    "method",
    "loss",
    "hyperparameters",
    "n_seeds",
    "seeds",
    "recalls",
    "accuracies",
    "recall_mean",
    "recall_std",
    "accuracy_mean",
    "accuracy_std",
    "selected_on",
    "selection_recall_mean",
    "selection_accuracy_mean",
    "qualified",
    "accuracy_threshold",
    "bias",
    "angle_variances",
    "paths",
]


def _angle_variance(run: Mapping, class_index: int) -> float:
    value = (run.get("relative_angle_variance") or {}).get(str(class_index))
    return float("nan") if value is None else float(value)


def _setting_row(members: pd.DataFrame, loss: str, class_index: int, split: str, threshold: float) -> dict:
    """One setting over its seeds: the test numbers that are reported and the ``split`` numbers it is
    chosen by."""
    acc_column, recall_column = _SPLIT_COLUMNS[split][:2]
    recalls = members["recall"].map(lambda r: float(r[class_index]))
    chosen_by = members[recall_column].map(lambda r: float(r[class_index]))
    selection_accuracy = members[acc_column].astype(float).mean()
    return {
        "method": LOSSES[loss].display,
        "loss": loss,
        "hyperparameters": format_hyperparameters(loss, members.iloc[0]),
        "n_seeds": len(members),
        "seeds": tuple(int(s) for s in members["seed"]),
        "recalls": tuple(recalls),
        "accuracies": tuple(members["accuracy"].astype(float)),
        "recall_mean": recalls.mean(),
        "recall_std": recalls.std(ddof=1),
        "accuracy_mean": members["accuracy"].mean(),
        "accuracy_std": members["accuracy"].std(ddof=1),
        "selected_on": split,
        "selection_recall_mean": chosen_by.mean(),
        "selection_accuracy_mean": selection_accuracy,
        "qualified": bool(selection_accuracy >= threshold - _ACCURACY_EPS),
        "accuracy_threshold": threshold,
        "bias": float("nan"),
        "angle_variances": tuple(_angle_variance(r, class_index) for r in members.to_dict("records")),
        "paths": tuple(members["path"]),
    }


def cell_settings(
    runs: pd.DataFrame,
    dataset: str,
    class_index: int,
    *,
    tolerance: float = DEFAULT_TOLERANCE,
    split: str = "validation",
    bias: bool = False,
) -> pd.DataFrame:
    """Every setting relevant to important class ``class_index`` of ``dataset``, aggregated over seeds.

    One row per setting, ordered by method then hyperparameter values; with ``bias``, each setting is
    followed by its ``<method>+bias`` row (camri.posthoc; needs the runs' angles.npz). Columns
    ``SETTING_COLUMNS``: method, loss, hyperparameters (text), n_seeds, seeds / recalls / accuracies
    (tuples, by seed; recall = of the important class; test), recall_mean, recall_std, accuracy_mean,
    accuracy_std (test; std: sample, ddof=1), selected_on (= ``split``, where the choice is made),
    selection_recall_mean / selection_accuracy_mean (on ``split``), qualified (selection accuracy >=
    accuracy_threshold = mean CE accuracy on ``split`` − tolerance), bias (NaN unless a +bias row),
    angle_variances (per seed: the class's relative angle variance on test), paths. Methods other than
    the registry's are ignored.
    """
    if tolerance < 0:
        raise ValueError(f"tolerance must be >= 0; got {tolerance}")
    data = _dataset_runs(runs, dataset)
    _check_split(data, split)
    ce = data[data["loss"] == "ce"]
    if ce.empty:
        raise ValueError(
            f"no finished 'ce' runs of data set {dataset!r}: 'maintaining accuracy' is measured against them"
        )
    threshold = ce[_SPLIT_COLUMNS[split][0]].astype(float).mean() - tolerance
    groups: dict[tuple, list[dict]] = {}
    for run in data.to_dict("records"):
        loss = run["loss"]
        info = LOSSES.get(loss)
        if info is None or (info.class_specific and run["important"] != (class_index,)):
            continue
        key = (info.rank, loss) + tuple(run[h] for h in info.axes)
        groups.setdefault(key, []).append(run)
    rows = []
    for key in sorted(groups):
        members = pd.DataFrame(groups[key]).sort_values("seed")
        _check_unique_seeds(members)
        rows.append(_setting_row(members, key[1], class_index, split, threshold))
        if bias and (tuned := posthoc.bias_setting(rows[-1], class_index, split, threshold)) is not None:
            rows.append(tuned)
    return pd.DataFrame(rows, columns=SETTING_COLUMNS)


def _best(settings: pd.DataFrame) -> pd.Series:
    # Stable sort: among complete ties the earlier row (smaller hyperparameters) wins.
    ranked = settings.sort_values(
        ["selection_recall_mean", "selection_accuracy_mean", "n_seeds"],
        ascending=False,
        kind="stable",
        na_position="last",
    )
    return ranked.iloc[0]


def select_settings(settings: pd.DataFrame, *, min_seeds: int = 1) -> pd.DataFrame:
    """The chosen settings of each method among ``settings`` (from ``cell_settings``).

    Two rows per method, ``selection``: "maintaining" = the qualifying setting with the highest mean
    recall, or when none qualifies the unconstrained best with qualified=False (the method is reported,
    never dropped); "unconstrained" = the highest mean recall regardless of accuracy. Recall and accuracy
    here are those of the split the settings were selected on (``selected_on``). Settings with fewer
    than ``min_seeds`` seeds are not eligible; a method with no eligible setting has no rows.
    """
    if min_seeds < 1:
        raise ValueError(f"min_seeds must be >= 1; got {min_seeds}")
    eligible = settings[settings["n_seeds"] >= min_seeds]
    rows = []
    for _, group in eligible.groupby("method", sort=False):
        unconstrained = _best(group)
        qualifying = group[group["qualified"]]
        maintaining = _best(qualifying) if not qualifying.empty else unconstrained
        rows.append({"selection": "maintaining", **maintaining})
        rows.append({"selection": "unconstrained", **unconstrained})
    return pd.DataFrame(rows, columns=["selection", *settings.columns])


def _ordered_datasets(runs: pd.DataFrame) -> list[str]:
    present = set(runs["dataset"].dropna())
    return [d for d in DATASET_NAMES if d in present] + sorted(present - set(DATASET_NAMES))


def _cell_classes(
    runs: pd.DataFrame, dataset: str, roles: Sequence[str], given: Mapping | Sequence | None, split: str
) -> list[tuple[str, int, str]]:
    """(role, class_index, class_name) of the cells of ``dataset``: chosen from CE unless ``given``."""
    unknown = [role for role in roles if role not in ROLES]
    if unknown:
        raise ValueError(f"roles {unknown} are not valid; valid are {', '.join(ROLES)}")
    if given is None:
        chosen = choose_important(runs, dataset, split=split).set_index("role")
        return [(role, int(chosen.at[role, "class_index"]), chosen.at[role, "class_name"]) for role in roles]
    # A list names the classes of ``roles`` in order (the profile's important.classes); a mapping by role.
    given = dict(given) if isinstance(given, Mapping) else dict(zip(roles, given))
    classes = list(_dataset_runs(runs, dataset)["classes"].iloc[0])
    cells = []
    for role in roles:
        if role not in given:
            continue
        cls = given[role]
        if isinstance(cls, str) and cls not in classes:
            raise ValueError(f"important class {cls!r} of {dataset!r} is not one of {', '.join(classes)}")
        index = classes.index(cls) if isinstance(cls, str) else int(cls)
        cells.append((role, index, classes[index]))
    return cells


def select_all(
    runs: pd.DataFrame,
    *,
    tolerance: float = DEFAULT_TOLERANCE,
    min_seeds: int = 1,
    roles: Sequence[str] = ROLES,
    important: Mapping[str, Mapping[str, int | str] | Sequence[int | str]] | None = None,
    datasets: Sequence[str] | None = None,
    split: str = "validation",
    role_split: str | None = None,
    bias: bool = False,
) -> pd.DataFrame:
    """``select_settings`` for every data set × role; columns dataset, role, class_index, class_name first.

    ``split``: where the important classes and the settings are chosen ("validation", the default, or
    "test", the paper's protocol); the reported numbers are always test. ``role_split``: where the
    important classes alone are chosen, when not on ``split``. ``bias``: add the ``<method>+bias``
    settings (``cell_settings``).

    ``roles``: which of worst1 / worst2 / median to report. ``important`` fixes the classes of some data
    sets instead of choosing them from CE: {dataset: {role: class}} or {dataset: [class per role of
    ``roles``, in order]}, a class given by index or name. ``datasets`` restricts and orders the data sets
    (default: those present, the paper's first). A ValueError when a data set has no CE runs, or fewer CE
    seeds than ``min_seeds``: the cells need that baseline.
    """
    frames = []
    for dataset in datasets or _ordered_datasets(runs):
        given = (important or {}).get(dataset)
        for role, class_index, class_name in _cell_classes(runs, dataset, roles, given, role_split or split):
            settings = cell_settings(runs, dataset, class_index, tolerance=tolerance, split=split, bias=bias)
            selected = select_settings(settings, min_seeds=min_seeds)
            # Every cell keeps its CE row, so no cell of Table 1 can vanish without a word.
            if "CE" not in set(selected["method"]):
                raise ValueError(f"the CE baseline of {dataset!r} has fewer than min_seeds={min_seeds} seeds")
            selected.insert(0, "class_name", class_name)
            selected.insert(0, "class_index", class_index)
            selected.insert(0, "role", role)
            selected.insert(0, "dataset", dataset)
            frames.append(selected)
    return (
        pd.concat(frames, ignore_index=True)
        if frames
        else pd.DataFrame(columns=["dataset", "role", "class_index", "class_name", "selection", "method"])
    )
