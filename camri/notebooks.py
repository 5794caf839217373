"""Executing the numbered notebooks headlessly with papermill, in a Jupyter kernel of this Python.

``execute_notebooks(profile)`` runs ``notebooks/NN_*.ipynb`` in order into ``<results>/<profile>/notebooks/``
with parameters PROFILE, RESULTS_DIR, TRAIN (and PARTIAL for ``camri figures --partial``) and the profile's
``notebooks.<stem>`` entries (matched to the names the notebook declares, ignoring case:
``papermill.inspect_notebook``). A failing notebook logs its failing cell and traceback.
"""

from __future__ import annotations

import os
import re
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from camri.profile import Profile, is_shipped, load_profile, profile_dir

#: The folder of the numbered notebooks in a source checkout.
NOTEBOOK_DIR = Path(__file__).resolve().parent.parent / "notebooks"
#: The Jupyter kernel the notebooks run in (``make`` installs it into .venv; ``ensure_kernel`` checks it).
KERNEL_NAME = "camri"
KERNEL_DISPLAY_NAME = "Python (camri)"
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def _same_python(argv0: str) -> bool:
    if argv0 in ("python", f"python{sys.version_info[0]}", "python{}.{}".format(*sys.version_info[:2])):
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


#: What each shipped notebook reads, by its number: the grid's stages, Fig. 3's runs, or nothing (00: the
#: data, 07: the loss geometry). ``camri figures --only`` checks only what the chosen notebooks read, so
#: one figure renders while the rest of a campaign is still running; another notebook needs everything.
NOTEBOOK_NEEDS = {
    "00": (),
    "01": ("baseline",),
    "02": ("baseline", "methods"),
    "03": ("baseline", "methods"),
    "04": ("baseline", "methods"),
    "05": ("baseline", "methods"),
    "06": ("fig3",),
    "07": (),
}
ALL_NEEDS = ("baseline", "methods", "fig3")


def select_notebooks(notebook_dir: str | os.PathLike | None = None, only: Sequence[str] | None = None) -> list[Path]:
    """``list_notebooks``, or of those the ones ``only`` names (stems or number prefixes such as "04")."""
    notebooks = list_notebooks(notebook_dir)
    if not only:
        return notebooks
    unknown = [o for o in only if not any(p.stem == o or p.stem.startswith(f"{o}_") for p in notebooks)]
    if unknown:
        raise ValueError(f"no notebook {', '.join(unknown)}; there are {', '.join(p.stem for p in notebooks)}")
    return [p for p in notebooks if any(p.stem == o or p.stem.startswith(f"{o}_") for o in only)]


def notebook_needs(paths: Sequence[Path]) -> set[str]:
    """What the notebooks ``paths`` read together (``NOTEBOOK_NEEDS``; an unknown notebook: ``ALL_NEEDS``)."""
    return {need for path in paths for need in NOTEBOOK_NEEDS.get(path.stem[:2], ALL_NEEDS)}


def declared_parameters(path: str | os.PathLike) -> dict[str, dict]:
    """The parameters a notebook declares in its cell tagged ``parameters``, as papermill reads them
    (``papermill.inspect_notebook``'s {name: {name, inferred_type_name, default, help}}; ``default`` is
    source text). papermill's Python translator reads the cell, so a notebook without kernel metadata
    (which ``inspect_notebook`` refuses; execution names the kernel) works too: camri's notebooks are Python."""
    import nbformat
    from papermill.translators import PythonTranslator

    book = nbformat.read(str(path), as_version=4)
    cells = [c for c in book.cells if c.cell_type == "code" and "parameters" in c.metadata.get("tags", [])]
    return {p.name: p._asdict() for p in PythonTranslator.inspect(cells[0])} if cells else {}


