"""Headless reproduction: a profile's grid, then the numbered notebooks with papermill (``camri reproduce``),
and figure regeneration from stored results without training (``camri figures``).

``camri reproduce --profile demo``:
1. loads the profile (``camri.grid.load_profile``) and checks that every data set it needs is present or
   downloadable (``camri.data.check_available``), stopping at once with the fix if not;
2. trains what is missing: the grid (``camri.grid.run``: CE baseline, then the methods for the important
   classes chosen from it) and the two z_dim = 2 runs of Fig. 3. With ``--executor submitit`` the runs
   are submitted and the command returns; run it again later: it submits what is still missing and, once
   everything is finished, goes on;
3. executes ``notebooks/NN_*.ipynb`` in order with papermill, in a Jupyter kernel of this Python
   (``ensure_kernel``), parameters from the profile's ``notebooks:`` section. Executed notebooks go to
   ``results/<profile>/notebooks/``, figures (PNG + PDF) to ``figures/``, tables (CSV + Markdown) to
   ``tables/``, Table 1 to ``results/<profile>/table1.{csv,md,tex}``. A failing notebook prints its
   failing cell and traceback, and the command exits non-zero.
Re-running skips finished runs and re-renders everything.

``camri figures --profile demo`` checks that every run is finished (else says which are missing and how to
train them) and executes the notebooks with ``TRAIN = False``: they only read stored runs.

The notebooks' helpers live here, so that tests reach them:
``open_study(PROFILE, RESULTS_DIR, train=TRAIN, dataset=DATASET)`` returns a ``Study`` (the profile, its
folders, its runs, ``save`` / ``save_table``), ``fig3_specs`` / ``Study.fig3_runs`` the Fig. 3 runs.
"""

from __future__ import annotations

import ast
import dataclasses
import math
import os
import re
import sys
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

# camri.train's progress bars come from tqdm.auto, which inside a notebook asks for ipywidgets and falls
# back to text bars with a warning in every executed notebook: the text bars are what we want.
warnings.filterwarnings("ignore", message="IProgress not found", module="tqdm")

from camri import data as camri_data  # noqa: E402
from camri import grid  # noqa: E402
from camri.io import atomic_write_text  # noqa: E402

#: The folder of the numbered notebooks in a source checkout.
NOTEBOOK_DIR = Path(__file__).resolve().parent.parent / "notebooks"
#: The Jupyter kernel the notebooks run in (``make`` installs it into .venv; ``ensure_kernel`` checks it).
KERNEL_NAME = "camri"
KERNEL_DISPLAY_NAME = "Python (camri)"
FIG3_NOTEBOOK = "06_fig3_feature_circle"
#: Fig. 3's runs: the authors' CAMRI setting for cat (m = 4π/64, s = 16) unless the notebook says otherwise.
FIG3_DEFAULTS = {"DATASET": None, "IMPORTANT": "3", "EPOCHS": None, "MARGIN": "4pi/64", "SCALE": 16.0,
                 "SEED": 0}
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


class MissingRunsError(RuntimeError):
    """Stored results are asked for (``TRAIN = False``, ``camri figures``) but some runs are not finished."""


# ---- the notebooks' view of a profile -----------------------------------------------------------------

def _restrict(profile: grid.Profile, dataset: str) -> grid.Profile:
    """The profile with its data sets replaced by ``dataset`` (a notebook's DATASET parameter)."""
    raw = profile.to_dict()
    raw.pop("source", None)
    raw["datasets"] = [dataset]
    raw["important"]["classes"] = {k: v for k, v in raw["important"]["classes"].items() if k == dataset}
    if not raw["important"]["roles"] and dataset not in raw["important"]["classes"]:
        raw["important"]["roles"] = ["worst1", "worst2", "median"]
    restricted = grid.parse_profile(raw, f"{profile.source or profile.name} (DATASET = {dataset})")
    restricted.source = profile.source
    return restricted


def fig3_dataset(dataset: str | None, data_dir: str | None = None) -> str:
    """Fig. 3's data set: ``dataset``, or for None MNIST when it is present here (no download), else digits."""
    if dataset:
        return dataset
    try:
        camri_data.check_available("mnist", data_dir, download=False)
        return "mnist"
    except camri_data.DataError:
        return "digits"


