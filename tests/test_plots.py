"""camri.plots: every figure function returns a Figure with something drawn, save_figure writes real PNG and
PDF files atomically, and the Fig. 2 / Fig. 3 computations are right on cases worked out by hand."""

import math

import numpy as np
import pandas as pd
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

from camri import geometry, plots
from camri.losses import paper_margin


def drawn(fig) -> bool:
    return isinstance(fig, Figure) and any(ax.has_data() for ax in fig.axes)


def test_save_figure_writes_png_and_pdf_atomically(tmp_path):
    fig = plots.plot_learning_curves({"a": pd.DataFrame({"epoch": [1, 2], "test_accuracy": [0.5, 0.7]})})
    paths = plots.save_figure(fig, tmp_path / "sub" / "curve")
    assert paths == {"png": tmp_path / "sub" / "curve.png", "pdf": tmp_path / "sub" / "curve.pdf"}
    with Image.open(paths["png"]) as image:
        assert image.size[0] > 100 and image.size[1] > 100
    assert paths["pdf"].read_bytes().startswith(b"%PDF")
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == ["curve.pdf", "curve.png"]  # no temp files


def test_fig2_weights_are_unit_vectors_120_degrees_apart_target_up():
    w = geometry.fig2_weights(target=1)
    assert np.allclose(np.linalg.norm(w, axis=1), 1)
    assert np.allclose(w[1], [0, 1])
    cos = w @ w.T
    assert np.allclose(cos[~np.eye(3, dtype=bool)], math.cos(math.radians(120)))


def test_loss_surface_matches_the_losses_by_hand():
    ce = geometry.loss_surface("ce", extent=2.0, resolution=5)  # grid -2, -1, 0, 1, 2
    # z = (0, 2) lies on W_1: logits (2 cos 120°, 2, 2 cos 120°) = (-1, 2, -1); CE = -log softmax_1.
    expected = -math.log(math.exp(2) / (math.exp(2) + 2 * math.exp(-1)))
    assert ce["loss"][4, 2] == pytest.approx(expected)  # rows = y, columns = x
    assert ce["predicted"][4, 2] == 1 and ce["predicted"][0, 2] != 1
    wce = geometry.loss_surface("wce", extent=2.0, resolution=5, weight=3.0)
    assert np.allclose(wce["loss"], 3.0 * ce["loss"])  # every sample is of the important target class
    # Angular heads depend on the direction only: the loss along W_1 is the same at radius 1 and 2.
    camri = geometry.loss_surface("camri", extent=2.0, resolution=5, margin=paper_margin(8), scale=4.0)
    assert camri["loss"][3, 2] == pytest.approx(camri["loss"][4, 2])
    l2 = geometry.loss_surface("l2softmax", extent=2.0, resolution=5, scale=4.0)
    assert np.all(camri["loss"] >= l2["loss"] - 1e-12)  # the margin only makes the target harder


def test_the_margin_shrinks_the_training_region_of_the_target():
    l2 = geometry.loss_surface("l2softmax", resolution=81)
    camri = geometry.loss_surface("camri", resolution=81, margin=paper_margin(16))
    assert (l2["training"] == 1).sum() == (l2["predicted"] == 1).sum()
    assert (camri["training"] == 1).sum() < (camri["predicted"] == 1).sum()
    assert np.array_equal(camri["predicted"], l2["predicted"])  # no margin at test time


def test_arcface_margins_every_class_camri_only_the_important_one():
    for loss, shrinks_class_0 in (("arcface", True), ("camri", False)):
        other = geometry.loss_surface(loss, target=0, important=[1], resolution=81, margin=paper_margin(16))
        assert ((other["training"] == 0).sum() < (other["predicted"] == 0).sum()) == shrinks_class_0


def test_plot_loss_contours_has_one_panel_per_loss():
    fig = geometry.plot_loss_contours(["ce", "camri"], resolution=41, ncols=2)
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titles == ["CE (target class 1)", "CAMRI (target class 1)"]
    assert drawn(fig)


