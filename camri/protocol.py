"""The paper's protocol as tested code: finished runs → important classes → chosen settings → Table 1.

Every step is a plain function on pandas DataFrames, so notebooks, profiles and the CLI compose them::

    runs = load_runs("results/paper/runs")             # one row per finished run (summary.json present)
    todo = unfinished_runs("results/paper/runs")       # started (config.json) but not finished
    choose_important(runs, "cifar10")                  # worst1 / worst2 / median from the CE baseline
    sel = select_all(runs, tolerance=0.005)            # the chosen setting per dataset × role × method
    table = table1(sel)                                # Table 1, long format, with the paper's values
    write_table1(table, "results/paper")               # table1.csv (the contract), table1.md, table1.tex
    paired_comparisons(sel)                            # CAMRI − CE and CAMRI − ArcFace, paired by seed
    cell_settings(runs, "cifar10", 3)                  # every setting's (recall, accuracy) point of a cell
    epoch_curves(runs, "cifar10", 3)                   # the same settings, epoch by epoch (metrics.csv)
    ce_threshold_curve(runs, "cifar10", 3)             # post-hoc bias on CE's class-3 logit: the curve

API
---
Runs
    ``load_runs(root) -> DataFrame``: one row per directory below ``root`` that holds summary.json, sorted by
    path. Columns: ``path``, ``dataset``, ``loss``, ``method`` (display name), ``important`` (tuple of class
    indices), ``margin`` (tuple of radians), ``scale``, ``weight``, ``fp_weight``, ``seed``, ``classes``
    (tuple of names), ``accuracy`` (final test accuracy), ``recall`` (list, index = class), then every
    other config and summary field (docs/run-format.md).
    ``unfinished_runs(root) -> DataFrame``: the same columns for directories with config.json but no
    summary.json (accuracy and recall empty), so a notebook can say what is missing.
Important classes
    ``class_recalls(runs, dataset, loss="ce") -> DataFrame``: per class, recall mean / sample std over
    seeds, sorted (rank 0 = lowest).
    ``choose_important(runs, dataset) -> DataFrame``: rows worst1, worst2, median with class_index,
    class_name, recall_mean, recall_std, n_seeds, rank, paper_class.
Settings and selection
    ``cell_settings(runs, dataset, class_index, tolerance=DEFAULT_TOLERANCE) -> DataFrame``: one row per
    setting (method + hyperparameters) relevant to important class ``class_index``, aggregated over seeds,
    with ``qualified`` (maintains accuracy) and the per-seed values (``seeds``, ``recalls``,
    ``accuracies``). These rows are also the (recall, accuracy) points of a trade-off plot.
    ``epoch_curves(runs, dataset, class_index) -> DataFrame``: the same settings' test accuracy and
    important-class recall after every epoch (from each run's metrics.csv), mean and std over seeds.
    ``select_settings(settings, min_seeds=1) -> DataFrame``: per method two rows, ``selection`` =
    "maintaining" (the best qualifying setting; the best overall with qualified=False when none
    qualifies) and "unconstrained" (the best regardless of accuracy).
    ``select_all(runs, tolerance=DEFAULT_TOLERANCE, min_seeds=1, roles=ROLES, important=None,
    datasets=None) -> DataFrame``: ``select_settings`` for every dataset × role, with dataset, role,
    class_index and class_name columns; ``important`` fixes classes instead of choosing them from CE.
Table 1
    ``table1(selections) -> DataFrame``: columns ``TABLE1_COLUMNS`` (the CSV contract) plus class_index,
    recall_diff and accuracy_diff (ours − paper). ``table1_csv(table)``, ``table1_markdown(table)``,
    ``table1_latex(table)``: strings. ``write_table1(table, out_dir) -> {"csv"|"md"|"tex": Path}``:
    table1.csv, table1.md and table1.tex, each written atomically.
    ``paper_table1() -> DataFrame``: the paper's numbers (dataset, important, method, recall, accuracy).
Beyond the paper
    ``paired_gain(a, b, confidence=0.95) -> dict`` and ``paired_comparisons(selections, ...)``: recall gain
    of CAMRI over CE and over ArcFace on the seeds both have, with a t confidence interval.
    ``threshold_curve(logits, labels, class_index, biases=None) -> DataFrame`` and
    ``ce_threshold_curve(runs, dataset, class_index, biases=None)``: recall–accuracy curve of adding a bias
    to the important class's logit of a CE model.
Formatting
    ``format_margin(radians, denominator=64) -> str`` ("4π/64"), ``format_hyperparameters(loss, run)``,
    ``display_dataset(name)`` ("cifar10" → "CIFAR-10").

Rules (docs/protocol.md explains why)
-------------------------------------
- Ranking of classes: mean recall over the CE seeds, ascending; equal means (to 12 decimals) are ordered
  by class index, lower first. worst1 = position 0, worst2 = position 1, median = position (K − 1) // 2,
  the lower median when K is even (K = 10: the 5th lowest).
- A setting = loss + the hyperparameters that loss uses (``HYPERPARAMETERS``). CE, L2-softmax and ArcFace
  runs serve every important class; CAMRI, WCE and CRWWCE runs serve class c when ``important == (c,)``.
- Maintaining accuracy: mean accuracy over seeds >= mean CE accuracy − ``tolerance`` (default 0.005).
- Best = highest mean important-class recall; ties → higher mean accuracy → more seeds → smaller
  hyperparameters. Settings with fewer than ``min_seeds`` seeds are not eligible.
- Spread = sample standard deviation over seeds (ddof = 1); NaN (shown as –) for one seed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from camri import posthoc
from camri.io import atomic_write_text, read_json

# loss name → display name, in the order methods are listed everywhere.
METHOD_NAMES = {"camri": "CAMRI", "arcface": "ArcFace", "l2softmax": "L2-softmax",
                "crwwce": "CRWWCE", "wce": "WCE", "ce": "CE"}
TABLE1_METHODS = ("CAMRI", "ArcFace", "CRWWCE", "WCE", "CE")
ROLES = ("worst1", "worst2", "median")
DATASET_NAMES = {"cifar10": "CIFAR-10", "gtsrb": "GTSRB", "awa2": "AwA2"}
TABLE1_COLUMNS = ("dataset", "important", "class", "method", "recall_mean", "recall_std", "accuracy_mean",
                  "accuracy_std", "n_seeds", "hyperparameters", "qualified", "paper_recall", "paper_accuracy")
DEFAULT_TOLERANCE = 0.005

# The config fields that make a setting of each loss. The others are ignored for that loss: a CE run's
# config still carries the default margin and scale, which must not split the CE baseline into "settings".
HYPERPARAMETERS = {"ce": (), "wce": ("weight",), "crwwce": ("weight", "fp_weight"),
                   "l2softmax": ("scale",), "arcface": ("margin", "scale"), "camri": ("margin", "scale")}
# Losses whose runs are trained for one important class; the others serve every important class.
CLASS_SPECIFIC_LOSSES = frozenset({"camri", "wce", "crwwce"})
# Fields that must agree among the runs of a data set: mixing, say, 30- and 300-epoch runs in one
# average would be silently wrong, so it is an error and the caller filters the runs first.
EXPERIMENT_FIELDS = ("epochs", "batch_size", "lr", "width", "z_dim", "bn_momentum", "augment", "image_size")
# The CIFAR-10 classes of the authors' shipped configurations. Which class plays which role is inferred
# from the printed recalls (their cat run ends at recall 0.789 ≈ Table 1's worst1); the GTSRB and AwA2
# classes are not public.
PAPER_IMPORTANT_CLASSES = {"CIFAR-10": {"worst1": "cat", "worst2": "dog", "median": "airplane"}}

RUN_COLUMNS = ("path", "dataset", "loss", "method", "important", "margin", "scale", "weight", "fp_weight",
               "seed", "classes", "accuracy", "recall")
_HYPERPARAMETER_LABELS = {"margin": "m", "scale": "s", "weight": "w", "fp_weight": "w_fp"}
# Mean accuracies are sums of fractions; a setting exactly at the threshold must not fail on rounding.
_ACCURACY_EPS = 1e-9


# ---- runs ----------------------------------------------------------------------------------------------

def _run_row(config: Mapping, summary: Mapping | None, directory: Path) -> dict:
    """One run as a flat dict: the config fields, then the summary's (which win), hashable where grouped."""
    row = dict(config)
    if summary is not None:
        row.update({k: v for k, v in summary.items() if k != "config"})
    row["path"] = str(directory)
    row["method"] = METHOD_NAMES.get(row.get("loss"), row.get("loss"))
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


