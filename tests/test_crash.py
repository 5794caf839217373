"""Crash consistency of a run directory (camri.train, docs/run-format.md): a checkpoint write that fails half
way, a SIGKILL in the middle of an epoch, a failing angles.npz write and a damaged checkpoint.pt each leave
a directory that resumes to exactly the run that was never interrupted, or stops with an error that names
the file and the fix. CPU, digits, width 1/8, 2 epochs, one thread."""

import errno
import io
import math
import os
import re
import subprocess
import sys
import shutil
import textwrap
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import pytest
import torch

from records import metrics_rows, summary_record
from camri import data as camri_data
from camri.cli import main
from camri.train import CheckpointError, TrainConfig, train

ROOT = Path(__file__).resolve().parents[1]
EPOCHS = 2
# The same run as `camri train` arguments and as a TrainConfig.
ARGS = [
    "--dataset",
    "digits",
    "--loss",
    "camri",
    "--important",
    "3",
    "--margin",
    "0.2",
    "--scale",
    "8",
    "--epochs",
    str(EPOCHS),
    "--width",
    "0.125",
    "--z-dim",
    "16",
    "--bn-momentum",
    "0.1",
    "--device",
    "cpu",
    "--quiet",
]


def tiny() -> TrainConfig:
    return TrainConfig(
        dataset="digits",
        loss="camri",
        important=[3],
        margin=[0.2],
        scale=8.0,
        epochs=EPOCHS,
        width=0.125,
        z_dim=16,
        bn_momentum=0.1,
        device="cpu",
    )


@pytest.fixture(scope="module")
def digits():
    return camri_data.load("digits")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # The in-process runs, like the `camri train` subprocesses (OMP_NUM_THREADS=1): the same kernels, and no
    # OpenMP threads waiting on each other on shared cores.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def straight_run(digits, tmp_path_factory):
    """The uninterrupted run, in this process (the in-process crashes compare with it), and the names of the
    files it published, in order (every file of a run is written atomically: a rename onto its name)."""
    out = tmp_path_factory.mktemp("straight")
    real_replace = os.replace
    written = []

    def recording(source, destination, *args, **kwargs):
        written.append(Path(destination).name)
        return real_replace(source, destination, *args, **kwargs)

    with mock.patch.object(os, "replace", recording):
        train(tiny(), out, quiet=True, dataset=digits)
    return SimpleNamespace(path=out, written=written)


@pytest.fixture(scope="module")
def straight(straight_run):
    return straight_run.path


def same_run(a: Path, b: Path) -> None:
    assert metrics_rows(a) == metrics_rows(b)
    assert summary_record(a) == summary_record(b)


def test_half_written_checkpoint_in_epoch_2_keeps_epoch_1_and_resumes_exactly(digits, straight, tmp_path, monkeypatch):
    real_save = torch.save
    calls = {"n": 0}

    def half_then_disk_full(obj, f, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] != 2:  # the checkpoint of epoch 2
            return real_save(obj, f, *args, **kwargs)
        buffer = io.BytesIO()
        real_save(obj, buffer, *args, **kwargs)
        f.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", half_then_disk_full)
    out = tmp_path / "crashed"
    with pytest.raises(OSError, match="No space left on device"):
        train(tiny(), out, quiet=True, dataset=digits)
    monkeypatch.undo()
    assert calls["n"] == 2
    # Epoch 1's checkpoint is whole and loadable; the half file of epoch 2 is gone (no temporary left over).
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.pt", "config.json", "metrics.csv"]
    assert torch.load(out / "checkpoint.pt", weights_only=False)["epoch"] == 1
    assert [int(r["epoch"]) for r in metrics_rows(out)] == [1]
    train(tiny(), out, quiet=True, dataset=digits)
    same_run(out, straight)


KILL_AT_STEP = textwrap.dedent("""
    import os, signal, sys
    import torch
    from camri.cli import main

    kill_at = int(sys.argv[1])
    step = torch.optim.Adam.step
    calls = [0]

    def step_or_die(self, *args, **kwargs):
        calls[0] += 1
        if calls[0] == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)  # no handler, no cleanup: as a preemption or the OOM killer
        return step(self, *args, **kwargs)

    torch.optim.Adam.step = step_or_die
    sys.exit(main(sys.argv[2:]))
""")


