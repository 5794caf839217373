"""The experiment grid of a profile: expand it into training runs and run them, locally or on a SLURM cluster
(``camri grid``, ``camri status``).

A *profile* (docs/profiles.md) is a YAML file naming the data sets, seeds, shared training settings and a
hyperparameter grid per method. ``expand`` turns it into ``RunSpec`` s, one per run directory
``<results>/<profile>/runs/<dataset>/<loss>/<setting>/seed<N>/``, deduplicated: a CE run or an ArcFace
setting serves every important class, so it is listed once. ``run`` trains the runs that are not finished
through an executor (docs/scale-out.md):

- ``local``: a pool of worker processes on this machine, each run in its own process (forked from a
  server with torch imported, so it starts in milliseconds; a crash costs only that run), its output in
  ``<run dir>/log.txt``, pinned to a GPU through ``CUDA_VISIBLE_DEVICES`` when there are GPUs
  (``workers_per_gpu`` of them share one GPU).
- ``submitit``: the same runs as a SLURM job array through submitit; a preempted or timed-out job is
  requeued and resumes from the run's checkpoint.pt. ``cluster: local`` runs the array on this machine
  with submitit's LocalExecutor (that is how the tests exercise this path without SLURM).

``status`` reports each run as done (summary.json), running (a submitit job in flight, or a live run lock),
failed (started, stopped without summary.json: its log and last error line) or pending.

API::

    profile = load_profile("demo")                       # or a path to a YAML file
    specs = expand(profile, "baseline")                  # CE × data sets × seeds
    important = choose_important(profile)                # {dataset: [class indices]}
    specs = expand(profile, "methods", important)        # every other method, deduplicated
    report = run(profile, executor="local", workers=2)   # trains what is missing, both stages
    rows = status(profile)                               # one StatusRow per run
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import errno
import json
import math
import os
import re
import socket
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import submitit
import yaml
from tqdm.auto import tqdm

from camri import data as camri_data
from camri.io import atomic_write_json, read_json
from camri.losses import IMPORTANT_LOSSES, LOSS_NAMES, parse_margin
from camri.train import TrainConfig, resolve_important

#: The profiles shipped with the package; ``load_profile("demo")`` reads PROFILE_DIR / "demo.yaml".
PROFILE_DIR = Path(__file__).resolve().parent / "profiles"
STAGES = ("baseline", "methods")
STATES = ("done", "running", "failed", "pending")
ROLES = ("worst1", "worst2", "median")  # camri.protocol.ROLES; repeated so loading a profile needs no pandas
#: The grid axes of each method: the TrainConfig fields its runs differ in. Order = order in the slug.
METHOD_AXES = {"ce": (), "l2softmax": ("scale",), "arcface": ("margin", "scale"),
               "camri": ("margin", "scale"), "wce": ("weight",), "crwwce": ("weight", "fp_weight")}
#: Order in which methods are expanded (and run): the paper's Table 1 order, L2-softmax beside ArcFace.
METHOD_ORDER = ("ce", "arcface", "l2softmax", "camri", "wce", "crwwce")
#: TrainConfig fields the grid sets per run; a profile's ``train:`` section may not set them.
GRID_FIELDS = ("dataset", "loss", "important", "margin", "scale", "weight", "fp_weight", "seed", "data_dir")
EXECUTORS = ("local", "submitit")
CLUSTERS = (None, "slurm", "local", "debug")
#: Exit status of a local worker that found its run being trained by another process.
_BUSY_EXIT = 3
LOCK_NAME = ".grid.lock"
LOG_NAME = "log.txt"
JOBS_FILE = "jobs.json"


# ---- profile -------------------------------------------------------------------------------------------

@dataclass
class SubmititOptions:
    """How ``executor: submitit`` submits: one array job, one run per task (docs/scale-out.md)."""

    cluster: str | None = None  # None: submitit picks (SLURM if srun is found, else local); or slurm|local|debug
    partition: str | None = None
    timeout_min: int = 600  # per job; a timed-out run is requeued and resumes (max_num_timeout times)
    gpus_per_node: int = 1
    cpus_per_task: int = 8
    mem_gb: float | None = None
    array_parallelism: int = 64  # at most this many tasks of one array run at once
    max_array_size: int = 1000  # longer lists go out as several arrays (SLURM's MaxArraySize is often 1001)
    max_num_timeout: int = 3
    slurm_additional_parameters: dict = field(default_factory=dict)  # e.g. {account: abc, qos: high}
    setup: list = field(default_factory=list)  # shell lines run before each job, e.g. "module load cuda"


@dataclass
class ExecutorOptions:
    kind: str = "local"  # local | submitit
    workers: int | None = None  # local: parallel runs (None: one per GPU × workers_per_gpu; on CPU one per core, ≤ 8)
    workers_per_gpu: int = 1  # a small run cannot fill a big GPU: several share it
    submitit: SubmititOptions = field(default_factory=SubmititOptions)


@dataclass
class ImportantOptions:
    roles: list = field(default_factory=lambda: list(ROLES))  # chosen from the CE baseline (camri.protocol)
    classes: dict = field(default_factory=dict)  # {dataset: [class names or indices]}: fixed, no choice


@dataclass
class ProtocolOptions:
    accuracy_tolerance: float = 0.005
    min_seeds: int = 1


@dataclass
class Profile:
    """A validated profile (docs/profiles.md). Margins are in radians; ``methods`` maps each loss to its
    axes, each axis a list of values; ``train`` holds TrainConfig fields shared by every run."""

    name: str
    datasets: list
    description: str = ""
    data_dir: str | None = None
    seeds: list = field(default_factory=lambda: [0, 1, 2])
    train: dict = field(default_factory=dict)
    important: ImportantOptions = field(default_factory=ImportantOptions)
    methods: dict = field(default_factory=dict)
    protocol: ProtocolOptions = field(default_factory=ProtocolOptions)
    executor: ExecutorOptions = field(default_factory=ExecutorOptions)
    notebooks: dict = field(default_factory=dict)
    source: str | None = None  # the YAML file it was read from

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def base_config(self) -> TrainConfig:
        """The TrainConfig every run starts from: defaults, then the profile's ``train:`` section."""
        return TrainConfig(**self.train, data_dir=self.data_dir)


def _fail(source: str, key: str, message: str) -> ValueError:
    return ValueError(f"profile {source}: {key}: {message}")


def _check_keys(mapping: Any, allowed, source: str, where: str) -> dict:
    """``mapping`` as a dict (None = empty); any key outside ``allowed`` is an error naming the allowed."""
    if mapping is None:
        return {}
    if not isinstance(mapping, dict):
        raise _fail(source, where or "the file", f"must be a mapping (key: value), got {mapping!r}")
    for key in mapping:
        if key not in allowed:
            raise _fail(source, f"{where}.{key}" if where else str(key),
                        f"unknown key; allowed are {', '.join(map(str, allowed))}")
    return dict(mapping)


def _int(value, source, key, minimum=None, allow_none=False):
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or (minimum is not None and value < minimum):
        allowed = f"an integer >= {minimum}" if minimum is not None else "an integer"
        raise _fail(source, key, f"must be {allowed}{' or null' if allow_none else ''}; got {value!r}")
    return value


def _number(value, source, key, minimum=None, strict=False, allow_none=False):
    if value is None and allow_none:
        return None
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok and minimum is not None:
        ok = value > minimum if strict else value >= minimum
    if not ok:
        bound = "" if minimum is None else f" {'>' if strict else '>='} {minimum}"
        raise _fail(source, key, f"must be a number{bound}{' or null' if allow_none else ''}; got {value!r}")
    return float(value)


def _choice(value, allowed, source, key):
    if value not in allowed:
        shown = ", ".join("null" if a is None else str(a) for a in allowed)
        raise _fail(source, key, f"must be one of {shown}; got {value!r}")
    return value


