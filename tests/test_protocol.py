"""The protocol's rules on hand-made runs written in the run format (docs/run-format.md); every expected
number below is computed by hand in the comments."""

import json
import math

import numpy as np
import pandas as pd
import pytest

from camri import analysis, names, posthoc, protocol, significance, tables

K = 6
CLASSES = [f"c{i}" for i in range(K)]
PI64 = math.pi / 64


def write_run(
    root,
    name,
    *,
    loss,
    seed,
    recall,
    accuracy,
    important=(),
    k=4,
    scale=16.0,
    weight=2.0,
    fp_weight=1.0,
    dataset="cifar10",
    epochs=3,
    finished=True,
    logits=None,
    labels=None,
    val_recall=None,
    val_accuracy=None,
    validation=True,
):
    """A run directory as camri.train writes it: config.json, and summary.json when finished. Its
    validation metrics are the test ones unless given (``validation=False``: a run without a split)."""
    config = {
        "dataset": dataset,
        "loss": loss,
        "important": list(important),
        "margin": [k * PI64],
        "scale": scale,
        "weight": weight,
        "fp_weight": fp_weight,
        "epochs": epochs,
        "batch_size": 64,
        "lr": 1e-3,
        "width": 1.0,
        "z_dim": 512,
        "seed": seed,
        "device": "cpu",
        "amp": "auto",
        "channels_last": "auto",
        "augment": False,
        "image_size": None,
        "eval_batch_size": 1024,
        "data_dir": None,
    }
    directory = root / name
    directory.mkdir(parents=True)
    (directory / "config.json").write_text(json.dumps({"config": config, "classes": CLASSES}))
    if finished:
        summary = {
            "dataset": dataset,
            "loss": loss,
            "seed": seed,
            "classes": CLASSES,
            "important": list(important),
            "config": config,
            "accuracy": accuracy,
            "recall": list(recall),
            "test_loss": 0.5,
            "epochs_completed": epochs,
        }
        if validation:
            summary["validation"] = {
                "accuracy": accuracy if val_accuracy is None else val_accuracy,
                "recall": list(recall if val_recall is None else val_recall),
            }
        (directory / "summary.json").write_text(json.dumps(summary))
    if logits is not None:
        np.savez(
            directory / "angles.npz",
            logits=np.asarray(logits, np.float32),
            labels=np.asarray(labels, np.int64),
            theta_deg=np.zeros(len(labels), np.float32),
        )
    return directory


def recall_with(c, value):
    recall = [0.5] * K
    recall[c] = value
    return recall


# CE per-class recall by seed; means [0.9, 0.5, 0.7, 0.6, 0.8, 0.65]: sorted 1, 3, 5, 2, 4, 0, so
# worst1 = c1, worst2 = c3 and median = position (6 - 1) // 2 = 2 = c5 (the upper median would be c2).
CE_RECALL = {0: [0.9, 0.5, 0.7, 0.6, 0.8, 0.65], 1: [0.9, 0.6, 0.7, 0.6, 0.8, 0.65], 2: [0.9, 0.4, 0.7, 0.6, 0.8, 0.65]}
CE_ACCURACY = {0: 0.80, 1: 0.82, 2: 0.84}  # mean 0.82: threshold 0.815 at the default tolerance


