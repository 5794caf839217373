"""The validation-split protocol (docs/protocol.md): the split, what runs record on it, selection on it
against selection on test, the missing-validation error, last-k reporting and the CE+bias rows."""

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest
import torch

from camri import data as camri_data
from camri import posthoc, protocol, tables
from camri.data.dataset import grouped_split
from camri.train import Run, TrainConfig, train
from test_protocol import CLASSES, write_run


@pytest.fixture(scope="module")
def digits():
    return camri_data.load("digits")


def test_the_split_is_stratified_disjoint_and_the_same_for_every_method_and_seed(digits):
    split = digits.with_validation(0.1, 0)
    n = len(digits.y_train)
    assert len(split.y_val) == round(0.1 * n) and len(split.y_train) + len(split.y_val) == n
    # Stratified: every class keeps its share of the training set, within one image.
    before = torch.bincount(digits.y_train, minlength=10).double()
    after = torch.bincount(split.y_val, minlength=10).double()
    assert torch.all((after - 0.1 * before).abs() <= 1.0)
    # Disjoint: together the two parts are the training set, each image once (the images are distinct rows).
    rows = {tuple(x.flatten().tolist()) + (int(y),) for x, y in zip(digits.x_train, digits.y_train)}
    parts = [
        tuple(x.flatten().tolist()) + (int(y),)
        for x, y in zip(torch.cat([split.x_train, split.x_val]), torch.cat([split.y_train, split.y_val]))
    ]
    assert len(parts) == len(set(parts)) == len(rows) and set(parts) == rows
    # The same for any loss and seed of a profile: the split depends on fraction and split seed only.
    runs = [
        Run(TrainConfig(dataset="digits", loss=loss, important=important, seed=seed), "/nonexistent", dataset=digits)
        for loss, important, seed in (("ce", (), 0), ("camri", (3,), 4))
    ]
    assert all(torch.equal(r.data.x_val, split.x_val) and torch.equal(r.data.y_train, split.y_train) for r in runs)
    assert not torch.equal(digits.with_validation(0.1, 1).y_val, split.y_val)  # another split seed, another split
    assert digits.with_validation(0.0) is digits
    with pytest.raises(ValueError, match="validation_fraction"):
        digits.with_validation(1.0)


def test_a_run_records_validation_beside_test(digits, tmp_path):
    config = TrainConfig(
        dataset="digits",
        loss="camri",
        important=(3,),
        epochs=2,
        width=0.125,
        z_dim=16,
        bn_momentum=0.1,
        device="cpu",
        validation_fraction=0.2,
        split_seed=1,
    )
    summary = train(config, tmp_path, quiet=True, dataset=digits)
    stored = json.loads((tmp_path / "config.json").read_text())["config"]
    assert stored["validation_fraction"] == 0.2 and stored["split_seed"] == 1
    metrics = pd.read_csv(tmp_path / "metrics.csv")
    assert {"val_loss", "val_accuracy", "val_recall_3"} <= set(metrics.columns) and len(metrics) == 2
    validation = summary["validation"]
    assert validation["images"] == len(digits.with_validation(0.2, 1).y_val)
    assert validation["accuracy"] == pytest.approx(metrics["val_accuracy"].iloc[-1])
    assert validation["recall"][3] == pytest.approx(metrics["val_recall_3"].iloc[-1])
    assert set(validation["relative_angle_variance"]) == {"3"}
    with np.load(tmp_path / "angles.npz") as npz:
        assert npz["val_logits"].shape == (validation["images"], 10) and len(npz["logits"]) == len(digits.y_test)
        # The stored validation logits give the recorded validation accuracy.
        assert (npz["val_logits"].argmax(1) == npz["val_labels"]).mean() == pytest.approx(validation["accuracy"])


@pytest.fixture
def split_runs(tmp_path):
    """CE ranks the classes differently on validation (c2 lowest) and on test (c1 lowest); two CAMRI settings
    for c1 swap places too: k=4 is better on validation, k=8 on test."""
    root = tmp_path / "runs"
    test_recall = [0.9, 0.4, 0.6, 0.7, 0.8, 0.85]
    val_recall = [0.9, 0.6, 0.4, 0.7, 0.8, 0.85]
    for seed in range(2):
        write_run(
            root,
            f"ce/s{seed}",
            loss="ce",
            seed=seed,
            recall=test_recall,
            accuracy=0.8,
            val_recall=val_recall,
            val_accuracy=0.8,
        )
        for k, (test, val) in {4: (0.5, 0.8), 8: (0.7, 0.6)}.items():
            write_run(
                root,
                f"camri{k}/s{seed}",
                loss="camri",
                important=[1],
                k=k,
                seed=seed,
                recall=[0.9, test, 0.6, 0.7, 0.8, 0.85],
                accuracy=0.8,
                val_recall=[0.9, val, 0.4, 0.7, 0.8, 0.85],
                val_accuracy=0.8,
            )
    return root


