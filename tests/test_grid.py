"""camri.grid and the modules below it: profiles, grid expansion, the local and submitit executors, status
(CPU, digits, tiny runs)."""

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import submitit
import yaml

from records import metrics_rows, summary_record
from camri import grid, profile as profiles, rundir, status, sweep
from camri.cli import main
from camri.executors import local, slurm
from camri.losses import paper_margin

TINY_TRAIN = {"epochs": 1, "width": 0.125, "z_dim": 16, "bn_momentum": 0.1, "device": "cpu"}


@pytest.fixture(autouse=True)
def one_thread(monkeypatch):
    # Workers inherit the environment: one thread each on the shared cores.
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


def profile(**overrides) -> profiles.Profile:
    raw = {
        "name": "tiny",
        "datasets": ["digits"],
        "seeds": [0],
        "train": dict(TINY_TRAIN),
        "important": {"classes": {"digits": [3]}},
        "methods": {
            "ce": {},
            "arcface": {"margin": [0.2], "scale": [8]},
            "camri": {"margin": ["4pi/64"], "scale": [8]},
        },
    }
    raw.update(overrides)
    return profiles.parse_profile(raw, "test")


def write_summary(spec: sweep.RunSpec, recall: list[float], accuracy: float, val_recall=None) -> None:
    """A finished run without training: what protocol.load_runs reads (validation metrics = test ones
    unless ``val_recall`` is given)."""
    spec.out_dir.mkdir(parents=True, exist_ok=True)
    summary = {
        "dataset": spec.config.dataset,
        "loss": spec.config.loss,
        "seed": spec.config.seed,
        "classes": [str(i) for i in range(len(recall))],
        "important": spec.config.important,
        "config": spec.config.to_json(),
        "accuracy": accuracy,
        "recall": recall,
        "validation": {"accuracy": accuracy, "recall": recall if val_recall is None else val_recall},
    }
    (spec.out_dir / "summary.json").write_text(json.dumps(summary))


def campaign_script() -> dict:
    """scripts/campaign_progress.py's functions (a script, not a module of the package)."""
    import runpy

    return runpy.run_path(str(Path(__file__).parent.parent / "scripts" / "campaign_progress.py"))


def campaign(folder: Path) -> tuple[Path, dict, dict]:
    """A tiny campaign for scripts/campaign_progress.py: its profile file, its run specs by key, and the
    script's functions; the CE run finished (with a checkpoint beside its records), the CAMRI run started."""
    path = folder / "tiny.yaml"
    raw = {"name": "tiny", "datasets": ["digits"], "seeds": [0], "train": TINY_TRAIN}
    raw |= {
        "important": {"classes": {"digits": [3]}},
        "methods": {"ce": {}, "camri": {}},
        "fig3": {"dataset": "digits"},
    }
    path.write_text(yaml.safe_dump(raw))
    p = profiles.load_profile(str(path))
    specs = {s.key: s for s in sweep.expand(p, "all", {"digits": [3]}, results_dir=folder / "results")}
    write_summary(specs["digits/ce/default/seed0"], [0.9] * 3 + [0.5] + [0.9] * 6, 0.86)
    for name in (rundir.LOG, rundir.CHECKPOINT):
        (specs["digits/ce/default/seed0"].out_dir / name).write_text("{}")
    camri_run = specs["digits/camri/c3_m4pi64_s16/seed0"].out_dir
    camri_run.mkdir(parents=True)
    (camri_run / "config.json").write_text(json.dumps({"config": {}, "segments": [{"amp_bf16": False}]}))
    return path, specs, campaign_script()


def test_campaign_progress_lists_every_run_with_its_state(tmp_path):
    # scripts/campaign_progress.py: a campaign's progress.md, from the records alone.
    path, _, script = campaign(tmp_path)
    text = script["progress"](str(path), tmp_path / "results").read_text()
    assert "1 of 4 runs done." in text
    assert "| digits/ce/default/seed0 | done | 0.8600 | 0.8600 | – | – |" in text
    assert "| digits/camri/c3_m4pi64_s16/seed0 | epoch 0 of 1 | | | | | ?, float32 |" in text
    assert "| fig3/digits/ce/default/seed0 | not started |" in text


def test_campaign_progress_names_a_waiting_data_set_as_readers_know_it(tmp_path):
    # progress.md is committed: before the baseline has chosen the roles it printed the data set's local path.
    path = tmp_path / "folder.yaml"
    source = f"imagefolder:{tmp_path}/cifar10-jpeg.zip"
    raw = {"name": "folder", "datasets": [source], "seeds": [0, 1], "train": TINY_TRAIN}
    path.write_text(yaml.safe_dump(raw | {"important": {"roles": ["worst1"]}, "methods": {"ce": {}, "camri": {}}}))
    progress = campaign_script()["progress"]
    text = progress(str(path), tmp_path).read_text()
    assert "Important classes of CIFAR-10 (JPEG copy): not chosen yet, 2 of its 2 CE baseline runs" in text
    assert "imagefolder:" not in text and "cifar10-jpeg.zip" not in text