def _run_files(root: str | Path, name: str) -> list[Path]:
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"no run directory {root}")
    return sorted(root.rglob(name))


def load_runs(root: str | Path) -> pd.DataFrame:
    """Every finished run below ``root`` (a directory holding summary.json), one row each (see module doc)."""
    rows = []
    for path in _run_files(root, "summary.json"):
        summary = read_json(path)
        rows.append(_run_row(summary["config"], summary, path.parent))
    return _frame(rows)


def unfinished_runs(root: str | Path) -> pd.DataFrame:
    """Runs below ``root`` that have config.json but no summary.json (not finished), same columns as
    ``load_runs`` with accuracy and recall empty."""
    rows = []
    for path in _run_files(root, "config.json"):
        if not path.with_name("summary.json").exists():
            stored = read_json(path)
            # The trainer nests the TrainConfig under "config" beside version fields and the class names.
            config = {**stored.get("config", stored), "classes": stored.get("classes")}
            rows.append(_run_row(config, None, path.parent))
    return _frame(rows)


def _dataset_runs(runs: pd.DataFrame, dataset: str) -> pd.DataFrame:
    subset = runs[runs["dataset"] == dataset]
    for field in EXPERIMENT_FIELDS:
        if field in subset and subset[field].nunique(dropna=False) > 1:
            values = sorted(map(str, subset[field].unique()))
            raise ValueError(f"the runs of data set {dataset!r} differ in {field} ({', '.join(values)}): "
                             f"select one experiment first, e.g. runs[runs[{field!r}] == ...]")
    return subset