def test_selection_on_validation_differs_from_selection_on_test(split_runs):
    runs = protocol.load_runs(split_runs)
    assert protocol.choose_important(runs, "cifar10").iloc[0]["class_name"] == "c2"  # validation
    assert protocol.choose_important(runs, "cifar10", split="test").iloc[0]["class_name"] == "c1"
    fixed = {"cifar10": {"worst1": "c1"}}
    by_val = protocol.select_all(runs, important=fixed, roles=["worst1"])
    by_test = protocol.select_all(runs, important=fixed, roles=["worst1"], split="test")
    pick = {
        name: frame[(frame["method"] == "CAMRI") & (frame["selection"] == "maintaining")].iloc[0]
        for name, frame in (("validation", by_val), ("test", by_test))
    }
    assert pick["validation"]["hyperparameters"] == "m=4π/64, s=16"
    assert pick["test"]["hyperparameters"] == "m=8π/64, s=16"
    # Both report test: the validation choice reports k=4's test recall 0.5, the test choice k=8's 0.7.
    assert pick["validation"]["recall_mean"] == pytest.approx(0.5) and pick["test"]["recall_mean"] == pytest.approx(0.7)
    assert pick["validation"]["selection_recall_mean"] == pytest.approx(0.8)
    from camri.analysis import compare_selections

    both = compare_selections(by_val, by_test).set_index("method")
    assert bool(both.at["CAMRI", "differs"]) and not bool(both.at["CE", "differs"])


def test_a_split_without_a_maintaining_choice_says_so():
    from camri.analysis import compare_selections

    def frame(hyperparameters):
        row = {"dataset": "gtsrb", "role": "worst1", "class_name": "c1", "recall_mean": 0.5}
        rows = [{**row, "method": "CE+bias", "selection": "maintaining", "hyperparameters": "b=+0"}]
        rows.append({**row, "method": "CAMRI+bias", "selection": "maintaining", "hyperparameters": hyperparameters})
        return pd.DataFrame(rows)

    by_val = frame("x").query("method == 'CE+bias'")  # no CAMRI+bias row on validation
    both = compare_selections(by_val, frame("m=4π/64, s=16, b=+2")).set_index("method")
    assert both.at["CAMRI+bias", "setting_validation"] == "no setting maintains accuracy on validation"
    assert pd.isna(both.at["CAMRI+bias", "class_validation"]) and pd.isna(both.at["CAMRI+bias", "recall_validation"])
    assert both.at["CAMRI+bias", "setting_test"] == "m=4π/64, s=16, b=+2" and bool(both.at["CAMRI+bias", "differs"])
    assert both.at["CE+bias", "setting_validation"] == "b=+0" and not bool(both.at["CE+bias", "differs"])


def test_roles_on_test_with_settings_on_validation(split_runs):
    # important.split: test: the cell is CE's test-worst class (c1), its CAMRI setting the validation pick.
    runs = protocol.load_runs(split_runs)
    mixed = protocol.select_all(runs, roles=["worst1"], role_split="test")
    camri = mixed[(mixed["method"] == "CAMRI") & (mixed["selection"] == "maintaining")].iloc[0]
    assert camri["class_name"] == "c1" and camri["hyperparameters"] == "m=4π/64, s=16"
    assert camri["selection_recall_mean"] == pytest.approx(0.8) and camri["recall_mean"] == pytest.approx(0.5)
    # Without role_split the classes follow split: c2 on validation.
    assert set(protocol.select_all(runs, roles=["worst1"])["class_name"]) == {"c2"}


def test_runs_without_validation_are_named_with_the_fix(tmp_path):
    for seed in range(2):
        write_run(tmp_path, f"ce/s{seed}", loss="ce", seed=seed, recall=[0.5] * 6, accuracy=0.8, validation=False)
    runs = protocol.load_runs(tmp_path)
    with pytest.raises(ValueError, match=r"2 of 2 runs have no validation metrics .*ce/s0.*protocol.selection: test"):
        protocol.select_all(runs)
    assert len(protocol.select_all(runs, split="test", roles=["worst1"])) > 0  # the paper's protocol still works


def test_last_k_reports_the_mean_of_the_last_epochs(tmp_path):
    directory = write_run(tmp_path, "ce/s0", loss="ce", seed=0, recall=[0.5] * 6, accuracy=0.8)
    epochs = pd.DataFrame(
        {"epoch": [1, 2, 3], "test_accuracy": [0.1, 0.6, 0.8], "val_accuracy": [0.2, 0.4, 0.6]}
        | {f"recall_{c}": [0.0, 0.2, 0.4] for c in CLASSES}
        | {f"val_recall_{c}": [0.1, 0.3, 0.5] for c in CLASSES}
    )
    epochs.to_csv(directory / "metrics.csv", index=False)
    runs = protocol.load_runs(tmp_path)
    assert protocol.apply_report(runs, "final") is runs
    last2 = protocol.apply_report(runs, "last_k", 2).iloc[0]
    assert last2["accuracy"] == pytest.approx(0.7) and last2["val_accuracy"] == pytest.approx(0.5)
    assert last2["recall"][0] == pytest.approx(0.3) and last2["val_recall"][5] == pytest.approx(0.4)
    with pytest.raises(ValueError, match="report"):
        protocol.apply_report(runs, "best")


