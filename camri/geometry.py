"""The paper's geometric figures, as functions that return a matplotlib ``Figure`` (``camri.plots`` has the
others and ``save_figure``).

    ``loss_surface`` / ``plot_loss_contours``   Fig. 2: each loss over a 2-D feature plane, 3 classes.
    ``plot_feature_circle`` / ``plot_fig3``     Fig. 3: z_dim = 2 features on the unit circle with the class
                                                weight vectors; ``circle_share`` is the important class's arc.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import matplotlib
import numpy as np
import torch
from matplotlib.figure import Figure

from camri.losses import LOSS_NAMES, LOSSES, build_loss, paper_margin
from camri.plots import _figure

# ---- Fig. 2: loss contours -----------------------------------------------------------------------------


def fig2_weights(num_classes: int = 3, target: int = 1) -> np.ndarray:
    """(K, 2) unit weight vectors 360°/K apart, the target class's pointing up."""
    angles = np.deg2rad(90.0 + 360.0 / num_classes * (np.arange(num_classes) - target))
    return np.stack([np.cos(angles), np.sin(angles)], axis=1)


def loss_surface(
    loss: str,
    *,
    target: int = 1,
    weights: np.ndarray | None = None,
    extent: float = 3.0,
    resolution: int = 161,
    important: Sequence[int] | None = None,
    margin: float = paper_margin(8),
    scale: float = 4.0,
    weight: float = 2.0,
    fp_weight: float = 1.0,
) -> dict[str, np.ndarray]:
    """The per-sample loss of head ``loss`` (camri.losses) for every 2-D feature z of a grid, all labelled
    ``target``.

    weights: (K, 2) class weight vectors (default ``fig2_weights()``: three unit vectors 120° apart); the
    linear heads get zero bias. The important classes of WCE, CRWWCE and CAMRI default to ``[target]``.
    Returns ``x``, ``y`` (resolution,), ``loss`` (resolution, resolution; rows = y), ``predicted`` (class
    predicted at test time, no margin) and ``training`` (argmax of the training logits, with the margin),
    both (resolution, resolution) int.
    """
    weights = fig2_weights(target=target) if weights is None else np.asarray(weights, dtype=np.float64)
    k = len(weights)
    important = [target] if important is None else list(important)
    head = build_loss(
        loss, k, 2, important=important, margin=margin, scale=scale, weight=weight, fp_weight=fp_weight
    ).double()
    with torch.no_grad():
        head.weight.copy_(torch.as_tensor(weights))
        if hasattr(head, "bias"):
            head.bias.zero_()
        x = np.linspace(-extent, extent, resolution)
        y = np.linspace(-extent, extent, resolution)
        gx, gy = np.meshgrid(x, y)
        z = torch.as_tensor(np.stack([gx.ravel(), gy.ravel()], axis=1))
        # The origin has no direction; nudge it so that cosines stay defined.
        z[(z.abs().sum(1) == 0)] = 1e-9
        t = torch.full((len(z),), target, dtype=torch.int64)
        training_logits = head.training_logits(z, t)
        per_sample = head.per_sample_loss(training_logits, t)
        predicted = head.logits(z).argmax(1)
    shape = (resolution, resolution)
    return {
        "x": x,
        "y": y,
        "loss": per_sample.numpy().reshape(shape),
        "predicted": predicted.numpy().reshape(shape),
        "training": training_logits.argmax(1).numpy().reshape(shape),
    }


def _draw_weights(
    ax,
    weights: np.ndarray,
    labels: Sequence[str],
    highlight: Sequence[int] = (),
    length: float = 1.0,
    colors: Sequence | None = None,
) -> None:
    for k, w in enumerate(np.asarray(weights, dtype=float)):
        norm = np.linalg.norm(w)
        if norm == 0:
            continue
        u = w / norm * length
        bold = k in highlight
        color = colors[k] if colors is not None else ("#d62728" if bold else "black")
        ax.annotate(
            "", xy=(u[0], u[1]), xytext=(0, 0), arrowprops=dict(arrowstyle="-|>", color=color, lw=2.2 if bold else 1.4)
        )
        ax.text(
            u[0] * 1.15,
            u[1] * 1.15,
            labels[k],
            ha="center",
            va="center",
            color=color,
            fontweight="bold" if bold else "normal",
            fontsize=9,
        )


