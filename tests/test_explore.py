"""The notebooks' explorers (camri.explore): the Fig. 2 sliders redraw exactly the figure of their values;
the angle chooser offers the runs of each important class, narrows level by level, and shows the chosen
run's own angles. Hand-made runs in the run format (tests/test_protocol.py's writer)."""

import base64
import math
from types import SimpleNamespace

import numpy as np
import pytest

from camri import explore, protocol
from test_protocol import K, write_run

PI64 = math.pi / 64


def shown(explorer) -> str:
    """The PNG (base64) the explorer's Output shows: its state holds exactly one display_data."""
    [output] = explorer.output.outputs
    assert output["output_type"] == "display_data"
    return output["data"]["image/png"]


# ---- Fig. 2 ------------------------------------------------------------------------------------------


def test_the_sliders_redraw_the_figure_of_their_values():
    explorer = explore.LossExplorer(8 * PI64, 4.0, resolution=21)
    assert explorer.margin_units.value == pytest.approx(8) and explorer.scale.value == 4.0
    assert explorer.figure._suptitle.get_text() == "m = 8π/64 rad, s = 4"
    assert [ax.get_title() for ax in explorer.figure.axes if ax.get_title()] == [
        "L2-softmax (target class 1)",
        "ArcFace (target class 1)",
        "CAMRI (target class 1)",
    ]
    initial = shown(explorer)
    expected = explore.display_data(explore.loss_contours_figure(8 * PI64, 4.0, resolution=21))
    assert initial == expected["data"]["image/png"]
    assert base64.b64decode(initial)[:8] == b"\x89PNG\r\n\x1a\n"
    explorer.margin_units.value = 16
    explorer.scale.value = 8
    assert explorer.margin == pytest.approx(16 * PI64)
    assert explorer.figure._suptitle.get_text() == "m = 16π/64 rad, s = 8"
    expected = explore.display_data(explore.loss_contours_figure(16 * PI64, 8.0, resolution=21))
    assert shown(explorer) == expected["data"]["image/png"] != initial
    assert "application/vnd.jupyter.widget-view+json" in explorer._repr_mimebundle_()


def test_the_sliders_refuse_a_start_outside_their_range():
    with pytest.raises(ValueError, match=r"outside the slider's range 0..32·π/64"):
        explore.LossExplorer(math.pi, 4.0)
    with pytest.raises(ValueError, match="scale 0 is outside"):
        explore.LossExplorer(PI64, 0)


# ---- the angle chooser --------------------------------------------------------------------------------


def recall(c, value, rest=0.5):
    values = [rest] * K
    values[c] = value
    return values


def write_angles(directory, spread):
    """θ of 100 test samples per class: class 1 spread ``spread`` degrees around 30°, the others ±10°."""
    labels = np.repeat(np.arange(K), 100)
    offsets = np.linspace(-1, 1, 100)
    theta = np.concatenate([30 + (spread if k == 1 else 10) * offsets for k in range(K)])
    np.savez(directory / "angles.npz", theta_deg=theta.astype(np.float32), labels=labels)


@pytest.fixture
def runs(tmp_path):
    """digits-like K = 6 runs: CE (c1 is its worst class), ArcFace, two CAMRI settings for c1, one for c2;
    two seeds each. CAMRI k=4 keeps accuracy, k=8 does not. Class 1's θ spread says which run it is."""
    root = tmp_path / "runs"
    spreads = {}
    for seed in (0, 1):
        for name, loss, kwargs, r, accuracy in [
            ("ce", "ce", {}, recall(1, 0.3, 0.8), 0.8),
            ("arcface", "arcface", {}, recall(1, 0.4, 0.8), 0.8),
            ("camri_k4", "camri", {"important": [1], "k": 4}, recall(1, 0.6, 0.8), 0.81),
            ("camri_k8", "camri", {"important": [1], "k": 8}, recall(1, 0.9, 0.8), 0.6),
            ("camri_c2", "camri", {"important": [2], "k": 4}, recall(2, 0.9, 0.8), 0.8),
        ]:
            directory = write_run(
                root, f"{name}/s{seed}", loss=loss, seed=seed, recall=r, accuracy=accuracy, dataset="digits", **kwargs
            )
            spreads[(name, seed)] = 1 + len(spreads)
            write_angles(directory, spreads[(name, seed)])
    frame = protocol.load_runs(root)
    selections = protocol.select_all(frame, roles=["worst1"])
    return SimpleNamespace(
        frame=frame, selections=selections, choices=explore.angle_runs(frame, selections), spreads=spreads
    )