def fig3_specs(profile: grid.Profile | str, results_dir=None, *, dataset: str | None = None,
               important: str | int = "3", epochs: int | None = None, margin: str | float = "4pi/64",
               scale: float = 16.0, seed: int = 0) -> list[grid.RunSpec]:
    """The two runs of Fig. 3: CE and CAMRI (``important`` class, ``margin``, ``scale``) with z_dim = 2,
    otherwise the profile's training settings (``epochs`` overrides them), in
    ``<results>/<profile>/fig3/<dataset>/<loss>/<setting>/seed<N>/``."""
    from camri.losses import parse_margin

    profile = grid.load_profile(profile)
    dataset = fig3_dataset(dataset, profile.data_dir)
    root = grid.profile_dir(profile, results_dir)
    base = dataclasses.replace(profile.base_config(), z_dim=2, dataset=dataset, seed=int(seed))
    if epochs is not None:
        base = dataclasses.replace(base, epochs=int(epochs))
    m = parse_margin(margin)
    important = int(important) if isinstance(important, int) or str(important).isdigit() else important
    specs = []
    for loss, fields in (("ce", {}), ("camri", {"important": [important], "margin": [m], "scale": float(scale)})):
        config = dataclasses.replace(base, loss=loss, **fields)
        slug = "default" if loss == "ce" else f"c{important}_m{grid.margin_slug(m)}_s{float(scale):g}"
        # "fig3/..." keeps the key (jobs.json, camri status) apart from the grid's runs of the same loss.
        key = f"fig3/{grid.dataset_slug(dataset)}/{loss}/{slug}/seed{int(seed)}"
        specs.append(grid.RunSpec(config=config, out_dir=root / key, stage="fig3", key=key))
    return specs


def _finished(spec: grid.RunSpec) -> bool:
    return (spec.out_dir / "summary.json").is_file()


def _missing_message(profile: grid.Profile, missing: Sequence[str], total: int, what: str) -> str:
    source = profile.name if _is_shipped(profile) or not profile.source else profile.source
    return (f"{len(missing)} of {total} {what} of profile {profile.name!r} are not finished (e.g. {missing[0]}); "
            f"stored results are read only here (TRAIN = False / camri figures). Train them with "
            f"`camri reproduce --profile {source}`, or run this notebook with TRAIN = True.")


def _is_shipped(profile: grid.Profile) -> bool:
    return bool(profile.source) and Path(profile.source).resolve().parent == grid.PROFILE_DIR.resolve()


def check_finished(profile: grid.Profile, results_dir=None, stages: Sequence[str] = grid.STAGES) -> None:
    """Raise MissingRunsError unless every run of ``stages`` is finished (reads only; trains nothing)."""
    specs = grid.expand(profile, "baseline", results_dir=results_dir)
    missing = [s.key for s in specs if not _finished(s)]
    if missing:  # the baseline first: without it, the methods stage's runs are not even known
        raise MissingRunsError(_missing_message(profile, missing, len(specs), "CE baseline runs"))
    if "methods" in stages:
        important = grid.choose_important(profile, results_dir, record=False)
        specs = grid.expand(profile, "methods", important, results_dir=results_dir)
        missing = [s.key for s in specs if not _finished(s)]
        if missing:
            raise MissingRunsError(_missing_message(profile, missing, len(specs), "runs of the methods stage"))