def _as_list(value, source, key) -> list:
    """A grid axis: one value or a non-empty list of values."""
    values = value if isinstance(value, list) else [value]
    if not values:
        raise _fail(source, key, "must not be an empty list")
    return values


def _dataset_name(value, source, key) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _fail(source, key, f"must be a data set name; got {value!r}")
    if value.startswith("imagefolder:"):
        # Absolute, so that every worker (another cwd, another node) reads the same folder or zip.
        path = Path(value[len("imagefolder:"):]).expanduser()
        return f"imagefolder:{path.absolute()}"
    name = value.strip().lower()
    if name not in camri_data.NAMES:
        raise _fail(source, key, f"unknown data set {value!r}; allowed are {', '.join(camri_data.NAMES)} "
                                 "or imagefolder:PATH")
    return name


def _parse_train(section, source) -> dict:
    allowed = [f.name for f in dataclasses.fields(TrainConfig) if f.name not in GRID_FIELDS]
    train = _check_keys(section, allowed, source, "train")
    defaults = TrainConfig()
    for key, value in train.items():
        default = getattr(defaults, key)
        where = f"train.{key}"
        if key == "image_size":
            _int(value, source, where, minimum=1, allow_none=True)
        elif isinstance(default, bool):
            if not isinstance(value, bool):
                raise _fail(source, where, f"must be true or false; got {value!r}")
        elif isinstance(default, int):
            _int(value, source, where, minimum=1)
        elif isinstance(default, float):
            train[key] = _number(value, source, where)
        elif isinstance(default, str) and not isinstance(value, str):
            raise _fail(source, where, f"must be a string; got {value!r}")
    try:
        TrainConfig(**train).validate()
    except ValueError as error:
        raise ValueError(f"profile {source}: train: {error}") from None
    return train


def _parse_methods(section, source) -> dict:
    methods = _check_keys(section, LOSS_NAMES, source, "methods")
    if not methods:
        raise _fail(source, "methods", f"must name at least one method of {', '.join(LOSS_NAMES)}")
    defaults = TrainConfig()
    parsed = {}
    for loss in METHOD_ORDER:
        if loss not in methods:
            continue
        axes = _check_keys(methods[loss], METHOD_AXES[loss] or ["(none: CE has no hyperparameters)"], source,
                           f"methods.{loss}")
        grid = {}
        for axis in METHOD_AXES[loss]:
            where = f"methods.{loss}.{axis}"
            # An axis left out takes TrainConfig's default (one value), e.g. scale 16.
            values = _as_list(axes.get(axis, getattr(defaults, axis)), source, where)
            if axis == "margin":
                try:
                    values = [parse_margin(v) for v in values]
                except (ValueError, TypeError):
                    raise _fail(source, where, f"margins are radians (0.196) or k·pi/d (4pi/64); "
                                               f"got {axes[axis]!r}") from None
                for m in values:
                    if not 0 <= m < math.pi:
                        raise _fail(source, where, f"a margin must be in [0, pi) radians; got {m}")
            elif axis == "scale":
                values = [_number(v, source, where, minimum=0, strict=True) for v in values]
            elif axis == "weight":
                values = [_number(v, source, where, minimum=0, strict=True) for v in values]
            elif axis == "fp_weight":
                values = [_number(v, source, where, minimum=0) for v in values]
            if len(set(values)) != len(values):
                raise _fail(source, where, f"lists a value twice: {axes.get(axis)!r}")
            grid[axis] = values
        parsed[loss] = grid
    return parsed


def _parse_important(section, datasets, source) -> ImportantOptions:
    raw = _check_keys(section, ("roles", "classes"), source, "important")
    options = ImportantOptions()
    if "roles" in raw:
        roles = _as_list(raw["roles"], source, "important.roles")
        for role in roles:
            _choice(role, ROLES, source, "important.roles")
        options.roles = list(dict.fromkeys(roles))
    given = _check_keys(raw.get("classes"), _AnyKey(), source, "important.classes")
    # Keys are spelled like the entries of `datasets` (normalised the same way: case, absolute paths).
    classes = {}
    for dataset, items in given.items():
        name = _dataset_name(dataset, source, "important.classes")
        if name not in datasets:
            raise _fail(source, f"important.classes.{dataset}", f"is not one of the profile's datasets "
                                                                f"({', '.join(datasets)})")
        classes[name] = items
    for dataset, items in classes.items():
        where = f"important.classes.{dataset}"
        items = _as_list(items, source, where)
        for item in items:
            if isinstance(item, bool) or not isinstance(item, (int, str)) or (isinstance(item, int) and item < 0):
                raise _fail(source, where, f"classes are names or indices >= 0; got {item!r}")
        # Fixed classes take the roles in order (Table 1 reports one class per role; protocol.select_all).
        if len(items) > len(options.roles):
            raise _fail(source, where, f"names {len(items)} classes but important.roles has {len(options.roles)} "
                                       f"({', '.join(options.roles)}): the classes take the roles in order, one each; "
                                       "list more roles or fewer classes")
        classes[dataset] = items
    options.classes = classes
    return options


def _parse_executor(section, source) -> ExecutorOptions:
    raw = _check_keys(section, [f.name for f in dataclasses.fields(ExecutorOptions)], source, "executor")
    options = ExecutorOptions()
    options.kind = _choice(raw.get("kind", options.kind), EXECUTORS, source, "executor.kind")
    options.workers = _int(raw.get("workers"), source, "executor.workers", minimum=1, allow_none=True)
    options.workers_per_gpu = _int(raw.get("workers_per_gpu", 1), source, "executor.workers_per_gpu", minimum=1)
    sub = _check_keys(raw.get("submitit"), [f.name for f in dataclasses.fields(SubmititOptions)], source,
                      "executor.submitit")
    s = SubmititOptions()
    w = "executor.submitit."
    s.cluster = _choice(sub.get("cluster"), CLUSTERS, source, w + "cluster")
    if sub.get("partition") is not None and not isinstance(sub["partition"], str):
        raise _fail(source, w + "partition", f"must be a string or null; got {sub['partition']!r}")
    s.partition = sub.get("partition")
    s.timeout_min = _int(sub.get("timeout_min", s.timeout_min), source, w + "timeout_min", minimum=1)
    s.gpus_per_node = _int(sub.get("gpus_per_node", s.gpus_per_node), source, w + "gpus_per_node", minimum=0)
    s.cpus_per_task = _int(sub.get("cpus_per_task", s.cpus_per_task), source, w + "cpus_per_task", minimum=1)
    s.mem_gb = _number(sub.get("mem_gb"), source, w + "mem_gb", minimum=0, strict=True, allow_none=True)
    s.array_parallelism = _int(sub.get("array_parallelism", s.array_parallelism), source,
                               w + "array_parallelism", minimum=1)
    s.max_array_size = _int(sub.get("max_array_size", s.max_array_size), source, w + "max_array_size", minimum=1)
    s.max_num_timeout = _int(sub.get("max_num_timeout", s.max_num_timeout), source, w + "max_num_timeout",
                             minimum=0)
    extra = sub.get("slurm_additional_parameters") or {}
    if not isinstance(extra, dict):
        raise _fail(source, w + "slurm_additional_parameters", f"must be a mapping; got {extra!r}")
    s.slurm_additional_parameters = extra
    setup = sub.get("setup") or []
    if not isinstance(setup, list) or not all(isinstance(line, str) for line in setup):
        raise _fail(source, w + "setup", f"must be a list of shell lines; got {setup!r}")
    s.setup = setup
    options.submitit = s
    return options


