"""The submitit executor on a real SLURM cluster (scripts/slurm-local.sh; digits, tiny runs, CPU).

Written against the command line (``camri grid`` / ``camri status`` with a profile whose executor section
targets the cluster) and the files a run leaves, so they hold whatever the executor's code looks like.
Skipped without the local cluster (see tests/conftest.py; under ``CI=true`` that is a failure).
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from camri import status as camri_status
from camri.cli import main

pytestmark = pytest.mark.slurm

#: Long enough that an interruption after the first epoch lands mid-run. An epoch takes 0.25-0.6 s of CPU
#: here, and a requeued job's task outlived SLURM's SIGTERM by 4 s (submitit ignores SIGTERM; srun waits
#: "up to 4 seconds for job step to finish" after KillWait): at 15 epochs an idle machine finished the run
#: before the kill and the resume tests failed (2026-12-02). 40 epochs leave 10 s or more.
EPOCHS = 40
TRAIN = {"epochs": EPOCHS, "width": 0.125, "z_dim": 16, "bn_momentum": 0.1, "device": "cpu"}
CE, CAMRI = "digits/ce/default/seed0", "digits/camri/c3_m4pi64_s8/seed0"
#: One CPU per job, no GPU, the cluster's default partition; a waiting `camri grid` looks at its jobs every
#: second (the default 30 s spares a real cluster's file system).
SLURM = {"cluster": "slurm", "gpus_per_node": 0, "cpus_per_task": 1, "timeout_min": 10, "poll_s": 1}
CE1, CAMRI1 = "digits/ce/default/seed1", "digits/camri/c3_m4pi64_s8/seed1"


@pytest.fixture(autouse=True)
def one_thread(monkeypatch):
    # The jobs inherit the submitting environment (sbatch --export=ALL): one thread, as the local runs.
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


def write_profile(
    folder: Path, name: str = "slurm", *, seeds=(0,), methods=None, important=(3,), train=None, **submitit
) -> Path:
    raw = {
        "name": name,
        "datasets": ["digits"],
        "seeds": list(seeds),
        "train": {**TRAIN, **(train or {})},
        "important": {"classes": {"digits": list(important)}},
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


#: sacct states of a job that has not ended yet.
LIVE = {"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "REQUEUED"}


def final_states(job_id: str, timeout_s: float = 60) -> list[str]:
    """``sacct_states`` once the job has ended: a waiting grid returns when its runs' records (or submitit's
    result) are there, a moment before SLURM has seen the job's processes exit."""
    wait_for(lambda: (sacct_states(job_id) or ["PENDING"])[-1] not in LIVE, timeout_s, f"{job_id} to end")
    return sacct_states(job_id)


def slurm_out(*command: str) -> str:
    return subprocess.run(command, capture_output=True, text=True, check=True, timeout=30).stdout


def array_of(ids) -> str:
    """The one array the given job ids ("<array>_<task>") belong to."""
    (array,) = {job_id.split("_")[0] for job_id in ids}
    return array


def array_tasks(array: str) -> list[str]:
    """The task ids SLURM's accounting lists for an array (once each, requeued or not)."""
    return sorted(set(slurm_out("sacct", "-n", "-X", "-P", "-o", "JobID", "-j", array).split()))


def snapshot(run_dir: Path) -> dict:
    """Every file of a run folder with its bytes and modification time: what "left untouched" compares."""
    return {
        str(path.relative_to(run_dir)): (path.read_bytes(), path.stat().st_mtime_ns)
        for path in sorted(run_dir.rglob("*"))
        if path.is_file()
    }


def status_rows(capsys, profile: Path, results: Path) -> tuple[dict, str]:
    """``camri status``'s rows as {run key: line}, and its whole output."""
    assert main(["status", "--profile", str(profile), "--results-dir", str(results)]) == 0
    out = capsys.readouterr().out
    return {line.split()[0]: line for line in out.splitlines() if line.startswith("digits/")}, out


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
    profile = write_profile(folder, seeds=(0, 1))
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
        assert final_states(job_id) == ["COMPLETED"], key
        assert_same_records(tmp_path / "slurm" / "runs" / key, reference / key)


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
    # submitit's own exit (SystemExit), or its `scontrol requeue` call ended by the requeue it asked for:
    # an interruption either way, never a failure's traceback.
    camri_log = (runs / CAMRI / "log.txt").read_text()
    assert re.search(r"== camri grid: interrupted \((SystemExit|preempted; SLURM ended)", camri_log), camri_log
    assert "Traceback" not in camri_log