def plot_loss_contours(
    losses: Sequence[str] = LOSS_NAMES,
    *,
    target: int = 1,
    extent: float = 3.0,
    resolution: int = 161,
    levels: int = 16,
    ncols: int = 3,
    **loss_kwargs,
) -> Figure:
    """Fig. 2: one panel per loss, the loss of a class-``target`` feature over the plane (filled contours),
    the three weight vectors W_0..W_2, the test-time decision boundaries (solid) and, where a margin moves
    it, the boundary of each class's region under the training logits (dashed): a class-k feature must be
    inside it to beat the margin. ArcFace's margin shrinks every class's region, CAMRI's only the important
    class's (``target``). ``loss_kwargs`` go to ``loss_surface`` (margin, scale, weight, fp_weight)."""
    losses = list(losses)
    nrows = math.ceil(len(losses) / ncols)
    fig = _figure(3.4 * ncols, 3.2 * nrows)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    weights = fig2_weights(target=target)
    for ax, loss in zip(axes, losses):
        surface = loss_surface(
            loss, target=target, weights=weights, extent=extent, resolution=resolution, **loss_kwargs
        )
        x, y, value = surface["x"], surface["y"], surface["loss"]
        filled = ax.contourf(x, y, value, levels=levels, cmap="viridis")
        fig.colorbar(filled, ax=ax, shrink=0.8)
        predicted = surface["predicted"].astype(float)
        ax.contour(x, y, predicted, levels=np.arange(len(weights)) + 0.5, colors="white", linewidths=1.0)
        for k in range(len(weights)):
            # Where would a class-k feature already win under the training logits? The margin (of every
            # class for ArcFace, of the important class only for CAMRI) shrinks that region.
            own = (
                surface
                if k == target
                else loss_surface(
                    loss,
                    target=k,
                    weights=weights,
                    extent=extent,
                    resolution=resolution,
                    important=[target],
                    **loss_kwargs,
                )
            )
            region = own["training"] == k
            if (region != (own["predicted"] == k)).any():
                ax.contour(x, y, region.astype(float), levels=[0.5], colors="white", linewidths=1.0, linestyles="--")
        _draw_weights(
            ax,
            weights * extent * 0.55,
            [f"$W_{k}$" for k in range(len(weights))],
            highlight=[target],
            colors=["white"] * len(weights),
        )
        ax.set_title(f"{LOSSES[loss].display} (target class {target})", fontsize=10)
        ax.set_aspect("equal")
        ax.set_xlabel("$z_1$")
        ax.set_ylabel("$z_2$")
    for ax in axes[len(losses) :]:
        ax.set_visible(False)
    return fig


# ---- Fig. 3: features on the unit circle -------------------------------------------------------------


def circle_share(weights: np.ndarray, class_index: int, resolution: int = 3600) -> float:
    """Fraction of the unit circle on which class ``class_index`` has the largest cosine to the
    (normalised) weight vectors: the important class's share of the angular feature space."""
    w = np.asarray(weights, dtype=float)
    w = w / np.linalg.norm(w, axis=1, keepdims=True)
    phi = np.linspace(0, 2 * np.pi, resolution, endpoint=False)
    points = np.stack([np.cos(phi), np.sin(phi)], axis=1)
    return float(((points @ w.T).argmax(1) == class_index).mean())