def parse_profile(raw: Any, source: str = "<dict>") -> Profile:
    """Validate a profile given as a dict (the YAML's content). Raises ValueError naming the bad key."""
    allowed = [f.name for f in dataclasses.fields(Profile) if f.name != "source"]
    raw = _check_keys(raw, allowed, source, "")
    for required in ("name", "datasets"):
        if required not in raw:
            raise _fail(source, required, "is required")
    name = raw["name"]
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
        raise _fail(source, "name", f"must be letters, digits, '.', '_' or '-' (it names the results "
                                    f"folder); got {name!r}")
    datasets = [_dataset_name(d, source, "datasets") for d in _as_list(raw["datasets"], source, "datasets")]
    slugs = [dataset_slug(d) for d in datasets]
    if len(set(slugs)) != len(slugs):
        raise _fail(source, "datasets", f"lists a data set twice (run folders {slugs})")
    seeds = raw.get("seeds", [0, 1, 2])
    if isinstance(seeds, int) and not isinstance(seeds, bool):
        seeds = list(range(_int(seeds, source, "seeds", minimum=1)))  # `seeds: 10` = seeds 0..9
    seeds = [_int(s, source, "seeds", minimum=0) for s in _as_list(seeds, source, "seeds")]
    if len(set(seeds)) != len(seeds):
        raise _fail(source, "seeds", f"lists a seed twice: {seeds}")
    data_dir = raw.get("data_dir")
    if data_dir is not None:
        if not isinstance(data_dir, str):
            raise _fail(source, "data_dir", f"must be a path or null; got {data_dir!r}")
        data_dir = str(Path(data_dir).expanduser().absolute())
    description = raw.get("description") or ""
    if not isinstance(description, str):
        raise _fail(source, "description", f"must be a string; got {description!r}")
    protocol = _check_keys(raw.get("protocol"), ("accuracy_tolerance", "min_seeds"), source, "protocol")
    notebooks = _check_keys(raw.get("notebooks"), _AnyKey(), source, "notebooks")
    for nb, params in notebooks.items():
        notebooks[nb] = _check_keys(params, _AnyKey(), source, f"notebooks.{nb}")
    important = _parse_important(raw.get("important"), datasets, source)
    if not important.roles and any(d not in important.classes for d in datasets):
        raise _fail(source, "important.roles", "is empty, so important.classes must list every data set")
    return Profile(
        name=name, datasets=datasets, description=description, data_dir=data_dir, seeds=seeds,
        train=_parse_train(raw.get("train"), source),
        important=important,
        methods=_parse_methods(raw.get("methods", {"ce": {}}), source),
        protocol=ProtocolOptions(
            accuracy_tolerance=_number(protocol.get("accuracy_tolerance", 0.005), source,
                                       "protocol.accuracy_tolerance", minimum=0),
            min_seeds=_int(protocol.get("min_seeds", 1), source, "protocol.min_seeds", minimum=1)),
        executor=_parse_executor(raw.get("executor"), source),
        notebooks=notebooks,
        source=source,
    )


class _AnyKey:
    """``allowed`` for free-form mappings (notebook parameters)."""

    def __contains__(self, key) -> bool:
        return isinstance(key, str)

    def __iter__(self):
        return iter(["any name"])


def shipped_profiles() -> list[str]:
    return sorted(p.stem for p in PROFILE_DIR.glob("*.yaml"))


def load_profile(name_or_path: str | os.PathLike | Profile) -> Profile:
    """A shipped profile by name (``demo``, ``cpu``, ``paper``) or a YAML file by path, validated.

    Raises ValueError for an unknown name, a missing file, unknown keys or bad values (naming the key and
    what is allowed)."""
    if isinstance(name_or_path, Profile):
        return name_or_path
    text = str(name_or_path)
    looks_like_path = isinstance(name_or_path, os.PathLike) or text.endswith((".yaml", ".yml")) or os.sep in text
    path = Path(text).expanduser() if looks_like_path else PROFILE_DIR / f"{text}.yaml"
    if not path.is_file():
        if looks_like_path:
            raise ValueError(f"profile file {path} does not exist")
        raise ValueError(f"unknown profile {text!r}: shipped are {', '.join(shipped_profiles())}, "
                         "or give the path of a YAML file")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise ValueError(f"profile {path}: not valid YAML: {error}") from None
    return parse_profile(raw, str(path))


def default_results_root() -> Path:
    """``<repo>/results`` in a source checkout (the folder above the package holds pyproject.toml), else
    ``./results``."""
    repo = Path(__file__).resolve().parent.parent
    if (repo / "pyproject.toml").is_file() and os.access(repo, os.W_OK):
        return repo / "results"
    return Path.cwd() / "results"


def profile_dir(profile: Profile, results_dir: str | os.PathLike | None = None) -> Path:
    """``<results_dir>/<profile name>``: where a profile's runs, profile.json and jobs.json live.
    ``results_dir`` is the results *root* (default ``default_results_root()``)."""
    root = Path(results_dir).expanduser().absolute() if results_dir is not None else default_results_root()
    return root / profile.name


def save_profile(profile: Profile, results_dir=None) -> Path:
    """Write the resolved profile to ``<profile dir>/profile.json``, so results carry their configuration."""
    return atomic_write_json(profile_dir(profile, results_dir) / "profile.json", profile.to_dict())


# ---- run specs and slugs -------------------------------------------------------------------------------

@dataclass
class RunSpec:
    """One training run: its config, its directory, the stage it belongs to, and its key (the directory
    relative to ``<profile dir>/runs``, e.g. ``digits/camri/c3_m4pi64_s16/seed0``)."""

    config: TrainConfig
    out_dir: Path
    stage: str
    key: str

    def to_json(self) -> str:
        return json.dumps({"config": dataclasses.asdict(self.config), "out_dir": str(self.out_dir),
                           "stage": self.stage, "key": self.key})

    @classmethod
    def from_json(cls, text: str) -> RunSpec:
        d = json.loads(text)
        return cls(TrainConfig(**d["config"]), Path(d["out_dir"]), d["stage"], d["key"])


def dataset_slug(dataset: str) -> str:
    """The run-folder name of a data set: itself, or for ``imagefolder:<path>`` the file or folder name
    (``cifar10-jpeg`` for ``imagefolder:/data/cifar10-jpeg.zip``)."""
    if dataset.startswith("imagefolder:"):
        stem = Path(dataset[len("imagefolder:"):]).name
        stem = stem[:-4] if stem.lower().endswith(".zip") else stem
        return re.sub(r"[^A-Za-z0-9._-]", "_", stem) or "imagefolder"
    return dataset


def _number_slug(value: float) -> str:
    return f"{value:g}"


def margin_slug(radians: float) -> str:
    """``4pi64`` for 4π/64 (multiples of π/64 up to 3 decimals, e.g. ``4.5pi64``), else radians ``0.2rad``."""
    k = radians * 64 / math.pi
    if abs(k - round(k, 3)) < 1e-9:
        return f"{round(k, 3):g}pi64"
    return f"{radians:.6g}rad"


def setting_slug(loss: str, important: list[int], values: dict) -> str:
    """``default`` (CE), ``m5pi64_s8`` (ArcFace), ``s16`` (L2-softmax), ``c3_m4pi64_s16`` (CAMRI),
    ``c3_w2`` (WCE), ``c3_w2_fp1`` (CRWWCE)."""
    parts = [f"c{'-'.join(map(str, important))}"] if loss in IMPORTANT_LOSSES else []
    for axis in METHOD_AXES[loss]:
        value = values[axis]
        if axis == "margin":
            parts.append("m" + margin_slug(value))
        elif axis == "scale":
            parts.append("s" + _number_slug(value))
        elif axis == "weight":
            parts.append("w" + _number_slug(value))
        elif axis == "fp_weight":
            parts.append("fp" + _number_slug(value))
    return "_".join(parts) or "default"