@pytest.fixture
def grid(tmp_path):
    """A small grid on "cifar10" (so the paper's values join) with K = 6 classes."""
    root = tmp_path / "runs"
    for seed in range(3):
        write_run(root, f"ce/s{seed}", loss="ce", seed=seed, recall=CE_RECALL[seed], accuracy=CE_ACCURACY[seed])
    # CAMRI for c1. A (k=4): recall 0.6/0.7/0.8, accuracy 0.82/0.83/0.81: qualifies.
    # B (k=8): recall 0.9 on each seed, accuracy mean 0.79: the unconstrained best, does not qualify.
    # C (k=5): seed 0 only, recall 0.85, accuracy 0.83: qualifies, but has one seed.
    for seed, (r, a) in enumerate([(0.6, 0.82), (0.7, 0.83), (0.8, 0.81)]):
        write_run(
            root, f"camri/k4/s{seed}", loss="camri", important=[1], k=4, seed=seed, recall=recall_with(1, r), accuracy=a
        )
    for seed, a in enumerate([0.79, 0.80, 0.78]):
        write_run(
            root,
            f"camri/k8/s{seed}",
            loss="camri",
            important=[1],
            k=8,
            seed=seed,
            recall=recall_with(1, 0.9),
            accuracy=a,
        )
    write_run(root, "camri/k5/s0", loss="camri", important=[1], k=5, seed=0, recall=recall_with(1, 0.85), accuracy=0.83)
    write_run(
        root, "camri/k5/s1", loss="camri", important=[1], k=5, seed=1, recall=[0.0] * K, accuracy=0.0, finished=False
    )
    # A CAMRI run for another class must not enter c1's cell (it would win there).
    write_run(root, "camri/c2", loss="camri", important=[2], seed=0, recall=[1.0] * K, accuracy=0.9)
    # ArcFace: one setting, accuracy mean 0.80 < 0.815: no qualifying setting. Recall per class = 0.5 + 0.05·seed.
    for seed, a in enumerate([0.80, 0.81, 0.79]):
        write_run(root, f"arcface/s{seed}", loss="arcface", seed=seed, recall=[0.5 + 0.05 * seed] * K, accuracy=a)
    # WCE for c1 with two seeds; no CRWWCE at all.
    for seed, (r, a) in enumerate([(0.75, 0.82), (0.65, 0.83)]):
        write_run(
            root, f"wce/s{seed}", loss="wce", important=[1], weight=3.0, seed=seed, recall=recall_with(1, r), accuracy=a
        )
    write_run(root, "l2/s0", loss="l2softmax", seed=0, recall=recall_with(1, 0.55), accuracy=0.82)
    return root


def by_method(frame, **where):
    for column, value in where.items():
        frame = frame[frame[column] == value]
    return frame.set_index("method")


# ---- runs ----------------------------------------------------------------------------------------------


def test_load_runs_reads_finished_runs_and_counts_unfinished(grid):
    runs = protocol.load_runs(grid)
    assert len(runs) == 3 + 3 + 3 + 1 + 1 + 3 + 2 + 1
    assert list(runs.columns[: len(protocol.RUN_COLUMNS)]) == list(protocol.RUN_COLUMNS)
    camri = runs[runs["path"].str.endswith("camri/k4/s0")].iloc[0]
    assert camri["method"] == "CAMRI" and camri["important"] == (1,) and camri["classes"] == tuple(CLASSES)
    assert camri["margin"] == pytest.approx((4 * PI64,))
    assert camri["recall"][1] == 0.6 and camri["epochs"] == 3
    todo = protocol.unfinished_runs(grid)
    assert list(todo["path"]) == [str(grid / "camri/k5/s1")]
    assert todo.iloc[0]["margin"] == pytest.approx((5 * PI64,)) and todo["accuracy"].isna().all()


def test_load_runs_of_a_missing_directory_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"no run directory {tmp_path / 'nowhere'}"):
        protocol.load_runs(tmp_path / "nowhere")


def test_mixed_experiments_and_duplicate_seeds_are_errors(grid):
    write_run(grid, "ce/long", loss="ce", seed=7, recall=CE_RECALL[0], accuracy=0.8, epochs=300)
    with pytest.raises(ValueError, match="differ in epochs"):
        protocol.choose_important(protocol.load_runs(grid), "cifar10")
    runs = protocol.load_runs(grid)
    runs = runs[runs["epochs"] == 3]
    protocol.choose_important(runs, "cifar10")  # filtering to one experiment resolves it
    write_run(grid, "ce/copy", loss="ce", seed=0, recall=CE_RECALL[0], accuracy=0.8)
    runs = protocol.load_runs(grid)
    with pytest.raises(ValueError, match="share a seed"):
        protocol.choose_important(runs[runs["epochs"] == 3], "cifar10")