def notebook_parameters(path: Path, profile: Profile, base: Mapping[str, Any]) -> dict[str, Any]:
    """The parameters for one notebook: ``base`` (PROFILE, RESULTS_DIR, TRAIN) where it declares them, then
    the profile's ``notebooks.<stem>`` entries, matched to its declared names ignoring case."""
    declared = declared_parameters(path)
    by_lower = {name.lower(): name for name in declared}
    parameters = {k: v for k, v in base.items() if k in declared}
    for key, value in (profile.notebooks.get(path.stem) or {}).items():
        name = by_lower.get(str(key).lower())
        if name is None:
            raise ValueError(
                f"profile {profile.name}: notebooks.{path.stem}.{key}: the notebook has no such "
                f"parameter; it has {', '.join(declared) or 'none'}"
            )
        parameters[name] = value
    return parameters


def profile_argument(profile: Profile) -> str:
    """How the notebooks (and the commands printed for people) get the profile: its shipped name, or the
    absolute path of its YAML file."""
    if is_shipped(profile):
        return profile.name
    if profile.source and Path(profile.source).is_file():
        return str(Path(profile.source).absolute())
    raise ValueError(f"profile {profile.name!r} was not read from a file; save it as YAML and pass its path")


def _failure_report(path: Path, output: Path, error) -> str:
    from papermill.exceptions import PapermillExecutionError

    lines = [f"notebook {path.name} failed; the executed copy with the error: {output}"]
    if isinstance(error, PapermillExecutionError):
        lines += [
            f"--- failing cell (In [{error.exec_count}]) ---",
            error.source.rstrip(),
            "--- traceback ---",
            _ANSI.sub("", "\n".join(error.traceback)).rstrip(),
        ]
    else:
        lines += ["--- error ---", f"{type(error).__name__}: {error}"]
    return "\n".join(lines)


def execute_notebooks(
    profile: Profile | str,
    results_dir=None,
    *,
    train: bool = True,
    notebook_dir: str | os.PathLike | None = None,
    only: Sequence[str] | None = None,
    kernel_name: str | None = None,
    partial: bool = False,
    log: Callable[[str], None] = print,
) -> bool:
    """Execute the numbered notebooks in order with papermill into ``<results>/<profile>/notebooks/``.

    Returns True when all succeeded; on the first failing notebook logs its failing cell and traceback and
    returns False. ``only``: notebook stems (or number prefixes such as "04") to run. ``partial`` (with
    ``train`` False): the notebooks that declare PARTIAL read the finished runs while some are missing."""
    import papermill

    profile = load_profile(profile)
    notebooks = select_notebooks(notebook_dir, only)
    kernel = kernel_name or ensure_kernel()
    root = profile_dir(profile, results_dir)
    base = {"PROFILE": profile_argument(profile), "RESULTS_DIR": str(root.parent), "TRAIN": bool(train)}
    if partial:  # only then: a notebook that does not declare PARTIAL still runs in a plain render
        base["PARTIAL"] = True
    # Check every notebook's parameters before running any: a typo in the profile fails in seconds.
    plans = [(path, notebook_parameters(path, profile, base)) for path in notebooks]
    out_dir = root / "notebooks"
    out_dir.mkdir(parents=True, exist_ok=True)
    for number, (path, parameters) in enumerate(plans, 1):
        output = out_dir / path.name
        start = time.perf_counter()
        log(f"[{number}/{len(plans)}] {path.name}  " + " ".join(f"{k}={v!r}" for k, v in parameters.items()))
        try:
            papermill.execute_notebook(
                str(path),
                str(output),
                parameters=parameters,
                kernel_name=kernel,
                language="python",
                progress_bar=False,
                cwd=str(path.parent),
            )
        except Exception as error:  # PapermillExecutionError, a dead kernel, a timeout
            log(_failure_report(path, output, error))
            return False
        log(f"      done in {time.perf_counter() - start:.1f} s -> {output}")
    log(outputs_line(root))
    return True


def outputs_line(root: Path) -> str:
    """The closing lines of a render of ``root`` (a profile's results folder): its figures and tables, and
    Table 1 only when it is there (``--only 06`` renders no Table 1)."""
    table1 = root / "table1.md"
    return f"figures: {root / 'figures'}\ntables: {root / 'tables'}" + (f" and {table1}" if table1.exists() else "")