def _check_unique_seeds(runs: pd.DataFrame) -> None:
    duplicated = runs[runs["seed"].duplicated(keep=False)]
    if not duplicated.empty:
        raise ValueError("several finished runs of one setting share a seed (copies?): "
                         + ", ".join(sorted(duplicated["path"])))


# ---- important classes ---------------------------------------------------------------------------------

def class_recalls(runs: pd.DataFrame, dataset: str, loss: str = "ce") -> pd.DataFrame:
    """Per-class test recall of the ``loss`` runs of ``dataset`` over seeds, sorted from lowest mean.

    Columns: class_index, class_name, recall_mean, recall_std (sample, ddof=1), n_seeds, rank (0 = lowest).
    Equal means (to 12 decimals, so that float summation order cannot split a true tie) are ordered by
    class index, lower first.
    """
    baseline = _dataset_runs(runs, dataset)
    baseline = baseline[baseline["loss"] == loss]
    if baseline.empty:
        raise ValueError(f"no finished {loss!r} runs of data set {dataset!r}: the important classes and the "
                         "accuracy threshold need that baseline")
    _check_unique_seeds(baseline)
    recall = pd.DataFrame([np.asarray(r, dtype=float) for r in baseline["recall"]])  # (seeds, K)
    table = pd.DataFrame({"class_index": np.arange(recall.shape[1]),
                          "class_name": list(baseline["classes"].iloc[0]),
                          "recall_mean": recall.mean().to_numpy(),
                          "recall_std": recall.std(ddof=1).to_numpy(),
                          "n_seeds": len(baseline)})
    order = np.lexsort((table["class_index"], table["recall_mean"].round(12)))
    return table.iloc[order].reset_index(drop=True).assign(rank=lambda t: t.index)


