"""Every figure of the notebooks, as functions that take data and return a matplotlib ``Figure``.

Nothing here trains or reads a profile: the notebooks (and tests) pass arrays and the DataFrames of
``camri.protocol``. ``save_figure(fig, "results/demo/figures/fig2")`` writes ``fig2.png`` and ``fig2.pdf``,
each atomically.

The paper's two geometric figures (Fig. 2's loss contours, Fig. 3's unit circle) are in ``camri.geometry``.

Figures
    ``plot_angle_histograms``                   θ of the important class vs the others, per method.
    ``plot_relative_variance``                  relative angle variance bars per method.
    ``plot_class_recall``                       CE per-class recall ranking with worst1 / worst2 / median.
    ``plot_method_recall``                      recall and accuracy per important class × method (Table 1).
    ``plot_tradeoff``                           recall vs accuracy: every setting's point of every method, and
                                                the threshold-tuning curve of CE.
    ``plot_learning_curves``                    a metrics.csv column over epochs, one line per run.
    ``plot_class_counts`` / ``plot_samples``    the data set: images per class, sample images.
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path


import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.layout_engine import ConstrainedLayoutEngine
from matplotlib.ticker import MaxNLocator

from camri.io import atomic_write

#: One colour per method everywhere (matplotlib's tab10 entries).
METHOD_COLORS = {
    "CE": "#7f7f7f",
    "WCE": "#8c564b",
    "CRWWCE": "#e377c2",
    "L2-softmax": "#bcbd22",
    "ArcFace": "#1f77b4",
    "CAMRI": "#d62728",
    "CE+bias": "#404040",
}
METHOD_MARKERS = {"CE": "s", "WCE": "v", "CRWWCE": "^", "L2-softmax": "D", "ArcFace": "o", "CAMRI": "*", "CE+bias": "P"}


def _figure(width: float, height: float) -> Figure:
    # A bare Figure (not pyplot's): no global state, nothing leaks between tests; Jupyter still displays it.
    return Figure(figsize=(width, height), layout="constrained")


def stamp(fig: Figure, text: str) -> None:
    """Write ``text`` in red along the bottom edge of ``fig`` (a partial result says so on the figure itself),
    in a strip of 0.3 inch added below the plots: the figure grows, and a constrained layout keeps out of it."""
    strip_in = 0.3
    height = fig.get_figheight() + strip_in
    fig.set_figheight(height)
    engine = fig.get_layout_engine()
    if isinstance(engine, ConstrainedLayoutEngine):
        engine.set(rect=(0, strip_in / height, 1, 1 - strip_in / height))
    fig.text(0.5, 0.1 * strip_in / height, text, ha="center", va="bottom", color="red", fontsize=9, fontweight="bold")


def save_figure(fig: Figure, path_stem: str | Path, *, dpi: int = 150) -> dict[str, Path]:
    """Write ``<path_stem>.png`` and ``<path_stem>.pdf`` (each atomically); returns {"png"|"pdf": path}."""
    stem = Path(path_stem)
    paths = {}
    for fmt in ("png", "pdf"):
        path = stem.with_name(stem.name + "." + fmt)
        paths[fmt] = atomic_write(path, lambda f, fmt=fmt: fig.savefig(f, format=fmt, dpi=dpi))
    return paths


# ---- angles ------------------------------------------------------------------------------------------


def plot_angle_histograms(
    angles: Mapping[str, tuple[np.ndarray, np.ndarray]],
    important: int,
    *,
    class_name: str | None = None,
    bins: int = 40,
    n_seeds: Mapping[str, int] | None = None,
) -> Figure:
    """Histograms (densities) of θ, the angle between a test feature and its own class's weight vector:
    the important class vs all the other classes (with its kernel density estimate), one panel per method.

    angles: method → (theta_deg (N,), labels (N,)), e.g. from the runs' angles.npz. Each panel's title gives
    the relative variance var(important) / mean var(other classes) of the angles drawn. n_seeds: method →
    how many runs' angles were pooled into them (the title says so: the pooled value differs from the mean
    of the per-seed values that Table 1's notebooks and claims.md report)."""
    fig = _figure(3.6 * len(angles), 3.0)
    axes = fig.subplots(1, len(angles), squeeze=False, sharex=True).ravel()
    name = class_name if class_name is not None else str(important)
    high = max(float(np.max(theta)) for theta, _ in angles.values()) if angles else 90.0
    edges = np.linspace(0, max(high, 1.0), bins + 1)
    for ax, (method, (theta, labels)) in zip(axes, angles.items()):
        theta, labels = np.asarray(theta, dtype=float), np.asarray(labels)
        mine, others = theta[labels == important], theta[labels != important]
        color = METHOD_COLORS.get(method, "#1f77b4")
        sns.histplot(
            x=others,
            bins=edges,
            stat="density",
            element="step",
            fill=False,
            color="black",
            lw=1.0,
            label="other classes",
            ax=ax,
        )
        # seaborn adds the kernel density estimate of the important class (it needs two distinct angles).
        sns.histplot(
            x=mine,
            bins=edges,
            stat="density",
            element="step",
            color=color,
            alpha=0.5,
            kde=len(np.unique(mine)) > 1,
            line_kws={"lw": 1.5},
            label=f"class {name}",
            ax=ax,
        )
        other_vars = [theta[labels == k].var() for k in np.unique(labels) if k != important and (labels == k).any()]
        relative = mine.var() / np.mean(other_vars) if len(mine) and other_vars else float("nan")
        pooled = f", {n_seeds[method]} seeds pooled" if n_seeds and n_seeds.get(method, 1) > 1 else ""
        ax.set_title(f"{method}{pooled}: rel. var {relative:.2f}", fontsize=10)
        ax.set_xlabel("θ to own class weight (degrees)")
        ax.set_ylabel("density" if ax is axes[0] else "")  # seaborn labels every panel "Density"
        ax.legend(fontsize=7)
    return fig


