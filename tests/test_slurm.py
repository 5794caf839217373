"""The submitit executor on a real SLURM cluster (scripts/slurm-local.sh; digits, tiny runs, CPU).

Written against the command line (``camri grid`` / ``camri status`` with a profile whose executor section
targets the cluster) and the files a run leaves, so they hold whatever the executor's code looks like.
Skipped without the local cluster (see tests/conftest.py; under ``CI=true`` that is a failure).
"""

from __future__ import annotations

import json
import re
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from camri.cli import main

pytestmark = pytest.mark.slurm

#: Long enough that an interruption after the first epoch lands mid-run (an epoch takes 0.3-0.6 s of CPU
#: here; a requeued job is killed 2 s after SLURM's SIGTERM, scripts/slurm-local.sh's KillWait).
EPOCHS = 15
TRAIN = {"epochs": EPOCHS, "width": 0.125, "z_dim": 16, "bn_momentum": 0.1, "device": "cpu"}
CE, CAMRI = "digits/ce/default/seed0", "digits/camri/c3_m4pi64_s8/seed0"
#: One CPU per job, no GPU, the cluster's default partition.
SLURM = {"cluster": "slurm", "gpus_per_node": 0, "cpus_per_task": 1, "timeout_min": 10}


@pytest.fixture(autouse=True)
def one_thread(monkeypatch):
    # The jobs inherit the submitting environment (sbatch --export=ALL): one thread, as the local runs.
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


def write_profile(folder: Path, name: str = "slurm", *, seeds=(0,), methods=None, **submitit) -> Path:
    raw = {
        "name": name,
        "datasets": ["digits"],
        "seeds": list(seeds),
        "train": dict(TRAIN),
        "important": {"classes": {"digits": [3]}},
        "methods": methods or {"ce": {}, "camri": {"margin": ["4pi/64"], "scale": [8]}},
        "executor": {"kind": "submitit", "submitit": {**SLURM, **submitit}},
    }
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def wait_for(condition, timeout_s: float, what: str, poll_s: float = 0.5):
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(poll_s)


def jobs(results: Path, profile: str = "slurm") -> dict:
    """{run key: SLURM job id} from the profile's jobs.json (docs/scale-out.md)."""
    return {
        key: entry["job_id"] for key, entry in json.loads((results / profile / "jobs.json").read_text())["jobs"].items()
    }