def test_array_parallelism_caps_the_tasks_running_at_once(slurm_cluster, tmp_path, capsys):
    # The node could run both one-CPU tasks at once; with array_parallelism 1 SLURM runs them one by one.
    assert int(slurm_out("sinfo", "-h", "-o", "%c").split()[0]) >= 2, "the cap is only visible on 2 or more CPUs"
    profile = write_profile(tmp_path, seeds=(0, 1), methods={"ce": {}}, train={"epochs": 6}, array_parallelism=1)
    assert main(["grid", "--profile", str(profile), "--results-dir", str(tmp_path), "--no-wait"]) == 0
    ids, runs = jobs(tmp_path), tmp_path / "slurm" / "runs"
    array = array_of(ids.values())
    assert "#SBATCH --array=0-1%1" in slurm_out("scontrol", "write", "batch_script", array, "-")

    most_running, seen, queued = 0, set(), []
    deadline = time.monotonic() + 300
    while not all((runs / key / "summary.json").is_file() for key in ids):
        assert time.monotonic() < deadline, "timed out waiting for the two runs"
        running = len(slurm_out("squeue", "-h", "-r", "-t", "RUNNING", "-j", array, "-o", "%i").split())
        most_running = max(most_running, running)
        rows, _ = status_rows(capsys, profile, tmp_path)
        states = tuple(sorted(line.split()[1] for line in rows.values()))
        assert states.count("running") <= 1, rows
        queued += [line for line in rows.values() if line.split()[1] == "pending"]
        seen.add(states)
        time.sleep(0.3)
    assert most_running == 1, f"squeue showed {most_running} tasks of the array running at once"
    assert ("pending", "running") in seen, f"status never showed one task running and one queued: {seen}"
    # Queued in SLURM (sacct: PENDING), or just submitted and not in sacct yet (SUBMITTED).
    assert all(re.search(rf"slurm job {array}_\d (PENDING|SUBMITTED)$", line) for line in queued), queued
    assert any(line.endswith("PENDING") for line in queued), queued
    # SLURM's own record: the second task started only after the first had ended.
    wait_for(lambda: all(sacct_states(j) == ["COMPLETED"] for j in ids.values()), 60, "the tasks' accounting")
    spans = sorted(
        line.split("|")[1:]
        for line in slurm_out("sacct", "-n", "-X", "-P", "-o", "JobID,Start,End", "-j", array).splitlines()
    )
    assert len(spans) == 2 and spans[0][1] <= spans[1][0], spans


def test_packed_runs_equal_the_local_executors_and_a_requeue_leaves_finished_runs_untouched(
    slurm_cluster, reference, tmp_path
):
    """runs_per_job 3: four runs go out as ceil(4 / 3) = 2 array tasks. Task 0 (CE seed 0, CE seed 1, CAMRI
    seed 0, in turn) is requeued from outside once its first run has finished and its second has started;
    task 1 (CAMRI seed 1) once it has completed. Requeued, each task skips its finished runs without
    touching their folders (records, log, lock) and resumes the interrupted one."""
    profile = write_profile(tmp_path, seeds=(0, 1), runs_per_job=3)
    assert main(["grid", "--profile", str(profile), "--results-dir", str(tmp_path), "--no-wait"]) == 0
    ids, runs = jobs(tmp_path), tmp_path / "slurm" / "runs"
    array = array_of(ids.values())
    first, second = f"{array}_0", f"{array}_1"
    assert ids == {CE: first, CE1: first, CAMRI: first, CAMRI1: second}

    before = {}
    deadline = time.monotonic() + 300
    while len(before) < 2:
        assert time.monotonic() < deadline, f"timed out before both requeues (done: {sorted(before)})"
        if CE not in before and (runs / CE / "summary.json").is_file() and epochs_logged(runs / CE1) >= 1:
            before[CE] = snapshot(runs / CE)
            subprocess.run(["scontrol", "requeue", first], check=True, timeout=30)
        if CAMRI1 not in before and sacct_states(second) == ["COMPLETED"]:
            before[CAMRI1] = snapshot(runs / CAMRI1)
            subprocess.run(["scontrol", "requeue", second], check=True, timeout=30)
        time.sleep(0.1)
    wait_for(
        lambda: all(sacct_states(job)[-1:] == ["COMPLETED"] and len(sacct_states(job)) >= 2 for job in ids.values()),
        300,
        "the requeued tasks to finish",
        poll_s=1,
    )

    assert array_tasks(array) == [first, second]
    for key, files in before.items():
        assert snapshot(runs / key) == files, f"{key} was finished, and its folder changed after the requeue"
        folder = json.loads((tmp_path / "slurm" / "jobs.json").read_text())["jobs"][key]["folder"]
        job_out = (Path(folder) / f"{ids[key]}_0_log.out").read_text()
        assert f"== camri grid: {key} is finished; skipped" in job_out  # the requeued task did run again
    resumed = re.search(rf"resuming after epoch (\d+) of {EPOCHS}", (runs / CE1 / "log.txt").read_text())
    assert resumed and 1 <= int(resumed.group(1)) < EPOCHS
    for key in ids:
        assert_same_records(runs / key, reference / key)