def plot_relative_variance(
    frame: pd.DataFrame,
    *,
    group: str = "cell",
    method: str = "method",
    value: str = "relative_variance",
    error: str | None = "relative_variance_std",
) -> Figure:
    """Grouped bars: the relative angle variance of the important class (var of its θ / mean var of the
    other classes', < 1 = tighter) per ``group`` (e.g. "cifar10 worst1: cat") and ``method``; a line at 1."""
    groups = list(dict.fromkeys(frame[group]))
    methods = list(dict.fromkeys(frame[method]))
    fig = _figure(max(4.0, 1.3 * len(groups) * max(1, len(methods)) / 2 + 2), 3.2)
    ax = fig.subplots()
    width = 0.8 / max(1, len(methods))
    for i, m in enumerate(methods):
        part = frame[frame[method] == m].set_index(group).reindex(groups)
        yerr = part[error].to_numpy(dtype=float) if error and error in part else None
        ax.bar(
            np.arange(len(groups)) + (i - (len(methods) - 1) / 2) * width,
            part[value].to_numpy(dtype=float),
            width,
            yerr=None if yerr is None else np.nan_to_num(yerr),
            capsize=2,
            label=m,
            color=METHOD_COLORS.get(m),
        )
    ax.axhline(1.0, color="black", lw=0.8, ls="--")
    ax.set_xticks(np.arange(len(groups)), groups, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("relative angle variance")
    ax.legend(fontsize=8)
    return fig


# ---- recall and accuracy ------------------------------------------------------------------------------


def plot_class_recall(
    recalls: pd.DataFrame, *, chosen: pd.DataFrame | None = None, title: str = "", split: str = "test"
) -> Figure:
    """Per-class recall of the CE baseline on ``split``, sorted (``protocol.class_recalls``), with the
    sample std over seeds as error bars; the classes of ``chosen`` (``protocol.choose_important``)
    highlighted and labelled with their role."""
    width_in = max(4.0, 0.35 * len(recalls) + 1.5)
    longest = max(len(str(n)) for n in recalls["class_name"])
    # Names stand upright only where the longest fits its bar's slot (about 0.075 inch a character at 9 pt,
    # the axes about 1 inch narrower than the figure): CIFAR-10's "automobile" does not at 10 bars.
    rotated = 0.075 * longest > 0.9 * (width_in - 1.0) / len(recalls)
    # Rotated class names (GTSRB's run to 50 characters) get their own height, so the bars keep theirs.
    label_in = 0.075 * longest if rotated else 0.3
    fig = _figure(width_in, 2.8 + label_in)
    ax = fig.subplots()
    roles = {}
    if chosen is not None:
        for role, index in zip(chosen["role"], chosen["class_index"]):
            roles.setdefault(int(index), []).append(role)
    colors = ["#d62728" if int(c) in roles else "0.6" for c in recalls["class_index"]]
    x = np.arange(len(recalls))
    std = np.nan_to_num(recalls["recall_std"].to_numpy(dtype=float))
    ax.bar(x, recalls["recall_mean"], yerr=std, color=colors, capsize=2)
    for xi, (index, mean) in enumerate(zip(recalls["class_index"], recalls["recall_mean"])):
        if int(index) in roles:
            ax.text(
                xi,
                min(mean + std[xi] + 0.02, 1.02),  # above the error bar, not across it
                "/".join(roles[int(index)]),
                ha="center",
                va="bottom",
                fontsize=7,
                rotation=90,
            )
    ax.set_xticks(
        x, [str(n) for n in recalls["class_name"]], rotation=90 if rotated else 0, fontsize=7 if rotated else 9
    )
    ax.set_ylim(0, 1.15)
    ax.set_ylabel(f"{split} recall (CE)")
    # Wrapped to the figure's width (about 0.085 inch a character at 10 pt): a long title ran off its edge.
    ax.set_title(textwrap.fill(title, max(20, int(width_in / 0.085))), fontsize=10)
    return fig


def plot_method_recall(table: pd.DataFrame) -> Figure:
    """Table 1 as a figure: for each data set × important class (columns), the important-class recall (top)
    and the accuracy (bottom) of each method, mean ± std over seeds; the paper's values as black ticks. A
    method with no setting that maintained accuracy (``qualified`` False: Table 1's †) is drawn hatched, as
    its best-recall setting, so that it is not read as a maintaining choice.
    ``table``: ``tables.table1``'s long format."""
    cells = list(dict.fromkeys(zip(table["dataset"], table["important"], table["class"])))
    methods = list(dict.fromkeys(table["method"]))
    fig = _figure(max(6.0, (0.35 * len(methods) + 0.5) * len(cells) + 1.5), 5.2)
    axes = fig.subplots(2, 1, sharex=True)
    has_paper = bool(np.isfinite(table[["paper_recall", "paper_accuracy"]].to_numpy(dtype=float)).any())
    width = 0.8 / max(1, len(methods))
    x = np.arange(len(cells))
    for row, (ax, column, paper, label) in enumerate(
        zip(axes, ("recall", "accuracy"), ("paper_recall", "paper_accuracy"), ("important-class recall", "accuracy"))
    ):
        for i, method in enumerate(methods):
            part = table[table["method"] == method].set_index(["dataset", "important", "class"]).reindex(cells)
            offsets = x + (i - (len(methods) - 1) / 2) * width
            bars = ax.bar(
                offsets,
                part[f"{column}_mean"].to_numpy(dtype=float),
                width,
                yerr=np.nan_to_num(part[f"{column}_std"].to_numpy(dtype=float)),
                capsize=2,
                color=METHOD_COLORS.get(method),
                label=method if row == 0 else None,
            )
            for bar, unqualified in zip(bars, part["qualified"].eq(False) if "qualified" in part else []):
                if unqualified:
                    bar.set_hatch("///")
                    bar.set_alpha(0.55)
            if has_paper:
                ax.scatter(
                    offsets,
                    part[paper].to_numpy(dtype=float),
                    marker="_",
                    s=120,
                    color="black",
                    zorder=3,
                    label="paper" if row == 0 and i == 0 else None,
                )
        ax.set_ylabel(label)
        values = table[[f"{column}_mean", paper]].to_numpy(dtype=float)
        finite = values[np.isfinite(values)]
        if finite.size:
            ax.set_ylim(max(0.0, finite.min() - 0.1), min(1.0, finite.max() + 0.05) + 0.02)
    axes[1].set_xticks(x, [f"{d}\n{r}: {c}" for d, r, c in cells], fontsize=8)
    handles, labels = axes[0].get_legend_handles_labels()
    if "qualified" in table and table["qualified"].eq(False).any():
        from matplotlib.patches import Patch

        handles.append(Patch(facecolor="white", edgecolor="black", hatch="///"))
        labels.append("† no setting maintained accuracy")
    fig.legend(handles, labels, loc="outside upper center", fontsize=8, ncols=min(len(labels), 8))
    return fig


def plot_tradeoff(
    settings: pd.DataFrame, *, curve: pd.DataFrame | None = None, selected: pd.DataFrame | None = None, title: str = ""
) -> Figure:
    """Recall of the important class against accuracy: every setting of every method (``cell_settings``
    rows: mean over seeds, std as error bars; filled = maintains accuracy, hollow = does not), the CE
    threshold-tuning curve (``ce_threshold_curve``: a bias added to that class's CE logit after training)
    with CE+bias, the bias chosen by the protocol, as its point on that curve; the accuracy threshold
    (dashed) when the choice was made on test (on validation it is not on this test-accuracy axis), and
    the ``selected`` settings circled. Other ``<method>+bias`` settings are left out of the figure."""
    fig = _figure(5.6, 4.2)
    ax = fig.subplots()
    if "bias" in settings:
        settings = settings[settings["bias"].isna() | (settings["method"] == "CE+bias")]
    if selected is not None and "bias" in selected:
        selected = selected[selected["bias"].isna() | (selected["method"] == "CE+bias")]
    if curve is not None and len(curve):
        ax.plot(curve["accuracy"], curve["recall"], color="0.4", lw=1.2, label="CE + logit bias (post hoc)")
        at_zero = curve.iloc[(curve["bias"].abs()).argsort()[:1]]
        ax.scatter(at_zero["accuracy"], at_zero["recall"], color="0.4", marker="x", zorder=3)
    for method, part in settings.groupby("method", sort=False):
        color, marker = METHOD_COLORS.get(method), METHOD_MARKERS.get(method, "o")
        ax.errorbar(
            part["accuracy_mean"],
            part["recall_mean"],
            xerr=np.nan_to_num(part["accuracy_std"].to_numpy(dtype=float)),
            yerr=np.nan_to_num(part["recall_std"].to_numpy(dtype=float)),
            fmt="none",
            ecolor=color,
            alpha=0.4,
            lw=0.8,
        )
        qualified = part["qualified"].astype(bool)
        ax.scatter(
            part.loc[qualified, "accuracy_mean"],
            part.loc[qualified, "recall_mean"],
            color=color,
            marker=marker,
            s=50,
            label=method if qualified.any() else None,
            zorder=4,
        )
        ax.scatter(
            part.loc[~qualified, "accuracy_mean"],
            part.loc[~qualified, "recall_mean"],
            facecolors="none",
            edgecolors=color,
            marker=marker,
            s=50,
            zorder=4,
            label=None if qualified.any() else method,
        )
    on_test = "selected_on" not in settings or (settings["selected_on"] == "test").all()
    if len(settings) and "accuracy_threshold" in settings and on_test:
        ax.axvline(
            float(settings["accuracy_threshold"].iloc[0]),
            color="black",
            ls="--",
            lw=0.8,
            label="CE accuracy − tolerance",
        )
    if selected is not None and len(selected):
        ax.scatter(
            selected["accuracy_mean"],
            selected["recall_mean"],
            s=220,
            facecolors="none",
            edgecolors="black",
            lw=1.0,
            zorder=5,
            label="chosen",
        )
    points = settings[["accuracy_mean"]].to_numpy(dtype=float)
    if points.size:
        low, high = np.nanmin(points), np.nanmax(points)
        pad = max(0.02, (high - low) * 0.3)
        ax.set_xlim(max(0.0, low - pad), min(1.0, high + pad))
    ax.set_xlabel("test accuracy")
    ax.set_ylabel("test recall of the important class")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, loc="best")
    return fig