def test_campaign_commit_commits_each_finished_run_once_with_its_records_only(tmp_path):
    # scripts/campaign_progress.py --commit: one commit per finished run, its records and progress.md, never the
    # checkpoint, never an unfinished run, never what else is staged; a second pass commits nothing.
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", str(tmp_path)]
    subprocess.run([*git, "init", "-q"], check=True)
    path, _, script = campaign(tmp_path)
    (tmp_path / "notes.txt").write_text("staged, not the script's\n")
    subprocess.run([*git, "add", "tiny.yaml", "notes.txt"], check=True)
    with pytest.MonkeyPatch.context() as mp:
        for key in ("GIT_AUTHOR_NAME", "GIT_AUTHOR_EMAIL", "GIT_COMMITTER_NAME", "GIT_COMMITTER_EMAIL"):
            mp.setenv(key, "t")
        # CAMRI and the two Fig. 3 runs are not finished.
        assert script["commit_finished"](str(path), tmp_path / "results") == (["digits/ce/default/seed0"], 3)
        assert script["commit_finished"](str(path), tmp_path / "results") == ([], 3)
    log = subprocess.run([*git, "log", "--format=%s"], capture_output=True, text=True, check=True).stdout
    assert log.splitlines() == ["tiny digits/ce/default/seed0: finished (test accuracy 0.8600)"]
    shown = subprocess.run([*git, "show", "--name-only", "--format="], capture_output=True, text=True, check=True)
    run = "results/tiny/runs/digits/ce/default/seed0"
    assert sorted(shown.stdout.split()) == ["results/tiny/progress.md", f"{run}/log.txt", f"{run}/summary.json"]
    status_lines = subprocess.run([*git, "status", "--porcelain"], capture_output=True, text=True, check=True).stdout
    assert "A  notes.txt" in status_lines and "A  tiny.yaml" in status_lines  # still staged, not committed


# ---- profiles and expansion (no training) ----------------------------------------------------------------


def test_expansion_counts_and_deduplication(tmp_path):
    p = profile(
        datasets=["digits", "mnist"],
        seeds=[0, 1, 2],
        important={"classes": {"digits": [3, 5], "mnist": [1]}},
        methods={
            "ce": {},
            "arcface": {"margin": ["4pi/64", "5pi/64"], "scale": [8, 16]},
            "camri": {"margin": ["4pi/64", "5pi/64"], "scale": 16},
            "wce": {"weight": [2, 4]},
            "crwwce": {"weight": [2], "fp_weight": [1, 2]},
        },
    )
    important = sweep.choose_important(p, tmp_path)  # fixed indices: no data set is loaded
    assert important == {"digits": [3, 5], "mnist": [1]}
    # Fixed classes take the roles in order, as protocol.select_all reports them.
    recorded = json.loads((tmp_path / "tiny" / "important.json").read_text())
    assert [(r["role"], r["class_index"], r["fixed"]) for r in recorded["digits"]] == [
        ("worst1", 3, True),
        ("worst2", 5, True),
    ]
    with pytest.raises(ValueError, match="names 2 classes but important.roles has 1"):
        profile(important={"roles": ["worst1"], "classes": {"digits": [3, 5]}})
    baseline = sweep.expand(p, "baseline", results_dir=tmp_path)
    methods = sweep.expand(p, "methods", important, results_dir=tmp_path)
    everything = sweep.expand(p, "all", important, results_dir=tmp_path)
    # Hand count. baseline: 2 data sets × 3 seeds. ArcFace: 4 settings × 3 seeds × 2 data sets, shared by
    # the 3 important classes. Per class (2 + 1 = 3 classes) × 3 seeds: CAMRI 2, WCE 2, CRWWCE 2 settings.
    assert len(baseline) == 6
    counts = {loss: sum(s.config.loss == loss for s in methods) for loss in ("ce", "arcface", "camri", "wce", "crwwce")}
    assert counts == {"ce": 0, "arcface": 24, "camri": 18, "wce": 18, "crwwce": 18}
    assert len(everything) == 6 + 78
    assert [s.key for s in everything] == [s.key for s in baseline + methods]
    assert len({s.key for s in everything}) == len(everything)
    assert {s.stage for s in baseline} == {"baseline"} and {s.stage for s in methods} == {"methods"}
    assert all(s.config.important == () for s in methods if s.config.loss == "arcface")
    # A class chosen twice (e.g. worst2 == median) gives its runs once.
    assert len(sweep.expand(p, "methods", {"digits": [3, 3, 5], "mnist": [1]}, results_dir=tmp_path)) == 78