def test_sigkill_in_the_middle_of_an_epoch_resumes_to_the_uninterrupted_run(digits, straight, tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")  # one thread, as the in-process run: the same kernels
    camri = [sys.executable, "-m", "camri", "train", *ARGS]

    steps = math.ceil(len(digits.y_train) / 64)
    killed = tmp_path / "killed"
    kill_at = steps + steps // 2  # half way through epoch 2
    proc = subprocess.run(
        [sys.executable, "-c", KILL_AT_STEP, str(kill_at), "train", *ARGS, "--out", str(killed)],
        env=env,
        cwd=ROOT,
        timeout=300,
    )
    assert proc.returncode == -9
    assert torch.load(killed / "checkpoint.pt", weights_only=False)["epoch"] == 1
    assert [int(r["epoch"]) for r in metrics_rows(killed)] == [1] and not (killed / "summary.json").exists()
    subprocess.run([*camri, "--out", str(killed)], check=True, env=env, cwd=ROOT, timeout=300)
    same_run(killed, straight)


def test_a_failing_angles_write_leaves_no_summary_and_the_run_resumes(digits, straight, tmp_path, monkeypatch):
    """summary.json means "finished": it must be the last file written, after angles.npz."""
    real_replace = os.replace

    def angles_fail(source, destination, *args, **kwargs):  # the rename that publishes an atomic write
        if Path(destination).name == "angles.npz":
            raise OSError(errno.EIO, "Input/output error")
        return real_replace(source, destination, *args, **kwargs)

    monkeypatch.setattr(os, "replace", angles_fail)
    out = tmp_path / "run"
    with pytest.raises(OSError, match="Input/output error"):
        train(tiny(), out, quiet=True, dataset=digits)
    monkeypatch.undo()
    assert not (out / "summary.json").exists() and not (out / "angles.npz").exists()
    assert torch.load(out / "checkpoint.pt", weights_only=False)["epoch"] == EPOCHS
    train(tiny(), out, quiet=True, dataset=digits)  # every epoch is done: only the summary is written
    same_run(out, straight)
    assert (out / "angles.npz").is_file()


def test_the_files_of_a_run_are_written_in_order(straight_run):
    # config.json first; per epoch the checkpoint, then metrics.csv (which may lag it by one epoch, never
    # lead it); angles.npz; summary.json last.
    assert straight_run.written == [
        "config.json",
        *["checkpoint.pt", "metrics.csv"] * EPOCHS,
        "angles.npz",
        "summary.json",
    ]


@pytest.fixture(scope="module")
def unfinished(straight, tmp_path_factory):
    """A run whose every epoch is checkpointed but which stopped before its summary (a copy of ``straight``)."""
    out = tmp_path_factory.mktemp("unfinished") / "run"
    shutil.copytree(straight, out)
    (out / "summary.json").unlink()
    (out / "angles.npz").unlink()
    return out


@pytest.mark.parametrize("damage", ["truncated", "empty", "garbage"])
def test_a_damaged_checkpoint_is_a_clear_error_naming_the_file_and_the_fix(
    digits, unfinished, straight, tmp_path, capsys, damage
):
    out = tmp_path / "run"
    shutil.copytree(unfinished, out)
    path = out / "checkpoint.pt"
    content = path.read_bytes()
    path.write_bytes(
        {"truncated": content[: len(content) // 2], "empty": b"", "garbage": b"not a checkpoint" * 64}[damage]
    )
    with pytest.raises(
        CheckpointError,
        match=rf"^{re.escape(str(path))} cannot be read: it is truncated or "
        r"corrupt \(.*\)\. Delete it and run the same command again",
    ):
        train(tiny(), out, quiet=True, dataset=digits)
    # On the command line: one line naming the file and the fix, exit status 2, no traceback.
    assert main(["train", *ARGS, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"camri train: error: {path} cannot be read" in err and "Traceback" not in err
    if damage == "truncated":  # the fix works: without the checkpoint the run starts over, the same run
        path.unlink()
        train(tiny(), out, quiet=True, dataset=digits)
        same_run(out, straight)


def test_a_file_that_is_not_a_checkpoint_is_refused(digits, unfinished, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(unfinished, out)
    torch.save({"weights": torch.zeros(3)}, out / "checkpoint.pt")
    with pytest.raises(CheckpointError, match="is not a camri checkpoint"):
        train(tiny(), out, quiet=True, dataset=digits)
