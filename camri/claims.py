"""The paper's claims, checked against a profile's run records: results/<profile>/claims.md.

Nothing here is typed by hand: ``check_claims`` derives every verdict and number from the protocol's
selections (``protocol.select_all``) and chosen important classes, ``claims_markdown`` writes them out, and
``camri reproduce`` / ``camri figures`` write claims.md beside Table 1. The README and
docs/reproduction.md quote these files between ``<!-- claims: PATH -->`` and ``<!-- /claims -->`` markers
(the summary), ``<!-- checks: PATH -->`` and ``<!-- /checks -->`` (the checks that have a verdict, with their
evidence: what a campaign in progress already says), and Table 1 between ``<!-- table1: PATH -->`` and
``<!-- /table1 -->`` (``quote_claims`` fills them in; a test fails when a quote and its file disagree).

Verdicts, per cell (data set × important class) unless said otherwise:
- ``holds``: the runs support the claim: for a comparison, the paired 95 % interval of the difference
  (camri.significance) lies wholly on the claimed side of 0;
- ``does not hold``: the runs contradict it: the interval lies wholly on the other side, or the claimed
  method has no setting that maintains accuracy, or (class identity) another class was chosen;
- ``not shown``: neither: the interval includes 0, or there are fewer than 2 paired seeds;
- ``not checkable``: the runs or the paper lack what the claim needs (no runs of a method, the paper does
  not name the class).

The claims (the paper's words in SETUP.md):
1. ``important``: the important classes are CE's worst1 / worst2 / median. Checkable where the paper names
   its classes (CIFAR-10: cat, dog, airplane); elsewhere the chosen class and its margin to the next one
   are reported.
2. ``recall``: CAMRI raises the important class's recall over CE while maintaining accuracy.
3. ``versus``: CAMRI's recall is above ArcFace's, WCE's, CRWWCE's and CE+bias's (each at its own setting
   that maintains accuracy; a method with no such setting has an empty cell in the paper's table, and
   CAMRI is above it by that reading).
4. ``angles``: CAMRI lowers the relative angle variance of the important class below CE's.
5. ``best``: CAMRI has the highest recall among the methods that maintain accuracy in 8 of 9 cells (the
   poster's count): holds when it is best in at least 8/9 of the cells here.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from camri.analysis import markdown_table
from camri.io import atomic_write_text
from camri.names import display_dataset
from camri.significance import format_difference, paired_difference

HOLDS, FAILS, NOT_SHOWN, UNCHECKABLE = "holds", "does not hold", "not shown", "not checkable"
VERDICTS = (HOLDS, FAILS, NOT_SHOWN, UNCHECKABLE)
CLAIMS = {
    "important": "the important classes are CE's worst1, worst2 and median class",
    "recall": "CAMRI raises the important class's recall over CE while maintaining accuracy",
    "versus": "CAMRI's recall is above the other methods' (each at a setting that maintains accuracy)",
    "angles": "CAMRI's relative angle variance of the important class is below CE's",
    "best": "CAMRI has the highest recall among the methods that maintain accuracy in 8 of 9 cells",
}
VERSUS = ("ArcFace", "WCE", "CRWWCE", "CE+bias")
# The methods of the paper's Table 1, which compete for "best" (claim 5); CE+bias is counted separately.
TABLE_METHODS = ("CAMRI", "ArcFace", "CRWWCE", "WCE", "CE")
PAPER_BEST_FRACTION = 8 / 9
CLAIM_COLUMNS = ("claim", "dataset", "role", "class_name", "versus", "verdict", "evidence")
# One marker pair per kind of quote: claims.md's summary, claims.md's checked rows, Table 1's tables (table1.md).
_QUOTE = re.compile(
    r"(<!-- (?P<kind>claims|checks|table1): (?P<path>[^ ]+) -->\n)(?P<body>.*?)(<!-- /(?P=kind) -->)", re.DOTALL
)
# claims.md's two sections, written by claims_markdown and read back by the README/docs quotes.
_SUMMARY = "## Summary"
_CHECKS = "## Every check"


def _row(claim, dataset, role="", class_name="", versus="", verdict=UNCHECKABLE, evidence=""):
    return {
        "claim": claim,
        "dataset": dataset,
        "role": role,
        "class_name": class_name,
        "versus": versus,
        "verdict": verdict,
        "evidence": evidence,
    }


def _by_seed(row: Mapping, values: str) -> dict[int, float]:
    return dict(zip(row["seeds"], row[values]))


def _comparison_verdict(result: Mapping, lower_is_better: bool = False) -> str:
    if not result["excludes_zero"]:
        return NOT_SHOWN
    better = result["ci_high"] < 0 if lower_is_better else result["ci_low"] > 0
    return HOLDS if better else FAILS


def _setting(row: Mapping) -> str:
    # CE has no hyperparameters: it is named by its method alone ("CE", not "CE no hyperparameters").
    return f"{row['method']} {row['hyperparameters'] or ''}".strip()


def _important_claims(dataset: str, important: pd.DataFrame, split: str) -> list[dict]:
    rows = []
    ranked = important.set_index("role")
    for role in ranked.index:
        chosen = ranked.loc[role]
        evidence = f"CE's {role} on {split}: {chosen['class_name']} (mean recall {chosen['recall_mean']:.3f}"
        if "next_recall_mean" in chosen and not pd.isna(chosen["next_recall_mean"]):
            evidence += f"; next class {chosen['next_class_name']} {chosen['next_recall_mean']:.3f}"
        evidence += f", {int(chosen['n_seeds'])} seeds)"
        paper = chosen.get("paper_class")
        if paper is None or (isinstance(paper, float) and np.isnan(paper)):
            verdict, evidence = UNCHECKABLE, evidence + "; the paper does not name its class"
        else:
            verdict = HOLDS if chosen["class_name"] == paper else FAILS
            evidence += f"; the paper's: {paper}"
        rows.append(_row("important", dataset, role, chosen["class_name"], verdict=verdict, evidence=evidence))
    return rows


def _versus_claim(
    claim: str,
    dataset: str,
    role: str,
    class_name: str,
    camri: Mapping | None,
    other: Mapping | None,
    other_name: str,
    split: str,
) -> dict:
    row = _row(claim, dataset, role, class_name, other_name)
    if camri is None or other is None:
        missing = "CAMRI" if camri is None else other_name
        return {**row, "evidence": f"no finished {missing} runs for this class"}
    if not camri["qualified"]:
        return {
            **row,
            "verdict": FAILS,
            "evidence": f"no CAMRI setting maintained accuracy on {split} (best: {_setting(camri)}, "
            f"{split} accuracy {camri['selection_accuracy_mean']:.4f}; test recall "
            f"{camri['recall_mean']:.3f} at accuracy {camri['accuracy_mean']:.3f})",
        }
    if not other["qualified"] and other_name != "CE":
        return {
            **row,
            "verdict": HOLDS,
            "evidence": f"no {other_name} setting maintained accuracy on {split} (the paper's empty cell); "
            f"CAMRI ({_setting(camri)}) did",
        }
    recall = paired_difference(_by_seed(camri, "recalls"), _by_seed(other, "recalls"))
    accuracy = paired_difference(_by_seed(camri, "accuracies"), _by_seed(other, "accuracies"))
    evidence = (
        f"test recall {_setting(camri)} − {_setting(other)}: {format_difference(recall)}; "
        f"test accuracy: {format_difference(accuracy)}"
    )
    return {**row, "verdict": _comparison_verdict(recall), "evidence": evidence}


def _angle_claim(dataset: str, role: str, class_name: str, camri: Mapping | None, ce: Mapping | None) -> dict:
    row = _row("angles", dataset, role, class_name, "CE")
    if camri is None or ce is None:
        return {**row, "evidence": f"no finished {'CAMRI' if camri is None else 'CE'} runs for this class"}
    if "angle_variances" not in camri or "angle_variances" not in ce:
        return {**row, "evidence": "the selections carry no per-seed relative angle variances"}
    camri_by_seed, ce_by_seed = _by_seed(camri, "angle_variances"), _by_seed(ce, "angle_variances")
    result = paired_difference(camri_by_seed, ce_by_seed)
    # The means of the seeds the difference pairs (a campaign in progress has more CE seeds than CAMRI's).
    paired = sorted(set(camri_by_seed) & set(ce_by_seed))
    means = (
        f"CAMRI {np.nanmean([camri_by_seed[s] for s in paired]):.3f}, "
        f"CE {np.nanmean([ce_by_seed[s] for s in paired]):.3f}"
        if paired
        else "no seed in common"
    )
    if paired and len(paired) < len(ce_by_seed):
        means += f", seeds {', '.join(map(str, paired))}"
    return {
        **row,
        "verdict": _comparison_verdict(result, lower_is_better=True),
        "evidence": f"relative angle variance on test ({means}); CAMRI − CE: {format_difference(result)}",
    }


def _best_claim(cells: list[tuple[str, str, str, dict]], with_bias: bool) -> dict:
    methods = TABLE_METHODS + (("CE+bias",) if with_bias else ())
    label = " (CE+bias competing)" if with_bias else ""
    # A cell without finished CAMRI runs (a campaign in progress: camri figures --partial) is not counted
    # either way: it is no evidence against CAMRI.
    without = [f"{d} {r} ({c})" for d, r, c, chosen in cells if "CAMRI" not in chosen]
    cells = [cell for cell in cells if "CAMRI" in cell[3]]
    if without and not cells:
        return _row("best", "all", versus="CE+bias" if with_bias else "", evidence="no cell has finished CAMRI runs")
    best, lost = 0, []
    for dataset, role, class_name, chosen in cells:
        qualified = {m: chosen[m]["recall_mean"] for m in methods if m in chosen and chosen[m]["qualified"]}
        if "CAMRI" in qualified and qualified["CAMRI"] >= max(qualified.values()):
            best += 1
        else:
            winner = max(qualified, key=qualified.get) if qualified else "none maintained accuracy"
            lost.append(f"{dataset} {role} ({class_name}): {winner}")
    if not cells:
        return _row("best", "all", versus=label.strip(" ()"), evidence="no cells")
    verdict = HOLDS if best / len(cells) >= PAPER_BEST_FRACTION - 1e-12 else FAILS
    evidence = f"CAMRI best in {best} of {len(cells)} cells{label} (the poster: 8 of 9)"
    if lost:
        evidence += "; best elsewhere: " + "; ".join(lost)
    if without:
        evidence += f"; not counted, no finished CAMRI runs: {'; '.join(without)}"
    return _row("best", "all", versus="CE+bias" if with_bias else "", verdict=verdict, evidence=evidence)


def check_claims(
    selections: pd.DataFrame,
    important: Mapping[str, pd.DataFrame],
    *,
    split: str = "validation",
    role_split: str | None = None,
) -> pd.DataFrame:
    """Every claim of the module doc, one row per (claim, cell, other method): ``CLAIM_COLUMNS``.

    selections: ``protocol.select_all`` (the "maintaining" rows are used; per-seed tuples ``seeds``,
    ``recalls``, ``accuracies`` and, for claim 4, ``angle_variances``). important: per data set the chosen
    classes (``protocol.choose_important``: role, class_name, recall_mean, n_seeds, paper_class, and
    optionally next_class_name / next_recall_mean); empty for data sets whose classes the profile fixed.
    split: the split the selection was made on, for the wording; role_split: the split the important
    classes were chosen on, when not ``split``.
    """
    rows = []
    maintaining = selections[selections["selection"] == "maintaining"]
    for dataset in dict.fromkeys(maintaining["dataset"]):
        if dataset in important and len(important[dataset]):
            rows += _important_claims(dataset, important[dataset], role_split or split)
        else:
            rows.append(_row("important", dataset, evidence="the profile fixes the important classes"))
    cells = []
    for (dataset, role, class_name), cell in maintaining.groupby(["dataset", "role", "class_name"], sort=False):
        chosen = {r["method"]: r for r in cell.to_dict("records")}
        cells.append((dataset, role, class_name, chosen))
        camri = chosen.get("CAMRI")
        rows.append(_versus_claim("recall", dataset, role, class_name, camri, chosen.get("CE"), "CE", split))
        rows += [_versus_claim("versus", dataset, role, class_name, camri, chosen.get(m), m, split) for m in VERSUS]
        rows.append(_angle_claim(dataset, role, class_name, camri, chosen.get("CE")))
    rows += [_best_claim(cells, with_bias=False), _best_claim(cells, with_bias=True)]
    table = pd.DataFrame(rows, columns=list(CLAIM_COLUMNS))
    # Data sets as a reader knows them (CIFAR-10, not a local imagefolder: path), in the table and the evidence.
    for name in dict.fromkeys(maintaining["dataset"]):
        shown = display_dataset(name)
        table["dataset"] = table["dataset"].replace(name, shown)
        table["evidence"] = table["evidence"].str.replace(name, shown, regex=False)
    return table


def summary_lines(claims: pd.DataFrame) -> list[str]:
    """One line per claim: its verdict counts, e.g. "recall: holds in 2 of 3 cells, not shown in 1"."""
    lines = []
    for claim, text in CLAIMS.items():
        part = claims[claims["claim"] == claim]
        if part.empty:
            continue
        counts = part["verdict"].value_counts()
        what = "comparisons" if claim == "versus" else ("counts" if claim == "best" else "cells")
        tally = ", ".join(f"{verdict} in {counts[verdict]}" for verdict in VERDICTS if verdict in counts)
        lines.append(f"- **{claim}** ({text}): {tally} of {len(part)} {what}")
    return lines


def claims_markdown(claims: pd.DataFrame, *, title: str, context: Sequence[str], partial: str = "") -> str:
    """claims.md: a title, the context lines (selection, reporting, seeds, source), the per-claim tally and
    one table of every verdict with its evidence. ``partial`` (``Study.partial_note``: "**PARTIAL: k of n
    runs ...**", what is missing and what that means), a markdown paragraph, heads the tally, so that a quote of
    the summary alone (README, docs) still says it is partial."""
    out = [
        f"# Claims of the paper, checked: {title}",
        "",
        "Generated by `camri reproduce` (or `camri figures`) from the run records; do not edit by hand.",
        "",
    ]
    out += [f"- {line}" for line in context] + ["", _SUMMARY, ""]
    if partial:
        out += [partial, ""]
    out += summary_lines(claims)
    cells = [f"{role}: {name}" if role else "" for role, name in zip(claims["role"], claims["class_name"])]
    checks = pd.DataFrame(
        {
            "claim": claims["claim"],
            "data set": claims["dataset"],
            "cell": cells,
            "versus": claims["versus"],
            "verdict": [f"**{verdict}**" for verdict in claims["verdict"]],
            "evidence": claims["evidence"].astype(str),
        }
    )
    out += ["", _CHECKS, "", markdown_table(checks)]
    return "\n".join(out) + "\n"


def write_claims(
    claims: pd.DataFrame, out_dir: str | Path, *, title: str, context: Sequence[str], partial: str = ""
) -> Path:
    """Write ``out_dir``/claims.md atomically (``claims_markdown``); returns its path."""
    text = claims_markdown(claims, title=title, context=context, partial=partial)
    return atomic_write_text(Path(out_dir) / "claims.md", text)


def _summary_block(claims_file: Path) -> str:
    text = claims_file.read_text(encoding="utf-8")
    summary = text.split(_SUMMARY, 1)[1].split(_CHECKS, 1)[0].strip()
    return f"{summary}\n"


def _checks_block(claims_file: Path) -> str:
    """The rows of claims.md's "Every check" table that have a verdict, and a line counting the rows left out
    (``not checkable``: a campaign in progress has many, and they say only what has not run yet)."""
    # The section holds one table as analysis.markdown_table writes it: a header line, a rule, the rows.
    header, rule, *rows = claims_file.read_text(encoding="utf-8").split(_CHECKS, 1)[1].strip().splitlines()
    kept = [row for row in rows if f"**{UNCHECKABLE}**" not in row]
    if not kept:
        return f"No check has a verdict yet: all {len(rows)} are {UNCHECKABLE}.\n"
    out = [header, rule, *kept]
    if len(kept) < len(rows):
        out += ["", f"Left out: {len(rows) - len(kept)} checks that are {UNCHECKABLE} (claims.md lists them)."]
    return "\n".join(out) + "\n"


def _table1_block(table_file: Path) -> str:
    """table1.md from its legend on (the legend, the PARTIAL line if any, each data set's table), without
    its title and with each data set's heading in bold: the quote sits under the document's own headings."""
    text = table_file.read_text(encoding="utf-8").split("\n", 1)[1].strip()
    return re.sub(r"^## (.+)$", r"**\1**", text, flags=re.MULTILINE) + "\n"


_BLOCKS = {"claims": _summary_block, "checks": _checks_block, "table1": _table1_block}


def quote_claims(document: str, root: str | Path) -> str:
    """``document`` with every ``<!-- claims: PATH -->`` … ``<!-- /claims -->`` block replaced by the summary of
    PATH (relative to ``root``, the repository), every ``<!-- checks: PATH -->`` … ``<!-- /checks -->`` block by
    PATH's checks that have a verdict, and every ``<!-- table1: PATH -->`` … ``<!-- /table1 -->`` block by that
    table1.md's tables; a missing file is an error naming it."""

    def replace(match: re.Match) -> str:
        path = Path(root) / match["path"]
        if not path.is_file():
            raise FileNotFoundError(
                f"{match['path']} is quoted but does not exist: run `camri reproduce` (or "
                "`camri figures`) for that profile first"
            )
        return match.group(1) + _BLOCKS[match["kind"]](path) + match.group(5)

    return _QUOTE.sub(replace, document)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m camri.claims --quote FILE ...``: refresh the quoted claims blocks of FILEs in place."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m camri.claims", description=main.__doc__)
    parser.add_argument("--quote", nargs="+", required=True, metavar="FILE")
    parser.add_argument("--root", default=".", help="where the quoted paths start (default: .)")
    args = parser.parse_args(argv)
    for name in args.quote:
        path = Path(name)
        text = path.read_text(encoding="utf-8")
        quoted = quote_claims(text, args.root)
        if quoted != text:
            atomic_write_text(path, quoted)
            print(f"{path}: claims quotes refreshed")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