def test_slugs_are_stable(tmp_path):
    p = profile(
        seeds=[0, 1],
        methods={
            "ce": {},
            "arcface": {"margin": ["5pi/64"], "scale": [8]},
            "l2softmax": {"scale": [16]},
            "camri": {"margin": ["4pi/64", 0.2], "scale": [16]},
            "wce": {"weight": [2]},
            "crwwce": {"weight": [2.5], "fp_weight": [1]},
        },
    )
    keys = [s.key for s in sweep.expand(p, "all", {"digits": [3]}, results_dir=tmp_path) if s.config.seed == 0]
    # The loss registry's order (camri.losses.LOSSES).
    assert keys == [
        "digits/ce/default/seed0",
        "digits/wce/c3_w2/seed0",
        "digits/crwwce/c3_w2.5_fp1/seed0",
        "digits/l2softmax/s16/seed0",
        "digits/arcface/m5pi64_s8/seed0",
        "digits/camri/c3_m4pi64_s16/seed0",
        "digits/camri/c3_m0.2rad_s16/seed0",
    ]
    spec = {s.key: s for s in sweep.expand(p, "methods", {"digits": [3]}, results_dir=tmp_path)}[keys[5]]
    assert spec.out_dir == tmp_path / "tiny" / "runs" / "digits" / "camri" / "c3_m4pi64_s16" / "seed0"
    assert spec.config.margin == (paper_margin(4),) and spec.config.important == (3,) and spec.config.scale == 16
    assert spec.config.epochs == 1 and spec.config.width == 0.125  # the profile's train section
    assert sweep.margin_slug(4.5 * math.pi / 64) == "4.5pi64"
    assert profiles.dataset_slug("imagefolder:/data/cifar10-jpeg.zip") == "cifar10-jpeg"


def test_methods_are_ordered_class_by_class_then_seed_by_seed(tmp_path):
    # A campaign cut short must leave whole comparisons: the first role's class across every method and
    # seed before the second class; ArcFace (shared by every class) with the first class.
    p = profile(
        seeds=[0, 1],
        methods={
            "ce": {},
            "arcface": {"margin": ["4pi/64"], "scale": [8]},
            "camri": {"margin": ["4pi/64"], "scale": [16]},
        },
    )
    keys = [s.key for s in sweep.expand(p, "methods", {"digits": [5, 3]}, results_dir=tmp_path)]
    assert keys == [
        "digits/arcface/m4pi64_s8/seed0",
        "digits/camri/c5_m4pi64_s16/seed0",
        "digits/arcface/m4pi64_s8/seed1",
        "digits/camri/c5_m4pi64_s16/seed1",
        "digits/camri/c3_m4pi64_s16/seed0",
        "digits/camri/c3_m4pi64_s16/seed1",
    ]
    # No important class: the class-independent methods still run, the class-specific ones do not.
    assert [s.key for s in sweep.expand(p, "methods", {"digits": []}, results_dir=tmp_path)] == [
        "digits/arcface/m4pi64_s8/seed0",
        "digits/arcface/m4pi64_s8/seed1",
    ]


def test_shipped_profiles_load_and_paper_count():
    assert {"demo", "cpu", "paper"} <= set(profiles.shipped_profiles())
    for name in ("demo", "cpu", "paper"):
        assert profiles.load_profile(name).name == name
    paper = profiles.load_profile("paper")
    assert paper.seeds == list(range(10)) and paper.train["epochs"] == 300 and paper.train["width"] == 1.0
    arcface = paper.methods["arcface"]
    assert paper_margin(4) in arcface["margin"] and paper_margin(5) in arcface["margin"]
    assert {8.0, 16.0} <= set(arcface["scale"])
    counts = grid.count_runs(paper)
    assert counts["total"] == 2370  # the number printed in docs/profiles.md


