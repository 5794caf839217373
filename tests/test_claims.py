"""claims.md verdicts on constructed selections: a claim that holds, one that fails, one not shown."""

import pandas as pd
import pytest

from camri import claims


def setting(method, recalls, accuracies, *, qualified=True, angles=None, hyper=""):
    seeds = tuple(range(len(recalls)))
    return {
        "selection": "maintaining",
        "method": method,
        "hyperparameters": hyper,
        "seeds": seeds,
        "recalls": tuple(recalls),
        "accuracies": tuple(accuracies),
        "qualified": qualified,
        "recall_mean": sum(recalls) / len(recalls),
        "accuracy_mean": sum(accuracies) / len(accuracies),
        "selection_accuracy_mean": sum(accuracies) / len(accuracies) + 0.01,  # validation, a little above test
        "angle_variances": tuple(angles or [1.0] * len(recalls)),
    }


def cell(role, class_name, rows):
    return [{"dataset": "CIFAR-10", "role": role, "class_index": 0, "class_name": class_name, **r} for r in rows]


ACC = [0.80, 0.81, 0.82]


@pytest.fixture
def selections():
    # worst1 (cat): CAMRI clearly above CE (differences 0.10, 0.12, 0.11) and with lower angle variance;
    # ArcFace has no setting that maintains accuracy; WCE is clearly above CAMRI (a failure of "versus").
    worst1 = cell(
        "worst1",
        "cat",
        [
            setting("CAMRI", [0.6, 0.62, 0.61], ACC, angles=[0.5, 0.55, 0.52], hyper="m=2π/64, s=16"),
            setting("CE", [0.5, 0.5, 0.5], ACC, angles=[1.0, 1.1, 1.05]),
            setting("ArcFace", [0.9, 0.9, 0.9], [0.5, 0.5, 0.5], qualified=False),
            setting("WCE", [0.8, 0.81, 0.83], ACC, hyper="w=2"),
        ],
    )
    # worst2 (dog): CAMRI's accuracy is not maintained by any setting: "recall" does not hold.
    worst2 = cell(
        "worst2",
        "dog",
        [setting("CAMRI", [0.9, 0.9, 0.9], [0.6, 0.6, 0.6], qualified=False), setting("CE", [0.6, 0.6, 0.6], ACC)],
    )
    # median (airplane): CAMRI and CE within noise: "not shown".
    median = cell(
        "median", "airplane", [setting("CAMRI", [0.70, 0.80, 0.75], ACC), setting("CE", [0.75, 0.74, 0.76], ACC)]
    )
    return pd.DataFrame(worst1 + worst2 + median)


@pytest.fixture
def important():
    return {
        "CIFAR-10": pd.DataFrame(
            [
                {
                    "role": "worst1",
                    "class_name": "dog",
                    "recall_mean": 0.41,
                    "n_seeds": 3,
                    "paper_class": "cat",
                    "next_class_name": "cat",
                    "next_recall_mean": 0.44,
                },
                {"role": "worst2", "class_name": "cat", "recall_mean": 0.44, "n_seeds": 3, "paper_class": "dog"},
                {
                    "role": "median",
                    "class_name": "airplane",
                    "recall_mean": 0.7,
                    "n_seeds": 3,
                    "paper_class": "airplane",
                },
            ]
        )
    }


def check(table, claim, role="", versus=None):
    """The one row of ``table`` for this claim, role and (where given) compared method."""
    rows = table[(table["claim"] == claim) & (table["role"] == role)]
    if versus is not None:
        rows = rows[rows["versus"] == versus]
    assert len(rows) == 1, rows
    return rows.iloc[0]


def verdict(table, claim, role="", versus=None):
    return check(table, claim, role, versus)["verdict"]


def test_verdicts_on_constructed_cells(selections, important):
    table = claims.check_claims(selections, important)
    assert verdict(table, "important", "worst1") == claims.FAILS  # dog chosen, the paper's is cat
    assert verdict(table, "important", "median") == claims.HOLDS
    assert verdict(table, "recall", "worst1") == claims.HOLDS
    # CE has no hyperparameters: it is named by its method alone.
    assert " − CE: " in check(table, "recall", "worst1", "CE")["evidence"]
    assert verdict(table, "recall", "worst2") == claims.FAILS  # no CAMRI setting maintained accuracy
    recall = check(table, "recall", "worst2")["evidence"]
    assert "validation accuracy 0.6100" in recall and "test recall 0.900 at accuracy 0.600" in recall
    assert verdict(table, "recall", "median") == claims.NOT_SHOWN
    assert verdict(table, "versus", "worst1", "ArcFace") == claims.HOLDS  # ArcFace: the paper's empty cell
    assert verdict(table, "versus", "worst1", "WCE") == claims.FAILS
    assert verdict(table, "versus", "worst1", "CRWWCE") == claims.UNCHECKABLE
    assert verdict(table, "angles", "worst1") == claims.HOLDS
    assert verdict(table, "angles", "median") == claims.NOT_SHOWN  # equal variances: no interval
    # best: worst1 → WCE; worst2 → CE (CAMRI not qualified); median: CAMRI and CE both 0.75, a tie counts
    # for CAMRI → 1 of 3.
    best = check(table, "best", versus="")
    assert best["verdict"] == claims.FAILS
    assert "CAMRI best in 1 of 3 cells" in best["evidence"] and "worst1 (cat): WCE" in best["evidence"]