def test_runs_of_another_learning_rate_schedule_do_not_mix(grid):
    write_run(grid, "ce/cosine", loss="ce", seed=7, recall=CE_RECALL[0], accuracy=0.8)
    for name in ("config.json", "summary.json"):  # a finished run is read from its summary's config
        path = grid / "ce" / "cosine" / name
        record = json.loads(path.read_text())
        record["config"]["lr_schedule"] = "cosine"
        path.write_text(json.dumps(record))
    runs = protocol.load_runs(grid)
    assert set(runs["lr_schedule"]) == {"constant", "cosine"}  # stored before the field existed: constant
    with pytest.raises(ValueError, match="differ in lr_schedule"):
        protocol.choose_important(runs, "cifar10")
    protocol.choose_important(runs[runs["lr_schedule"] == "constant"], "cifar10")


# ---- important classes ---------------------------------------------------------------------------------


def test_important_classes_with_an_even_number_of_classes(grid):
    chosen = protocol.choose_important(protocol.load_runs(grid), "cifar10").set_index("role")
    assert list(chosen.index) == ["worst1", "worst2", "median"]
    assert list(chosen["class_index"]) == [1, 3, 5]
    assert list(chosen["class_name"]) == ["c1", "c3", "c5"]
    assert chosen["recall_mean"].tolist() == pytest.approx([0.5, 0.6, 0.65])
    assert chosen.at["worst1", "recall_std"] == pytest.approx(0.1)  # 0.5, 0.6, 0.4
    assert chosen.at["worst1", "paper_class"] == "cat" and chosen.at["median", "paper_class"] == "airplane"


def test_tied_mean_recalls_go_to_the_lower_class_index(tmp_path):
    # c1: (0.1 + 0.2) / 2 = 0.15000000000000002 in floats, c3: 0.15 exactly: a true tie, broken by index.
    # c4 and c2 tie at 0.3: so worst1 = c1, worst2 = c3, and the median (position 2) = c2, not c4.
    write_run(tmp_path, "s0", loss="ce", seed=0, recall=[0.9, 0.1, 0.3, 0.15, 0.3, 0.8], accuracy=0.8)
    write_run(tmp_path, "s1", loss="ce", seed=1, recall=[0.9, 0.2, 0.3, 0.15, 0.3, 0.8], accuracy=0.8)
    ranking = protocol.class_recalls(protocol.load_runs(tmp_path), "cifar10")
    assert list(ranking["class_index"]) == [1, 3, 2, 4, 5, 0]
    chosen = protocol.choose_important(protocol.load_runs(tmp_path), "cifar10")
    assert list(chosen["class_index"]) == [1, 3, 2]


# ---- settings and selection ----------------------------------------------------------------------------


def test_cell_settings_group_runs_into_settings(grid):
    settings = protocol.cell_settings(protocol.load_runs(grid), "cifar10", 1)
    assert list(settings["method"]) == ["CAMRI"] * 3 + ["ArcFace", "L2-softmax", "WCE", "CE"]
    camri = settings[settings["method"] == "CAMRI"].set_index("hyperparameters")
    assert list(camri.index) == ["m=4π/64, s=16", "m=5π/64, s=16", "m=8π/64, s=16"]  # by margin value
    assert camri.at["m=4π/64, s=16", "recalls"] == (0.6, 0.7, 0.8)
    assert camri.at["m=4π/64, s=16", "recall_std"] == pytest.approx(0.1)
    assert camri.at["m=8π/64, s=16", "accuracy_mean"] == pytest.approx(0.79)
    assert camri["qualified"].tolist() == [True, True, False]
    assert camri["n_seeds"].tolist() == [3, 1, 3]
    assert math.isnan(camri.at["m=5π/64, s=16", "recall_std"])
    assert settings["accuracy_threshold"].iloc[0] == pytest.approx(0.815)
    ce = settings[settings["method"] == "CE"].iloc[0]
    assert ce["hyperparameters"] == "" and ce["recalls"] == (0.5, 0.6, 0.4)