def _axis_product(grid: dict) -> list[dict]:
    settings = [{}]
    for axis, values in grid.items():
        settings = [{**s, axis: v} for s in settings for v in values]
    return settings


def _spec(profile: Profile, root: Path, stage: str, dataset: str, loss: str, important: list[int],
          values: dict, seed: int) -> RunSpec:
    fields = {"dataset": dataset, "loss": loss, "seed": seed,
              "important": list(important) if loss in IMPORTANT_LOSSES else []}
    for axis, value in values.items():
        # TrainConfig keeps margins as a list (one per important class); the grid has one per run.
        fields[axis] = [value] if axis == "margin" else value
    config = dataclasses.replace(profile.base_config(), **fields)
    key = f"{dataset_slug(dataset)}/{loss}/{setting_slug(loss, important, values)}/seed{seed}"
    return RunSpec(config=config, out_dir=root / "runs" / key, stage=stage, key=key)


def expand(profile: Profile | str, stage: str = "all", important: dict | None = None,
           results_dir=None) -> list[RunSpec]:
    """The runs of ``stage`` (``baseline``, ``methods`` or ``all``), deduplicated by run directory.

    baseline: CE × data set × seed. methods: every other method of the profile; CE is not repeated (the
    methods stage reuses the baseline); ArcFace and L2-softmax runs are shared by every important class,
    CAMRI, WCE and CRWWCE run per important class. ``important`` maps each data set to its class indices;
    None asks ``choose_important`` (which needs the finished baseline unless the profile fixes them).
    """
    profile = load_profile(profile)
    if stage not in STAGES + ("all",):
        raise ValueError(f"unknown stage {stage!r}: allowed are {', '.join(STAGES)}, all")
    root = profile_dir(profile, results_dir)
    specs: dict[str, RunSpec] = {}

    def add(spec: RunSpec) -> None:
        # Two settings that print to the same slug (e.g. margins equal to 6 digits) must not share a folder.
        if spec.key in specs and specs[spec.key].config != spec.config:
            raise ValueError(f"two different runs map to the folder {spec.key}: make the grid values differ more")
        specs.setdefault(spec.key, spec)

    if stage in ("baseline", "all"):
        for dataset in profile.datasets:
            for seed in profile.seeds:
                add(_spec(profile, root, "baseline", dataset, "ce", [], {}, seed))
    if stage in ("methods", "all"):
        if important is None:
            important = choose_important(profile, results_dir)
        for dataset in profile.datasets:
            classes = [int(c) for c in important.get(dataset, [])]
            for loss in METHOD_ORDER:
                if loss == "ce" or loss not in profile.methods:
                    continue
                # Class-independent losses run once; class-specific ones once per important class.
                groups = [[c] for c in classes] if loss in IMPORTANT_LOSSES else [[]]
                for group in groups:
                    for values in _axis_product(profile.methods[loss]):
                        for seed in profile.seeds:
                            add(_spec(profile, root, "methods", dataset, loss, group, values, seed))
    return list(specs.values())


def _class_names(profile: Profile, dataset: str) -> list[str]:
    return camri_data.load(dataset, data_dir=profile.data_dir, image_size=profile.train.get("image_size")).classes


class BaselineNotFinished(RuntimeError):
    """The important classes are chosen from the CE baseline, which is not finished yet."""


def choose_important(profile: Profile | str, results_dir=None, *, record: bool = True) -> dict[str, list[int]]:
    """The important classes of each data set, ``{dataset: [class indices]}``.

    ``important.classes`` of the profile fixes them (names are resolved with the data set's class names);
    otherwise they are the roles ``important.roles`` (worst1, worst2, median) chosen by
    ``camri.protocol.choose_important`` from the profile's finished CE baseline. Raises
    BaselineNotFinished while a baseline run is missing. With ``record``, writes the choice with each
    class's role to ``<profile dir>/important.json``.
    """
    profile = load_profile(profile)
    root = profile_dir(profile, results_dir)
    chosen: dict[str, list[int]] = {}
    record_rows: dict[str, list[dict]] = {}
    for dataset in profile.datasets:
        if dataset in profile.important.classes:
            items = profile.important.classes[dataset]
            # Names need the data set's class list; plain indices do not (train checks their range).
            indices = items if all(isinstance(i, int) for i in items) else resolve_important(
                items, _class_names(profile, dataset))
            chosen[dataset] = list(dict.fromkeys(int(i) for i in indices))
            record_rows[dataset] = [{"role": role, "class_index": int(i), "fixed": True}
                                    for role, i in zip(profile.important.roles, chosen[dataset])]
            continue
        baseline = [s for s in expand(profile, "baseline", results_dir=results_dir) if s.config.dataset == dataset]
        missing = [s.key for s in baseline if not (s.out_dir / "summary.json").is_file()]
        if missing:
            raise BaselineNotFinished(
                f"the important classes of {dataset} are chosen from its CE baseline, and {len(missing)} of its "
                f"{len(baseline)} runs are not finished (e.g. {missing[0]}): run the baseline stage first, or "
                "fix important.classes in the profile")
        from camri import protocol  # pandas/scipy: imported only when a choice is made

        runs = protocol.load_runs(root / "runs" / dataset_slug(dataset) / "ce")
        # Only this profile's baseline (its seeds), even if other CE runs were left in the folder.
        runs = runs[runs["path"].isin([str(s.out_dir) for s in baseline])]
        table = protocol.choose_important(runs, dataset).set_index("role")
        rows = [{"role": role, "class_index": int(table.loc[role, "class_index"]),
                 "class_name": str(table.loc[role, "class_name"]),
                 "recall_mean": float(table.loc[role, "recall_mean"])} for role in profile.important.roles]
        chosen[dataset] = list(dict.fromkeys(r["class_index"] for r in rows))
        record_rows[dataset] = rows
    if record:
        atomic_write_json(root / "important.json", record_rows)
    return chosen


# ---- one run in this process ---------------------------------------------------------------------------

class _RunLock:
    """An exclusive ``flock`` on ``<run dir>/.grid.lock`` held while a run trains.

    The kernel drops it when the process dies (crash, SIGKILL, preemption), so a live lock means a live
    run: ``status`` probes it, and a second worker given the same run (two ``camri grid`` at once, a
    duplicate submission) backs off instead of training it twice. The file holds host and pid for people.
    On file systems without flock (some NFS mounts) locking is skipped and status falls back to the pid.
    """

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / LOCK_NAME
        self.fd: int | None = None

    def acquire(self, wait_s: float = 10.0) -> bool:
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                # status() holds it for microseconds when probing: retry a little before giving up.
                if time.monotonic() > deadline:
                    os.close(self.fd)
                    self.fd = None
                    return False
                time.sleep(0.2)
            except OSError as error:
                if error.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                    raise
                break  # no locking on this file system
        self.stamp()
        return True

    def stamp(self) -> None:
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, f"{socket.gethostname()} {os.getpid()}\n".encode(), 0)

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing drops the flock; the file stays (removing it would race)
            self.fd = None


def _lock_holder(run_dir: Path) -> str | None:
    """``"host pid"`` of the live process training ``run_dir``, or None."""
    import fcntl

    path = Path(run_dir) / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        holder = os.read(fd, 200).decode(errors="replace").strip() or "?"
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return holder.replace(" ", ":")
        except OSError:
            host, _, pid = holder.partition(" ")  # no flock here: trust a live pid on this host
            return holder if host == socket.gethostname() and pid.isdigit() and _pid_alive(int(pid)) else None
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class _NoBarTqdm(tqdm):
    """tqdm without bars: a run's log file gets the per-epoch lines (``tqdm.write``), not bar redraws."""

    def __init__(self, *args, **kwargs):
        kwargs["disable"] = True
        super().__init__(*args, **kwargs)


