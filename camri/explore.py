"""Interactive explorers for the notebooks (ipywidgets): sliders and choosers that redraw ``camri.plots``'
figures. In JupyterLab they respond to the reader; under papermill they render their initial state, and
the notebook's static figures are written by its other cells as before.

``LossExplorer(margin, scale)``          Fig. 2 for the angular losses (L2-softmax, ArcFace, CAMRI): sliders
                                         for m (in units of π/64) and s move the loss contours and the
                                         decision boundaries (``geometry.plot_loss_contours``).
``angle_runs(runs, selections, ...)``    every finished run a reader can pick for the angle histograms: one
                                         row per important class × method × setting × seed.
``narrow(choices, **wanted)``            resolves a (cell, method, setting, seed) choice level by level, with
                                         the options each level offers; the chooser's logic, testable alone.
``AngleExplorer(choices)``               dropdowns over ``narrow``'s levels; shows the chosen run's θ
                                         histograms (``plots.plot_angle_histograms``).

Each explorer keeps the figure it shows last in ``.figure`` and displays as its widget (``.widget``).
"""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Mapping, Sequence
from typing import Any

import ipywidgets as widgets
import pandas as pd
from matplotlib.figure import Figure

from camri import geometry, names, plots, protocol, rundir

#: The losses whose margin and scale the Fig. 2 explorer moves (the linear heads have neither).
ANGULAR_LOSSES = ("l2softmax", "arcface", "camri")
#: π/64, the paper's unit of margin (m = k·π/64).
MARGIN_UNIT = math.pi / 64
#: The levels of the angle chooser, in the order each narrows the next.
RUN_LEVELS = ("cell", "method", "setting", "seed")


def display_data(fig: Figure) -> dict:
    """``fig`` as a Jupyter ``display_data`` output: a PNG (base64) and a text fallback."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", bbox_inches="tight")
    return {
        "output_type": "display_data",
        "metadata": {},
        "data": {"image/png": base64.b64encode(buffer.getvalue()).decode("ascii"), "text/plain": repr(fig)},
    }


class _Explorer:
    """Controls above an Output that shows ``self.render()``'s figure, redrawn when a control changes."""

    figure: Figure | None = None

    def _build(self, controls: Sequence[widgets.Widget]) -> None:
        self.output = widgets.Output()
        self.widget = widgets.VBox([widgets.HBox(list(controls)), self.output])
        self.update()

    def render(self) -> Figure:
        raise NotImplementedError

    def update(self, change: Mapping | None = None) -> None:
        self.figure = self.render()
        # Set as the Output's state rather than captured (``with output: display(fig)``): a captured
        # display makes a headless client (nbclient, under papermill) answer on the kernel's shell channel,
        # which can hang the cell (jupyter/nbclient#312).
        self.output.outputs = (display_data(self.figure),)

    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)


# ---- Fig. 2 ------------------------------------------------------------------------------------------


def loss_contours_figure(margin: float, scale: float, *, losses: Sequence[str] = ANGULAR_LOSSES, **kwargs) -> Figure:
    """``geometry.plot_loss_contours`` of ``losses`` at margin ``margin`` (radians) and scale ``scale``, titled
    with both; ``kwargs`` go to it (target, extent, resolution, levels, weight, fp_weight)."""
    fig = geometry.plot_loss_contours(losses, margin=margin, scale=scale, **kwargs)
    fig.suptitle(f"m = {names.format_margin(margin)} rad, s = {scale:g}", fontsize=10)
    return fig


class LossExplorer(_Explorer):
    """Fig. 2's angular losses with two sliders: m in units of π/64 (0 to 32, i.e. up to π/2) and s.

    margin: the initial m in radians (e.g. ``parse_margin("8pi/64")``); scale: the initial s.
    ``kwargs`` go to ``loss_contours_figure`` (losses, target, extent, resolution, levels)."""

    def __init__(
        self, margin: float, scale: float, *, max_margin_units: int = 32, max_scale: float = 64.0, **kwargs: Any
    ) -> None:
        units = margin / MARGIN_UNIT
        if not 0 <= units <= max_margin_units:
            raise ValueError(
                f"margin {margin} rad = {units:.3g}·π/64 is outside the slider's range 0..{max_margin_units}·π/64"
            )
        if not 0 < scale <= max_scale:
            raise ValueError(f"scale {scale} is outside the slider's range (0, {max_scale}]")
        self.kwargs = kwargs
        # continuous_update=False: redraw when the slider is released, not for every pixel it passes.
        self.margin_units = widgets.FloatSlider(
            value=units,
            min=0,
            max=max_margin_units,
            step=1,
            description="m (π/64)",
            readout_format=".3g",
            continuous_update=False,
        )
        self.scale = widgets.FloatSlider(
            value=scale, min=1, max=max_scale, step=1, description="s", readout_format=".3g", continuous_update=False
        )
        for slider in (self.margin_units, self.scale):
            slider.observe(self.update, names="value")
        self._build([self.margin_units, self.scale])

    @property
    def margin(self) -> float:
        """The slider's margin in radians."""
        return self.margin_units.value * MARGIN_UNIT

    def render(self) -> Figure:
        return loss_contours_figure(self.margin, self.scale.value, **self.kwargs)


# ---- the angle histograms of one run -------------------------------------------------------------------