def test_circle_share():
    w = geometry.fig2_weights(num_classes=4)
    assert [geometry.circle_share(w, k) for k in range(4)] == pytest.approx([0.25] * 4, abs=1e-3)
    # Rotating W_0 towards W_1 by 30° shrinks the arc of class 1 by 15° (half the gap it lost).
    angles = np.deg2rad([0, 90, 180, 270])
    angles[0] += np.deg2rad(30)
    w = np.stack([np.cos(angles), np.sin(angles)], 1)
    assert geometry.circle_share(w, 1) == pytest.approx((90 - 15) / 360, abs=1e-3)


def two_d_features(n=300, k=4, seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, k, n)
    angle = labels * 2 * np.pi / k + rng.normal(0, 0.2, n)
    return np.stack([np.cos(angle), np.sin(angle)], 1) * rng.uniform(1, 5, (n, 1)), labels


def test_feature_circle_and_fig3():
    features, labels = two_d_features()
    weights = geometry.fig2_weights(num_classes=4)
    fig = geometry.plot_fig3(
        {
            "CE": {"features2d": features, "labels": labels, "weights": weights},
            "CAMRI": {"features2d": features, "labels": labels},
        },
        classes=list("abcd"),
        important=[3],
        title="Fig. 3 on MNIST",
        counts=False,
    )
    assert drawn(fig) and [ax.get_title() for ax in fig.axes] == ["CE", "CAMRI"]
    assert fig.get_suptitle() == "Fig. 3 on MNIST" and fig._suptitle.get_color() == "red"
    with pytest.raises(ValueError, match="z_dim = 2"):
        geometry.plot_feature_circle(np.zeros((3, 5)), np.zeros(3, int))


@pytest.mark.parametrize("k", [0, 1])
def test_the_shaded_arc_is_the_sector_of_its_share_also_across_angle_zero(k):
    # Weights at 0°, 90°, 180°, 270°: class 0's arc is -45°..45°, across angle 0; class 1's is 45°..135°.
    angles = np.deg2rad([0, 90, 180, 270])
    w = np.stack([np.cos(angles), np.sin(angles)], 1)
    features, labels = two_d_features()
    ax = geometry.plot_feature_circle(features, labels, weights=w, important=[k]).axes[0]
    (shade,) = [p for p in ax.patches if p.get_alpha() == pytest.approx(0.12)]
    x, y = shade.get_xy().T
    area = 0.5 * abs(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1)))  # the shoelace formula
    assert area == pytest.approx(0.25 * np.pi * 1.35**2, rel=0.01)  # a quarter of the disc of radius 1.35


def test_fig3_title_counts_the_figure_only_when_both_runs_reach_the_bar():
    from camri import analysis

    summary = pd.DataFrame(
        {"method": ["CE", "CAMRI"], "dataset": ["mnist", "mnist"], "accuracy": [0.97, 0.951], "class": ["3", "3"]}
    )
    title, counts = analysis.fig3_title(summary, 0.95)
    assert counts and title.startswith("Fig. 3 on MNIST")
    summary.loc[1, "accuracy"] = 0.48
    title, counts = analysis.fig3_title(summary, 0.95)
    assert not counts and title.startswith("UNDER-TRAINED") and "CAMRI 0.480 < 0.95" in title and "CE " not in title


def test_angle_histograms_report_the_relative_variance():
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1, 2], 200)
    theta = np.where(labels == 1, rng.normal(30, 2, 600), rng.normal(40, 4, 600))
    fig = plots.plot_angle_histograms({"CE": (theta, labels), "CAMRI": (theta * 0.5, labels)}, 1, class_name="one")
    relative = theta[labels == 1].var() / np.mean([theta[labels == k].var() for k in (0, 2)])
    assert fig.axes[0].get_title() == f"CE: rel. var {relative:.2f}"
    assert [ax.get_ylabel() for ax in fig.axes] == ["density", ""]
    assert drawn(fig)
    pooled = plots.plot_angle_histograms(
        {"CE": (theta, labels), "CAMRI": (theta, labels)}, 1, n_seeds={"CE": 3, "CAMRI": 1}
    )
    assert [ax.get_title() for ax in pooled.axes] == [
        f"CE, 3 seeds pooled: rel. var {relative:.2f}",
        f"CAMRI: rel. var {relative:.2f}",
    ]