@dataclasses.dataclass
class Study:
    """A profile as the notebooks see it: its settings, folders and finished runs.

    ``root`` = ``<results>/<profile>``; figures go to ``root/figures``, tables to ``root/tables``.
    ``train``: whether ``runs`` trains what is missing (``camri.grid.run``) or only reads.
    """

    profile: grid.Profile
    results_dir: str | None
    train: bool = True
    workers: int | None = None

    @property
    def name(self) -> str:
        return self.profile.name

    @property
    def root(self) -> Path:
        return grid.profile_dir(self.profile, self.results_dir)

    @property
    def datasets(self) -> list[str]:
        return list(self.profile.datasets)

    @property
    def figures_dir(self) -> Path:
        return self.root / "figures"

    @property
    def tables_dir(self) -> Path:
        return self.root / "tables"

    @property
    def tolerance(self) -> float:
        return self.profile.protocol.accuracy_tolerance

    def slug(self, dataset: str) -> str:
        """The data set's name in file names (``camri.grid.dataset_slug``)."""
        return grid.dataset_slug(dataset)

    def load_data(self, dataset: str) -> camri_data.DataSet:
        return camri_data.load(dataset, data_dir=self.profile.data_dir,
                               image_size=self.profile.train.get("image_size"))

    # ---- runs ----
    def ensure(self, stages: Sequence[str] = grid.STAGES) -> None:
        """Train the runs of ``stages`` that are missing (``train``), or check that none is (not ``train``)."""
        stages = (stages,) if isinstance(stages, str) else tuple(stages)
        if not self.train:
            check_finished(self.profile, self.results_dir, stages)
            return
        report = grid.run(self.profile, stages, wait=True, workers=self.workers, results_dir=self.results_dir)
        if not report.complete:
            raise RuntimeError("the runs this notebook needs did not all finish:\n" + report.summary())

    def specs(self, stages: Sequence[str] = grid.STAGES) -> list[grid.RunSpec]:
        specs = grid.expand(self.profile, "baseline", results_dir=self.results_dir)
        if "methods" in stages:
            important = grid.choose_important(self.profile, self.results_dir, record=False)
            specs += grid.expand(self.profile, "methods", important, results_dir=self.results_dir)
        return specs

    def runs(self, stages: Sequence[str] = grid.STAGES):
        """The finished runs of ``stages`` (``camri.protocol.load_runs`` rows), after ``ensure(stages)``.
        Only this profile's runs: other folders below ``root/runs`` are ignored."""
        from camri import protocol

        stages = (stages,) if isinstance(stages, str) else tuple(stages)
        self.ensure(stages)
        wanted = {str(s.out_dir) for s in self.specs(stages)}
        runs = protocol.load_runs(self.root / "runs")
        return runs[runs["path"].isin(wanted)].reset_index(drop=True)

    def important(self, runs, dataset: str):
        """The important classes of ``dataset``: DataFrame role, class_index, class_name (and, when chosen
        from the CE baseline, recall_mean, recall_std, rank, paper_class), for the profile's roles."""
        import pandas as pd

        from camri import protocol

        fixed = self.profile.important.classes.get(dataset)
        if fixed is None:
            roles = list(self.profile.important.roles) or list(protocol.ROLES)
            chosen = protocol.choose_important(runs, dataset)
            return chosen[chosen["role"].isin(roles)].reset_index(drop=True)
        # Fixed by the profile: protocol.select_all resolves them (names or indices, by role).
        cells = self.select(runs, [dataset]).drop_duplicates("role")
        return pd.DataFrame(cells[["role", "class_index", "class_name"]]).reset_index(drop=True)

    def select(self, runs, datasets: Sequence[str] | None = None):
        """``camri.protocol.select_all`` with the profile's tolerance, min_seeds, roles and fixed classes."""
        from camri import protocol

        roles = list(self.profile.important.roles) or list(protocol.ROLES)
        return protocol.select_all(runs, tolerance=self.tolerance, min_seeds=self.profile.protocol.min_seeds,
                                   roles=roles, important=self.profile.important.classes or None,
                                   datasets=datasets or self.datasets)

    # ---- Fig. 3 ----
    def fig3_runs(self, **parameters) -> dict[str, Path]:
        """Train (``train``) or check the two Fig. 3 runs; returns {"CE": run dir, "CAMRI": run dir}.
        ``parameters``: those of ``fig3_specs`` (dataset, important, epochs, margin, scale, seed)."""
        specs = fig3_specs(self.profile, self.results_dir, **parameters)
        todo = [s for s in specs if not _finished(s)]
        if todo and not self.train:
            raise MissingRunsError(_missing_message(self.profile, [s.key for s in todo], len(specs),
                                                    "Fig. 3 runs"))
        if todo:
            camri_data.check_available(specs[0].config.dataset, self.profile.data_dir)
            outcome = grid.run_local(todo, self.workers or self.profile.executor.workers)
            failed = [s for s in todo if outcome.get(s.key) != "done"]
            if failed:
                raise RuntimeError(f"Fig. 3 run {failed[0].key} did not finish; its log: "
                                   f"{failed[0].out_dir / grid.LOG_NAME}")
        return {"CE": specs[0].out_dir, "CAMRI": specs[1].out_dir}

    # ---- output ----
    def save(self, fig, name: str):
        """Save ``fig`` as ``figures/<name>.png`` and ``.pdf``; returns the figure (for display)."""
        from camri.plots import save_figure

        save_figure(fig, self.figures_dir / name)
        return fig

    def save_table(self, frame, name: str, *, index: bool = False):
        """Save ``frame`` as ``tables/<name>.csv`` and ``.md``; returns it (for display). A ``paths``
        column (absolute run folders, as in ``protocol.cell_settings``) is left out of the files."""
        frame = frame.drop(columns=["paths"], errors="ignore")
        atomic_write_text(self.tables_dir / f"{name}.csv",
                          frame.to_csv(index=index, float_format="%.6g", lineterminator="\n"))
        atomic_write_text(self.tables_dir / f"{name}.md", markdown_table(frame, index=index) + "\n")
        return frame



