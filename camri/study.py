"""A profile as the notebooks see it (``open_study``): its settings, its folders, its finished runs, Fig. 3's
runs, and where figures and tables go. With ``train=True`` the runs a notebook needs are trained when
missing (``camri.grid.run``); with ``train=False`` (``camri figures``) they are only read, and a missing
run is a ``MissingRunsError`` that says how to train it.

    study = open_study("demo", train=False)
    runs = study.runs()                 # camri.protocol.load_runs rows of the profile's finished runs
    run_dirs = study.fig3_runs()        # {"CE": run dir, "CAMRI": run dir}
    study.save(fig, "04_table1")        # figures/04_table1.png and .pdf
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path

from camri import data as camri_data
from camri import grid, names, rundir
from camri.analysis import markdown_table
from camri.io import atomic_write_text
from camri.notebooks import profile_argument
from camri.profile import Profile, load_profile, profile_dir, restrict
from camri.sweep import STAGES, RunSpec, choose_important, expand, fig3_specs


class MissingRunsError(RuntimeError):
    """Stored results are asked for (``TRAIN = False``, ``camri figures``) but some runs are not finished."""


def missing_message(profile: Profile, missing: Sequence[str], total: int, what: str) -> str:
    return (
        f"{len(missing)} of {total} {what} of profile {profile.name!r} are not finished (e.g. {missing[0]}); "
        f"stored results are read only here (TRAIN = False / camri figures). Train them with "
        f"`camri reproduce --profile {profile_argument(profile) if profile.source else profile.name}`, "
        "or run this notebook with TRAIN = True."
    )


def check_finished(profile: Profile, results_dir=None, stages: Sequence[str] = STAGES) -> None:
    """Raise MissingRunsError unless every run of ``stages`` is finished (reads only; trains nothing)."""
    specs = expand(profile, "baseline", results_dir=results_dir)
    missing = [s.key for s in specs if not s.finished]
    if missing:  # the baseline first: without it, the methods stage's runs are not even known
        raise MissingRunsError(missing_message(profile, missing, len(specs), "CE baseline runs"))
    if "methods" in stages:
        important = choose_important(profile, results_dir, record=False)
        specs = expand(profile, "methods", important, results_dir=results_dir)
        missing = [s.key for s in specs if not s.finished]
        if missing:
            raise MissingRunsError(missing_message(profile, missing, len(specs), "runs of the methods stage"))


def train_fig3(profile: Profile, specs: list[RunSpec], workers: int | None = None) -> list[RunSpec]:
    """Train the Fig. 3 runs ``specs`` on the local pool (the profile's workers and workers_per_gpu);
    returns those that did not finish (failed, or busy in another process)."""
    camri_data.check_available(specs[0].config.dataset, profile.data_dir)
    outcome = grid.run_local_specs(profile, specs, workers)
    return [s for s in specs if outcome.get(s.key) != "done"]


@dataclasses.dataclass
class Study:
    """A profile as the notebooks see it: its settings, folders and finished runs.

    ``root`` = ``<results>/<profile>``; figures go to ``root/figures``, tables to ``root/tables``.
    ``train``: whether ``runs`` trains what is missing (``camri.grid.run``) or only reads.
    """

    profile: Profile
    results_dir: str | None
    train: bool = True
    workers: int | None = None
    # Read only (train False): the finished runs, even while some of the methods stage are still to come;
    # every note, claims.md, Table 1's Markdown and LaTeX and every saved figure then say PARTIAL.
    partial: bool = False
    # ``missing()``'s answer, computed once: every figure and note of one render carries the same count,
    # and the grid is not expanded again for each saved figure.
    _missing: tuple[list[str], int] | None = dataclasses.field(default=None, init=False, repr=False, compare=False)

    @property
    def name(self) -> str:
        return self.profile.name

    @property
    def root(self) -> Path:
        return profile_dir(self.profile, self.results_dir)

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

    @property
    def selection(self) -> str:
        """Where the choices are made: "validation" or "test" (profile ``protocol.selection``)."""
        return self.profile.protocol.selection

    @property
    def role_selection(self) -> str:
        """Where the important classes are chosen: profile ``important.split``, else ``selection``."""
        return self.profile.role_split

    def slug(self, dataset: str) -> str:
        """The data set's name in file names (``camri.profile.dataset_slug``)."""
        from camri.profile import dataset_slug

        return dataset_slug(dataset)

    def load_data(self, dataset: str) -> camri_data.DataSet:
        return camri_data.load(dataset, data_dir=self.profile.data_dir, image_size=self.profile.train.get("image_size"))

    # ---- runs ----
    def ensure(self, stages: Sequence[str] = STAGES) -> None:
        """Train the runs of ``stages`` that are missing (``train``), or check that none is (not ``train``)."""
        stages = (stages,) if isinstance(stages, str) else tuple(stages)
        if not self.train:
            # Partial: the baseline must be complete all the same (it chooses the important classes).
            check_finished(self.profile, self.results_dir, ("baseline",) if self.partial else stages)
            return
        report = grid.run(self.profile, stages, wait=True, workers=self.workers, results_dir=self.results_dir)
        if not report.complete:
            raise RuntimeError("the runs this notebook needs did not all finish:\n" + report.summary())

    def specs(self, stages: Sequence[str] = STAGES) -> list[RunSpec]:
        specs = expand(self.profile, "baseline", results_dir=self.results_dir)
        if "methods" in stages:
            important = choose_important(self.profile, self.results_dir, record=False)
            specs += expand(self.profile, "methods", important, results_dir=self.results_dir)
        return specs

    def missing(self) -> tuple[list[str], int]:
        """The keys of the methods stage's runs that are not finished, and how many runs that stage has
        (after the baseline has finished; camri.sweep.expand), as they were at the first call."""
        if self._missing is None:
            methods = [s for s in self.specs(("baseline", "methods")) if s.stage == "methods"]
            self._missing = ([s.key for s in methods if not s.finished], len(methods))
        return self._missing

    def partial_headline(self) -> str:
        """ "PARTIAL: k of n runs of the methods stage have finished" for a partial study with runs missing,
        else "" (the line every saved figure carries)."""
        if not self.partial:
            return ""
        missing, total = self.missing()
        return f"PARTIAL: {total - len(missing)} of {total} runs of the methods stage have finished" if missing else ""

    def partial_note(self) -> str:
        """Markdown: ``partial_headline`` with what is missing and what that means; "" when it is empty."""
        headline = self.partial_headline()
        if not headline:
            return ""
        missing, _ = self.missing()
        return (
            f"**{headline}** ({len(missing)} missing, e.g. {missing[0]}). Every number here is from the "
            "finished runs only and changes as the rest finish; a method without finished runs in a cell is empty."
        )

    def runs(self, stages: Sequence[str] = STAGES):
        """The finished runs of ``stages`` (``camri.protocol.load_runs`` rows), after ``ensure(stages)``.
        Only this profile's runs: other folders below ``root/runs`` are ignored."""
        from camri import protocol

        stages = (stages,) if isinstance(stages, str) else tuple(stages)
        self.ensure(stages)
        wanted = {str(s.out_dir) for s in self.specs(stages)}
        runs = protocol.load_runs(self.root / "runs")
        runs = runs[runs["path"].isin(wanted)].reset_index(drop=True)
        return protocol.apply_report(runs, self.profile.protocol.report, self.profile.protocol.last_k)

    def important(self, runs, dataset: str):
        """The important classes of ``dataset``: DataFrame role, class_index, class_name (and, when chosen
        from the CE baseline, recall_mean, recall_std, rank, paper_class), for the profile's roles."""
        import pandas as pd

        from camri import protocol

        fixed = self.profile.important.classes.get(dataset)
        if fixed is None:
            roles = list(self.profile.important.roles) or list(protocol.ROLES)
            chosen = protocol.choose_important(runs, dataset, split=self.role_selection)
            return chosen[chosen["role"].isin(roles)].reset_index(drop=True)
        # Fixed by the profile: protocol.select_all resolves them (names or indices, by role).
        cells = self.select(runs, [dataset]).drop_duplicates("role")
        return pd.DataFrame(cells[["role", "class_index", "class_name"]]).reset_index(drop=True)

    def settings(self, runs, dataset: str, class_index: int):
        """``camri.protocol.cell_settings`` of one cell with the profile's selection and tolerance, the
        ``<method>+bias`` settings included."""
        from camri import protocol

        return protocol.cell_settings(
            runs, dataset, int(class_index), tolerance=self.tolerance, split=self.selection, bias=True
        )

    def select(self, runs, datasets: Sequence[str] | None = None, selection: str | None = None):
        """``camri.protocol.select_all`` with the profile's selection (or ``selection``), tolerance,
        min_seeds, roles and fixed classes, the +bias settings included. The important classes follow
        ``selection`` unless the profile's ``important.split`` fixes where they are chosen."""
        from camri import protocol

        roles = list(self.profile.important.roles) or list(protocol.ROLES)
        return protocol.select_all(
            runs,
            tolerance=self.tolerance,
            min_seeds=self.profile.protocol.min_seeds,
            split=self.selection if selection is None else selection,
            role_split=self.profile.important.split,
            bias=True,
            roles=roles,
            important=self.profile.important.classes or None,
            datasets=datasets or self.datasets,
        )

    # ---- how the choices were made, both protocols, the claims ----
    def protocol_note(self, selections) -> str:
        """Markdown: where the choices were made, what is reported, and how many seeds (a warning below 5:
        the paper averaged ten trials). Not the PARTIAL mark: each output places ``partial_note`` once."""
        from camri.analysis import seed_counts

        p = self.profile.protocol
        # train.validation_groups holds out whole groups (GTSRB tracks), not a stratified draw of images.
        share = "whole groups (tracks) of" if self.profile.train.get("validation_groups") else "a stratified share of"
        where = (
            f"on the validation split ({share} each training set; Table 1 reports test)"
            if p.selection == "validation"
            else "on the test set, as the paper does (optimistic: the same data choose and report)"
        )
        report = "each run's final epoch" if p.report == "final" else f"each run's mean over its last {p.last_k} epochs"
        fewest, most = seed_counts(selections)
        seeds = f"{fewest}" if fewest == most else f"{fewest}–{most}"
        if self.role_selection == p.selection:
            chosen = f'Important classes, "maintaining accuracy" (tolerance {p.accuracy_tolerance:g}) and the best '
        else:
            # important.split: the roles on another split than the settings. On test, CE's recall on the chosen
            # class is the minimum it was chosen as: biased low, as in the paper.
            bias = (
                " as the paper does (CE's recall on them is the minimum they were chosen as, so biased low)"
                if self.role_selection == "test"
                else ""
            )
            chosen = (
                f'Important classes chosen from CE\'s {self.role_selection} recall{bias}; "maintaining accuracy" '
                f"(tolerance {p.accuracy_tolerance:g}) and the best "
            )
        lines = [f"{chosen}setting per method chosen {where}; numbers are {report}; n = {seeds} seeds per setting."]
        if fewest < 5:
            lines.append(
                f"**Warning: {fewest} seed(s)** per setting at the fewest. The paper averaged ten trials; "
                "with fewer than 5 a mean ± std is a rough estimate and a paired interval is wide."
            )
        return "\n\n".join(lines)

    def compare_selections(self, runs):
        """The choices made on validation and on test side by side (``analysis.compare_selections``), or
        None when some runs have no validation split (then only the test-set selection exists)."""
        from camri.analysis import compare_selections

        if runs["val_accuracy"].isna().any():
            return None
        return compare_selections(self.select(runs, selection="validation"), self.select(runs, selection="test"))

    def write_claims(self, runs, selections) -> Path:
        """``<root>/claims.md``: the paper's claims checked against these runs (``camri.claims``)."""
        from camri import claims

        important = {d: self.important(runs, d) for d in self.datasets if d not in self.profile.important.classes}
        table = claims.check_claims(selections, important, split=self.selection, role_split=self.role_selection)
        t = self.profile.train
        shown = ", ".join(names.display_dataset(d) for d in self.datasets)
        context = [
            f"profile `{self.name}`: {shown}; seeds {list(self.profile.seeds)}; "
            f"{t.get('epochs', 300)} epochs, width {t.get('width', 1.0)}",
            self.protocol_note(selections).replace("\n\n", " "),
            "Comparisons pair the methods' chosen settings by seed: mean test difference with a 95 % "
            "interval (t below 10 pairs, bootstrap from 10); docs/protocol.md states every rule.",
        ]
        title = f"{self.name} ({shown})"
        return claims.write_claims(table, self.root, title=title, context=context, partial=self.partial_note())

    # ---- Fig. 3 ----
    def fig3_runs(self) -> dict[str, Path]:
        """Train (``train``) or check the two Fig. 3 runs of the profile's ``fig3:`` section; returns
        {"CE": run dir, "CAMRI": run dir}."""
        specs = fig3_specs(self.profile, self.results_dir)
        todo = [s for s in specs if not s.finished]
        if todo and not self.train:
            raise MissingRunsError(missing_message(self.profile, [s.key for s in todo], len(specs), "Fig. 3 runs"))
        if todo:
            failed = train_fig3(self.profile, todo, self.workers)
            if failed:
                raise RuntimeError(
                    f"Fig. 3 run {failed[0].key} did not finish; its log: {failed[0].out_dir / rundir.LOG}"
                )
        return {"CE": specs[0].out_dir, "CAMRI": specs[1].out_dir}

    # ---- output ----
    def save(self, fig, name: str):
        """Save ``fig`` as ``figures/<name>.png`` and ``.pdf``; returns the figure (for display)."""
        from camri.plots import save_figure, stamp

        headline = self.partial_headline()
        if headline:  # a figure is looked at without its notebook: it says so itself
            stamp(fig, headline)
        save_figure(fig, self.figures_dir / name)
        return fig

    def save_table(self, frame, name: str, *, index: bool = False):
        """Save ``frame`` as ``tables/<name>.csv`` and ``.md``; returns it (for display). A ``paths``
        column (absolute run folders, as in ``protocol.cell_settings``) is left out of the files, and a
        ``dataset`` column names each data set as a reader knows it (``names.dataset_label``: "CIFAR-10
        (JPEG copy)", never a local ``imagefolder:`` path)."""
        frame = frame.drop(columns=["paths"], errors="ignore")
        if "dataset" in frame.columns:
            frame = frame.assign(
                dataset=frame["dataset"].map(lambda d: names.dataset_label(d) if isinstance(d, str) else d)
            )
        atomic_write_text(
            self.tables_dir / f"{name}.csv", frame.to_csv(index=index, float_format="%.6g", lineterminator="\n")
        )
        atomic_write_text(self.tables_dir / f"{name}.md", markdown_table(frame, index=index) + "\n")
        return frame


def open_study(
    profile: str | os.PathLike | Profile,
    results_dir: str | os.PathLike | None = None,
    *,
    train: bool = True,
    dataset: str | None = None,
    workers: int | None = None,
    partial: bool = False,
) -> Study:
    """What a notebook starts with: the profile (a shipped name or a YAML path) restricted to ``dataset``
    when given, its results root (None: ``<repo>/results``), and whether missing runs are trained.
    ``partial`` (with ``train=False``): read what has finished of the methods stage, marked PARTIAL."""
    loaded = load_profile(profile)
    if dataset:
        loaded = restrict(loaded, dataset)
    if partial and train:
        raise ValueError("partial = True reads stored runs only: use it with train = False (camri figures --partial)")
    return Study(loaded, None if results_dir is None else str(results_dir), bool(train), workers, bool(partial))