def test_maintaining_unconstrained_and_missing_seeds(grid):
    settings = protocol.cell_settings(protocol.load_runs(grid), "cifar10", 1)
    for min_seeds, maintaining_camri in [(1, "m=5π/64, s=16"), (3, "m=4π/64, s=16")]:
        chosen = protocol.select_settings(settings, min_seeds=min_seeds)
        maintaining = by_method(chosen, selection="maintaining")
        unconstrained = by_method(chosen, selection="unconstrained")
        assert maintaining.at["CAMRI", "hyperparameters"] == maintaining_camri
        assert maintaining.at["CAMRI", "qualified"]
        assert unconstrained.at["CAMRI", "hyperparameters"] == "m=8π/64, s=16"  # differs: the trade-off
        assert not unconstrained.at["CAMRI", "qualified"]
        # ArcFace has no qualifying setting: reported, flagged, not dropped.
        assert maintaining.at["ArcFace", "hyperparameters"] == "m=4π/64, s=16"
        assert not maintaining.at["ArcFace", "qualified"]
    chosen = protocol.select_settings(settings, min_seeds=3)
    assert "WCE" not in set(chosen["method"]) and "L2-softmax" not in set(chosen["method"])
    with pytest.raises(ValueError, match="CE baseline"):  # a cell is never dropped silently
        protocol.select_all(protocol.load_runs(grid), min_seeds=4)


def test_best_setting_ties_go_to_accuracy_then_seeds_then_order():
    settings = pd.DataFrame(
        {
            "method": ["CAMRI"] * 4,
            "hyperparameters": ["a", "b", "c", "d"],
            "n_seeds": [3, 3, 5, 5],
            "selection_recall_mean": [0.9, 0.9, 0.9, 0.9],
            "selection_accuracy_mean": [0.8, 0.85, 0.85, 0.85],
            "qualified": [True] * 4,
        }
    )
    chosen = protocol.select_settings(settings)
    assert set(chosen["hyperparameters"]) == {"c"}


def test_bad_parameters():
    with pytest.raises(ValueError, match="min_seeds"):
        protocol.select_settings(pd.DataFrame(), min_seeds=0)
    with pytest.raises(ValueError, match="tolerance"):
        protocol.cell_settings(pd.DataFrame(), "cifar10", 0, tolerance=-0.1)


# ---- Table 1 -------------------------------------------------------------------------------------------


def test_table1_numbers_against_hand_computation(grid):
    table = tables.table1(protocol.select_all(protocol.load_runs(grid), min_seeds=3))
    assert len(table) == 3 * 6  # CAMRI, ArcFace, CRWWCE, WCE, CE and CE+bias (empty: no logits here)
    assert list(table["important"].unique()) == ["worst1", "worst2", "median"]
    assert list(table["class"].unique()) == ["c1", "c3", "c5"]
    worst1 = by_method(table, important="worst1")
    assert list(worst1.index) == list(tables.TABLE1_METHODS)
    camri = worst1.loc["CAMRI"]
    assert camri["dataset"] == "CIFAR-10" and camri["hyperparameters"] == "m=4π/64, s=16"
    assert (camri["recall_mean"], camri["accuracy_mean"]) == pytest.approx((0.7, 0.82))
    assert (camri["recall_std"], camri["accuracy_std"]) == pytest.approx((0.1, 0.01))
    assert camri["n_seeds"] == 3 and camri["qualified"]
    assert (camri["paper_recall"], camri["paper_accuracy"]) == (0.7919, 0.8821)
    assert camri["recall_diff"] == pytest.approx(0.7 - 0.7919)
    # ArcFace: recall of c1 = 0.5, 0.55, 0.6 → 0.55 ± 0.05; accuracy 0.80 ± 0.01; not qualified.
    arcface = worst1.loc["ArcFace"]
    assert (arcface["recall_mean"], arcface["recall_std"]) == pytest.approx((0.55, 0.05))
    assert not arcface["qualified"]
    ce = worst1.loc["CE"]
    assert (ce["recall_mean"], ce["accuracy_mean"], ce["accuracy_std"]) == pytest.approx((0.5, 0.82, 0.02))
    # WCE has 2 < 3 seeds and CRWWCE no runs: rows kept, empty. The paper reports WCE here, not CRWWCE.
    for method in ("WCE", "CRWWCE"):
        assert worst1.at[method, "n_seeds"] == 0 and math.isnan(worst1.at[method, "recall_mean"])
        assert not worst1.at[method, "qualified"]
    assert worst1.at["WCE", "paper_recall"] == 0.8023 and math.isnan(worst1.at["CRWWCE", "paper_recall"])
    # worst2 (c3) has no CAMRI runs; ArcFace and CE still fill it: ArcFace recall of c3 = 0.55 again.
    worst2 = by_method(table, important="worst2")
    assert worst2.at["CAMRI", "n_seeds"] == 0 and worst2.at["ArcFace", "recall_mean"] == pytest.approx(0.55)
    assert by_method(table, important="median").at["CE", "recall_mean"] == pytest.approx(0.65)