def plot_epoch_curves(curves: pd.DataFrame, *, class_name: str = "important class", title: str = "") -> Figure:
    """Test accuracy (left) and important-class recall (right) after every epoch, one line per setting
    (``analysis.epoch_curves`` rows: mean over seeds, the band ± one std where there are several)."""
    fig = _figure(9.0, 3.4)
    axes = fig.subplots(1, 2)
    for (method, hyper), part in curves.groupby(["method", "hyperparameters"], sort=False):
        part = part.sort_values("epoch")
        label = method if not hyper else f"{method} ({hyper})"
        for ax, what in zip(axes, ("accuracy", "recall")):
            mean = part[f"{what}_mean"].to_numpy(dtype=float)
            std = np.nan_to_num(part[f"{what}_std"].to_numpy(dtype=float))
            (line,) = ax.plot(
                part["epoch"],
                mean,
                marker="." if len(part) < 30 else None,
                lw=1.2,
                label=label,
                color=METHOD_COLORS.get(method) if curves["method"].eq(method).sum() == len(part) else None,
            )
            ax.fill_between(part["epoch"], mean - std, mean + std, color=line.get_color(), alpha=0.15, lw=0)
    axes[0].set_ylabel("test accuracy")
    axes[1].set_ylabel(f"recall of {class_name}")
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[1].legend(fontsize=7, loc="best")
    fig.suptitle(title, fontsize=10)
    return fig