def plot_feature_circle(
    features2d: np.ndarray,
    labels: np.ndarray,
    *,
    weights: np.ndarray | None = None,
    classes: Sequence[str] | None = None,
    important: Sequence[int] = (),
    title: str = "",
    ax=None,
    max_points: int = 4000,
    seed: int = 0,
) -> Figure:
    """L2-normalised 2-D features on the unit circle (a little radial jitter per sample so that density
    shows), coloured by class, with the class weight vectors (normalised) as arrows; the arc where an
    important class wins is shaded and its share of the circle printed. Returns the axes' figure."""
    features2d = np.asarray(features2d, dtype=float)
    labels = np.asarray(labels)
    if features2d.ndim != 2 or features2d.shape[1] != 2:
        raise ValueError(f"features2d must be (N, 2); got {features2d.shape} (train with z_dim = 2)")
    if ax is None:
        fig = _figure(4.6, 4.6)
        ax = fig.subplots()
    fig = ax.figure
    num_classes = int(max(labels.max() + 1, len(classes) if classes else 0, len(weights) if weights is not None else 0))
    classes = list(classes) if classes else [str(k) for k in range(num_classes)]
    rng = np.random.default_rng(seed)
    keep = rng.permutation(len(labels))[:max_points]
    unit = features2d[keep] / np.maximum(np.linalg.norm(features2d[keep], axis=1, keepdims=True), 1e-12)
    radius = 1.0 + rng.uniform(-0.06, 0.06, size=(len(keep), 1))
    points = unit * radius
    cmap = matplotlib.colormaps["tab10" if num_classes <= 10 else "tab20"]
    colors = [cmap(k % cmap.N) for k in range(num_classes)]
    if weights is not None:
        w = np.asarray(weights, dtype=float)
        w = w / np.linalg.norm(w, axis=1, keepdims=True)
        for c in important:
            # The circle sampled from the direction opposite w_c: c's arc (it holds w_c's own direction) is then
            # one run of samples, also when it crosses angle 0 (from 0 to 2π it would be two, and the fill a
            # self-crossing polygon).
            phi = np.arctan2(w[c, 1], w[c, 0]) + np.linspace(-np.pi, np.pi, 1441)
            inside = (np.stack([np.cos(phi), np.sin(phi)], 1) @ w.T).argmax(1) == c
            wedge_x = np.concatenate([[0], 1.35 * np.cos(phi[inside]), [0]])
            wedge_y = np.concatenate([[0], 1.35 * np.sin(phi[inside]), [0]])
            ax.fill(wedge_x, wedge_y, color=colors[c], alpha=0.12, lw=0)
            ax.text(
                0,
                -1.55,
                f"share of class {classes[c]}: {circle_share(w, c):.1%} (uniform {1 / len(w):.1%})",
                ha="center",
                fontsize=8,
            )
    circle = np.linspace(0, 2 * np.pi, 361)
    ax.plot(np.cos(circle), np.sin(circle), color="0.8", lw=0.8)
    for k in range(num_classes):
        mine = labels[keep] == k
        if mine.any():
            ax.scatter(
                points[mine, 0], points[mine, 1], s=4, color=colors[k], alpha=0.6, label=classes[k], rasterized=True
            )
    if weights is not None:
        _draw_weights(ax, np.asarray(weights, dtype=float) * 1.3, classes, highlight=list(important), colors=colors)
    ax.set_xlim(-1.7, 1.7)
    ax.set_ylim(-1.7, 1.7)
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=10)
    return fig


def plot_fig3(
    panels: Mapping[str, Mapping],
    *,
    classes: Sequence[str] | None = None,
    important: Sequence[int] = (),
    title: str = "",
    counts: bool = True,
) -> Figure:
    """Fig. 3: one ``plot_feature_circle`` panel per entry of ``panels`` (title → dict with
    ``features2d``, ``labels`` and optionally ``weights``), side by side, one legend; ``title`` above
    them (``analysis.fig3_title``), in red when the figure does not count (``counts`` False)."""
    fig = _figure(4.4 * len(panels) + 1.0, 4.8)
    if title:
        fig.suptitle(title, fontsize=10, color="black" if counts else "red")
    axes = fig.subplots(1, len(panels), squeeze=False).ravel()
    for ax, (title, panel) in zip(axes, panels.items()):
        plot_feature_circle(
            panel["features2d"],
            panel["labels"],
            weights=panel.get("weights"),
            classes=classes,
            important=important,
            title=title,
            ax=ax,
        )
    handles, labels = axes[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="outside right center", markerscale=3, fontsize=8, title="class")
    return fig