def test_cells_without_camri_runs_do_not_count_against_it(selections, important):
    # A campaign in progress (camri figures --partial): worst2 and median have no finished CAMRI run yet.
    partial = selections[(selections["role"] == "worst1") | (selections["method"] != "CAMRI")]
    table = claims.check_claims(partial, important)
    best = check(table, "best", versus="")
    assert best["verdict"] == claims.FAILS and "CAMRI best in 0 of 1 cells" in best["evidence"]
    assert "not counted, no finished CAMRI runs: CIFAR-10 worst2 (dog); CIFAR-10 median (airplane)" in best["evidence"]
    assert verdict(table, "recall", "median") == claims.UNCHECKABLE
    # CAMRI's seed 0 alone against 3 CE seeds: the means shown are those of the seed the difference pairs.
    one_seed = partial.copy()
    first = one_seed.index[(one_seed["method"] == "CAMRI")][0]
    for column in ("seeds", "recalls", "accuracies", "angle_variances"):
        one_seed.at[first, column] = one_seed.at[first, column][:1]
    angles = claims.check_claims(one_seed, important)
    angles = angles[(angles["claim"] == "angles") & (angles["role"] == "worst1")].iloc[0]
    assert "(CAMRI 0.500, CE 1.000, seeds 0)" in angles["evidence"] and "-0.5" in angles["evidence"]
    none = claims.check_claims(selections[selections["method"] != "CAMRI"], important)
    best = none[(none["claim"] == "best") & (none["versus"] == "")].iloc[0]
    assert best["verdict"] == claims.UNCHECKABLE and best["evidence"] == "no cell has finished CAMRI runs"


def test_markdown_and_quotes(selections, important, tmp_path):
    table = claims.check_claims(selections, important)
    path = claims.write_claims(
        table, tmp_path / "results" / "p", title="CIFAR-10 at CPU scale", context=["selection on the validation split"]
    )
    text = path.read_text()
    assert "**does not hold**" in text and "**holds**" in text and "**not shown**" in text
    assert "- **recall** (" in text and "holds in 1, does not hold in 1, not shown in 1 of 3 cells" in text
    document = "Intro\n<!-- claims: results/p/claims.md -->\nstale text\n<!-- /claims -->\nEnd\n"
    quoted = claims.quote_claims(document, tmp_path)
    assert "stale text" not in quoted and "- **recall**" in quoted and quoted.endswith("<!-- /claims -->\nEnd\n")
    assert claims.quote_claims(quoted, tmp_path) == quoted  # idempotent
    assert "PARTIAL" not in quoted  # a complete campaign's summary carries no mark
    note = "**PARTIAL: 2 of 3 runs** (1 missing). Every number here is from the finished runs only."
    claims.write_claims(table, tmp_path / "results" / "p", title="t", context=[], partial=note)
    quoted = claims.quote_claims(document, tmp_path)
    summary = quoted.split("<!-- claims: results/p/claims.md -->\n", 1)[1]
    assert summary.startswith(note + "\n\n- **")  # the note, then the tally
    with pytest.raises(FileNotFoundError, match="camri reproduce"):
        claims.quote_claims("<!-- claims: results/none/claims.md -->\n<!-- /claims -->", tmp_path)
    # Table 1: quoted from its legend on (title dropped, data set headings in bold); the kinds do not mix.
    (tmp_path / "results" / "p" / "table1.md").write_text("# Table 1\n\nLegend.\n\n## GTSRB\n\n| a |\n|---|\n| 1 |\n")
    document = (
        "<!-- table1: results/p/table1.md -->\nSTALE\n<!-- /table1 -->\n"
        "<!-- claims: results/p/claims.md -->\nSTALE\n<!-- /claims -->\n"
    )
    quoted = claims.quote_claims(document, tmp_path)
    table_part, claims_part = quoted.split("<!-- /table1 -->")
    assert table_part == "<!-- table1: results/p/table1.md -->\nLegend.\n\n**GTSRB**\n\n| a |\n|---|\n| 1 |\n"
    assert "- **recall**" in claims_part and "STALE" not in quoted
    assert claims.quote_claims(quoted, tmp_path) == quoted
    unmatched = "<!-- table1: results/p/table1.md -->\nSTALE\n<!-- /claims -->\n"
    assert claims.quote_claims(unmatched, tmp_path) == unmatched


def test_checks_quote_keeps_the_rows_with_a_verdict(selections, important, tmp_path):
    table = claims.check_claims(selections, important)
    claims.write_claims(table, tmp_path / "results" / "p", title="t", context=[])
    quoted = claims.quote_claims("<!-- checks: results/p/claims.md -->\nSTALE\n<!-- /checks -->\n", tmp_path)
    rows = [line for line in quoted.splitlines() if line.startswith("| ") and "---" not in line][1:]
    decided = table[table["verdict"] != claims.UNCHECKABLE]
    assert len(rows) == len(decided) > 0 and "STALE" not in quoted
    assert not any("**not checkable**" in row for row in rows)
    left_out = int((table["verdict"] == claims.UNCHECKABLE).sum())
    assert left_out > 0 and f"Left out: {left_out} checks that are not checkable" in quoted  # no CRWWCE runs
    assert claims.quote_claims(quoted, tmp_path) == quoted  # idempotent
    # Nothing decided yet: one line says so instead of an empty table.
    waiting = table.assign(verdict=claims.UNCHECKABLE)
    claims.write_claims(waiting, tmp_path / "results" / "q", title="t", context=[])
    quoted = claims.quote_claims("<!-- checks: results/q/claims.md -->\n<!-- /checks -->\n", tmp_path)
    assert f"No check has a verdict yet: all {len(table)} are not checkable." in quoted