def plot_learning_curves(
    metrics: Mapping[str, pd.DataFrame], column: str = "test_accuracy", *, title: str = ""
) -> Figure:
    """``column`` of metrics.csv over epochs, one line per run (label → DataFrame)."""
    fig = _figure(5.0, 3.2)
    ax = fig.subplots()
    for label, frame in metrics.items():
        if column in frame:
            ax.plot(frame["epoch"], frame[column], marker="." if len(frame) < 30 else None, label=label)
    ax.set_xlabel("epoch")
    ax.set_ylabel(column.replace("_", " "))
    ax.set_title(title, fontsize=10)
    if len(metrics) <= 12:
        ax.legend(fontsize=7)
    return fig


# ---- the data set ------------------------------------------------------------------------------------


def plot_class_counts(y_train: np.ndarray, y_test: np.ndarray, classes: Sequence[str], *, title: str = "") -> Figure:
    """Images per class in the training and test splits (stacked bars)."""
    k = len(classes)
    train = np.bincount(np.asarray(y_train), minlength=k)
    test = np.bincount(np.asarray(y_test), minlength=k)
    fig = _figure(max(4.0, 0.3 * k + 2), 3.0)
    ax = fig.subplots()
    x = np.arange(k)
    ax.bar(x, train, label="train", color="#1f77b4")
    ax.bar(x, test, bottom=train, label="test", color="#ff7f0e")
    ax.set_xticks(x, [str(c) for c in classes], rotation=90 if k > 12 else 0, fontsize=7 if k > 12 else 9)
    ax.set_ylabel("images")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    return fig