def open_study(profile: str | os.PathLike | grid.Profile, results_dir: str | os.PathLike | None = None, *,
               train: bool = True, dataset: str | None = None, workers: int | None = None) -> Study:
    """What a notebook starts with: the profile (a shipped name or a YAML path) restricted to ``dataset``
    when given, its results root (None: ``<repo>/results``), and whether missing runs are trained."""
    loaded = grid.load_profile(profile)
    if dataset:
        loaded = _restrict(loaded, dataset)
    return Study(loaded, None if results_dir is None else str(results_dir), bool(train), workers)


# ---- small helpers the notebooks use ------------------------------------------------------------------

def _cell(value: Any) -> str:
    if isinstance(value, float):
        return "–" if math.isnan(value) else f"{value:.4g}"
    if isinstance(value, (tuple, list)):
        return ", ".join(_cell(v) for v in value)
    return str(value).replace("|", "\\|").replace("\n", " ")


def markdown_table(frame, *, index: bool = False) -> str:
    """A DataFrame as a GitHub Markdown table (numbers to 4 significant digits, NaN as –)."""
    frame = frame.reset_index() if index else frame
    header = "| " + " | ".join(map(str, frame.columns)) + " |"
    rule = "|" + "---|" * len(frame.columns)
    rows = ["| " + " | ".join(_cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *rows])


def load_metrics(run_dir: str | os.PathLike):
    """A run's metrics.csv as a DataFrame."""
    import pandas as pd

    return pd.read_csv(Path(run_dir) / "metrics.csv")


def load_angles(run_dir: str | os.PathLike) -> dict:
    """A run's angles.npz as a dict of arrays (theta_deg, labels, logits, features2d when z_dim = 2)."""
    import numpy as np

    with np.load(Path(run_dir) / "angles.npz") as npz:
        return {k: npz[k] for k in npz.files}


def load_head_weight(run_dir: str | os.PathLike):
    """The (K, D) class weight vectors of a run's head (checkpoint.pt), or None without a checkpoint."""
    import torch

    path = Path(run_dir) / "checkpoint.pt"
    if not path.is_file():
        return None
    state = torch.load(path, map_location="cpu", weights_only=False)
    return state["model"]["head.weight"].float().numpy()


def pooled_angles(paths: Sequence[str | os.PathLike]):
    """θ (degrees) and labels of the test samples of several runs (e.g. one setting's seeds), pooled."""
    import numpy as np

    arrays = [load_angles(p) for p in paths]
    return (np.concatenate([a["theta_deg"] for a in arrays]), np.concatenate([a["labels"] for a in arrays]))


def settings_table(runs, dataset: str, important, *, methods: Sequence[str], tolerance: float):
    """One row per setting of ``methods`` (display names) of ``dataset``: method, hyperparameters, n_seeds,
    accuracy mean / std, qualified (maintains accuracy), then the mean recall of each important class
    (``important``: rows with role, class_index, class_name) as ``recall <role>: <class>``. For methods
    trained per important class (CAMRI, WCE, CRWWCE) a setting has a value only in its own class's column."""
    import pandas as pd

    from camri import protocol

    keys = ["method", "hyperparameters"]
    table = None
    for role, index, name in important[["role", "class_index", "class_name"]].itertuples(index=False):
        cell = protocol.cell_settings(runs, dataset, int(index), tolerance=tolerance)
        cell = cell[cell["method"].isin(methods)]
        column = f"recall {role}: {name}"
        part = cell[keys + ["n_seeds", "accuracy_mean", "accuracy_std", "qualified"]].assign(
            **{column: cell["recall_mean"], f"{column} (std)": cell["recall_std"]})
        if table is None:
            table = part
        else:
            table = table.merge(part, on=keys + ["n_seeds", "accuracy_mean", "accuracy_std", "qualified"],
                                how="outer")
    if table is None:
        return pd.DataFrame(columns=keys)
    order = {m: i for i, m in enumerate(methods)}
    return table.sort_values(["method", "hyperparameters"], key=lambda c: c.map(order) if c.name == "method"
                             else c, kind="stable").reset_index(drop=True)