def test_ce_plus_bias_row_is_tuned_on_validation_and_reported_on_test(tmp_path):
    # Class 1 of 3; logits as in test_posthoc: on validation b = 1.5 gives recall 1 at accuracy 0.8.
    logits = np.array([[2.0, 1.0, 0.0], [1.5, 1.0, 0.0], [0.0, 1.0, 0.0], [3.0, 1.0, 0.0], [1.25, 1.0, 0.0]])
    labels = np.array([1, 1, 1, 0, 0])
    # Test: sample 0's gap is 1.6 > 1.5, so the tuned bias leaves it wrong there: recall 2/3, accuracy 3/5.
    test_logits = logits.copy()
    test_logits[0, 0] = 2.6
    for seed in range(2):
        d = write_run(tmp_path, f"ce/s{seed}", loss="ce", seed=seed, recall=[0.5] * 6, accuracy=0.6, val_accuracy=0.6)
        np.savez(
            d / "angles.npz",
            logits=test_logits,
            labels=labels,
            val_logits=logits,
            val_labels=labels,
            theta_deg=np.zeros(5),
        )
    runs = protocol.load_runs(tmp_path)
    settings = protocol.cell_settings(runs, "cifar10", 1, tolerance=0.0, bias=True).set_index("method")
    row = settings.loc["CE+bias"]
    assert row["bias"] == 1.5 and row["hyperparameters"] == "b=+1.5"
    assert row["selection_recall_mean"] == 1.0 and row["selection_accuracy_mean"] == pytest.approx(0.8)
    assert row["recall_mean"] == pytest.approx(2 / 3) and row["accuracy_mean"] == pytest.approx(0.6)
    assert posthoc.tune_bias([(logits, labels)], 1, 0.6)["bias"] == row["bias"]
    table = tables.table1(
        protocol.select_all(runs, tolerance=0.0, bias=True, important={"cifar10": [1]}, roles=["worst1"])
    ).set_index("method")
    assert table.at["CE+bias", "recall_mean"] == pytest.approx(2 / 3) and table.at["CE+bias", "n_seeds"] == 2


def test_a_grouped_split_holds_out_whole_groups_per_class():
    # 3 classes; groups of 3 to 5 images, each within one class (as GTSRB's tracks are).
    rng = np.random.default_rng(1)
    sizes = rng.integers(3, 6, size=30)
    groups = np.repeat(np.arange(30), sizes)
    labels = np.repeat(np.arange(30) % 3, sizes)
    kept, held = grouped_split(labels, groups, 0.2, seed=0)
    kept, held = kept.numpy(), held.numpy()
    assert sorted(np.concatenate([kept, held]).tolist()) == list(range(len(labels)))
    assert not set(groups[kept]) & set(groups[held])  # no group on both sides
    for label in range(3):
        share = np.sum(labels[held] == label) / np.sum(labels == label)
        assert 0.2 <= share < 0.2 + 5 / np.sum(labels == label)  # at least the fraction, a group more at most
    again, _ = grouped_split(labels, groups, 0.2, seed=0)
    other, _ = grouped_split(labels, groups, 0.2, seed=1)
    assert np.array_equal(again.numpy(), kept) and not np.array_equal(other.numpy(), kept)
    with pytest.raises(ValueError, match="class 2 of the data: it has 1 group"):
        grouped_split(labels, np.where(labels == 2, 99, groups), 0.2, seed=0)
    with pytest.raises(ValueError, match="images of several classes"):
        grouped_split(labels, groups // 2, 0.2, seed=0)


def test_validation_groups_on_a_data_set_split_by_group(digits, tmp_path):
    groups = torch.arange(len(digits.y_train)) // 4 * 10 + digits.y_train  # groups of up to 4, one class each
    grouped = dataclasses.replace(digits, groups_train=groups)
    split = grouped.with_validation(0.1, 0, by_group=True)
    held = set(groups.tolist()) - set(split.groups_train.tolist())  # the groups no training image has
    assert held and int(torch.isin(groups, torch.tensor(sorted(held))).sum()) == len(split.y_val)  # whole groups
    assert len(split.y_val) + len(split.y_train) == len(digits.y_train)
    assert len(split.groups_train) == len(split.y_train)
    with pytest.raises(ValueError, match="validation_groups: digits has no groups"):
        digits.with_validation(0.1, 0, by_group=True)
    config = TrainConfig(
        dataset="digits", loss="ce", epochs=1, width=0.125, z_dim=16, device="cpu", validation_groups=True
    )
    with pytest.raises(ValueError, match="set validation_groups: false"):
        Run(config, tmp_path / "run", dataset=digits)
    assert not (tmp_path / "run").exists()  # nothing written
