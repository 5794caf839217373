"""Table 1 as text: Markdown (one table per data set), LaTeX (no packages needed) and the CSV contract.

The numbers come from ``camri.protocol.table1``; this module only lays them out."""

from __future__ import annotations

import pandas as pd

#: The columns of table1.csv, the machine-readable contract.
TABLE1_COLUMNS = ("dataset", "important", "class", "method", "recall_mean", "recall_std", "accuracy_mean",
                  "accuracy_std", "n_seeds", "hyperparameters", "qualified", "paper_recall", "paper_accuracy")




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