def execute_spec(spec: RunSpec, lock: _RunLock | None = None) -> str:
    """Train ``spec`` in this process, under its run lock (``lock``: one already held); output goes to
    the current stdout/stderr.

    Returns ``"done"``, or ``"busy"`` when another live process holds the run. Exceptions propagate."""
    from camri import train as camri_train

    if lock is None:
        lock = _RunLock(spec.out_dir)
        if not lock.acquire():
            print(f"camri grid: {spec.key} is being trained by another process ({_lock_holder(spec.out_dir)}); "
                  "leaving it to that one", file=sys.stderr, flush=True)
            return "busy"
    saved_tqdm = camri_train.tqdm
    try:
        stamp = datetime.datetime.now().isoformat(timespec="seconds")
        gpus = os.environ.get("CUDA_VISIBLE_DEVICES")
        print(f"== camri grid: {spec.key} on {socket.gethostname()}, pid {os.getpid()}, {stamp}"
              + (f", CUDA_VISIBLE_DEVICES={gpus}" if gpus is not None else ""), file=sys.stderr, flush=True)
        camri_train.tqdm = _NoBarTqdm  # this process does nothing else; see _NoBarTqdm
        wall, cpu = time.perf_counter(), time.process_time()
        summary = camri_train.train(spec.config, spec.out_dir)
        print(f"== camri grid: {spec.key} done: accuracy {summary['accuracy']:.4f}, "
              f"{time.perf_counter() - wall:.1f} s wall, {time.process_time() - cpu:.1f} s CPU",
              file=sys.stderr, flush=True)
        return "done"
    finally:
        camri_train.tqdm = saved_tqdm
        lock.release()


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def _local_worker(spec_json: str, cuda_devices: str | None, threads: int) -> None:
    """The body of one local worker process: one run, its output appended to ``<run dir>/log.txt``.

    The process is forked from multiprocessing's fork server, which has torch imported already: a worker
    starts in milliseconds instead of seconds, and is still a process of its own (a crash, a kill or an
    out-of-memory error ends only this run). Exit status 0: done; _BUSY_EXIT: another process trains it.
    """
    import signal

    # The pool stops its workers with SIGTERM (Ctrl-C, a failure of the pool): log it as an interruption,
    # and let train's atomic writes clean up, as for Ctrl-C.
    signal.signal(signal.SIGTERM, _raise_interrupt)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    if cuda_devices is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = cuda_devices  # read when CUDA starts, which is after this
    import torch

    torch.set_num_threads(threads)  # OpenMP read OMP_NUM_THREADS when the server imported torch
    spec = RunSpec.from_json(spec_json)
    lock = _RunLock(spec.out_dir)
    if not lock.acquire(wait_s=2.0):
        sys.exit(_BUSY_EXIT)
    # Send this process's output, Python's and native code's alike, to the log (appended on every attempt).
    log = os.open(spec.out_dir / LOG_NAME, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(log)
    sys.stdout = open(1, "w", buffering=1, encoding="utf-8", errors="replace", closefd=False)
    sys.stderr = open(2, "w", buffering=1, encoding="utf-8", errors="replace", closefd=False)
    code = 0
    try:
        execute_spec(spec, lock)
    except KeyboardInterrupt:
        print("== camri grid: interrupted; the run resumes from its checkpoint next time", file=sys.stderr)
        code = 130
    except BaseException:
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    sys.exit(code)


# ---- local executor ------------------------------------------------------------------------------------

def _visible_gpus(device: str) -> list[str]:
    """GPU ids the workers can be pinned to: CUDA_VISIBLE_DEVICES's entries, or 0..count-1; none for CPU runs."""
    if device in ("cpu", "mps"):
        return []
    import torch

    count = torch.cuda.device_count()
    if count == 0:
        return []
    listed = [d.strip() for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    return listed[:count] if listed else [str(i) for i in range(count)]


#: The CPU default of the local executor: one single-threaded worker per core, up to this many. On 2 cores
#: two 1-thread runs train +14% (width 0.25) to +43% (width 0.125) more images/s than one 2-thread run
#: (docs/performance.md); beyond 8 workers, memory (each holds its data set) and the unmeasured many-core
#: case argue for several threads per worker instead.
CPU_WORKERS_MAX = 8


def worker_slots(workers: int | None, workers_per_gpu: int = 1, device: str = "auto") -> list[str | None]:
    """One entry per parallel worker: the CUDA_VISIBLE_DEVICES value it gets (None: no GPU).

    Default: ``workers_per_gpu`` workers on each GPU; without GPUs one worker per core, at most
    CPU_WORKERS_MAX (each then gets cores // workers threads, see _threads_per_worker). Workers are dealt
    round robin over the GPUs, so 4 workers on 2 GPUs put 2 on each."""
    gpus = _visible_gpus(device)
    if workers is None:
        workers = len(gpus) * workers_per_gpu if gpus else min(os.cpu_count() or 1, CPU_WORKERS_MAX)
    return [gpus[i % len(gpus)] if gpus else None for i in range(workers)]


def _threads_per_worker(n_workers: int) -> int:
    # Share the cores: N workers each with all cores' threads would oversubscribe them.
    if os.environ.get("OMP_NUM_THREADS", "").isdigit():
        return max(1, int(os.environ["OMP_NUM_THREADS"]))
    return max(1, (os.cpu_count() or 1) // n_workers)


def _fork_context():
    """multiprocessing's fork server, with torch and camri imported once in it (see _local_worker)."""
    import multiprocessing

    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["camri.train", "camri.grid"])
    return context


def run_local(specs: list[RunSpec], workers: int | None = None, workers_per_gpu: int = 1,
              bar: tqdm | None = None) -> dict[str, str]:
    """Run ``specs`` in worker processes, at most len(slots) at a time. Returns {key: done|failed|busy}."""
    device = specs[0].config.device if specs else "auto"
    slots = worker_slots(workers, workers_per_gpu, device)
    threads = _threads_per_worker(len(slots))
    context = _fork_context()
    queue = list(specs)
    running: dict[int, tuple[Any, RunSpec]] = {}
    outcome: dict[str, str] = {}

    def finish(spec: RunSpec, result: str) -> None:
        outcome[spec.key] = result
        if bar is not None:
            bar.update(1)
            bar.set_postfix(failed=sum(v == "failed" for v in outcome.values()), refresh=False)

    # SIGTERM (`kill`, `timeout`, a batch system stopping this command) must stop the workers too, as
    # Ctrl-C does: they are the fork server's children, not ours, and would otherwise train on unwatched.
    import signal
    import threading

    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _raise_interrupt) if in_main else None
    try:
        while queue or running:
            for slot in range(len(slots)):
                if slot in running or not queue:
                    continue
                spec = queue.pop(0)
                if _lock_holder(spec.out_dir):  # another pool, or a submitit job, trains it now
                    finish(spec, "busy")
                    continue
                spec.out_dir.mkdir(parents=True, exist_ok=True)
                process = context.Process(target=_local_worker, args=(spec.to_json(), slots[slot], threads),
                                          name=f"camri-grid {spec.key}")
                process.start()
                running[slot] = (process, spec)
            time.sleep(0.1)
            for slot, (process, spec) in list(running.items()):
                if process.is_alive():
                    continue
                process.join()
                del running[slot]
                if process.exitcode == _BUSY_EXIT:
                    finish(spec, "busy")
                else:
                    finish(spec, "done" if (spec.out_dir / "summary.json").is_file() else "failed")
    finally:
        # Interrupted (Ctrl-C reaches the workers too) or failed: stop the workers, keep their checkpoints.
        for process, _ in running.values():
            if process.is_alive():
                process.terminate()
        for process, _ in running.values():
            process.join(timeout=30)
            if process.is_alive():
                process.kill()
                process.join()
        if in_main:
            signal.signal(signal.SIGTERM, previous)
    return outcome


# ---- submitit executor ---------------------------------------------------------------------------------

class GridTask(submitit.helpers.Checkpointable):
    """One run as a submitit job: trains it with output appended to ``<run dir>/log.txt``.

    On preemption or timeout submitit calls ``checkpoint()``, which requeues this same task: the requeued
    job calls ``train`` again, and train resumes from checkpoint.pt (written after every epoch), so at
    most one epoch is lost. The task holds no state of its own: the run directory is the state.
    """

    def __init__(self, spec: RunSpec):
        self.spec = spec

    def __call__(self) -> str:
        spec = self.spec
        threads = os.environ.get("SLURM_CPUS_PER_TASK")
        if threads and "OMP_NUM_THREADS" not in os.environ:
            import torch

            torch.set_num_threads(int(threads))  # else torch counts every core of the node
        spec.out_dir.mkdir(parents=True, exist_ok=True)
        with open(spec.out_dir / LOG_NAME, "a", buffering=1, encoding="utf-8") as log, \
                contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
            try:
                return execute_spec(spec)
            except Exception:
                traceback.print_exc()  # into log.txt; submitit also keeps it in its own log and result
                raise
            except BaseException as stop:  # SystemExit when submitit requeues the job, KeyboardInterrupt
                print(f"== camri grid: interrupted ({type(stop).__name__}); the run resumes from its checkpoint",
                      file=sys.stderr)
                raise

    def checkpoint(self, *args, **kwargs) -> submitit.helpers.DelayedSubmission:
        return submitit.helpers.DelayedSubmission(GridTask(self.spec))


def _jobs_path(root: Path) -> Path:
    return root / JOBS_FILE


def read_jobs(root: Path) -> dict:
    """``{run key: {job_id, cluster, folder, submitted}}`` of the submitit jobs of a profile (jobs.json)."""
    path = _jobs_path(root)
    return read_json(path).get("jobs", {}) if path.is_file() else {}


@contextlib.contextmanager
def _jobs_file_lock(root: Path):
    """Serialise read-modify-write of jobs.json between submitters (two `camri grid` at once)."""
    import fcntl

    root.mkdir(parents=True, exist_ok=True)
    fd = os.open(root / (JOBS_FILE + ".lock"), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _record_jobs(root: Path, entries: dict) -> None:
    with _jobs_file_lock(root):
        jobs = read_jobs(root)
        jobs.update(entries)
        atomic_write_json(_jobs_path(root), {"jobs": jobs})  # atomic: readers never see half a file


def make_submitit_executor(options: SubmititOptions, root: Path, profile_name: str):
    """A ``submitit.AutoExecutor`` writing its files to ``<profile dir>/submitit/<job id>/``."""
    executor = submitit.AutoExecutor(folder=root / "submitit" / "%j", cluster=options.cluster,
                                     slurm_max_num_timeout=options.max_num_timeout,
                                     local_max_num_timeout=options.max_num_timeout)
    parameters = dict(name=f"camri-{profile_name}", timeout_min=options.timeout_min,
                      gpus_per_node=options.gpus_per_node, cpus_per_task=options.cpus_per_task,
                      nodes=1, tasks_per_node=1, mem_gb=options.mem_gb,
                      slurm_array_parallelism=options.array_parallelism,
                      slurm_additional_parameters=dict(options.slurm_additional_parameters))
    if options.partition:
        parameters["slurm_partition"] = options.partition
    if options.setup:
        parameters["slurm_setup"] = list(options.setup)
    executor.update_parameters(**parameters)
    return executor


def submit_submitit(specs: list[RunSpec], options: SubmititOptions, root: Path, profile_name: str) -> dict:
    """Submit ``specs`` as job arrays (one run per task, at most ``max_array_size`` tasks per array); record
    ``{key: job}`` in jobs.json after each array and return the jobs."""
    submitted = {}
    if not specs:
        return submitted
    executor = make_submitit_executor(options, root, profile_name)
    if executor.cluster == "local" and len(specs) > options.array_parallelism:
        # submitit's LocalExecutor starts every job at once: 2,000 runs would be 2,000 processes.
        found = "" if options.cluster == "local" else " (SLURM was not found here: no srun on PATH)"
        raise ValueError(f"submitit's local cluster{found} would start all {len(specs)} runs at once, more than "
                         f"executor.submitit.array_parallelism = {options.array_parallelism}: use "
                         "--executor local (a pool of workers) on this machine")
    for start in range(0, len(specs), options.max_array_size):
        chunk = specs[start:start + options.max_array_size]
        jobs = executor.submit_array([GridTask(spec) for spec in chunk])
        stamp = datetime.datetime.now().isoformat(timespec="seconds")
        # Recorded per array, so an error in a later sbatch still leaves the earlier arrays known.
        _record_jobs(root, {spec.key: {"job_id": str(job.job_id), "cluster": executor.cluster,
                                       "folder": str(job.paths.folder), "submitted": stamp}
                            for spec, job in zip(chunk, jobs)})
        submitted.update({spec.key: job for spec, job in zip(chunk, jobs)})
    return submitted


# SLURM states of a job that is queued or running (anything else has ended).
_SLURM_LIVE = {"PENDING", "RUNNING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD", "CONFIGURING", "COMPLETING",
               "SUSPENDED", "RESIZING", "STAGE_OUT", "SIGNALING", "RESV_DEL_HOLD", "SPECIAL_EXIT", "PREEMPTED"}
#: A job sacct does not list yet (just submitted) counts as in flight for this long after its submission.
_SACCT_GRACE_S = 600


def job_states(jobs: dict) -> dict[str, tuple[bool | None, str]]:
    """``{run key: (in flight?, state text)}`` for recorded submitit jobs; in flight None when it cannot be
    known (sacct unavailable, or it forgot an old job). One sacct call covers every SLURM job."""
    states: dict[str, tuple[bool | None, str]] = {}
    slurm = {key: entry for key, entry in jobs.items() if entry.get("cluster") == "slurm"}
    if slurm:
        from submitit.slurm.slurm import SlurmInfoWatcher

        watcher = SlurmInfoWatcher(delay_s=0)  # our own watcher: one call now, not one per job
        for entry in slurm.values():
            watcher.register_job(str(entry["job_id"]))
        watcher.update()  # logs a warning and leaves every state UNKNOWN when sacct fails
        now = time.time()
        for key, entry in slurm.items():
            state = (watcher.get_state(str(entry["job_id"]), mode="cache") or "UNKNOWN").split()[0].upper()
            if state == "UNKNOWN":
                try:
                    age = now - datetime.datetime.fromisoformat(entry.get("submitted", "")).timestamp()
                except ValueError:
                    age = math.inf
                states[key] = (True, "SUBMITTED") if age < _SACCT_GRACE_S else (None, state)
            else:
                states[key] = (state in _SLURM_LIVE, state)
    for key, entry in jobs.items():
        if key in states:
            continue
        job_id = str(entry.get("job_id"))
        if entry.get("cluster") == "local":
            # The LocalExecutor's job id is the pid of its controller process on the submitting machine.
            if (Path(entry["folder"]) / f"{job_id}_0_result.pkl").exists():
                states[key] = (False, "FINISHED")
            else:
                alive = job_id.isdigit() and _pid_alive(int(job_id)) and _is_local_controller(job_id)
                states[key] = (alive, "RUNNING" if alive else "ENDED")
        else:
            states[key] = (False, "FINISHED")  # debug: ran inside the submitting process
    return states


def _is_local_controller(pid: str) -> bool:
    """Is ``pid`` a live (not zombie) submitit local controller? Guards against a reused pid. Without
    /proc (macOS) a live pid is taken at its word."""
    proc = Path(f"/proc/{pid}")
    if not Path("/proc/self").exists():
        return True
    try:
        state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        return state != "Z" and b"submitit.local._local" in (proc / "cmdline").read_bytes()
    except (OSError, IndexError):
        return False


def wait_submitit(jobs: dict, specs: dict[str, RunSpec], bar: tqdm | None = None, poll_s: float = 1.0) -> dict:
    """Wait for every job; return {key: done|failed}. The bar advances as runs finish."""
    outcome: dict[str, str] = {}
    while len(outcome) < len(jobs):
        for key, job in jobs.items():
            if key in outcome:
                continue
            finished = (specs[key].out_dir / "summary.json").is_file()
            if finished or job.done():
                outcome[key] = "done" if (specs[key].out_dir / "summary.json").is_file() else "failed"
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(failed=sum(v == "failed" for v in outcome.values()), refresh=False)
        if len(outcome) < len(jobs):
            # SLURM's state comes from sacct, which submitit caches; poll less often there.
            time.sleep(poll_s if all(isinstance(j, submitit.LocalJob) for j in jobs.values()) else max(poll_s, 30))
    return outcome


# ---- status --------------------------------------------------------------------------------------------

@dataclass
class StatusRow:
    key: str
    stage: str
    state: str  # done | running | failed | pending
    log: Path | None  # <run dir>/log.txt when it exists
    detail: str = ""  # done: accuracy; running: who; failed: the last error line


def _last_error_line(log: Path) -> str:
    """Why the latest attempt of a run stopped: the last exception line of its log after the latest
    "== camri grid:" start line, or "" (a killed process leaves none)."""
    try:
        with open(log, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 50000))
            lines = [line.strip() for line in f.read().decode(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    starts = [i for i, line in enumerate(lines) if line.startswith("== camri grid:") and " on " in line]
    for line in reversed(lines[starts[-1] if starts else 0:]):
        if re.match(r"^[\w.]+(Error|Exception|Interrupt|Exit)\b", line) or "interrupted" in line:
            return line
    return ""


def _epochs_done(run_dir: Path) -> int:
    try:
        with open(run_dir / "metrics.csv") as f:
            return max(0, sum(1 for line in f if line.strip()) - 1)
    except OSError:
        return 0


def run_state(spec: RunSpec, job: dict | None = None, job_state: tuple[bool | None, str] | None = None) -> StatusRow:
    """The state of one run from its directory, its lock and its recorded submitit job (``job``, an entry
    of jobs.json, with its ``job_state`` from ``job_states``; computed here when not given)."""
    out = spec.out_dir
    log = out / LOG_NAME
    log_path = log if log.is_file() else None
    if (out / "summary.json").is_file():
        with contextlib.suppress(OSError, ValueError, KeyError):
            return StatusRow(spec.key, spec.stage, "done", log_path,
                             f"accuracy {read_json(out / 'summary.json')['accuracy']:.4f}")
        return StatusRow(spec.key, spec.stage, "done", log_path)
    holder = _lock_holder(out)
    if holder:
        return StatusRow(spec.key, spec.stage, "running", log_path,
                         f"pid {holder}, epoch {_epochs_done(out)}/{spec.config.epochs} done")
    if job is not None and job_state is None:
        job_state = job_states({spec.key: job})[spec.key]
    live, state = job_state if job is not None else (False, "")
    if live:
        return StatusRow(spec.key, spec.stage, "running", log_path, f"{job['cluster']} job {job['job_id']} {state}")
    if log_path is None and (job is None or live is None):
        # Never started here, and no job known to have ended: still to do (or lost track of, e.g. sacct
        # forgot an old job: re-running submits it again, and the lock keeps one process on it).
        return StatusRow(spec.key, spec.stage, "pending", None, f"{job['cluster']} job {job['job_id']} {state}"
                         if job is not None else "")
    if log_path is None:
        reason = f"{job['cluster']} job {job['job_id']} ended ({state}) before the run started; see {job['folder']}"
    else:
        reason = _last_error_line(log) or "stopped without an error message (killed?)"
    return StatusRow(spec.key, spec.stage, "failed", log_path,
                     f"{reason} [after epoch {_epochs_done(out)}/{spec.config.epochs}]")


def status(profile: Profile | str, results_dir=None) -> list[StatusRow]:
    """One row per run of the profile (baseline, then methods), with its state. The methods stage is
    listed once its important classes are known (fixed, or the CE baseline finished)."""
    profile = load_profile(profile)
    root = profile_dir(profile, results_dir)
    specs = expand(profile, "baseline", results_dir=results_dir)
    with contextlib.suppress(BaselineNotFinished):
        specs += expand(profile, "methods", choose_important(profile, results_dir, record=False),
                        results_dir=results_dir)
    return _states(specs, read_jobs(root))


def _states(specs: list[RunSpec], jobs: dict) -> list[StatusRow]:
    # Ask the cluster only about the jobs of unfinished runs: finished ones are known from their folder.
    unfinished = {s.key: jobs[s.key] for s in specs if s.key in jobs and not (s.out_dir / "summary.json").is_file()}
    states = job_states(unfinished)
    return [run_state(spec, unfinished.get(spec.key), states.get(spec.key)) for spec in specs]


def count_runs(profile: Profile | str, results_dir=None) -> dict:
    """How many runs the profile has: ``{"baseline": n, "methods": n, "total": n, "by_method": {loss: n},
    "assumed_classes": bool}``. Before the baseline has chosen them, each data set is assumed to get
    len(important.roles) distinct important classes (``assumed_classes`` True)."""
    profile = load_profile(profile)
    try:
        important, assumed = choose_important(profile, results_dir, record=False), False
    except BaselineNotFinished:
        important = {d: profile.important.classes.get(d, list(range(len(profile.important.roles))))
                     for d in profile.datasets}
        important = {d: list(range(len(v))) if any(isinstance(c, str) for c in v) else v
                     for d, v in important.items()}
        assumed = True
    specs = expand(profile, "all", important, results_dir=results_dir)
    by_method = {loss: sum(s.config.loss == loss for s in specs) for loss in METHOD_ORDER
                 if any(s.config.loss == loss for s in specs)}
    baseline = sum(s.stage == "baseline" for s in specs)
    return {"baseline": baseline, "methods": len(specs) - baseline, "total": len(specs),
            "by_method": by_method, "assumed_classes": assumed}


def methods_known(profile: Profile, results_dir=None) -> bool:
    try:
        choose_important(profile, results_dir, record=False)
    except BaselineNotFinished:
        return False
    return True


# ---- run -----------------------------------------------------------------------------------------------

@dataclass
class GridReport:
    """What ``run`` did. ``complete``: every run of the requested stages is finished."""

    profile: str
    root: Path
    total: int = 0  # runs of the stages that could be expanded
    done: list = field(default_factory=list)  # keys finished (before or now)
    failed: list = field(default_factory=list)  # (key, log path) of runs that stopped without summary
    running: list = field(default_factory=list)  # keys submitted or already in flight, not waited for
    waiting: list = field(default_factory=list)  # stages that could not be expanded yet, with why
    important: dict = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        return not (self.failed or self.running or self.waiting)

    def summary(self) -> str:
        lines = [f"{self.profile}: {len(self.done)} of {self.total} runs done, {len(self.failed)} failed, "
                 f"{len(self.running)} in flight ({self.root})"]
        lines += [f"  failed: {key}  log: {log}" for key, log in self.failed]
        lines += [f"  waiting: {why}" for why in self.waiting]
        return "\n".join(lines)


def _check_stored_configs(specs: list[RunSpec]) -> None:
    """Stop before launching anything when a run folder holds a run of another configuration (the profile
    was edited after runs were made): every such run would fail, one by one, after its start-up."""
    conflicts = []
    for spec in specs:
        path = spec.out_dir / "config.json"
        if not path.is_file():
            continue
        stored = read_json(path).get("config", {})
        mine = spec.config.identity()
        diff = sorted(k for k, v in mine.items() if stored.get(k) != v)
        if diff:
            conflicts.append(f"{spec.key} ({', '.join(diff)})")
    if conflicts:
        raise ValueError(f"{len(conflicts)} run folders hold runs of another configuration, e.g. {conflicts[0]}: "
                         "the profile changed after they ran. Give the profile another name, or delete those "
                         "folders to start them over.")


def check_data(profile: Profile) -> None:
    """camri.data.check_available for every data set of the profile: raises DataError (with the fix) at
    once, not after hours of CE runs."""
    for dataset in profile.datasets:
        camri_data.check_available(dataset, profile.data_dir, image_size=profile.train.get("image_size"))


def run(profile: Profile | str, stages=STAGES, executor: str | None = None, wait: bool = True, *,
        workers: int | None = None, results_dir=None, progress: bool = True) -> GridReport:
    """Train the runs of ``stages`` that are not finished, and report.

    Finished runs (summary.json) are not launched, nor are runs already in flight (a live lock or a
    submitit job queued or running). ``executor``: ``local`` or ``submitit`` (default: the profile's).
    With submitit and ``wait=False`` the runs are submitted and ``run`` returns; run it again later to
    submit what is still missing, including the methods stage once the baseline has finished (its
    important classes come from the baseline). ``workers`` overrides the profile's local worker count.
    """
    profile = load_profile(profile)
    stages = (stages,) if isinstance(stages, str) else tuple(stages)
    if "all" in stages:
        stages = STAGES
    for stage in stages:
        _choice(stage, STAGES + ("all",), "arguments", "stage")
    kind = executor or profile.executor.kind
    _choice(kind, EXECUTORS, "arguments", "executor")
    if kind == "local" and not wait:
        raise ValueError("the local executor trains in this process's workers: it cannot return before they "
                         "finish (wait=False is for executor='submitit')")
    check_data(profile)
    root = profile_dir(profile, results_dir)
    save_profile(profile, results_dir)
    report = GridReport(profile=profile.name, root=root)
    wanted = [stage for stage in STAGES if stage in stages]
    # Everything goes out in one batch when the important classes are known now (fixed by the profile,
    # or the baseline has finished); otherwise the baseline first, and the methods once it is done.
    together = "methods" not in wanted or methods_known(profile, results_dir)
    for batch in [wanted] if together else [[stage] for stage in wanted]:
        if "methods" in batch:
            try:
                report.important = choose_important(profile, results_dir)
            except BaselineNotFinished as why:
                report.waiting.append(f"methods stage: {why}")
                break
        specs = [spec for stage in batch for spec in expand(profile, stage, report.important or None,
                                                             results_dir=results_dir)]
        _check_stored_configs(specs)
        todo = []
        for spec, row in zip(specs, _states(specs, read_jobs(root))):
            if row.state == "done":
                report.done.append(spec.key)
            elif row.state == "running":
                report.running.append(spec.key)  # someone else's worker, or an earlier submission
            else:
                todo.append(spec)
        report.total += len(specs)
        bar = tqdm(total=len(specs), initial=len(specs) - len(todo), desc=f"{profile.name} {'+'.join(batch)}",
                   unit="run", disable=not progress, file=sys.stderr, dynamic_ncols=True)
        try:
            if kind == "local":
                outcome = run_local(todo, workers or profile.executor.workers, profile.executor.workers_per_gpu, bar)
            else:
                submitted = submit_submitit(todo, profile.executor.submitit, root, profile.name)
                if not wait:
                    report.running += list(submitted)
                    if "methods" in wanted and "methods" not in batch:
                        report.waiting.append("methods stage: waits for the CE baseline (its important classes "
                                              "come from it); run the same command again when it has finished")
                        break
                    continue
                outcome = wait_submitit(submitted, {s.key: s for s in todo}, bar)
        finally:
            bar.close()
        for spec in todo:
            result = outcome.get(spec.key)
            if result == "done":
                report.done.append(spec.key)
            elif result == "busy":
                report.running.append(spec.key)
            elif result == "failed":
                report.failed.append((spec.key, spec.out_dir / LOG_NAME))
    return report


# ---- command line --------------------------------------------------------------------------------------

def format_status(rows: list[StatusRow]) -> str:
    counts = {state: sum(r.state == state for r in rows) for state in STATES}
    width = max([len(r.key) for r in rows] + [3])
    lines = [f"{'run':<{width}}  {'state':<8} detail / log"]
    for r in rows:
        detail = r.detail + (f"  log: {r.log}" if r.state == "failed" and r.log else "")
        lines.append(f"{r.key:<{width}}  {r.state:<8} {detail}".rstrip())
    lines.append(", ".join(f"{n} {state}" for state, n in counts.items()) + f" (of {len(rows)} runs)")
    return "\n".join(lines)


def _status_command(args) -> int:
    profile = load_profile(args.profile)
    rows = status(profile, args.results_dir)
    if args.only:
        rows = [r for r in rows if r.state == args.only]
    print(format_status(rows))
    if not methods_known(profile, args.results_dir):
        print("the methods stage is listed once the CE baseline has finished (its important classes come from it)")
    return 0


def _grid_command(args) -> int:
    profile = load_profile(args.profile)
    if args.cluster is not None:
        profile.executor.submitit.cluster = args.cluster
    stages = STAGES if args.stage == "all" else (args.stage,)
    if args.dry_run:
        counts = count_runs(profile, args.results_dir)
        note = (f" (assuming {len(profile.important.roles)} important class(es) per data set, chosen from the "
                "baseline later)") if counts["assumed_classes"] else ""
        print(f"profile {profile.name}: {counts['total']} runs = {counts['baseline']} baseline (CE) + "
              f"{counts['methods']} methods{note}")
        print("  " + ", ".join(f"{loss} {n}" for loss, n in counts["by_method"].items()))
        return 0
    report = run(profile, stages, executor=args.executor, wait=not args.no_wait, workers=args.workers,
                 results_dir=args.results_dir)
    print(report.summary())
    if report.failed:
        return 1
    return 0


def _add_common(parser) -> None:
    parser.add_argument("--profile", required=True, help=f"a shipped profile ({', '.join(shipped_profiles())}) or "
                                                          "the path of a YAML file (docs/profiles.md)")
    parser.add_argument("--results-dir", default=None,
                        help="results root; runs go to <root>/<profile name>/ (default: <repo>/results)")


def add_cli(subparsers) -> None:
    grid = subparsers.add_parser(
        "grid", help="train a profile's grid of runs (what is missing), locally or on SLURM",
        description="Train every run of a profile that is not finished: the CE baseline, then the other methods "
                    "for the important classes chosen from it. docs/profiles.md, docs/scale-out.md.")
    _add_common(grid)
    grid.add_argument("--executor", choices=EXECUTORS, default=None, help="default: the profile's executor.kind")
    grid.add_argument("--workers", type=int, default=None,
                      help="local: parallel runs (default: the profile's, else one per GPU; on CPU one per core, at most 8)")
    grid.add_argument("--stage", choices=STAGES + ("all",), default="all")
    grid.add_argument("--no-wait", action="store_true", help="submitit: submit and return")
    grid.add_argument("--cluster", choices=("slurm", "local", "debug"), default=None,
                      help="submitit: override executor.submitit.cluster (local: run the job array on this machine)")
    grid.add_argument("--dry-run", action="store_true", help="count the runs (per method) and exit")
    grid.set_defaults(func=_grid_command)
    stat = subparsers.add_parser("status", help="done / running / failed / pending per run of a profile",
                                 description="One line per run of a profile; a failed run shows its log and "
                                             "last error line.")
    _add_common(stat)
    stat.add_argument("--only", choices=STATES, default=None, help="list only the runs in this state")
    stat.set_defaults(func=_status_command)