def relative_variance_table(runs, selections, methods: Sequence[str] = ("CE", "ArcFace", "CAMRI")):
    """Per data set × important class × method (its "maintaining" choice of ``protocol.select_all``): the
    relative angle variance of the important class (its θ variance / the mean of the other classes'; from
    each run's summary.json), mean and sample std over seeds. Columns: cell, dataset, role, class_index,
    class_name, method, hyperparameters, n_seeds, relative_variance, relative_variance_std."""
    import numpy as np
    import pandas as pd

    from camri import protocol

    by_path = runs.set_index("path")
    rows = []
    chosen = selections[(selections["selection"] == "maintaining") & selections["method"].isin(methods)]
    for row in chosen.itertuples(index=False):
        values = [float(by_path.at[p, "relative_angle_variance"].get(str(row.class_index), np.nan))
                  for p in row.paths]
        rows.append({"cell": f"{protocol.display_dataset(row.dataset)} {row.role}: {row.class_name}",
                     "dataset": row.dataset, "role": row.role, "class_index": row.class_index,
                     "class_name": row.class_name, "method": row.method, "hyperparameters": row.hyperparameters,
                     "n_seeds": len(values), "relative_variance": float(np.mean(values)),
                     "relative_variance_std": float(np.std(values, ddof=1)) if len(values) > 1 else np.nan})
    columns = ["cell", "dataset", "role", "class_index", "class_name", "method", "hyperparameters", "n_seeds",
               "relative_variance", "relative_variance_std"]
    table = pd.DataFrame(rows, columns=columns)
    order = {m: i for i, m in enumerate(methods)}
    return table.sort_values("method", key=lambda c: c.map(order), kind="stable").sort_values(
        ["dataset", "role"], key=lambda c: c.map({r: i for i, r in enumerate(protocol.ROLES)}) if c.name == "role"
        else c, kind="stable").reset_index(drop=True)


def fig3_panels(run_dirs: Mapping[str, str | os.PathLike]):
    """What Fig. 3 shows, from its finished runs ({method: run dir}, e.g. ``Study.fig3_runs()``):
    (panels for ``plots.plot_fig3``, class names, important class indices, a table with each run's
    accuracy, the important class's recall, its share of the circle and its relative angle variance)."""
    import pandas as pd

    from camri.io import read_json
    from camri.plots import circle_share

    panels, rows, classes, important = {}, [], None, []
    summaries = {method: read_json(Path(d) / "summary.json") for method, d in run_dirs.items()}
    for summary in summaries.values():
        important = important or list(summary["important"])
        classes = classes or list(summary["classes"])
    for method, directory in run_dirs.items():
        summary = summaries[method]
        angles = load_angles(directory)
        if "features2d" not in angles:
            raise ValueError(f"{directory} was not trained with z_dim = 2: Fig. 3 needs 2-D features")
        weights = load_head_weight(directory)
        for c in important:
            rows.append({"method": method, "accuracy": summary["accuracy"], "class": classes[c],
                         "recall": summary["recall"][c],
                         "circle_share": circle_share(weights, c) if weights is not None else float("nan"),
                         "relative_variance": summary["relative_angle_variance"].get(str(c), float("nan")),
                         "epochs": summary["epochs_completed"]})
        recall = ", ".join(f"recall[{classes[c]}] {summary['recall'][c]:.3f}" for c in important)
        panels[f"{method}: {recall}, accuracy {summary['accuracy']:.3f}"] = {
            "features2d": angles["features2d"], "labels": angles["labels"], "weights": weights}
    return panels, classes, important, pd.DataFrame(rows)


# ---- executing the notebooks --------------------------------------------------------------------------

def _same_python(argv0: str) -> bool:
    if argv0 in ("python", f"python{sys.version_info[0]}", "python%d.%d" % sys.version_info[:2]):
        return True  # jupyter_client runs these names as the current interpreter
    return os.path.abspath(argv0) == os.path.abspath(sys.executable)