def test_profile_file_and_saved_copy(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text(
        yaml.safe_dump({"name": "mine", "datasets": ["digits"], "seeds": 2, "methods": {"camri": {"margin": "4pi/64"}}})
    )
    p = profiles.load_profile(str(path))
    assert p.seeds == [0, 1] and p.methods["camri"] == {"margin": [paper_margin(4)], "scale": [16.0]}
    saved = profiles.save_profile(p, tmp_path / "results")
    assert saved == tmp_path / "results" / "mine" / "profile.json"
    assert json.loads(saved.read_text())["methods"]["camri"]["margin"] == [paper_margin(4)]


@pytest.mark.parametrize(
    "change, message",
    [
        ({"colour": 1}, r"profile test: colour: unknown key; allowed are name, datasets"),
        ({"datasets": ["cifar11"]}, r"datasets: unknown data set 'cifar11'; allowed are digits, mnist"),
        ({"methods": {"focal": {}}}, r"methods.focal: unknown key; allowed are ce, wce, crwwce, l2softmax"),
        ({"methods": {"camri": {"m": [1]}}}, r"methods.camri.m: unknown key; allowed are margin, scale"),
        ({"methods": {"camri": {"margin": ["4pie/64"]}}}, r"methods.camri.margin: margin '4pie/64' is not a number"),
        ({"methods": {"camri": {"margin": [4]}}}, r"methods.camri.margin: Input should be less than 3.14"),
        ({"methods": {"camri": {"margin": [None]}}}, r"methods.camri.margin: margin must be a number"),
        ({"methods": {"wce": {"weight": [0]}}}, r"methods.wce.weight: Input should be greater than 0"),
        ({"methods": {"arcface": {"scale": []}}}, r"methods.arcface.scale: must not be an empty list"),
        ({"train": {"seed": 3}}, r"train.seed: unknown key; allowed are .*epochs"),
        ({"train": {"epochs": 0}}, r"train: epochs: Input should be greater than or equal to 1"),
        ({"train": {"device": "tpu"}}, r"train: device: Input should be 'auto', 'cpu', 'cuda' or 'mps'"),
        ({"seeds": [0, 0]}, r"seeds: must list each seed once"),
        ({"important": {"roles": ["worst3"]}}, r"important.roles: Input should be 'worst1', 'worst2' or 'median'"),
        ({"important": {"classes": {"mnist": [1]}}}, r"important.classes.mnist: is not one of the profile's datasets"),
        ({"executor": {"kind": "ray"}}, r"executor.kind: Input should be 'local' or 'submitit'"),
        ({"executor": {"submitit": {"cluster": "pbs"}}}, r"executor.submitit.cluster: Input should be 'slurm'"),
        ({"executor": {"submitit": {"gpus": 1}}}, r"executor.submitit.gpus: unknown key; allowed are cluster"),
        ({"executor": {"submitit": {"runs_per_job": 0}}}, r"submitit.runs_per_job: Input should be greater than or"),
        ({"executor": {"submitit": {"poll_s": 0.5}}}, r"executor.submitit.poll_s: Input should be a valid integer"),
        ({"fig3": {"margin": 4}}, r"fig3.margin: Input should be less than 3.14"),
        ({"name": "a b"}, r"name: must be letters, digits"),
    ],
)
def test_profile_errors_name_the_key_and_the_allowed_values(change, message):
    with pytest.raises(ValueError, match=message):
        profile(**change)


def test_unknown_profile_names_the_shipped_ones(tmp_path):
    with pytest.raises(ValueError, match=r"unknown profile 'nope': shipped are cpu, demo, paper"):
        profiles.load_profile("nope")
    with pytest.raises(ValueError, match="does not exist"):
        profiles.load_profile(str(tmp_path / "missing.yaml"))
    with pytest.raises(ValueError, match=r"name: is required"):
        profiles.parse_profile({"datasets": ["digits"]})


def test_important_classes_from_the_baseline(tmp_path):
    p = profile(seeds=[0, 1], important={"roles": ["worst1", "worst2", "median"]})
    with pytest.raises(sweep.BaselineNotFinished, match="run the baseline stage first"):
        sweep.choose_important(p, tmp_path)
    rows = status.status(p, tmp_path)  # the methods stage is not listed before the baseline has finished
    assert [r.state for r in rows] == ["pending", "pending"] and {r.stage for r in rows} == {"baseline"}
    # Class 7 is worst, then 2; sorted position (10 - 1) // 2 = 4 is the median: class 4 (0.92).
    recall = [0.95, 0.9, 0.5, 0.93, 0.92, 0.97, 0.91, 0.3, 0.96, 0.94]
    for spec in sweep.expand(p, "baseline", results_dir=tmp_path):
        write_summary(spec, recall, 0.9)
    assert sweep.choose_important(p, tmp_path) == {"digits": [7, 2, 4]}
    chosen = json.loads((tmp_path / "tiny" / "important.json").read_text())
    assert [(r["role"], r["class_index"]) for r in chosen["digits"]] == [("worst1", 7), ("worst2", 2), ("median", 4)]
    rows = status.status(p, tmp_path)
    assert sum(r.stage == "methods" for r in rows) == 2 * (1 + 3)  # ArcFace once, CAMRI per class; 2 seeds
    assert {r.state for r in rows if r.stage == "baseline"} == {"done"}


def test_important_split_test_ranks_the_classes_on_test_while_settings_stay_on_validation(tmp_path, monkeypatch):
    # GTSRB's validation split by track is too small to rank its classes: important.split: test.
    test_recall = [0.95, 0.9, 0.5, 0.93, 0.92, 0.97, 0.91, 0.3, 0.96, 0.94]
    val_recall = [0.2, 0.4, 0.95, 0.93, 0.92, 0.97, 0.91, 0.96, 0.9, 0.94]  # 0 worst, then 1
    chosen = {}
    for split in ("validation", "test"):
        p = profile(important={"roles": ["worst1", "worst2"], "split": split}, name=f"tiny_{split}")
        assert p.protocol.selection == "validation"
        for spec in sweep.expand(p, "baseline", results_dir=tmp_path):
            write_summary(spec, test_recall, 0.9, val_recall=val_recall)
        chosen[split] = sweep.choose_important(p, tmp_path)["digits"]
    assert chosen == {"validation": [0, 1], "test": [7, 2]}
    # The notebooks' Study ranks on the same split (notebook 01, claims) and hands it to Table 1's selection.
    from camri import protocol, study

    on_test = study.Study(
        profile(important={"roles": ["worst1", "worst2"], "split": "test"}, name="tiny_test"),
        str(tmp_path),
        train=False,
    )
    runs = on_test.runs(("baseline",))
    assert on_test.role_selection == "test" and on_test.selection == "validation"
    assert list(on_test.important(runs, "digits")["class_index"]) == [7, 2]
    seen = {}
    monkeypatch.setattr(protocol, "select_all", lambda runs, **kwargs: seen.update(kwargs))
    on_test.select(runs)
    assert seen["role_split"] == "test" and seen["split"] == "validation"
    recorded = json.loads((tmp_path / "tiny_test" / "important.json").read_text())["digits"]
    assert [(r["class_index"], r["split"], r["recall_mean"]) for r in recorded] == [(7, "test", 0.3), (2, "test", 0.5)]
    # progress.md says where they were ranked (it said protocol.selection's split whatever chose them).
    path = tmp_path / "tiny_test.yaml"
    raw = {"name": "tiny_test", "datasets": ["digits"], "seeds": [0], "train": TINY_TRAIN}
    path.write_text(yaml.safe_dump(raw | {"important": {"roles": ["worst1", "worst2"], "split": "test"}}))
    progress = campaign_script()["progress"]
    text = progress(str(path), tmp_path).read_text()
    assert (
        "Important classes of digits (scikit-learn, 8x8) (from CE on the test split): worst1 = 7 (CE test recall 0.300)"
        in text
    )
    # Unset, the roles follow protocol.selection.
    assert profile(important={"roles": ["worst1"]}).important.split is None
    with pytest.raises(ValueError, match=r"important.split: Input should be 'validation' or 'test'"):
        profile(important={"roles": ["worst1"], "split": "train"})


def test_worker_slots_pin_workers_to_gpus(monkeypatch):
    cpus = local.available_cpus()
    assert local.worker_slots(None, 1, "cpu") == [None] * min(cpus, local.CPU_WORKERS_MAX)
    monkeypatch.setattr(local, "available_cpus", lambda: 64)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert local.worker_slots(None, 1, "cpu") == [None] * local.CPU_WORKERS_MAX
    assert local.threads_per_worker(local.CPU_WORKERS_MAX) == 8
    monkeypatch.undo()
    assert local.worker_slots(2, 1, "cpu") == [None, None]
    monkeypatch.setattr(local, "visible_gpus", lambda device: ["0", "1"])
    assert local.worker_slots(None, 2, "auto") == ["0", "1", "0", "1"]
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert local.threads_per_worker(4) == 3


def test_available_cpus_follow_affinity_and_cgroup_quota(monkeypatch):
    # A job limited to 3 of 64 cores (taskset, SLURM) or to a quota of 2.5 CPUs (docker --cpus) must not
    # size its pool from os.cpu_count().
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2})
    monkeypatch.setattr(local, "_cgroup_cpu_limit", lambda: None)
    assert local.available_cpus() == 3
    monkeypatch.setattr(local, "_cgroup_cpu_limit", lambda: 2.5)
    assert local.available_cpus() == 2
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert local.worker_slots(None, 1, "cpu") == [None, None] and local.threads_per_worker(1) == 2