def test_status_from_the_scheduler_and_a_second_submission_of_only_the_missing_runs(
    slurm_cluster, reference, tmp_path, capsys
):
    """Four tasks: CE seed 0 finishes; CE seed 1 is cancelled mid-run (scancel); CAMRI for class 12 (digits
    has 10) raises inside the job; task 3's job exits 0 before its run starts (SLURM: COMPLETED), as a
    job whose function hid an error would. Success comes from summary.json only: one run is done."""
    profile = write_profile(
        tmp_path, seeds=(0, 1), important=(12,), setup=['if [ "$SLURM_ARRAY_TASK_ID" = 3 ]; then exit 0; fi']
    )
    raising, hollow = "digits/camri/c12_m4pi64_s8/seed0", "digits/camri/c12_m4pi64_s8/seed1"
    runs = tmp_path / "slurm" / "runs"
    seen_running = []

    def cancel_mid_run():
        wait_for(lambda: epochs_logged(runs / CE1) >= 1, 180, "the first epoch of the run to cancel")
        # SLURM's accounting can still say SUBMITTED for a few seconds after the job has started training.
        row = lambda: next(r for r in camri_status.status(profile, tmp_path) if r.key == CE1)  # noqa: E731
        wait_for(lambda: "RUNNING" in row().detail, 30, "the scheduler to report the run's job as RUNNING")
        seen_running.append(row())
        subprocess.run(["scancel", jobs(tmp_path)[CE1]], check=True, timeout=30)

    canceller = threading.Thread(target=cancel_mid_run, daemon=True)
    canceller.start()
    assert main(["grid", "--profile", str(profile), "--results-dir", str(tmp_path)]) == 1
    canceller.join(timeout=1)
    assert "1 of 4 runs done, 3 failed" in capsys.readouterr().out
    first = jobs(tmp_path)
    assert seen_running and seen_running[0].state == "running" and f"job {first[CE1]} RUNNING" in seen_running[0].detail
    assert [final_states(first[key]) for key in (CE, CE1, raising, hollow)] == [
        ["COMPLETED"],
        ["CANCELLED"],
        ["FAILED"],
        ["COMPLETED"],
    ]
    assert not (runs / hollow).exists() and 1 <= epochs_logged(runs / CE1) < EPOCHS

    rows, out = status_rows(capsys, profile, tmp_path)
    assert [rows[key].split()[1] for key in (CE, CE1, raising, hollow)] == ["done", "cancelled", "failed", "failed"]
    assert f"job {first[CE1]} ended (CANCELLED)" in rows[CE1] and f"/{EPOCHS}]" in rows[CE1]
    assert "ValueError: important class 12 is out of range" in rows[raising]
    assert f"job {first[hollow]} ended (COMPLETED) before the run started" in rows[hollow]
    tail = out.split(CE1, 1)[1].split(raising, 1)[0]  # the cancelled run's block: its log's last lines
    assert re.search(rf"\| epoch \d+/{EPOCHS} ", tail), out
    assert "| ValueError: important class 12 is out of range" in out.split(raising, 1)[1]
    command = out.rstrip().splitlines()[-1].split(": ", 1)[1]
    assert out.rstrip().splitlines()[-1].startswith("to train the 3 failed or cancelled run(s) again: ")
    assert command == f"camri grid --profile {profile} --results-dir {tmp_path} --executor submitit"

    # That command submits exactly the three missing runs, as one new array; the finished run is left alone.
    assert main(shlex.split(command)[1:]) == 1
    assert "2 of 4 runs done, 2 failed" in capsys.readouterr().out
    second = jobs(tmp_path)
    array = array_of([second[CE1], second[raising], second[hollow]])
    assert second[CE] == first[CE] and array != array_of(first.values())
    assert [second[key] for key in (CE1, raising, hollow)] == [f"{array}_{task}" for task in range(3)]
    assert array_tasks(array) == [f"{array}_{task}" for task in range(3)]
    assert "resuming after epoch" in (runs / CE1 / "log.txt").read_text()
    assert_same_records(runs / CE1, reference / CE1)  # cancelled, resubmitted, resumed: the same run


def test_gpus_on_a_partition_without_them_stop_before_anything_is_submitted(slurm_cluster, tmp_path, capsys):
    profile = write_profile(tmp_path, gpus_per_node=1)
    queued = slurm_out("squeue", "-h", "-o", "%i")
    assert main(["grid", "--profile", str(profile), "--results-dir", str(tmp_path), "--no-wait"]) == 2
    err = capsys.readouterr().err
    assert "gpus_per_node is 1, but the cluster's default partition has no GPUs" in err and "gpus_per_node: 0" in err
    # Nothing new in the queue (an earlier test's job may still be leaving it).
    assert not (tmp_path / "slurm" / "jobs.json").exists()
    assert set(slurm_out("squeue", "-h", "-o", "%i").split()) <= set(queued.split())