def plot_samples(
    x: np.ndarray, y: np.ndarray, classes: Sequence[str], *, per_class: int = 6, max_classes: int = 10, seed: int = 0
) -> Figure:
    """A grid of sample images: one row per class (the first ``max_classes``), ``per_class`` images each.
    x: uint8 images N×C×H×W (camri.data's layout) or N×H×W."""
    x = np.asarray(x)
    y = np.asarray(y)
    if x.ndim == 3:
        x = x[:, None]
    rows = min(len(classes), max_classes)
    fig = _figure(0.9 * per_class + 1.2, 0.9 * rows)
    axes = fig.subplots(rows, per_class, squeeze=False)
    rng = np.random.default_rng(seed)
    for r in range(rows):
        members = np.flatnonzero(y == r)
        picks = rng.choice(members, size=min(per_class, len(members)), replace=False) if len(members) else []
        for c in range(per_class):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            if c < len(picks):
                image = x[picks[c]].transpose(1, 2, 0)
                ax.imshow(
                    image[:, :, 0] if image.shape[2] == 1 else image,
                    cmap="gray" if image.shape[2] == 1 else None,
                    interpolation="nearest",
                )
            if c == 0:
                ax.set_ylabel(str(classes[r]), rotation=0, ha="right", va="center", fontsize=8)
    return fig