def test_angle_runs_lists_each_important_class_runs_one_row_per_seed(runs):
    choices = runs.choices
    assert set(choices["cell"]) == {"digits worst1: c1"}
    settings = choices.groupby(["method", "setting"], sort=False)["seed"].apply(list)
    assert settings.to_dict() == {
        ("CAMRI", "m=4π/64, s=16"): [0, 1],
        ("CAMRI", "m=8π/64, s=16"): [0, 1],
        ("ArcFace", "m=4π/64, s=16"): [0, 1],
        ("CE", "default"): [0, 1],
    }
    # The "maintaining" choices: CAMRI k=4 (k=8 loses accuracy), ArcFace's and CE's only settings.
    chosen = choices[choices["chosen"]].drop_duplicates(["method", "setting"])
    assert list(zip(chosen["method"], chosen["setting"])) == [
        ("CAMRI", "m=4π/64, s=16"),
        ("ArcFace", "m=4π/64, s=16"),
        ("CE", "default"),
    ]
    only_ce = explore.angle_runs(runs.frame, runs.selections, methods=["CE"])
    assert list(only_ce["method"]) == ["CE", "CE"]


def test_narrow_resolves_level_by_level(runs):
    choices = runs.choices
    run, options = explore.narrow(choices, method="CAMRI")
    assert (run["method"], run["setting"], run["seed"]) == ("CAMRI", "m=4π/64, s=16", 0)  # the chosen setting
    assert options == {
        "cell": ["digits worst1: c1"],
        "method": ["CAMRI", "ArcFace", "CE"],
        "setting": ["m=4π/64, s=16", "m=8π/64, s=16"],
        "seed": [0, 1],
    }
    run, _ = explore.narrow(choices, method="CAMRI", setting="m=8π/64, s=16", seed=1)
    assert (run["setting"], run["seed"]) == ("m=8π/64, s=16", 1)
    # A setting the new method does not have gives way to that method's default; the seed is kept.
    run, options = explore.narrow(choices, method="CE", setting="m=8π/64, s=16", seed=1)
    assert (run["method"], run["setting"], run["seed"]) == ("CE", "default", 1)
    assert options["setting"] == ["default"]
    assert explore.narrow(choices, method="WCE")[0]["method"] == "CAMRI"  # not offered: the first method
    with pytest.raises(ValueError, match="unknown level"):
        explore.narrow(choices, seeds=1)
    with pytest.raises(ValueError, match="no finished runs to choose from"):
        explore.narrow(choices.iloc[:0])


def test_the_chooser_shows_the_chosen_runs_own_angles(runs):
    choices, spreads = runs.choices, runs.spreads
    explorer = explore.AngleExplorer(choices)
    assert explorer.figure._suptitle.get_text() == "digits worst1: c1 · CAMRI m=4π/64, s=16 · seed 0"

    def relative_variance(spread):  # var(θ | c1) / mean var(θ | other classes): linspace offsets scale
        return spread**2 / 10**2

    def shown():
        return explorer.figure.axes[0].get_title()

    assert shown() == f"CAMRI: rel. var {relative_variance(spreads[('camri_k4', 0)]):.2f}"
    first = explorer.output.outputs
    explorer.dropdowns["seed"].value = 1
    assert len(explorer.output.outputs) == 1 and explorer.output.outputs != first  # redrawn, not appended
    assert shown() == f"CAMRI: rel. var {relative_variance(spreads[('camri_k4', 1)]):.2f}"
    explorer.dropdowns["method"].value = "CE"  # the setting follows; the seed stays
    assert list(explorer.dropdowns["setting"].options) == ["default"]
    assert (explorer.run["method"], explorer.run["setting"], explorer.run["seed"]) == ("CE", "default", 1)
    assert explorer.figure._suptitle.get_text() == "digits worst1: c1 · CE default · seed 1"
    assert shown() == f"CE: rel. var {relative_variance(spreads[('ce', 1)]):.2f}"
    explorer.dropdowns["method"].value = "CAMRI"
    explorer.dropdowns["setting"].value = "m=8π/64, s=16"
    assert shown() == f"CAMRI: rel. var {relative_variance(spreads[('camri_k8', 1)]):.2f}"