def _setting_label(hyperparameters: str) -> str:
    return hyperparameters or "default"


def angle_runs(
    runs: pd.DataFrame,
    selections: pd.DataFrame,
    *,
    tolerance: float = protocol.DEFAULT_TOLERANCE,
    methods: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Every finished run whose angle histograms can be shown, per important class of ``selections``
    (``protocol.select_all`` rows; its cells give dataset, role, class_index, class_name): the settings of
    ``protocol.cell_settings`` (all methods, or ``methods``), one row per seed.

    Columns: cell (label, e.g. "digits worst1: 3"), dataset, role, class_index, class_name, method, setting
    (hyperparameters, "default" for CE), seed, path, chosen (the setting is the cell's "maintaining"
    choice of that method)."""
    columns = ["cell", "dataset", "role", "class_index", "class_name", "method", "setting", "seed", "path", "chosen"]
    maintaining = selections[selections["selection"] == "maintaining"]
    chosen = set(
        zip(maintaining["dataset"], maintaining["role"], maintaining["method"], maintaining["hyperparameters"])
    )
    rows = []
    cells = selections[["dataset", "role", "class_index", "class_name"]].drop_duplicates()
    for dataset, role, class_index, class_name in cells.itertuples(index=False):
        label = f"{names.display_dataset(dataset)} {role}: {class_name}"
        # Only the list of runs is wanted here (the choice is ``selections``'), so the test split serves.
        settings = protocol.cell_settings(runs, dataset, int(class_index), tolerance=tolerance, split="test")
        if methods is not None:
            settings = settings[settings["method"].isin(methods)]
        for setting in settings.itertuples(index=False):
            for seed, path in zip(setting.seeds, setting.paths):
                rows.append(
                    {
                        "cell": label,
                        "dataset": dataset,
                        "role": role,
                        "class_index": int(class_index),
                        "class_name": class_name,
                        "method": setting.method,
                        "setting": _setting_label(setting.hyperparameters),
                        "seed": int(seed),
                        "path": path,
                        "chosen": (dataset, role, setting.method, setting.hyperparameters) in chosen,
                    }
                )
    return pd.DataFrame(rows, columns=columns)


def narrow(choices: pd.DataFrame, **wanted: Any) -> tuple[pd.Series, dict[str, list]]:
    """Resolve a choice of run level by level (``RUN_LEVELS``: cell, method, setting, seed).

    Each level's options are its values among the rows of ``choices`` (``angle_runs``) that match the
    levels before it, in their order there. A wanted value among them is taken; otherwise (not given, or
    not offered once an earlier level changed) the default: for the setting the cell's chosen
    ("maintaining") setting of the method when there is one, for every other level the first option.
    Returns the chosen row and {level: options}."""
    unknown = set(wanted) - set(RUN_LEVELS)
    if unknown:
        raise ValueError(f"unknown level(s) {', '.join(sorted(unknown))}; the levels are {', '.join(RUN_LEVELS)}")
    if choices.empty:
        raise ValueError(
            "no finished runs to choose from: train the profile's runs first (`camri reproduce --profile NAME`)"
        )
    rows = choices
    options = {}
    for level in RUN_LEVELS:
        offered = list(dict.fromkeys(rows[level]))
        options[level] = offered
        value = wanted.get(level)
        if value not in offered:
            preferred = rows[rows["chosen"]] if level == "setting" else rows.iloc[:0]
            value = preferred[level].iloc[0] if len(preferred) else offered[0]
        rows = rows[rows[level] == value]
    return rows.iloc[0], options


class AngleExplorer(_Explorer):
    """Dropdowns for the important class, method, setting and seed of one run (``narrow``), and that run's
    θ histograms: the important class against the other classes (``plots.plot_angle_histograms``).

    choices: ``angle_runs`` rows; method: the method shown first (when the first cell has it)."""

    def __init__(self, choices: pd.DataFrame, *, method: str = "CAMRI", bins: int = 40) -> None:
        self.choices = choices
        self.bins = bins
        self.run, options = narrow(choices, method=method)
        self.dropdowns = {
            level: widgets.Dropdown(options=options[level], value=self.run[level], description=level)
            for level in RUN_LEVELS
        }
        self._syncing = False
        for dropdown in self.dropdowns.values():
            dropdown.observe(self._changed, names="value")
        self._build(list(self.dropdowns.values()))

    def _changed(self, change: Mapping) -> None:
        if self._syncing:  # the dropdowns being brought in line with one change: draw once, at the end
            return
        self.run, options = narrow(self.choices, **{k: d.value for k, d in self.dropdowns.items()})
        self._syncing = True
        try:
            for level, dropdown in self.dropdowns.items():
                # Options first (that may reset the value), then the resolved value.
                if list(dropdown.options) != options[level]:
                    dropdown.options = options[level]
                dropdown.value = self.run[level]
        finally:
            self._syncing = False
        self.update()

    def render(self) -> Figure:
        run = self.run
        angles = rundir.read_angles(run["path"])
        fig = plots.plot_angle_histograms(
            {run["method"]: (angles["theta_deg"], angles["labels"])},
            int(run["class_index"]),
            class_name=str(run["class_name"]),
            bins=self.bins,
        )
        fig.suptitle(f"{run['cell']} · {run['method']} {run['setting']} · seed {run['seed']}", fontsize=9)
        return fig