def test_roles_and_important_classes_can_be_given(grid):
    runs = protocol.load_runs(grid)
    sel = protocol.select_all(runs, important={"cifar10": {"worst1": "c2"}})
    assert set(sel["class_index"]) == {2}
    assert by_method(sel, selection="maintaining").at["CAMRI", "recalls"] == (1.0,)
    # As in a profile: roles plus a list of classes in role order.
    sel = protocol.select_all(runs, roles=["worst1", "median"], important={"cifar10": [2, "c4"]})
    assert list(sel.drop_duplicates("role")["class_name"]) == ["c2", "c4"]
    assert list(protocol.select_all(runs, roles=["median"])["class_name"].unique()) == ["c5"]
    with pytest.raises(ValueError, match="not one of"):
        protocol.select_all(runs, important={"cifar10": ["cat"]})
    with pytest.raises(ValueError, match="valid are"):
        protocol.select_all(runs, roles=["best"])


def test_write_table1_csv_contract_and_renderings(grid):
    table = tables.table1(protocol.select_all(protocol.load_runs(grid)))
    out = grid.parent / "results"
    paths = tables.write_table1(table, out)
    assert sorted(p.name for p in out.iterdir()) == ["table1.csv", "table1.md", "table1.tex"]  # no temp files
    assert paths["csv"] == out / "table1.csv"
    lines = (out / "table1.csv").read_text().splitlines()
    assert lines[0] == ",".join(tables.TABLE1_COLUMNS)
    csv = pd.read_csv(out / "table1.csv", keep_default_na=False, dtype=str)
    assert set(csv["qualified"]) == {"true", "false"}
    crwwce = csv[(csv["method"] == "CRWWCE") & (csv["important"] == "worst1")].iloc[0]
    assert crwwce["paper_recall"] == "" and crwwce["recall_mean"] == "" and crwwce["n_seeds"] == "0"
    camri = csv[(csv["method"] == "CAMRI") & (csv["important"] == "worst1")].iloc[0]
    assert camri["recall_std"] == "" and float(camri["recall_mean"]) == 0.85  # one seed: std empty
    markdown = (out / "table1.md").read_text()
    assert "| method | worst1: c1 | worst2: c3 | median: c5 |" in markdown
    assert "0.8500 ± – (0.8300 ± –)<br>m=5π/64, s=16; n=1<br>paper 0.7919 (0.8821), Δ +0.0581 (-0.0521)" in markdown
    assert "m=4π/64, s=16; n=3 †" in markdown  # ArcFace does not maintain accuracy
    latex = (out / "table1.tex").read_text()
    assert r"m=5$\pi$/64" in latex and r"$^\dagger$" in latex and "π" not in latex
    assert latex.count(r"\begin{tabular}{lccc}") == 1