def test_checkpoint_requeues_the_same_run(tmp_path):
    spec = sweep.expand(profile(), "baseline", results_dir=tmp_path)[0]
    delayed = slurm.GridTask([spec]).checkpoint()
    assert isinstance(delayed.function, slurm.GridTask) and delayed.function.specs == [spec]
    assert sweep.RunSpec.from_json(spec.to_json()) == spec


def test_a_requeue_call_cut_short_is_logged_as_an_interruption_not_a_failure(tmp_path, monkeypatch):
    # submitit's preemption handler runs `scontrol requeue`; SLURM may end that child with the job
    # (CalledProcessError, died with SIGTERM) although the job is requeued: log.txt says interrupted.
    spec = sweep.expand(profile(), "baseline", results_dir=tmp_path)[0]

    def raises(error):
        def execute_spec(spec, job):
            raise error

        return execute_spec

    cut = subprocess.CalledProcessError(-signal.SIGTERM, ["scontrol", "requeue", "303_1"])
    monkeypatch.setattr(slurm, "execute_spec", raises(cut))
    with pytest.raises(subprocess.CalledProcessError):
        slurm._train_logged(spec, "303_1")
    log = (spec.out_dir / rundir.LOG).read_text()
    assert "== camri grid: interrupted (preempted; SLURM ended submitit's requeue call)" in log
    assert "Traceback" not in log
    # Any other failed command is the run's failure: its traceback goes into log.txt.
    monkeypatch.setattr(slurm, "execute_spec", raises(subprocess.CalledProcessError(1, ["scontrol", "show"])))
    with pytest.raises(subprocess.CalledProcessError):
        slurm._train_logged(spec, "303_1")
    assert "Traceback" in (spec.out_dir / rundir.LOG).read_text()


def test_changed_profile_stops_before_any_run(tmp_path):
    p = profile()
    spec = sweep.expand(p, "baseline", results_dir=tmp_path)[0]
    spec.out_dir.mkdir(parents=True)
    other = dict(spec.config.to_json(), epochs=5)
    (spec.out_dir / "config.json").write_text(json.dumps({"config": other}))
    with pytest.raises(ValueError, match=r"another configuration, e.g. digits/ce/default/seed0 \(epochs\)"):
        grid.run(p, results_dir=tmp_path, progress=False)
    assert not (spec.out_dir / rundir.LOG).exists()