def ensure_kernel(name: str = KERNEL_NAME) -> str:
    """The name of a Jupyter kernel that runs this very Python (so notebooks import this camri).

    Uses kernel ``name`` when it points at ``sys.executable``; otherwise installs it into ``sys.prefix``
    (the environment's own share/jupyter/kernels), or, when something else shadows that name or the prefix
    is read-only, under a name unique to this interpreter."""
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    def points_here(kernel: str) -> bool:
        try:
            spec = KernelSpecManager().get_kernel_spec(kernel)
        except NoSuchKernel:
            return False
        return bool(spec.argv) and _same_python(spec.argv[0])

    if points_here(name):
        return name
    from ipykernel.kernelspec import install

    try:
        install(kernel_name=name, display_name=KERNEL_DISPLAY_NAME, prefix=sys.prefix)
        if points_here(name):
            return name
    except OSError:
        pass
    import hashlib

    unique = f"{name}-{hashlib.sha1(sys.executable.encode()).hexdigest()[:8]}"
    if not points_here(unique):
        install(kernel_name=unique, display_name=f"{KERNEL_DISPLAY_NAME} {sys.prefix}", user=True)
    return unique


def list_notebooks(notebook_dir: str | os.PathLike | None = None) -> list[Path]:
    """The numbered notebooks ``NN_*.ipynb`` of ``notebook_dir`` (default: the checkout's notebooks/), in order."""
    folder = Path(notebook_dir) if notebook_dir is not None else NOTEBOOK_DIR
    notebooks = sorted(folder.glob("[0-9][0-9]_*.ipynb"))
    if not notebooks:
        raise ValueError(f"no numbered notebooks (NN_*.ipynb) in {folder}")
    return notebooks


def notebook_defaults(path: str | os.PathLike) -> dict[str, Any]:
    """The parameters a notebook declares (the assignments of its cell tagged ``parameters``) with their
    default values (Python literals; other expressions as their source text)."""
    import nbformat

    book = nbformat.read(str(path), as_version=4)
    cells = [c for c in book.cells if c.cell_type == "code" and "parameters" in c.metadata.get("tags", [])]
    if not cells:
        return {}
    defaults = {}
    source = cells[0].source
    for node in ast.parse(source).body:
        if isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                if isinstance(target, ast.Name) and node.value is not None:
                    try:
                        defaults[target.id] = ast.literal_eval(node.value)
                    except ValueError:
                        defaults[target.id] = ast.get_source_segment(source, node.value)
    return defaults


def notebook_parameters(path: Path, profile: grid.Profile, base: Mapping[str, Any]) -> dict[str, Any]:
    """The parameters for one notebook: ``base`` (PROFILE, RESULTS_DIR, TRAIN) where it declares them, then
    the profile's ``notebooks.<stem>`` entries, matched to its declared names ignoring case."""
    declared = notebook_defaults(path)
    by_lower = {name.lower(): name for name in declared}
    parameters = {k: v for k, v in base.items() if k in declared}
    for key, value in (profile.notebooks.get(path.stem) or {}).items():
        name = by_lower.get(str(key).lower())
        if name is None:
            raise ValueError(f"profile {profile.name}: notebooks.{path.stem}.{key}: the notebook has no such "
                             f"parameter; it has {', '.join(declared) or 'none'}")
        parameters[name] = value
    return parameters


def _profile_argument(profile: grid.Profile) -> str:
    """How the notebooks get the profile: its shipped name, or the absolute path of its YAML file."""
    if _is_shipped(profile):
        return profile.name
    if profile.source and Path(profile.source).is_file():
        return str(Path(profile.source).absolute())
    raise ValueError(f"profile {profile.name!r} was not read from a file; save it as YAML and pass its path")


def _failure_report(path: Path, output: Path, error) -> str:
    from papermill.exceptions import PapermillExecutionError

    lines = [f"notebook {path.name} failed; the executed copy with the error: {output}"]
    if isinstance(error, PapermillExecutionError):
        lines += [f"--- failing cell (In [{error.exec_count}]) ---", error.source.rstrip(),
                  "--- traceback ---", _ANSI.sub("", "\n".join(error.traceback)).rstrip()]
    else:
        lines += ["--- error ---", f"{type(error).__name__}: {error}"]
    return "\n".join(lines)