def test_paper_table1_is_carried_as_data():
    paper = tables.paper_table1()
    assert list(paper.columns) == ["dataset", "important", "method", "recall", "accuracy"]
    assert len(paper) == 32
    assert set(paper["method"]) == set(tables.TABLE1_METHODS) - {"CE+bias"}  # the paper has no CE+bias
    assert paper.set_index(["dataset", "important", "method"]).at[("AwA2", "median", "CE"), "recall"] == 0.5599


# ---- beyond the paper ----------------------------------------------------------------------------------


def test_paired_comparisons_pair_the_chosen_settings_by_seed(grid):
    runs = protocol.load_runs(grid)
    pairs = significance.paired_comparisons(protocol.select_all(runs, min_seeds=3))
    worst1 = pairs[pairs["role"] == "worst1"].set_index("versus")
    # CAMRI k=4 recall 0.6/0.7/0.8 vs CE 0.5/0.6/0.4 → gains 0.1, 0.1, 0.4;
    # vs ArcFace 0.5/0.55/0.6 → gains 0.1, 0.15, 0.2.
    assert worst1.at["CE", "n_pairs"] == 3 and worst1.at["CE", "diff_mean"] == pytest.approx(0.2)
    assert (worst1.at["ArcFace", "diff_mean"], worst1.at["ArcFace", "diff_std"]) == pytest.approx((0.15, 0.05))
    assert set(pairs["role"]) == {"worst1"}  # the other cells have no CAMRI
    one_seed = significance.paired_comparisons(protocol.select_all(runs)).set_index("versus")
    assert one_seed.at["CE", "n_pairs"] == 1 and math.isnan(one_seed.at["CE", "ci_high"])