def test_missing_data_stops_before_training(tmp_path, capsys):
    path = tmp_path / "awa.yaml"
    path.write_text(yaml.safe_dump({"name": "awa", "datasets": ["awa2"], "data_dir": str(tmp_path / "data")}))
    assert main(["grid", "--profile", str(path), "--results-dir", str(tmp_path / "results")]) == 2
    assert "awa2" in capsys.readouterr().err
    assert not (tmp_path / "results" / "awa" / "runs").exists()


# ---- executors (real, tiny runs) ---------------------------------------------------------------------------


def test_local_executor_two_workers_and_status(tmp_path, capsys, monkeypatch):
    # Class 10 does not exist in digits: that CAMRI run fails at its start, and only that run.
    p = profile(important={"classes": {"digits": [3, 10]}}, executor={"workers": 2})
    # Pretend there are two GPUs: each worker is pinned to one (the runs themselves stay on the CPU).
    monkeypatch.setattr(local, "visible_gpus", lambda device: ["5", "6"])
    bad = "digits/camri/c10_m4pi64_s8/seed0"
    assert [r.state for r in status.status(p, tmp_path)] == ["pending"] * 4

    report = grid.run(p, results_dir=tmp_path, progress=False)  # classes fixed: both stages in one pool
    assert sorted(report.done) == [
        "digits/arcface/m0.2rad_s8/seed0",
        "digits/camri/c3_m4pi64_s8/seed0",
        "digits/ce/default/seed0",
    ]
    assert report.failed == [(bad, tmp_path / "tiny" / "runs" / bad / "log.txt")] and not report.complete
    ce_log = tmp_path / "tiny" / "runs" / "digits" / "ce" / "default" / "seed0" / "log.txt"
    assert "== camri grid: digits/ce/default/seed0 on " in ce_log.read_text()
    assert "epoch 1/1" in ce_log.read_text()  # the per-epoch lines, without progress bars
    logs = [(tmp_path / "tiny" / "runs" / key / "log.txt").read_text() for key in report.done]
    pinned = {re.search(r"CUDA_VISIBLE_DEVICES=(\d)", log).group(1) for log in logs}
    assert pinned <= {"5", "6"} and len(pinned) == 2
    assert (tmp_path / "tiny" / "profile.json").is_file()

    rows = {r.key: r for r in status.status(p, tmp_path)}
    assert {k: r.state for k, r in rows.items()} == {
        "digits/ce/default/seed0": "done",
        "digits/arcface/m0.2rad_s8/seed0": "done",
        "digits/camri/c3_m4pi64_s8/seed0": "done",
        bad: "failed",
    }
    assert rows[bad].log == tmp_path / "tiny" / "runs" / bad / "log.txt"
    assert rows[bad].detail.startswith("ValueError: important class 10 is out of range")

    # Finished runs are not launched again.
    before = ce_log.read_text()
    report = grid.run(p, stages=("baseline",), results_dir=tmp_path, progress=False)
    assert report.done == ["digits/ce/default/seed0"] and report.complete and ce_log.read_text() == before

    path = _dump(p, tmp_path)
    assert main(["status", "--profile", str(path), "--results-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert f"{bad}  failed" in out and str(rows[bad].log) in out
    assert "3 done, 0 running, 0 pending, 1 failed, 0 cancelled" in out
    # Below the failed run, its log's last lines (the traceback's end); at the end, the command to retrain it.
    assert "| ValueError: important class 10 is out of range" in out
    assert out.rstrip().endswith(
        f"to train the 1 failed or cancelled run(s) again: camri grid --profile {path} --results-dir {tmp_path} "
        "--executor local"
    )


def _dump(p: profiles.Profile, where: Path) -> Path:
    """The profile as a YAML file (margins in radians are valid YAML values)."""
    raw = {
        "name": p.name,
        "datasets": p.datasets,
        "seeds": p.seeds,
        "train": p.train,
        "important": {"classes": p.important.classes},
        "methods": p.methods,
    }
    path = where / f"{p.name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _wait_for(condition, timeout=120.0, what="condition"):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_submitit_local_cluster_kill_and_resume(tmp_path):
    train = dict(TINY_TRAIN, epochs=8)
    p = profile(
        train=train,
        methods={"ce": {}, "camri": {"margin": ["4pi/64"], "scale": [8]}},
        executor={
            "kind": "submitit",
            "submitit": {"cluster": "local", "gpus_per_node": 0, "cpus_per_task": 1, "timeout_min": 10},
        },
    )
    ce_key, camri_key = "digits/ce/default/seed0", "digits/camri/c3_m4pi64_s8/seed0"
    runs = tmp_path / "tiny" / "runs"
    # The same CAMRI run, never interrupted, trained meanwhile with `camri train` (one thread, as the jobs).
    straight = tmp_path / "straight"
    reference = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "camri",
            "train",
            "--dataset",
            "digits",
            "--loss",
            "camri",
            "--important",
            "3",
            "--margin",
            "4pi/64",
            "--scale",
            "8",
            "--epochs",
            "8",
            "--width",
            "0.125",
            "--z-dim",
            "16",
            "--bn-momentum",
            "0.1",
            "--device",
            "cpu",
            "--quiet",
            "--out",
            str(straight),
        ],
        cwd=Path(__file__).resolve().parents[1],
    )

    # The important class is fixed, so both stages are submitted at once; run returns without waiting.
    report = grid.run(p, results_dir=tmp_path, wait=False, progress=False)
    assert sorted(report.running) == [camri_key, ce_key] and not report.waiting
    first_jobs = slurm.read_jobs(tmp_path / "tiny")
    assert set(first_jobs) == {ce_key, camri_key} and first_jobs[ce_key]["cluster"] == "local"

    # Kill the CAMRI job's training process once it has checkpointed an epoch (its pid is in the run lock).
    camri_dir = runs / camri_key
    _wait_for(lambda: rundir.epochs_done(camri_dir) >= 1, what="the first epoch of the CAMRI run")
    assert {r.key: r.state for r in status.status(p, tmp_path)}[camri_key] == "running"
    pid = int((camri_dir / rundir.LOCK).read_text().split()[1])
    os.kill(pid, signal.SIGKILL)
    _wait_for(lambda: (runs / ce_key / "summary.json").is_file(), what="the CE run")
    _wait_for(
        lambda: (
            status.run_state(
                sweep.expand(p, "methods", {"digits": [3]}, results_dir=tmp_path)[0],
                slurm.read_jobs(tmp_path / "tiny")[camri_key],
            ).state
            == "failed"
        ),
        what="the killed job to end",
    )
    killed_after = rundir.epochs_done(camri_dir)
    assert 1 <= killed_after < 8 and not (camri_dir / "summary.json").exists()
    rows = {r.key: r for r in status.status(p, tmp_path)}
    assert rows[ce_key].state == "done" and rows[camri_key].state == "failed"
    assert rows[camri_key].log == camri_dir / "log.txt" and "killed?" in rows[camri_key].detail

    # Running again resubmits only the unfinished run, which resumes from its checkpoint.
    report = grid.run(p, results_dir=tmp_path, progress=False)
    assert report.complete and sorted(report.done) == [camri_key, ce_key]
    jobs = slurm.read_jobs(tmp_path / "tiny")
    assert jobs[ce_key] == first_jobs[ce_key] and jobs[camri_key]["job_id"] != first_jobs[camri_key]["job_id"]
    log = (camri_dir / "log.txt").read_text()
    resumed = re.search(r"resuming after epoch (\d+) of 8", log)
    assert resumed and killed_after <= int(resumed.group(1)) < 8  # metrics.csv may lag the checkpoint by one
    assert rundir.epochs_done(camri_dir) == 8
    assert json.loads((camri_dir / "summary.json").read_text())["epochs_completed"] == 8
    assert {r.state for r in status.status(p, tmp_path)} == {"done"}
    # The killed and resumed run is exactly the uninterrupted one (optimizer, RNG and history restored).
    assert reference.wait(timeout=600) == 0
    assert (
        json.loads((straight / "config.json").read_text())["config"]
        == json.loads((camri_dir / "config.json").read_text())["config"]
    )
    assert metrics_rows(camri_dir) == metrics_rows(straight)
    assert summary_record(camri_dir) == summary_record(straight)


