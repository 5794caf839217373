"""Table 1: its long table from the protocol's selections (``table1``), the paper's numbers beside it, and
its text forms: Markdown (one table per data set), LaTeX (no packages needed) and the CSV contract."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd

from camri.io import atomic_write_text
from camri.losses import DISPLAY_ORDER, LOSSES
from camri.names import display_dataset

# The paper's rows, then CE with a post-hoc bias (camri.posthoc), a baseline the paper names but does not report.
TABLE1_METHODS = tuple(LOSSES[name].display for name in DISPLAY_ORDER if LOSSES[name].in_table1) + ("CE+bias",)

#: The columns of table1.csv, the machine-readable contract.
TABLE1_COLUMNS = (
    "dataset",
    "important",
    "class",
    "method",
    "recall_mean",
    "recall_std",
    "accuracy_mean",
    "accuracy_std",
    "n_seeds",
    "hyperparameters",
    "qualified",
    "paper_recall",
    "paper_accuracy",
)


def _number(value: float, signed: bool = False) -> str:
    if pd.isna(value):
        return "–"
    return f"{value:+.4f}" if signed else f"{value:.4f}"


def _cell_lines(row: pd.Series) -> list[str]:
    """A Table 1 cell as text lines: ours ± std, hyperparameters and seeds, the paper's value and Δ."""
    if row["n_seeds"] == 0:
        return ["–"]
    lines = [
        f"{_number(row['recall_mean'])} ± {_number(row['recall_std'])} "
        f"({_number(row['accuracy_mean'])} ± {_number(row['accuracy_std'])})",
        "; ".join(filter(None, [row["hyperparameters"], f"n={row['n_seeds']}"])) + ("" if row["qualified"] else " †"),
    ]
    if not pd.isna(row["paper_recall"]):
        lines.append(
            f"paper {_number(row['paper_recall'])} ({_number(row['paper_accuracy'])}), "
            f"Δ {_number(row['recall_diff'], True)} ({_number(row['accuracy_diff'], True)})"
        )
    return lines


_CAPTION = (
    "Mean important-class recall (mean accuracy) ± sample std over seeds; chosen hyperparameters "
    "(m = margin, s = scale, w = WCE / CRWWCE false-negative weight, w_fp = CRWWCE false-positive "
    "weight); n = seeds; the paper's value and Δ = ours − paper. † no setting of the method "
    "maintained accuracy: its best-recall setting is shown."
)


def _grids(table: pd.DataFrame):
    """Per data set: (name, column headers "role: class", {method: [cell lines per role]})."""
    for dataset, part in table.groupby("dataset", sort=False):
        roles = part.drop_duplicates("important")
        headers = [f"{r}: {c}" for r, c in zip(roles["important"], roles["class"])]
        cells = {
            method: [_cell_lines(row) for _, row in rows.iterrows()]
            for method, rows in part.groupby("method", sort=False)
        }
        yield dataset, headers, cells


def table1_markdown(table: pd.DataFrame, note: str = "") -> str:
    """Table 1 as Markdown: one table per data set, rows = methods, columns = important classes; ``note``
    (Markdown, e.g. that the table is partial) under the caption."""
    out = ["# Table 1", "", _CAPTION, ""] + ([note, ""] if note else [])
    for dataset, headers, cells in _grids(table):
        out += [f"## {dataset}", "", "| method | " + " | ".join(headers) + " |", "|---" * (len(headers) + 1) + "|"]
        out += [
            f"| {method} | " + " | ".join("<br>".join(lines) for lines in row) + " |" for method, row in cells.items()
        ]
        out.append("")
    return "\n".join(out)


# One pass over the characters, so that a replacement is never escaped again.
_LATEX = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "π": r"$\pi$",
    "±": r"$\pm$",
    "Δ": r"$\Delta$",
    "–": "--",
    "†": r"$^\dagger$",
}


def _latex(text: str) -> str:
    return "".join(_LATEX.get(char, char) for char in text)


def table1_latex(table: pd.DataFrame, note: str = "") -> str:
    """Table 1 as LaTeX (no packages needed): one tabular per data set, each cell a stacked tabular;
    ``note`` as a comment line under the caption's."""
    out = ["% Table 1. " + _CAPTION] + (["% " + note.replace("**", "")] if note else [])
    for dataset, headers, cells in _grids(table):
        columns = len(headers) + 1
        out += [
            r"\begin{tabular}{l" + "c" * len(headers) + "}",
            r"\hline",
            rf"\multicolumn{{{columns}}}{{c}}{{{_latex(dataset)}}} \\",
            r"\hline",
            "Method & " + " & ".join(_latex(h) for h in headers) + r" \\",
            r"\hline",
        ]
        for method, row in cells.items():
            stacked = [
                r"\begin{tabular}[t]{@{}c@{}}" + r" \\ ".join(_latex(x) for x in lines) + r"\end{tabular}"
                for lines in row
            ]
            out.append(_latex(method) + " & " + " & ".join(stacked) + r" \\")
        out += [r"\hline", r"\end{tabular}", ""]
    return "\n".join(out)


def table1_csv(table: pd.DataFrame) -> str:
    """The machine-readable contract: exactly ``TABLE1_COLUMNS``; numbers to 6 significant digits,
    qualified as true/false, NaN as empty."""
    csv = table[list(TABLE1_COLUMNS)].copy()
    csv["qualified"] = csv["qualified"].map({True: "true", False: "false"})
    return csv.to_csv(index=False, na_rep="", float_format="%.6g", lineterminator="\n")


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
        ["dataset", "role", "class_index", "class_name"], sort=False
    ):
        chosen = cell.set_index("method")
        for method in TABLE1_METHODS:
            row = {
                "dataset": display_dataset(dataset),
                "important": role,
                "class": class_name,
                "method": method,
                "recall_mean": np.nan,
                "recall_std": np.nan,
                "accuracy_mean": np.nan,
                "accuracy_std": np.nan,
                "n_seeds": 0,
                "hyperparameters": "",
                "qualified": False,
            }
            if method in chosen.index:
                row.update(
                    {
                        c: chosen.at[method, c]
                        for c in (
                            "recall_mean",
                            "recall_std",
                            "accuracy_mean",
                            "accuracy_std",
                            "n_seeds",
                            "hyperparameters",
                        )
                    }
                )
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


def write_table1(table: pd.DataFrame, out_dir: str | Path, note: str = "") -> dict[str, Path]:
    """Write table1.csv, table1.md and table1.tex into ``out_dir``, each atomically; returns the paths.
    ``note`` goes into the Markdown and LaTeX (the CSV's n_seeds column says how many runs each row has)."""
    out_dir = Path(out_dir)
    texts = {"csv": table1_csv(table), "md": table1_markdown(table, note), "tex": table1_latex(table, note)}
    return {kind: atomic_write_text(out_dir / f"table1.{kind}", text) for kind, text in texts.items()}