def choose_important(runs: pd.DataFrame, dataset: str) -> pd.DataFrame:
    """The important classes of ``dataset`` from its CE runs: rows worst1, worst2, median.

    Columns: role, class_index, class_name, recall_mean, recall_std, n_seeds, rank, paper_class (the
    authors' class for that role where known, else None). median = sorted position (K − 1) // 2.
    """
    ranking = class_recalls(runs, dataset)
    k = len(ranking)
    if k < 3:
        raise ValueError(f"data set {dataset!r} has {k} classes; worst1, worst2 and median need at least 3")
    positions = {"worst1": 0, "worst2": 1, "median": (k - 1) // 2}
    chosen = ranking.iloc[list(positions.values())].reset_index(drop=True)
    chosen.insert(0, "role", list(positions))
    paper = PAPER_IMPORTANT_CLASSES.get(display_dataset(dataset), {})
    chosen["paper_class"] = [paper.get(role) for role in positions]
    return chosen


# ---- settings and selection ----------------------------------------------------------------------------

def cell_settings(runs: pd.DataFrame, dataset: str, class_index: int, *,
                  tolerance: float = DEFAULT_TOLERANCE) -> pd.DataFrame:
    """Every setting relevant to important class ``class_index`` of ``dataset``, aggregated over seeds.

    One row per setting, ordered by method then hyperparameter values. Columns: method, loss,
    hyperparameters (text), n_seeds, seeds / recalls / accuracies (tuples, by seed; recall = of the
    important class), recall_mean, recall_std, accuracy_mean, accuracy_std (std: sample, ddof=1),
    qualified (accuracy_mean >= accuracy_threshold), accuracy_threshold (mean CE accuracy − tolerance),
    paths. Methods other than CE, WCE, CRWWCE, L2-softmax, ArcFace and CAMRI are ignored.
    """
    if tolerance < 0:
        raise ValueError(f"tolerance must be >= 0; got {tolerance}")
    data = _dataset_runs(runs, dataset)
    ce = data[data["loss"] == "ce"]
    if ce.empty:
        raise ValueError(f"no finished 'ce' runs of data set {dataset!r}: 'maintaining accuracy' is "
                         "measured against them")
    threshold = ce["accuracy"].mean() - tolerance
    groups: dict[tuple, list[dict]] = {}
    for run in data.to_dict("records"):
        loss = run["loss"]
        if loss not in HYPERPARAMETERS or (loss in CLASS_SPECIFIC_LOSSES and run["important"] != (class_index,)):
            continue
        key = (list(METHOD_NAMES).index(loss), loss) + tuple(run[h] for h in HYPERPARAMETERS[loss])
        groups.setdefault(key, []).append(run)
    rows = []
    for key in sorted(groups):
        members = pd.DataFrame(groups[key]).sort_values("seed")
        _check_unique_seeds(members)
        loss = key[1]
        recalls = members["recall"].map(lambda r: float(r[class_index]))
        rows.append({
            "method": METHOD_NAMES[loss], "loss": loss,
            "hyperparameters": format_hyperparameters(loss, members.iloc[0]),
            "n_seeds": len(members), "seeds": tuple(int(s) for s in members["seed"]),
            "recalls": tuple(recalls), "accuracies": tuple(members["accuracy"].astype(float)),
            "recall_mean": recalls.mean(), "recall_std": recalls.std(ddof=1),
            "accuracy_mean": members["accuracy"].mean(), "accuracy_std": members["accuracy"].std(ddof=1),
            "qualified": bool(members["accuracy"].mean() >= threshold - _ACCURACY_EPS),
            "accuracy_threshold": threshold, "paths": tuple(members["path"]),
        })
    return pd.DataFrame(rows, columns=[
        "method", "loss", "hyperparameters", "n_seeds", "seeds", "recalls", "accuracies", "recall_mean",
        "recall_std", "accuracy_mean", "accuracy_std", "qualified", "accuracy_threshold", "paths"])


def epoch_curves(runs: pd.DataFrame, dataset: str, class_index: int) -> pd.DataFrame:
    """Test accuracy and important-class recall after every epoch, per setting, over seeds.

    Reads each run's metrics.csv (docs/run-format.md) for the settings of ``cell_settings(runs, dataset,
    class_index)``. One row per setting × epoch, columns: method, loss, hyperparameters, epoch, n_seeds,
    accuracy_mean, accuracy_std, recall_mean, recall_std (std: sample, ddof = 1; NaN for one seed). With
    short budgets a run's final epoch is one noisy sample of a fluctuating curve; the curve shows whether
    a gap is a trend or noise.
    """
    settings = cell_settings(runs, dataset, class_index)
    class_name = _dataset_runs(runs, dataset)["classes"].iloc[0][class_index]
    column = f"recall_{class_name}"
    rows = []
    for setting in settings.to_dict("records"):
        frames = []
        for path in setting["paths"]:
            metrics = pd.read_csv(Path(path) / "metrics.csv")
            if column not in metrics:
                raise ValueError(f"{path}/metrics.csv has no column {column!r}: not a run of {dataset!r}?")
            frames.append(metrics[["epoch", "test_accuracy", column]].rename(columns={column: "recall"}))
        for epoch, group in pd.concat(frames).groupby("epoch", sort=True):
            rows.append({"method": setting["method"], "loss": setting["loss"],
                         "hyperparameters": setting["hyperparameters"], "epoch": int(epoch),
                         "n_seeds": len(group), "accuracy_mean": group["test_accuracy"].mean(),
                         "accuracy_std": group["test_accuracy"].std(ddof=1),
                         "recall_mean": group["recall"].mean(), "recall_std": group["recall"].std(ddof=1)})
    return pd.DataFrame(rows, columns=["method", "loss", "hyperparameters", "epoch", "n_seeds", "accuracy_mean",
                                       "accuracy_std", "recall_mean", "recall_std"])


def _best(settings: pd.DataFrame) -> pd.Series:
    # Stable sort: among complete ties the earlier row (smaller hyperparameters) wins.
    ranked = settings.sort_values(["recall_mean", "accuracy_mean", "n_seeds"], ascending=False,
                                  kind="stable", na_position="last")
    return ranked.iloc[0]


def select_settings(settings: pd.DataFrame, *, min_seeds: int = 1) -> pd.DataFrame:
    """The chosen settings of each method among ``settings`` (from ``cell_settings``).

    Two rows per method, ``selection``: "maintaining" = the qualifying setting with the highest mean
    recall, or when none qualifies the unconstrained best with qualified=False (the method is reported,
    never dropped); "unconstrained" = the highest mean recall regardless of accuracy. Settings with fewer
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


def _cell_classes(runs: pd.DataFrame, dataset: str, roles: Sequence[str],
                  given: Mapping | Sequence | None) -> list[tuple[str, int, str]]:
    """(role, class_index, class_name) of the cells of ``dataset``: chosen from CE unless ``given``."""
    unknown = [role for role in roles if role not in ROLES]
    if unknown:
        raise ValueError(f"roles {unknown} are not valid; valid are {', '.join(ROLES)}")
    if given is None:
        chosen = choose_important(runs, dataset).set_index("role")
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


def select_all(runs: pd.DataFrame, *, tolerance: float = DEFAULT_TOLERANCE, min_seeds: int = 1,
               roles: Sequence[str] = ROLES,
               important: Mapping[str, Mapping[str, int | str] | Sequence[int | str]] | None = None,
               datasets: Sequence[str] | None = None) -> pd.DataFrame:
    """``select_settings`` for every data set × role; columns dataset, role, class_index, class_name first.

    ``roles``: which of worst1 / worst2 / median to report. ``important`` fixes the classes of some data
    sets instead of choosing them from CE: {dataset: {role: class}} or {dataset: [class per role of
    ``roles``, in order]}, a class given by index or name. ``datasets`` restricts and orders the data sets
    (default: those present, the paper's first). A ValueError when a data set has no CE runs, or fewer CE
    seeds than ``min_seeds``: the cells need that baseline.
    """
    frames = []
    for dataset in datasets or _ordered_datasets(runs):
        given = (important or {}).get(dataset)
        for role, class_index, class_name in _cell_classes(runs, dataset, roles, given):
            selected = select_settings(cell_settings(runs, dataset, class_index, tolerance=tolerance),
                                       min_seeds=min_seeds)
            # Every cell keeps its CE row, so no cell of Table 1 can vanish without a word.
            if "CE" not in set(selected["method"]):
                raise ValueError(f"the CE baseline of {dataset!r} has fewer than min_seeds={min_seeds} seeds")
            selected.insert(0, "class_name", class_name)
            selected.insert(0, "class_index", class_index)
            selected.insert(0, "role", role)
            selected.insert(0, "dataset", dataset)
            frames.append(selected)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(
        columns=["dataset", "role", "class_index", "class_name", "selection", "method"])


# ---- Table 1 -------------------------------------------------------------------------------------------

def paper_table1() -> pd.DataFrame:
    """The paper's Table 1 (camri/paper_table1.csv): dataset, important, method, recall, accuracy."""
    with resources.files("camri").joinpath("paper_table1.csv").open(encoding="utf-8") as f:
        return pd.read_csv(f, comment="#")


def table1(selections: pd.DataFrame) -> pd.DataFrame:
    """Table 1 in long format from ``select_all``: one row per data set × role × method of
    ``TABLE1_METHODS``, the "maintaining" choice of each.

    Columns: ``TABLE1_COLUMNS`` then class_index, recall_diff and accuracy_diff (ours − paper). A method
    without eligible runs gets a row with n_seeds 0, empty numbers and qualified False. paper_* are NaN
    where the paper reports nothing.
    """
    paper = paper_table1().set_index(["dataset", "important", "method"])
    maintaining = selections[selections["selection"] == "maintaining"]
    rows = []
    for (dataset, role, class_index, class_name), cell in maintaining.groupby(
            ["dataset", "role", "class_index", "class_name"], sort=False):
        chosen = cell.set_index("method")
        for method in TABLE1_METHODS:
            row = {"dataset": display_dataset(dataset), "important": role, "class": class_name,
                   "method": method, "recall_mean": np.nan, "recall_std": np.nan, "accuracy_mean": np.nan,
                   "accuracy_std": np.nan, "n_seeds": 0, "hyperparameters": "", "qualified": False}
            if method in chosen.index:
                row.update({c: chosen.at[method, c] for c in ("recall_mean", "recall_std", "accuracy_mean",
                                                              "accuracy_std", "n_seeds", "hyperparameters")})
                row["qualified"] = bool(chosen.at[method, "qualified"])
            key = (row["dataset"], role, method)
            row["paper_recall"] = paper["recall"].get(key, np.nan)
            row["paper_accuracy"] = paper["accuracy"].get(key, np.nan)
            row["class_index"] = class_index
            rows.append(row)
    table = pd.DataFrame(rows, columns=[*TABLE1_COLUMNS, "class_index"])
    table["n_seeds"] = table["n_seeds"].astype(int)
    table["recall_diff"] = table["recall_mean"] - table["paper_recall"]
    table["accuracy_diff"] = table["accuracy_mean"] - table["paper_accuracy"]
    return table


def _number(value: float, signed: bool = False) -> str:
    if pd.isna(value):
        return "–"
    return f"{value:+.4f}" if signed else f"{value:.4f}"


def _cell_lines(row: pd.Series) -> list[str]:
    """A Table 1 cell as text lines: ours ± std, hyperparameters and seeds, the paper's value and Δ."""
    if row["n_seeds"] == 0:
        return ["–"]
    lines = [f"{_number(row['recall_mean'])} ± {_number(row['recall_std'])} "
             f"({_number(row['accuracy_mean'])} ± {_number(row['accuracy_std'])})",
             "; ".join(filter(None, [row["hyperparameters"], f"n={row['n_seeds']}"]))
             + ("" if row["qualified"] else " †")]
    if not pd.isna(row["paper_recall"]):
        lines.append(f"paper {_number(row['paper_recall'])} ({_number(row['paper_accuracy'])}), "
                     f"Δ {_number(row['recall_diff'], True)} ({_number(row['accuracy_diff'], True)})")
    return lines


_CAPTION = ("Mean important-class recall (mean accuracy) ± sample std over seeds; chosen hyperparameters "
            "(m = margin, s = scale, w = WCE / CRWWCE false-negative weight, w_fp = CRWWCE false-positive "
            "weight); n = seeds; the paper's value and Δ = ours − paper. † no setting of the method "
            "maintained accuracy: its best-recall setting is shown.")


def _grids(table: pd.DataFrame):
    """Per data set: (name, column headers "role: class", {method: [cell lines per role]})."""
    for dataset, part in table.groupby("dataset", sort=False):
        roles = part.drop_duplicates("important")
        headers = [f"{r}: {c}" for r, c in zip(roles["important"], roles["class"])]
        cells = {method: [_cell_lines(row) for _, row in rows.iterrows()]
                 for method, rows in part.groupby("method", sort=False)}
        yield dataset, headers, cells


def table1_markdown(table: pd.DataFrame) -> str:
    """Table 1 as Markdown: one table per data set, rows = methods, columns = important classes."""
    out = ["# Table 1", "", _CAPTION, ""]
    for dataset, headers, cells in _grids(table):
        out += [f"## {dataset}", "", "| method | " + " | ".join(headers) + " |",
                "|---" * (len(headers) + 1) + "|"]
        out += [f"| {method} | " + " | ".join("<br>".join(lines) for lines in row) + " |"
                for method, row in cells.items()]
        out.append("")
    return "\n".join(out)


# One pass over the characters, so that a replacement is never escaped again.
_LATEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
          "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "π": r"$\pi$",
          "±": r"$\pm$", "Δ": r"$\Delta$", "–": "--", "†": r"$^\dagger$"}


def _latex(text: str) -> str:
    return "".join(_LATEX.get(char, char) for char in text)


def table1_latex(table: pd.DataFrame) -> str:
    """Table 1 as LaTeX (no packages needed): one tabular per data set, each cell a stacked tabular."""
    out = ["% Table 1. " + _CAPTION]
    for dataset, headers, cells in _grids(table):
        columns = len(headers) + 1
        out += [r"\begin{tabular}{l" + "c" * len(headers) + "}", r"\hline",
                rf"\multicolumn{{{columns}}}{{c}}{{{_latex(dataset)}}} \\", r"\hline",
                "Method & " + " & ".join(_latex(h) for h in headers) + r" \\", r"\hline"]
        for method, row in cells.items():
            stacked = [r"\begin{tabular}[t]{@{}c@{}}" + r" \\ ".join(_latex(x) for x in lines) + r"\end{tabular}"
                       for lines in row]
            out.append(_latex(method) + " & " + " & ".join(stacked) + r" \\")
        out += [r"\hline", r"\end{tabular}", ""]
    return "\n".join(out)


def table1_csv(table: pd.DataFrame) -> str:
    """The machine-readable contract: exactly ``TABLE1_COLUMNS``; numbers to 6 significant digits,
    qualified as true/false, NaN as empty."""
    csv = table[list(TABLE1_COLUMNS)].copy()
    csv["qualified"] = csv["qualified"].map({True: "true", False: "false"})
    return csv.to_csv(index=False, na_rep="", float_format="%.6g", lineterminator="\n")


def write_table1(table: pd.DataFrame, out_dir: str | Path) -> dict[str, Path]:
    """Write table1.csv, table1.md and table1.tex into ``out_dir``, each atomically; returns the paths."""
    out_dir = Path(out_dir)
    texts = {"csv": table1_csv(table), "md": table1_markdown(table), "tex": table1_latex(table)}
    return {kind: atomic_write_text(out_dir / f"table1.{kind}", text) for kind, text in texts.items()}


# ---- beyond the paper: paired comparison ----------------------------------------------------------------

def paired_gain(a: Mapping[int, float], b: Mapping[int, float], confidence: float = 0.95) -> dict:
    """Mean of a[seed] − b[seed] over the seeds both have, with a two-sided t confidence interval.

    Returns n_pairs, gain_mean, gain_std (sample, ddof=1), ci_low, ci_high; the std and interval are NaN
    for fewer than 2 pairs, everything is NaN for none.
    """
    seeds = sorted(set(a) & set(b))
    diff = np.array([a[s] - b[s] for s in seeds], dtype=float)
    n = len(diff)
    mean = diff.mean() if n else np.nan
    std = diff.std(ddof=1) if n > 1 else np.nan
    half = stats.t.ppf((1 + confidence) / 2, n - 1) * std / math.sqrt(n) if n > 1 else np.nan
    return {"n_pairs": n, "gain_mean": mean, "gain_std": std, "ci_low": mean - half, "ci_high": mean + half}


def paired_comparisons(selections: pd.DataFrame, *, method: str = "CAMRI",
                       versus: Sequence[str] = ("CE", "ArcFace"), confidence: float = 0.95) -> pd.DataFrame:
    """Per cell of ``select_all``, ``method`` against each of ``versus`` (their "maintaining" choices),
    paired by seed: the recall gain of the important class, ``paired_gain``'s columns plus dataset, role,
    class_name, method, versus and both hyperparameters. Cells missing either method are left out."""
    maintaining = selections[selections["selection"] == "maintaining"]
    rows = []
    for (dataset, role, class_name), cell in maintaining.groupby(["dataset", "role", "class_name"], sort=False):
        chosen = cell.set_index("method")
        for other in versus:
            if method not in chosen.index or other not in chosen.index:
                continue
            mine, theirs = chosen.loc[method], chosen.loc[other]
            gain = paired_gain(dict(zip(mine["seeds"], mine["recalls"])),
                               dict(zip(theirs["seeds"], theirs["recalls"])), confidence)
            rows.append({"dataset": dataset, "role": role, "class_name": class_name, "method": method,
                         "versus": other, **gain, "method_hyperparameters": mine["hyperparameters"],
                         "versus_hyperparameters": theirs["hyperparameters"]})
    return pd.DataFrame(rows, columns=["dataset", "role", "class_name", "method", "versus", "n_pairs",
                                       "gain_mean", "gain_std", "ci_low", "ci_high", "method_hyperparameters",
                                       "versus_hyperparameters"])


# ---- beyond the paper: post-hoc threshold tuning -------------------------------------------------------

def _default_biases(gaps: np.ndarray, points: int = 201) -> np.ndarray:
    # Quantiles of the gaps put the grid where predictions change; 0 is the plain model; below the smallest
    # gap no sample goes to the class (recall 0), above the largest every sample does (recall 1).
    ends = [gaps.min() - 1.0, 0.0, gaps.max() + 1.0]
    return np.unique(np.concatenate([np.quantile(gaps, np.linspace(0, 1, points)), ends]))


def threshold_curve(logits: np.ndarray, labels: np.ndarray, class_index: int,
                    biases: np.ndarray | None = None) -> pd.DataFrame:
    """Recall of ``class_index`` and overall accuracy when ``bias`` is added to that class's logit.

    logits: (N, K) test logits; labels: (N,) true classes. biases: 1-D, in logit units (default: 201
    quantiles of the per-sample gaps, plus 0 and a bias beyond each end). Ties are broken as argmax
    does (lowest class index), so bias 0 reproduces the plain prediction. Returns columns bias, recall,
    accuracy, sorted by bias; recall is NaN when no sample is of the class.
    """
    if biases is None:
        biases = _default_biases(posthoc.gaps(logits, class_index)[0])
    biases = np.sort(np.asarray(biases, dtype=np.float64))
    recall, accuracy = posthoc.bias_outcomes(logits, labels, class_index, biases)
    return pd.DataFrame({"bias": biases, "recall": recall, "accuracy": accuracy})


def ce_threshold_curve(runs: pd.DataFrame, dataset: str, class_index: int,
                       biases: np.ndarray | None = None) -> pd.DataFrame:
    """``threshold_curve`` of every CE run of ``dataset`` (from its angles.npz), averaged over seeds at
    each bias, so it compares with the methods' mean points of ``cell_settings``. The default bias grid
    is built from the gaps of all seeds together. Columns: bias, recall, accuracy, n_seeds."""
    ce = _dataset_runs(runs, dataset)
    ce = ce[ce["loss"] == "ce"]
    if ce.empty:
        raise ValueError(f"no finished 'ce' runs of data set {dataset!r}")
    arrays = []
    for path in ce["path"]:
        with np.load(Path(path) / "angles.npz") as npz:
            arrays.append((npz["logits"].astype(np.float64), npz["labels"]))
    if biases is None:
        biases = _default_biases(np.concatenate([posthoc.gaps(logits, class_index)[0] for logits, _ in arrays]))
    curves = [threshold_curve(logits, labels, class_index, biases) for logits, labels in arrays]
    mean = pd.concat(curves).groupby("bias", as_index=False)[["recall", "accuracy"]].mean()
    return mean.assign(n_seeds=len(curves))


# ---- formatting ----------------------------------------------------------------------------------------

def display_dataset(name: str) -> str:
    """The paper's spelling of a data set (cifar10 → CIFAR-10, gtsrb → GTSRB, awa2 → AwA2); others as-is.

    An ``imagefolder:`` source whose folder or zip is named after one of them (``cifar10-jpeg.zip``, how
    CIFAR-10 is read without internet) is shown as that data set, so the paper's numbers join beside it.
    """
    if name.startswith("imagefolder:"):
        stem = Path(name.split(":", 1)[1].rstrip("/")).name.split(".")[0].lower()
        for key, display in DATASET_NAMES.items():
            if stem == key or stem.startswith(key + "-") or stem.startswith(key + "_"):
                return display
    return DATASET_NAMES.get(name, name)


def format_margin(radians: float, denominator: int = 64) -> str:
    """A margin in the paper's notation k·π/denominator: 0.19635 → "4π/64"; k is shown to 3 significant
    digits when it is not an integer."""
    k = radians * denominator / math.pi
    text = str(round(k)) if abs(k - round(k)) < 1e-6 else f"{k:.3g}"
    if text == "0":
        return "0"
    return f"{'' if text == '1' else text}π/{denominator}"


def format_hyperparameters(loss: str, run: Mapping) -> str:
    """The hyperparameters of ``loss`` in ``run`` as text, e.g. "m=4π/64, s=16", "w=2, w_fp=1", "" for CE."""
    parts = []
    for field in HYPERPARAMETERS[loss]:
        value = run[field]
        if field == "margin":
            margins = [format_margin(m) for m in value]
            text = margins[0] if len(margins) == 1 else "(" + ", ".join(margins) + ")"
        else:
            text = f"{value:g}"
        parts.append(f"{_HYPERPARAMETER_LABELS[field]}={text}")
    return ", ".join(parts)