@pytest.fixture
def stand_in_slurm(tmp_path, monkeypatch) -> Path:
    """Stand-in sbatch, sacct, srun and sinfo scripts first on PATH; sbatch copies its script to last.sbatch."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text('#!/bin/sh\ncp "$1" "$(dirname "$0")/last.sbatch"\necho Submitted batch job 4242\n')
    (bin_dir / "sacct").write_text(
        "#!/bin/sh\necho 'JobID|State|NodeList'\necho '4242_0|RUNNING|n1'\n"
        "echo '4242_1|FAILED|n1'\necho '4242_2|PENDING|None'\n"
    )
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 1\n")  # submitit looks for it to detect SLURM
    (bin_dir / "sinfo").write_text("#!/bin/sh\necho 'cpu*|(null)'\necho 'gpu|gpu:a100:4(S:0-1)'\n")
    for script in ("sbatch", "sacct", "srun", "sinfo"):
        (bin_dir / script).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return bin_dir


def test_slurm_submission_and_states_with_stand_in_commands(tmp_path, stand_in_slurm):
    """The SLURM path without SLURM: stand-in sbatch and sacct scripts on PATH."""
    bin_dir = stand_in_slurm
    p = profile(
        seeds=[0, 1, 2],
        methods={"ce": {}},
        executor={
            "kind": "submitit",
            "submitit": {
                "cluster": "slurm",
                "partition": "gpu",
                "mem_gb": 16,
                "array_parallelism": 2,
                "setup": ["module load cuda"],
            },
        },
    )
    report = grid.run(p, results_dir=tmp_path, wait=False, progress=False)
    keys = [f"digits/ce/default/seed{i}" for i in range(3)]
    assert sorted(report.running) == keys and not report.failed
    sbatch = (bin_dir / "last.sbatch").read_text()
    for line in (
        "--partition=gpu",
        "--array=0-2%2",
        "--gpus-per-node=1",
        "--cpus-per-task=8",
        "--mem=16GB",
        "--time=600",
        "--signal=USR2@90",
        "--job-name=camri-tiny",
        "module load cuda",
    ):
        assert line in sbatch
    jobs = slurm.read_jobs(tmp_path / "tiny")
    assert [jobs[k]["job_id"] for k in keys] == ["4242_0", "4242_1", "4242_2"]
    rows = {r.key: r for r in status.status(p, tmp_path)}
    assert [rows[k].state for k in keys] == ["running", "failed", "pending"]
    assert [rows[k].in_flight for k in keys] == [True, False, True]
    assert "4242_1 ended (FAILED)" in rows[keys[1]].detail and "PENDING" in rows[keys[2]].detail
    # Re-running submits only the failed run; the queued and running ones are left alone.
    report = grid.run(p, results_dir=tmp_path, wait=False, progress=False)
    assert sorted(report.running) == keys and slurm.read_jobs(tmp_path / "tiny")[keys[1]]["job_id"] == "4242"
    assert "--array" not in (bin_dir / "last.sbatch").read_text()  # one task: a plain job
    # sacct does not list the new job yet: just submitted, it counts as in flight (not resubmitted again).
    row = {r.key: r for r in status.status(p, tmp_path)}[keys[1]]
    assert row.state == "pending" and row.in_flight and "SUBMITTED" in row.detail


def test_runs_per_job_packs_consecutive_runs_into_one_task(tmp_path, stand_in_slurm):
    p = profile(
        seeds=[0, 1, 2, 3, 4],
        methods={"ce": {}},
        executor={"kind": "submitit", "submitit": {"cluster": "slurm", "gpus_per_node": 0, "runs_per_job": 2}},
    )
    report = grid.run(p, results_dir=tmp_path, wait=False, progress=False)
    keys = [f"digits/ce/default/seed{i}" for i in range(5)]
    assert sorted(report.running) == keys
    assert "--array=0-2%" in (stand_in_slurm / "last.sbatch").read_text()  # ceil(5 / 2) = 3 tasks
    jobs = slurm.read_jobs(tmp_path / "tiny")
    assert [jobs[k]["job_id"] for k in keys] == ["4242_0", "4242_0", "4242_1", "4242_1", "4242_2"]
    # What each task will run: submitit's pickle of its GridTask.
    tasks = [
        submitit.helpers.DelayedSubmission.load(
            tmp_path / "tiny" / "submitit" / f"4242_{i}" / f"4242_{i}_submitted.pkl"
        )
        for i in range(3)
    ]
    assert [[spec.key for spec in task.function.specs] for task in tasks] == [keys[:2], keys[2:4], keys[4:]]


def test_gpus_asked_of_a_partition_without_them_stop_with_the_fix(tmp_path, monkeypatch):
    # A stand-in sinfo: the default partition "cpu" has no GRES, "gpu" has GPUs on one of its node groups.
    (tmp_path / "sinfo").write_text("#!/bin/sh\necho 'cpu*|(null)'\necho 'gpu|(null)'\necho 'gpu|gpu:a100:4'\n")
    (tmp_path / "sinfo").chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    check, options = slurm.check_partition_has_gpus, profiles.SubmititOptions
    check(options(partition="gpu"))
    check(options(partition="cpu", gpus_per_node=0))  # no GPUs asked for
    check(options(partition="elsewhere"))  # a partition sinfo does not list: sbatch's own error decides
    with pytest.raises(ValueError, match=r"is 1, but the cluster's default partition has no GPUs .*GRES: \(null\)"):
        check(options())
    with pytest.raises(ValueError, match=r"is 2, but partition cpu has no GPUs.*set gpus_per_node: 0"):
        check(options(partition="cpu", gpus_per_node=2))


def test_submitit_local_cluster_refuses_a_flood(tmp_path):
    p = profile(
        seeds=[0, 1],
        methods={"ce": {}},
        executor={"kind": "submitit", "submitit": {"cluster": "local", "array_parallelism": 1}},
    )
    with pytest.raises(ValueError, match="would start all 2 jobs at once.*--executor local"):
        grid.run(p, results_dir=tmp_path, wait=False, progress=False)
    assert slurm.read_jobs(tmp_path / "tiny") == {}


@pytest.mark.parametrize(("groups", "wording"), [(False, "a stratified share of"), (True, "whole groups (tracks) of")])
def test_protocol_note_names_how_the_validation_split_was_drawn(tmp_path, groups, wording):
    # A split of whole tracks (train.validation_groups) is no stratified draw: claims.md and Table 1 say which.
    import pandas as pd

    from camri import study

    raw = profile().model_dump()
    raw["train"] = {**TINY_TRAIN, "validation_fraction": 0.2, "validation_groups": groups}
    s = study.Study(profiles.parse_profile(raw, "test"), str(tmp_path), train=False)
    note = s.protocol_note(pd.DataFrame({"selection": ["maintaining"], "n_seeds": [3]}))
    assert f"on the validation split ({wording} each training set; Table 1 reports test)" in note