def test_class_recall_labels_neither_overlap_nor_leave_the_figure():
    # CIFAR-10's names at 10 bars ran into each other ("airplanedeer", "frogautomobileship") and its title
    # ran off the figure's right edge (results/cifar10, 2026-12-06).
    names = ["cat", "dog", "bird", "airplane", "deer", "horse", "truck", "frog", "automobile", "ship"]
    recalls = pd.DataFrame(
        {"class_index": range(10), "class_name": names, "recall_mean": 0.8, "recall_std": 0.01, "rank": range(10)}
    )
    title = "CIFAR-10 (JPEG copy): CE validation recall per class (mean ± std over 3 seeds)"
    fig = plots.plot_class_recall(recalls, title=title, split="validation")
    renderer = FigureCanvasAgg(fig).get_renderer()
    fig.draw(renderer)
    boxes = [label.get_window_extent(renderer) for label in fig.axes[0].get_xticklabels()]
    assert len(boxes) == 10
    assert not any(a.overlaps(b) for a, b in zip(boxes, boxes[1:]))
    inside = fig.bbox
    for box in [*boxes, fig.axes[0].title.get_window_extent(renderer)]:
        assert inside.x0 <= box.x0 and box.x1 <= inside.x1
    assert fig.axes[0].title.get_text().replace("\n", " ") == title
    # Short names (digits) stay horizontal.
    digits = recalls.assign(class_name=[str(i) for i in range(10)])
    assert {t.get_rotation() for t in plots.plot_class_recall(digits).axes[0].get_xticklabels()} == {0.0}


def test_bar_and_point_figures():
    recalls = pd.DataFrame(
        {
            "class_index": [2, 0, 1],
            "class_name": ["c", "a", "b"],
            "recall_mean": [0.5, 0.7, 0.9],
            "recall_std": [0.1, np.nan, 0.05],
            "n_seeds": 2,
            "rank": [0, 1, 2],
        }
    )
    chosen = pd.DataFrame({"role": ["worst1", "worst2", "median"], "class_index": [2, 0, 0]})
    assert drawn(plots.plot_class_recall(recalls, chosen=chosen))
    fig = plots.plot_class_recall(recalls, chosen=chosen, split="validation")
    assert fig.axes[0].get_ylabel() == "validation recall (CE)"
    # Many long rotated names (GTSRB): the figure grows taller so the bars keep their height.
    many = pd.DataFrame(
        {
            "class_index": range(43),
            "class_name": ["End of no passing by vehicles over 3.5 t"] * 43,
            "recall_mean": 0.9,
            "recall_std": 0.0,
            "n_seeds": 1,
            "rank": range(43),
        }
    )
    assert plots.plot_class_recall(many).get_figheight() > fig.get_figheight() + 2
    variance = pd.DataFrame(
        {
            "cell": ["d worst1", "d worst1"],
            "method": ["CE", "CAMRI"],
            "relative_variance": [1.1, 0.6],
            "relative_variance_std": [0.1, np.nan],
        }
    )
    assert drawn(plots.plot_relative_variance(variance))
    table = pd.DataFrame(
        {
            "dataset": "digits",
            "important": "worst1",
            "class": "c",
            "method": ["CAMRI", "CE"],
            "recall_mean": [0.8, 0.6],
            "recall_std": [0.01, 0.02],
            "accuracy_mean": [0.9, 0.9],
            "accuracy_std": [np.nan, 0.01],
            "paper_recall": [np.nan, np.nan],
            "paper_accuracy": [np.nan, np.nan],
        }
    )
    assert drawn(plots.plot_method_recall(table))
    table["qualified"] = [True, False]  # CE's bar stands for a setting that did not maintain accuracy
    fig = plots.plot_method_recall(table)
    assert [[bar.get_hatch() for bar in ax.patches] for ax in fig.axes] == [[None, "///"], [None, "///"]]
    assert "† no setting maintained accuracy" in [t.get_text() for t in fig.legends[0].get_texts()]
    table["qualified"] = True
    assert "† no setting maintained accuracy" not in [
        t.get_text() for t in plots.plot_method_recall(table).legends[0].get_texts()
    ]
    settings = pd.DataFrame(
        {
            "method": ["CE", "CAMRI", "CAMRI"],
            "recall_mean": [0.5, 0.7, 0.9],
            "recall_std": [0.1, 0.1, np.nan],
            "accuracy_mean": [0.9, 0.9, 0.8],
            "accuracy_std": [0.01, 0.02, np.nan],
            "qualified": [True, True, False],
            "accuracy_threshold": 0.895,
        }
    )
    curve = pd.DataFrame({"bias": [-1.0, 0.0, 1.0], "recall": [0.2, 0.5, 0.8], "accuracy": [0.85, 0.9, 0.86]})
    fig = plots.plot_tradeoff(settings, curve=curve, selected=settings.iloc[[1]], title="t")
    assert drawn(fig)
    labels = fig.axes[0].get_legend_handles_labels()[1]
    assert {"CE", "CAMRI", "CE + logit bias (post hoc)", "chosen"} <= set(labels)