def sacct_states(job_id: str) -> list[str]:
    """Every attempt's state of one job (or array task), oldest first: sacct -D lists requeued attempts."""
    out = subprocess.run(
        ["sacct", "-n", "-X", "-D", "-P", "-o", "State", "-j", job_id],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def epochs_logged(run_dir: Path) -> int:
    try:
        return max(0, len((run_dir / "metrics.csv").read_text().splitlines()) - 1)
    except OSError:
        return 0


def records(run_dir: Path) -> dict:
    """What a run recorded, less its timings: metrics.csv's rows, summary.json, angles.npz's arrays."""
    lines = (run_dir / "metrics.csv").read_text().splitlines()
    header = lines[0].split(",")
    keep = [i for i, column in enumerate(header) if column != "seconds"]
    metrics = [[line.split(",")[i] for i in keep] for line in lines]
    summary = json.loads((run_dir / "summary.json").read_text())
    summary.pop("seconds")
    with np.load(run_dir / "angles.npz") as angles:
        arrays = {name: angles[name] for name in angles.files}
    return {"metrics": metrics, "summary": summary, "angles": arrays}


def assert_same_records(run_dir: Path, reference: Path) -> None:
    mine, theirs = records(run_dir), records(reference)
    assert mine["metrics"] == theirs["metrics"], f"{run_dir}: metrics.csv differs from {reference}"
    assert mine["summary"] == theirs["summary"], f"{run_dir}: summary.json differs from {reference}"
    assert mine["angles"].keys() == theirs["angles"].keys()
    for name, values in mine["angles"].items():
        assert np.array_equal(values, theirs["angles"][name]), f"{run_dir}: angles.npz[{name}] differs"


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """The profile's runs through the local executor: the records the cluster's must equal, bit for bit."""
    folder = tmp_path_factory.mktemp("local")
    profile = write_profile(folder)
    assert (
        main(["grid", "--profile", str(profile), "--executor", "local", "--workers", "2", "--results-dir", str(folder)])
        == 0
    )
    return folder / "slurm" / "runs"


def test_job_array_records_equal_the_local_executors(slurm_cluster, reference, tmp_path, capsys):
    profile = write_profile(tmp_path)
    assert main(["grid", "--profile", str(profile), "--results-dir", str(tmp_path)]) == 0
    assert "2 of 2 runs done, 0 failed" in capsys.readouterr().out
    ids = jobs(tmp_path)
    # Both runs went out as the two tasks of one array, and SLURM ran each once.
    arrays = {job_id.split("_")[0] for job_id in ids.values()}
    assert len(arrays) == 1 and sorted(job_id.split("_")[1] for job_id in ids.values()) == ["0", "1"]
    for key, job_id in ids.items():
        assert sacct_states(job_id) == ["COMPLETED"], key
        assert_same_records(tmp_path / "slurm" / "runs" / key, reference / key)


def test_success_comes_from_the_records_not_the_job_state(slurm_cluster, tmp_path, capsys):
    # Task 0's job ends at once with exit status 0 (SLURM: COMPLETED) without running the run, as a job
    # whose function swallowed an error would; task 1's is cancelled mid-run.
    profile = write_profile(
        tmp_path, seeds=(0, 1), methods={"ce": {}}, setup=['if [ "$SLURM_ARRAY_TASK_ID" = 0 ]; then exit 0; fi']
    )
    hollow, cancelled = "digits/ce/default/seed0", "digits/ce/default/seed1"
    cancelled_dir = tmp_path / "slurm" / "runs" / cancelled

    def cancel_mid_run():
        wait_for(lambda: epochs_logged(cancelled_dir) >= 1, 180, "the first epoch of the run to cancel")
        subprocess.run(["scancel", jobs(tmp_path)[cancelled]], check=True, timeout=30)

    canceller = threading.Thread(target=cancel_mid_run, daemon=True)
    canceller.start()
    assert main(["grid", "--profile", str(profile), "--results-dir", str(tmp_path)]) == 1
    canceller.join(timeout=1)
    assert "0 of 2 runs done, 2 failed" in capsys.readouterr().out
    ids = jobs(tmp_path)
    assert sacct_states(ids[hollow]) == ["COMPLETED"] and sacct_states(ids[cancelled]) == ["CANCELLED"]
    assert not (tmp_path / "slurm" / "runs" / hollow / "summary.json").exists()
    assert not (cancelled_dir / "summary.json").exists() and 1 <= epochs_logged(cancelled_dir) < EPOCHS

    assert main(["status", "--profile", str(profile), "--results-dir", str(tmp_path)]) == 0
    rows = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()[1:-1]}
    assert rows[hollow].split()[1] == "failed" and f"job {ids[hollow]} ended (COMPLETED) before the run" in rows[hollow]
    assert rows[cancelled].split()[1] == "failed" and f"/{EPOCHS}]" in rows[cancelled]


def test_requeued_and_preempted_jobs_resume_to_identical_records(slurm_cluster, reference, tmp_path):
    """Task 0 is requeued from outside (``scontrol requeue``: SLURM kills it and starts it again, as
    PreemptMode=REQUEUE does); task 1 gets submitit's preemption signal (USR2: GridTask.checkpoint, then
    submitit requeues it). Both resume from checkpoint.pt and end with the uninterrupted run's records."""
    profile = write_profile(tmp_path)
    assert main(["grid", "--profile", str(profile), "--results-dir", str(tmp_path), "--no-wait"]) == 0
    ids, runs = jobs(tmp_path), tmp_path / "slurm" / "runs"
    wait_for(
        lambda: min(epochs_logged(runs / CE), epochs_logged(runs / CAMRI)) >= 1,
        180,
        "the first epoch of both runs",
        poll_s=0.1,
    )
    subprocess.run(["scontrol", "requeue", ids[CE]], check=True, timeout=30)
    subprocess.run(["scancel", "--signal=USR2", ids[CAMRI]], check=True, timeout=30)
    wait_for(
        lambda: all(sacct_states(ids[k])[-1:] == ["COMPLETED"] for k in (CE, CAMRI)),
        300,
        "the requeued jobs to finish",
        poll_s=2,
    )

    for key in (CE, CAMRI):
        states = sacct_states(ids[key])
        assert states[0] == "REQUEUED" and states[-1] == "COMPLETED", (key, states)
        log = (runs / key / "log.txt").read_text()
        resumed = re.search(rf"resuming after epoch (\d+) of {EPOCHS}", log)
        assert resumed, (
            f"{key} did not resume from its checkpoint (the run ended before the interruption "
            f"took effect? raise EPOCHS):\n{log[-2000:]}"
        )
        assert 1 <= int(resumed.group(1)) < EPOCHS
        assert_same_records(runs / key, reference / key)
    assert "interrupted (SystemExit)" in (runs / CAMRI / "log.txt").read_text()  # submitit's own exit