# Important class 1. Sample 3 ties classes 1 and 2 (argmax → 1), sample 4 ties classes 0 and 1 (argmax → 0).
LOGITS = np.array([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0], [1.0, 0.5, 0.0], [0.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
LABELS = np.array([1, 1, 0, 2, 0])


def test_threshold_curve_on_hand_made_logits():
    curve = posthoc.threshold_curve(LOGITS, LABELS, 1, biases=[-100.0, 0.0, 0.75, 100.0]).set_index("bias")
    # bias 0: predictions 0, 1, 0, 1, 0 → recall 1/2, accuracy 3/5 (the plain argmax).
    predicted = LOGITS.argmax(axis=1)
    assert curve.at[0.0, "accuracy"] == pytest.approx((predicted == LABELS).mean()) == pytest.approx(0.6)
    assert curve.at[0.0, "recall"] == pytest.approx((predicted[LABELS == 1] == 1).mean()) == pytest.approx(0.5)
    # 0.75: every sample but the first goes to class 1 → recall 1/2, accuracy 1/5.
    assert (curve.at[0.75, "recall"], curve.at[0.75, "accuracy"]) == pytest.approx((0.5, 0.2))
    # Far below: class 1 never predicted (0, 2, 0, 2, 0); far above: always.
    assert (curve.at[-100.0, "recall"], curve.at[-100.0, "accuracy"]) == pytest.approx((0.0, 0.6))
    assert (curve.at[100.0, "recall"], curve.at[100.0, "accuracy"]) == pytest.approx((1.0, 0.4))


def test_threshold_curve_default_grid_and_plain_argmax_on_random_logits():
    rng = np.random.default_rng(0)
    logits, labels = rng.normal(size=(60, 4)), rng.integers(0, 4, 60)
    for c in range(4):
        curve = posthoc.threshold_curve(logits, labels, c)
        assert curve["bias"].is_monotonic_increasing and curve["recall"].is_monotonic_increasing
        plain = curve.set_index("bias").loc[0.0]
        assert plain["accuracy"] == pytest.approx((logits.argmax(1) == labels).mean())
        assert plain["recall"] == pytest.approx((logits.argmax(1)[labels == c] == c).mean())
        assert curve["recall"].iloc[-1] == 1.0 and curve["recall"].iloc[0] == 0.0


def test_ce_threshold_curve_averages_the_seeds(tmp_path):
    other = LOGITS[:, [1, 0, 2]]  # class 1 always predicted less often
    for seed, logits in enumerate([LOGITS, other]):
        write_run(
            tmp_path, f"s{seed}", loss="ce", seed=seed, recall=[0.5] * 3, accuracy=0.5, logits=logits, labels=LABELS
        )
    curve = posthoc.ce_threshold_curve(protocol.load_runs(tmp_path), "cifar10", 1, biases=[0.0, 100.0])
    expected = [posthoc.threshold_curve(x, LABELS, 1, [0.0, 100.0]) for x in (LOGITS, other)]
    mean_recall = (expected[0]["recall"] + expected[1]["recall"]) / 2
    assert curve["recall"].tolist() == pytest.approx(mean_recall.tolist())
    assert curve["n_seeds"].tolist() == [2, 2]
    assert 0.0 in set(posthoc.ce_threshold_curve(protocol.load_runs(tmp_path), "cifar10", 1)["bias"])


def test_threshold_curve_bad_input():
    with pytest.raises(ValueError, match="class_index"):
        posthoc.threshold_curve(LOGITS, LABELS, 3)
    with pytest.raises(ValueError, match="labels"):
        posthoc.threshold_curve(LOGITS, LABELS[:2], 1)


# ---- formatting ----------------------------------------------------------------------------------------


def test_formatting():
    assert names.format_margin(4 * PI64) == "4π/64"
    assert names.format_margin(PI64) == "π/64" and names.format_margin(0.0) == "0"
    assert names.format_margin(4.5 * PI64) == "4.5π/64"
    assert names.format_hyperparameters("crwwce", {"weight": 2.0, "fp_weight": 0.5}) == "w=2, w_fp=0.5"
    assert (
        names.format_hyperparameters("camri", {"margin": (4 * PI64, 5 * PI64), "scale": 8.0}) == "m=(4π/64, 5π/64), s=8"
    )
    assert names.display_dataset("awa2") == "AwA2" and names.display_dataset("digits") == "digits"


def test_display_dataset_recognises_an_imagefolder_copy():
    from camri.names import display_dataset

    assert display_dataset("cifar10") == "CIFAR-10"
    assert display_dataset("imagefolder:/data/cifar10-jpeg.zip") == "CIFAR-10"
    assert display_dataset("imagefolder:/data/gtsrb_png/") == "GTSRB"
    assert display_dataset("imagefolder:/data/mycars") == "imagefolder:/data/mycars"
    assert display_dataset("imagefolder:/data/cifar100") == "imagefolder:/data/cifar100"


def test_dataset_label_names_a_data_set_as_readers_know_it_never_a_path():
    from camri.names import dataset_label

    assert dataset_label("imagefolder:/work/shared/data/cifar10-jpeg.zip") == "CIFAR-10 (JPEG copy)"
    assert dataset_label("imagefolder:/data/gtsrb_png/") == "GTSRB (PNG copy)"
    assert dataset_label("imagefolder:/data/cifar10") == "CIFAR-10 (image folder)"
    assert dataset_label("imagefolder:/data/mycars.zip") == "mycars.zip"
    assert dataset_label("gtsrb") == "GTSRB" and dataset_label("mnist") == "MNIST"
    assert dataset_label("digits") == "digits (scikit-learn, 8x8)"


def test_epoch_curves_average_metrics_csv_over_seeds(tmp_path):
    root = tmp_path / "runs"
    # Two CE seeds and one CAMRI seed for c1, two epochs each; recall of c1 is the column recall_c1.
    curves = {
        ("ce", 0): [(0.50, 0.2), (0.60, 0.4)],
        ("ce", 1): [(0.70, 0.4), (0.80, 0.6)],
        ("camri", 0): [(0.55, 0.5), (0.65, 0.7)],
    }
    for (loss, seed), points in curves.items():
        d = write_run(
            root,
            f"{loss}/s{seed}",
            loss=loss,
            seed=seed,
            important=[1] if loss == "camri" else [],
            recall=recall_with(1, points[-1][1]),
            accuracy=points[-1][0],
            epochs=2,
        )
        rows = ["epoch,train_loss,test_accuracy," + ",".join(f"recall_{c}" for c in CLASSES)]
        rows += [
            f"{e},1.0,{a}," + ",".join(str(r if c == 1 else 0.5) for c in range(K))
            for e, (a, r) in enumerate(points, start=1)
        ]
        (d / "metrics.csv").write_text("\n".join(rows) + "\n")
    table = analysis.epoch_curves(protocol.load_runs(root), "cifar10", 1)
    assert list(table["method"]) == ["CAMRI", "CAMRI", "CE", "CE"]
    ce = table[table["method"] == "CE"].set_index("epoch")
    assert ce.loc[1, "accuracy_mean"] == pytest.approx(0.60) and ce.loc[2, "recall_mean"] == pytest.approx(0.50)
    assert ce.loc[1, "recall_std"] == pytest.approx(math.sqrt(0.02))  # (0.2, 0.4): sample std 0.1414
    assert (ce["n_seeds"] == 2).all()
    camri = table[table["method"] == "CAMRI"].set_index("epoch")
    assert camri.loc[2, "recall_mean"] == pytest.approx(0.7) and math.isnan(camri.loc[2, "recall_std"])
    assert camri["hyperparameters"].iloc[0] == "m=4π/64, s=16"


def test_relative_variance_table_reports_the_ratio_and_its_parts():
    from camri import metrics

    # Three classes; the important class is c1. θ variances (deg²) per class and seed: CAMRI seed 0
    # [100, 60, 140]: others' mean 120, ratio 0.5; CAMRI seed 1 [200, 30, NaN] (c2 has no test sample):
    # others' mean 200, ratio 0.15; CE [90, 90, 90]: ratio 1.
    variances = {"camri0": [100.0, 60.0, 140.0], "camri1": [200.0, 30.0, math.nan], "ce0": [90.0, 90.0, 90.0]}
    means = {"camri0": [50.0, 20.0, 70.0], "camri1": [50.0, 30.0, 70.0], "ce0": [60.0, 60.0, 60.0]}
    runs = pd.DataFrame(
        {
            "path": list(variances),
            "angle_var_deg2": list(variances.values()),
            "angle_mean_deg": list(means.values()),
            "relative_angle_variance": [metrics.relative_angle_variance(v, [1]) for v in variances.values()],
        }
    )
    assert runs.at[1, "relative_angle_variance"] == {"1": pytest.approx(0.15)}
    cell = {"dataset": "cifar10", "role": "worst1", "class_index": 1, "class_name": "c1"}
    selections = pd.DataFrame(
        [
            {
                **cell,
                "selection": "maintaining",
                "method": "CAMRI",
                "hyperparameters": "m",
                "paths": ("camri0", "camri1"),
            },
            {**cell, "selection": "maintaining", "method": "CE", "hyperparameters": "", "paths": ("ce0",)},
            {**cell, "selection": "best", "method": "CAMRI", "hyperparameters": "m", "paths": ("not a run",)},
        ]
    )
    table = analysis.relative_variance_table(runs, selections).set_index("method")
    assert list(table.index) == ["CE", "CAMRI"]  # the methods' order; the "best" row is not read
    camri = table.loc["CAMRI"]
    assert camri["n_seeds"] == 2 and camri["relative_variance"] == pytest.approx((0.5 + 0.15) / 2)
    assert camri["relative_variance_std"] == pytest.approx(math.sqrt(2) * 0.175)  # (0.5, 0.15): sample std
    assert camri["angle_mean_deg"] == pytest.approx(25.0) and camri["angle_var_deg2"] == pytest.approx(45.0)
    assert camri["others_var_deg2"] == pytest.approx(160.0)  # (120 + 200) / 2: the NaN class left out
    ce = table.loc["CE"]
    assert ce["relative_variance"] == pytest.approx(1.0) and math.isnan(ce["relative_variance_std"])
    assert ce["angle_var_deg2"] == pytest.approx(90.0) and ce["others_var_deg2"] == pytest.approx(90.0)