def execute_notebooks(profile: grid.Profile | str, results_dir=None, *, train: bool = True,
                      notebook_dir: str | os.PathLike | None = None, only: Sequence[str] | None = None,
                      kernel_name: str | None = None, log: Callable[[str], None] = print) -> bool:
    """Execute the numbered notebooks in order with papermill into ``<results>/<profile>/notebooks/``.

    Returns True when all succeeded; on the first failing notebook logs its failing cell and traceback and
    returns False. ``only``: notebook stems (or number prefixes such as "04") to run."""
    import papermill

    profile = grid.load_profile(profile)
    notebooks = list_notebooks(notebook_dir)
    if only:
        unknown = [o for o in only if not any(p.stem == o or p.stem.startswith(f"{o}_") for p in notebooks)]
        if unknown:
            raise ValueError(f"no notebook {', '.join(unknown)}; there are {', '.join(p.stem for p in notebooks)}")
        notebooks = [p for p in notebooks if any(p.stem == o or p.stem.startswith(f"{o}_") for o in only)]
    kernel = kernel_name or ensure_kernel()
    root = grid.profile_dir(profile, results_dir)
    base = {"PROFILE": _profile_argument(profile), "RESULTS_DIR": str(root.parent), "TRAIN": bool(train)}
    # Check every notebook's parameters before running any: a typo in the profile fails in seconds.
    plans = [(path, notebook_parameters(path, profile, base)) for path in notebooks]
    out_dir = root / "notebooks"
    out_dir.mkdir(parents=True, exist_ok=True)
    for number, (path, parameters) in enumerate(plans, 1):
        output = out_dir / path.name
        start = time.perf_counter()
        log(f"[{number}/{len(plans)}] {path.name}  " + " ".join(f"{k}={v!r}" for k, v in parameters.items()))
        try:
            papermill.execute_notebook(str(path), str(output), parameters=parameters, kernel_name=kernel,
                                       language="python", progress_bar=False, cwd=str(path.parent))
        except Exception as error:  # PapermillExecutionError, a dead kernel, a timeout
            log(_failure_report(path, output, error))
            return False
        log(f"      done in {time.perf_counter() - start:.1f} s -> {output}")
    log(f"figures: {root / 'figures'}\ntables: {root / 'tables'} and {root / 'table1.md'}")
    return True


def _fig3_parameters(profile: grid.Profile, notebook_dir=None) -> dict[str, Any] | None:
    """fig3_specs's keyword arguments as notebook 06 will call it (its defaults, then the profile's)."""
    path = next((p for p in list_notebooks(notebook_dir) if p.stem == FIG3_NOTEBOOK), None)
    if path is None:
        return None
    values = {**FIG3_DEFAULTS, **{k: v for k, v in notebook_defaults(path).items() if k in FIG3_DEFAULTS}}
    values.update({k: v for k, v in notebook_parameters(path, profile, {}).items() if k in FIG3_DEFAULTS})
    return {k.lower(): v for k, v in values.items()}


# ---- the two commands ---------------------------------------------------------------------------------

def reproduce(profile: grid.Profile | str, *, executor: str | None = None, results_dir=None,
              workers: int | None = None, notebook_dir=None, only: Sequence[str] | None = None,
              log: Callable[[str], None] = print) -> int:
    """``camri reproduce``: check the data, train what is missing, execute the notebooks. Returns the exit
    status: 0 done (or submitted, to be re-run later), 1 a run or a notebook failed."""
    profile = grid.load_profile(profile)
    kind = executor or profile.executor.kind
    fig3 = _fig3_parameters(profile, notebook_dir)
    fig3_runs = fig3_specs(profile, results_dir, **fig3) if fig3 is not None else []
    # 1. Every data set first: never fail on a missing download after hours of CE runs.
    grid.check_data(profile)
    for dataset in {s.config.dataset for s in fig3_runs}:
        camri_data.check_available(dataset, profile.data_dir)
    # 2. Training.
    report = grid.run(profile, grid.STAGES, executor=kind, wait=kind == "local", workers=workers,
                      results_dir=results_dir)
    log(report.summary())
    todo = [s for s in fig3_runs if not _finished(s)]
    in_flight = {}
    if todo:
        jobs = grid.read_jobs(report.root)
        todo = [s for s in todo if grid.run_state(s, jobs.get(s.key)).state != "running"]
        in_flight = {s.key for s in fig3_runs if not _finished(s)} - {s.key for s in todo}
    if todo:
        if kind == "local":
            outcome = grid.run_local(todo, workers or profile.executor.workers, profile.executor.workers_per_gpu)
            failed = [s for s in todo if outcome.get(s.key) != "done"]
            report.failed += [(s.key, s.out_dir / grid.LOG_NAME) for s in failed]
            in_flight |= {s.key for s in todo if outcome.get(s.key) == "busy"}
        else:
            in_flight |= set(grid.submit_submitit(todo, profile.executor.submitit, report.root, profile.name))
    if fig3_runs:
        log(f"Fig. 3 runs: {sum(_finished(s) for s in fig3_runs)} of {len(fig3_runs)} done")
    if report.failed:
        log("some runs failed (above: their logs); fix the cause and run the same command again: finished runs "
            "are kept")
        return 1
    if report.running or report.waiting or in_flight:
        log(f"runs are submitted or still in flight. See `camri status --profile {_profile_argument(profile)}`; "
            f"run `camri reproduce --profile {_profile_argument(profile)}` again later: it submits what is "
            "still missing, and renders the notebooks once every run has finished.")
        return 0
    # 3. The notebooks.
    ok = execute_notebooks(profile, results_dir, train=True, notebook_dir=notebook_dir, only=only, log=log)
    return 0 if ok else 1