def test_data_figures():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, (30, 1, 8, 8), dtype=np.uint8)
    y = np.arange(30) % 3
    assert drawn(plots.plot_class_counts(y[:20], y[20:], ["a", "b", "c"]))
    fig = plots.plot_samples(x, y, ["a", "b", "c"], per_class=4)
    assert sum(bool(ax.images) for ax in fig.axes) == 12
    rgb = rng.integers(0, 255, (6, 3, 8, 8), dtype=np.uint8)
    assert sum(bool(ax.images) for ax in plots.plot_samples(rgb, np.arange(6) % 2, ["a", "b"]).axes) == 6


def test_epoch_curves_plot_one_line_and_band_per_setting():
    curves = pd.DataFrame(
        {
            "method": ["CE", "CE", "CAMRI", "CAMRI", "CAMRI", "CAMRI"],
            "hyperparameters": ["", "", "m=4π/64, s=16", "m=4π/64, s=16", "m=1π/64, s=16", "m=1π/64, s=16"],
            "epoch": [1, 2, 1, 2, 1, 2],
            "accuracy_mean": [0.5, 0.6, 0.4, 0.55, 0.45, 0.6],
            "accuracy_std": [0.01, 0.02, np.nan, np.nan, 0.01, 0.01],
            "recall_mean": [0.2, 0.3, 0.4, 0.5, 0.3, 0.35],
            "recall_std": [0.1, 0.1, np.nan, np.nan, 0.05, 0.05],
        }
    )
    fig = plots.plot_epoch_curves(curves, class_name="cat")
    assert drawn(fig)
    left, right = fig.axes
    assert len(left.lines) == len(right.lines) == 3
    assert [t.get_text() for t in right.get_legend().get_texts()] == [
        "CE",
        "CAMRI (m=4π/64, s=16)",
        "CAMRI (m=1π/64, s=16)",
    ]
    assert right.get_ylabel() == "recall of cat"
    np.testing.assert_allclose(left.lines[0].get_ydata(), [0.5, 0.6])


def test_stamp_adds_a_strip_below_the_plots_for_its_text(tmp_path):
    fig = Figure(figsize=(4.0, 3.0), layout="constrained")
    ax = fig.add_subplot()
    ax.set_xlabel("x label")
    fig.draw_without_rendering()
    bottom_before = ax.get_position().y0 * 3.0  # inches above the figure's bottom edge
    plots.stamp(fig, "PARTIAL: 1 of 2 runs")
    fig.draw_without_rendering()
    assert fig.get_figheight() == pytest.approx(3.3)
    assert ax.get_position().y0 * 3.3 == pytest.approx(bottom_before + 0.3, abs=0.02)  # the plots moved up
    (text,) = fig.texts
    assert text.get_text() == "PARTIAL: 1 of 2 runs" and text.get_position()[1] * 3.3 < 0.3  # in the strip
