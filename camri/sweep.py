"""A profile's runs: ``RunSpec``, run naming, expansion of the grid, and the choice of important classes.

``expand`` turns a profile into ``RunSpec`` s, one per run directory
``<results>/<profile>/runs/<dataset>/<loss>/<setting>/seed<N>/``, deduplicated: a CE run or an ArcFace
setting serves every important class, so it is listed once (``camri.losses.LOSSES[loss].class_specific``).

    specs = expand(profile, "baseline")                  # CE × data sets × seeds
    important = choose_important(profile)                # {dataset: [class indices]}
    specs = expand(profile, "methods", important)        # every other method, deduplicated
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from camri import data as camri_data
from camri import rundir
from camri.config import TrainConfig
from camri.io import atomic_write_json
from camri.losses import LOSSES
from camri.profile import Profile, dataset_slug, load_profile, profile_dir
from camri.train import resolve_important

STAGES = ("baseline", "methods")
#: How each grid axis is spelled in a setting's folder name.
_AXIS_PREFIX = {"margin": "m", "scale": "s", "weight": "w", "fp_weight": "fp"}


@dataclass
class RunSpec:
    """One training run: its config, its directory, the stage it belongs to, and its key (the directory
    relative to ``<profile dir>/runs``, e.g. ``digits/camri/c3_m4pi64_s16/seed0``)."""

    config: TrainConfig
    out_dir: Path
    stage: str
    key: str

    def to_json(self) -> str:
        return json.dumps(
            {"config": self.config.to_json(), "out_dir": str(self.out_dir), "stage": self.stage, "key": self.key}
        )

    @classmethod
    def from_json(cls, text: str) -> RunSpec:
        d = json.loads(text)
        return cls(TrainConfig.parse(d["config"]), Path(d["out_dir"]), d["stage"], d["key"])

    @property
    def finished(self) -> bool:
        return rundir.is_finished(self.out_dir)


def margin_slug(radians: float) -> str:
    """``4pi64`` for 4π/64 (multiples of π/64 up to 3 decimals, e.g. ``4.5pi64``), else radians ``0.2rad``."""
    k = radians * 64 / math.pi
    if abs(k - round(k, 3)) < 1e-9:
        return f"{round(k, 3):g}pi64"
    return f"{radians:.6g}rad"


def setting_slug(loss: str, important, values: dict) -> str:
    """``default`` (CE), ``m5pi64_s8`` (ArcFace), ``s16`` (L2-softmax), ``c3_m4pi64_s16`` (CAMRI),
    ``c3_w2`` (WCE), ``c3_w2_fp1`` (CRWWCE). ``values``: one value per axis of the loss (a margin in
    radians)."""
    info = LOSSES[loss]
    parts = [f"c{'-'.join(map(str, important))}"] if info.class_specific else []
    for axis in info.axes:
        value = values[axis]
        parts.append(_AXIS_PREFIX[axis] + (margin_slug(value) if axis == "margin" else f"{value:g}"))
    return "_".join(parts) or "default"


def _axis_product(grid: dict) -> list[dict]:
    settings = [{}]
    for axis, values in grid.items():
        settings = [{**s, axis: v} for s in settings for v in values]
    return settings


def make_spec(
    base: TrainConfig, root: Path, stage: str, loss: str, important: list, values: dict, *, prefix: str = ""
) -> RunSpec:
    """The run of ``loss`` with ``values`` (one per axis) on ``base`` (dataset and seed set), in
    ``root/<prefix><dataset slug>/<loss>/<setting>/seed<N>``."""
    fields = {
        "loss": loss,
        "important": list(important) if LOSSES[loss].class_specific else [],
        **{axis: (value,) if axis == "margin" else value for axis, value in values.items()},
    }
    config = base.replace(**fields)
    key = f"{prefix}{dataset_slug(config.dataset)}/{loss}/{setting_slug(loss, important, values)}/seed{config.seed}"
    return RunSpec(config=config, out_dir=root / key.removeprefix(prefix), stage=stage, key=key)


def expand(
    profile: Profile | str, stage: str = "all", important: dict | None = None, results_dir=None
) -> list[RunSpec]:
    """The runs of ``stage`` (``baseline``, ``methods`` or ``all``), deduplicated by run directory.

    baseline: CE × data set × seed. methods: every other method of the profile; CE is not repeated (the
    methods stage reuses the baseline); ArcFace and L2-softmax runs are shared by every important class,
    CAMRI, WCE and CRWWCE run per important class. ``important`` maps each data set to its class indices;
    None asks ``choose_important`` (which needs the finished baseline unless the profile fixes them).
    The methods are listed class by class in role order, seed by seed within a class (the order the
    local executor trains them in).
    """
    profile = load_profile(profile)
    if stage not in STAGES + ("all",):
        raise ValueError(f"unknown stage {stage!r}: allowed are {', '.join(STAGES)}, all")
    root = profile_dir(profile, results_dir) / "runs"
    base = profile.base_config()
    specs: dict[str, RunSpec] = {}

    def add(spec: RunSpec) -> None:
        # Two settings that print to the same slug (e.g. margins equal to 6 digits) must not share a folder.
        if spec.key in specs and specs[spec.key].config != spec.config:
            raise ValueError(f"two different runs map to the folder {spec.key}: make the grid values differ more")
        specs.setdefault(spec.key, spec)

    def runs_of(dataset: str, stage: str, loss: str, group: list, seeds: list[int]) -> None:
        for values in _axis_product(profile.methods.get(loss, {})):
            for seed in seeds:
                add(make_spec(base.replace(dataset=dataset, seed=seed), root, stage, loss, group, values))

    if stage in ("baseline", "all"):
        for dataset in profile.datasets:
            runs_of(dataset, "baseline", "ce", [], profile.seeds)
    if stage in ("methods", "all"):
        if important is None:
            important = choose_important(profile, results_dir)
        for dataset in profile.datasets:
            classes = [int(c) for c in important.get(dataset, [])]
            # Ordered so that a campaign cut short has finished whole comparisons: the first role's class
            # across every method seed by seed, then the next role. Class-independent losses (ArcFace)
            # run once, with the first class; class-specific ones once per important class.
            for position, group in enumerate([[c] for c in classes] or [[]]):
                for seed in profile.seeds:
                    for loss, info in LOSSES.items():
                        if loss == "ce" or loss not in profile.methods:
                            continue
                        if info.class_specific and group:
                            runs_of(dataset, "methods", loss, group, [seed])
                        elif not info.class_specific and position == 0:
                            runs_of(dataset, "methods", loss, [], [seed])
    return list(specs.values())


def _class_names(profile: Profile, dataset: str) -> list[str]:
    return camri_data.load(dataset, data_dir=profile.data_dir, image_size=profile.train.get("image_size")).classes


class BaselineNotFinished(RuntimeError):
    """The important classes are chosen from the CE baseline, which is not finished yet: ``dataset`` (the
    profile's spelling), ``missing`` (the unfinished run keys) and ``total`` (the baseline's run count) let a
    report word it for its readers (scripts/campaign_progress.py names the data set, never its local path)."""

    def __init__(self, dataset: str, missing: list[str], total: int):
        self.dataset, self.missing, self.total = dataset, missing, total
        super().__init__(
            f"the important classes of {dataset} are chosen from its CE baseline, and {len(missing)} of its "
            f"{total} runs are not finished (e.g. {missing[0]}): run the baseline stage first, or "
            "fix important.classes in the profile"
        )


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
            indices = (
                items
                if all(isinstance(i, int) for i in items)
                else resolve_important(items, _class_names(profile, dataset))
            )
            chosen[dataset] = list(dict.fromkeys(int(i) for i in indices))
            record_rows[dataset] = [
                {"role": role, "class_index": int(i), "fixed": True}
                for role, i in zip(profile.important.roles, chosen[dataset])
            ]
            continue
        baseline = [s for s in expand(profile, "baseline", results_dir=results_dir) if s.config.dataset == dataset]
        missing = [s.key for s in baseline if not s.finished]
        if missing:
            raise BaselineNotFinished(dataset, missing, len(baseline))
        from camri import protocol  # pandas/scipy: imported only when a choice is made

        runs = protocol.load_runs(root / "runs" / dataset_slug(dataset) / "ce")
        # Only this profile's baseline (its seeds), even if other CE runs were left in the folder.
        runs = runs[runs["path"].isin([str(s.out_dir) for s in baseline])]
        runs = protocol.apply_report(runs, profile.protocol.report, profile.protocol.last_k)
        split = profile.role_split
        table = protocol.choose_important(runs, dataset, split=split).set_index("role")
        rows = [
            {
                "role": role,
                "class_index": int(table.loc[role, "class_index"]),
                "class_name": str(table.loc[role, "class_name"]),
                "recall_mean": float(table.loc[role, "recall_mean"]),
                "split": split,  # the split recall_mean is of
            }
            for role in profile.important.roles
        ]
        chosen[dataset] = list(dict.fromkeys(r["class_index"] for r in rows))
        record_rows[dataset] = rows
    if record:
        atomic_write_json(root / "important.json", record_rows)
    return chosen


def methods_known(profile: Profile, results_dir=None) -> bool:
    """Whether the methods stage can be expanded now (its important classes are fixed or chosen)."""
    try:
        choose_important(profile, results_dir, record=False)
    except BaselineNotFinished:
        return False
    return True


def fig3_specs(profile: Profile | str, results_dir=None) -> list[RunSpec]:
    """The two runs of Fig. 3 (the profile's ``fig3:`` section): CE and CAMRI with z_dim = 2, otherwise
    the profile's training settings, in ``<results>/<profile>/fig3/<dataset>/<loss>/<setting>/seed<N>/``.
    Their keys start with ``fig3/``, apart from the grid's runs of the same loss (jobs.json, status)."""
    profile = load_profile(profile)
    fig3 = profile.fig3
    dataset = fig3_dataset(fig3.dataset, profile.data_dir)
    # MNIST and digits have no groups of near-duplicates: their split is by image whatever the grid uses.
    base = profile.base_config().replace(
        z_dim=2,
        dataset=dataset,
        seed=fig3.seed,
        validation_groups=False,
        **({"epochs": fig3.epochs} if fig3.epochs is not None else {}),
    )
    important = int(fig3.important) if str(fig3.important).isdigit() else fig3.important
    root = profile_dir(profile, results_dir) / "fig3"
    return [
        make_spec(base, root, "fig3", "ce", [], {}, prefix="fig3/"),
        make_spec(
            base, root, "fig3", "camri", [important], {"margin": fig3.margin[0], "scale": fig3.scale}, prefix="fig3/"
        ),
    ]


def fig3_dataset(dataset: str | None, data_dir: str | None = None) -> str:
    """Fig. 3's data set: ``dataset``, or for None MNIST when it is present here (no download), else digits."""
    if dataset:
        return dataset
    try:
        camri_data.check_available("mnist", data_dir, download=False)
        return "mnist"
    except camri_data.DataError:
        return "digits"