def figures(profile: grid.Profile | str, *, results_dir=None, notebook_dir=None, only: Sequence[str] | None = None,
            log: Callable[[str], None] = print) -> int:
    """``camri figures``: re-execute the notebooks on stored results (TRAIN = False); nothing is trained."""
    profile = grid.load_profile(profile)
    try:
        check_finished(profile, results_dir)
        fig3 = _fig3_parameters(profile, notebook_dir)
        if fig3 is not None:
            missing = [s.key for s in fig3_specs(profile, results_dir, **fig3) if not _finished(s)]
            if missing:
                raise MissingRunsError(_missing_message(profile, missing, 2, "Fig. 3 runs"))
    except MissingRunsError as error:
        log(f"camri figures: {error}")
        return 1
    ok = execute_notebooks(profile, results_dir, train=False, notebook_dir=notebook_dir, only=only, log=log)
    return 0 if ok else 1


# ---- command line ------------------------------------------------------------------------------------

def _reproduce_command(args) -> int:
    return reproduce(args.profile, executor=args.executor, results_dir=args.results_dir, workers=args.workers,
                     notebook_dir=args.notebooks, only=args.only)


def _figures_command(args) -> int:
    return figures(args.profile, results_dir=args.results_dir, notebook_dir=args.notebooks, only=args.only)


def _common(parser) -> None:
    parser.add_argument("--profile", required=True,
                        help=f"a shipped profile ({', '.join(grid.shipped_profiles())}) or the path of a YAML file")
    parser.add_argument("--results-dir", default=None,
                        help="results root; everything goes to <root>/<profile name>/ (default: <repo>/results)")
    parser.add_argument("--notebooks", default=None, metavar="DIR",
                        help="folder of the numbered notebooks NN_*.ipynb (default: the checkout's notebooks/)")
    parser.add_argument("--only", nargs="+", default=None, metavar="NB",
                        help="execute only these notebooks: numbers or names, e.g. --only 04 06_fig3_feature_circle")


def add_cli(subparsers) -> None:
    parser = subparsers.add_parser(
        "reproduce", help="train a profile's runs and execute the notebooks: results/<profile>/",
        description="Check the data, train what is missing (the grid and Fig. 3's runs), then execute the "
                    "numbered notebooks with papermill into results/<profile>/ (notebooks, figures, tables). "
                    "Re-running skips finished runs and re-renders.")
    _common(parser)
    parser.add_argument("--executor", choices=grid.EXECUTORS, default=None,
                        help="default: the profile's executor.kind; submitit submits and returns")
    parser.add_argument("--workers", type=int, default=None, help="local: parallel runs (default: the profile's)")
    parser.set_defaults(func=_reproduce_command)
    parser = subparsers.add_parser(
        "figures", help="regenerate every figure and table from stored results, without training",
        description="Execute the notebooks with TRAIN = False: they read the stored runs of the profile and "
                    "re-render results/<profile>/figures, tables and notebooks. Missing runs are reported.")
    _common(parser)
    parser.set_defaults(func=_figures_command)
