"""camri.train: one reproducible, resumable run on the embedded digits data set (CPU, seconds)."""

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from records import metrics_rows, summary_record
from camri import data as camri_data
from camri.loop import learning_rate
from camri.losses import LOSS_NAMES, LinearHead
from camri.train import ConfigMismatchError, NonFiniteLossError, Run, TrainConfig, train

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def digits():
    return camri_data.load("digits")


def tiny(**overrides) -> TrainConfig:
    """A small, fast configuration: width 1/8, 16-d features, 2 epochs."""
    values = dict(
        dataset="digits",
        loss="camri",
        important=[3],
        margin=[0.2],
        scale=8.0,
        epochs=2,
        batch_size=64,
        width=0.125,
        z_dim=16,
        bn_momentum=0.1,
        seed=0,
        device="cpu",
    )
    values.update(overrides)
    return TrainConfig(**values)


@pytest.mark.parametrize("loss", LOSS_NAMES)
def test_each_loss_trains_and_writes_every_file(loss, digits, tmp_path):
    summary = train(tiny(loss=loss), tmp_path, quiet=True, dataset=digits)
    for name in ("config.json", "metrics.csv", "summary.json", "angles.npz", "checkpoint.pt"):
        assert (tmp_path / name).is_file(), name
    k = digits.num_classes
    rows = metrics_rows(tmp_path)
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert {f"recall_{c}" for c in digits.classes} <= set(rows[0])
    assert summary["epochs_completed"] == 2
    assert len(summary["recall"]) == k and len(summary["angle_mean_deg"]) == k
    assert np.array(summary["confusion"]).sum() == len(digits.y_test)
    assert summary["accuracy"] == pytest.approx(np.trace(summary["confusion"]) / len(digits.y_test))
    assert math.isfinite(float(rows[-1]["train_loss"]))
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["config"]["loss"] == loss and config["torch_version"] == torch.__version__
    assert config["device"] == "cpu" and "git_commit" in config and "camri_version" in config


def test_important_class_by_name_and_margin_notation(digits, tmp_path):
    from camri.cli import build_parser
    from camri.config import from_args

    args = build_parser().parse_args(
        [
            "train",
            "--dataset",
            "digits",
            "--loss",
            "camri",
            "--important",
            "3",
            "--margin",
            "4pi/64",
            "--out",
            str(tmp_path),
        ]
    )
    config = from_args(args)
    run = Run(config, tmp_path, quiet=True, dataset=digits)
    assert run.config.important == (3,)
    assert run.config.margin == (pytest.approx(math.pi / 16),)
    with pytest.raises(ValueError, match="not a class of this data set"):
        Run(tiny(important=["cat"]), tmp_path, dataset=digits)
    with pytest.raises(ValueError, match="out of range"):
        Run(tiny(important=[10]), tmp_path, dataset=digits)


def test_two_identical_runs_are_identical(digits, tmp_path):
    train(tiny(), tmp_path / "a", quiet=True, dataset=digits)
    train(tiny(), tmp_path / "b", quiet=True, dataset=digits)
    assert metrics_rows(tmp_path / "a") == metrics_rows(tmp_path / "b")
    assert summary_record(tmp_path / "a") == summary_record(tmp_path / "b")
    a, b = np.load(tmp_path / "a" / "angles.npz"), np.load(tmp_path / "b" / "angles.npz")
    assert np.array_equal(a["theta_deg"], b["theta_deg"])
    # ... and another seed differs.
    train(tiny(seed=1), tmp_path / "c", quiet=True, dataset=digits)
    assert metrics_rows(tmp_path / "a") != metrics_rows(tmp_path / "c")


def test_finished_run_is_skipped_and_conflicting_config_refused(digits, tmp_path, capsys):
    train(tiny(), tmp_path, quiet=True, dataset=digits)
    stamp = (tmp_path / "summary.json").stat().st_mtime_ns
    train(tiny(), tmp_path, dataset=digits)
    assert "skipping" in capsys.readouterr().err
    assert (tmp_path / "summary.json").stat().st_mtime_ns == stamp
    with pytest.raises(ConfigMismatchError, match=r"scale: stored 8.0 vs now 16.0"):
        train(tiny(scale=16.0), tmp_path, quiet=True, dataset=digits)
    # data_dir is where the data is, not what the run is: another one is not a conflict.
    train(tiny(data_dir=str(tmp_path / "elsewhere")), tmp_path, quiet=True, dataset=digits)


def test_kill_and_resume_equals_uninterrupted(digits, tmp_path):
    args = [
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
        "5",
        "--width",
        "0.125",
        "--z-dim",
        "16",
        "--bn-momentum",
        "0.1",
        "--device",
        "cpu",
        # The cosine schedule is a function of the global step: the resumed epochs must take the same rates.
        "--lr-schedule",
        "cosine",
        "--quiet",
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    command = [sys.executable, "-m", "camri", "train", *args]
    subprocess.run([*command, "--out", str(tmp_path / "straight")], check=True, env=env, cwd=ROOT, timeout=300)

    killed = tmp_path / "killed"
    process = subprocess.Popen([*command, "--out", str(killed)], env=env, cwd=ROOT)
    deadline = time.time() + 240
    while time.time() < deadline:
        done = (killed / "metrics.csv").exists() and len(metrics_rows(killed)) >= 2
        if done or process.poll() is not None:
            break
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (killed / "summary.json").exists(), "the run finished before it could be killed"
    subprocess.run([*command, "--out", str(killed)], check=True, env=env, cwd=ROOT, timeout=300)
    assert metrics_rows(killed) == metrics_rows(tmp_path / "straight")
    assert summary_record(killed) == summary_record(tmp_path / "straight")


def test_cosine_schedule_by_hand_and_applied_to_every_step_of_the_run(digits, tmp_path):
    # By hand: lr · (1 + cos(π t / T)) / 2 at t = 0, T/4, T/2, T.
    assert [learning_rate(1e-3, "cosine", t, 8) for t in (0, 2, 4, 8)] == pytest.approx(
        [1e-3, 1e-3 * (1 + math.sqrt(0.5)) / 2, 0.5e-3, 0.0]
    )
    assert learning_rate(1e-3, "constant", 7, 8) == 1e-3
    with pytest.raises(ValueError, match="allowed are constant, cosine"):
        learning_rate(1e-3, "step", 0, 8)
    seen = []
    original = torch.optim.Adam.step

    def recording_step(self, *args, **kwargs):
        seen.append(self.param_groups[0]["lr"])
        return original(self, *args, **kwargs)

    config = tiny(lr_schedule="cosine", lr=2e-3, validation_fraction=0.0)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch.optim.Adam, "step", recording_step)
        cosine = train(config, tmp_path / "cosine", quiet=True, dataset=digits)
    steps = math.ceil(len(digits.y_train) / 64)
    assert seen == pytest.approx([learning_rate(2e-3, "cosine", t, 2 * steps) for t in range(2 * steps)])
    assert seen[0] == 2e-3 and 0 < seen[-1] < 2e-3 * 0.01  # the last step's rate is near 0
    seen.clear()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch.optim.Adam, "step", recording_step)
        constant = train(config.replace(lr_schedule="constant"), tmp_path / "constant", quiet=True, dataset=digits)
    assert seen == [2e-3] * (2 * steps)  # the optimiser's own rate, never reset
    assert cosine["accuracy"] != constant["accuracy"] or cosine["test_loss"] != constant["test_loss"]
    assert json.loads((tmp_path / "cosine" / "config.json").read_text())["config"]["lr_schedule"] == "cosine"


def test_a_run_stored_before_the_schedule_existed_is_a_constant_rate_run(digits, tmp_path):
    config = tiny(epochs=1)
    train(config, tmp_path, quiet=True, dataset=digits)
    record = json.loads((tmp_path / "config.json").read_text())
    del record["config"]["lr_schedule"]
    (tmp_path / "config.json").write_text(json.dumps(record))
    assert train(config, tmp_path, quiet=True, dataset=digits)["accuracy"] > 0  # skipped as finished
    with pytest.raises(ConfigMismatchError, match="lr_schedule: stored 'constant' vs now 'cosine'"):
        train(config.replace(lr_schedule="cosine"), tmp_path, quiet=True, dataset=digits)


def test_angle_statistics_match_hand_computation(digits, tmp_path):
    summary = train(tiny(loss="arcface"), tmp_path, quiet=True, dataset=digits)
    run = Run(tiny(loss="arcface"), tmp_path, quiet=True, dataset=digits)
    model, _ = run.build_model()
    model.load_state_dict(torch.load(tmp_path / "checkpoint.pt", weights_only=False)["model"])
    model.eval()
    with torch.no_grad():
        z = model(digits.x_test.float() / 255).double().numpy()
    w = model.head.weight.detach().double().numpy()
    y = digits.y_test.numpy()
    cos = np.sum(z * w[y], axis=1) / (np.linalg.norm(z, axis=1) * np.linalg.norm(w[y], axis=1))
    theta = np.degrees(np.arccos(np.clip(cos, -1, 1)))
    stored = np.load(tmp_path / "angles.npz")
    assert np.allclose(stored["theta_deg"], theta, atol=1e-3)
    assert np.array_equal(stored["labels"], y)
    means = [theta[y == k].mean() for k in range(10)]
    variances = [theta[y == k].var() for k in range(10)]
    assert np.allclose(summary["angle_mean_deg"], means, atol=1e-3)
    assert np.allclose(summary["angle_var_deg2"], variances, rtol=1e-4)
    others = np.mean([v for k, v in enumerate(variances) if k != 3])
    assert summary["relative_angle_variance"]["3"] == pytest.approx(variances[3] / others, rel=1e-4)
    logits = stored["logits"]
    assert logits.shape == (len(y), 10)
    assert summary["accuracy"] == pytest.approx(np.mean(logits.argmax(1) == y))
    recall3 = np.mean(logits.argmax(1)[y == 3] == 3)
    assert summary["recall"][3] == pytest.approx(recall3)


def test_two_dimensional_features_are_stored(digits, tmp_path):
    train(tiny(z_dim=2, epochs=1), tmp_path, quiet=True, dataset=digits)
    assert np.load(tmp_path / "angles.npz")["features2d"].shape == (len(digits.y_test), 2)


def test_non_finite_loss_stops_and_keeps_last_checkpoint(digits, tmp_path, monkeypatch):
    steps = math.ceil(len(digits.with_validation(0.1).y_train) / 64)  # the run trains on the rest
    calls = {"n": 0}
    original = LinearHead.per_sample_loss

    def poisoned(self, logits, targets):
        calls["n"] += 1
        loss = original(self, logits, targets)
        # epoch 1 = `steps` training calls + 2 evaluation calls (test, validation); then step 5 of epoch 2
        return loss * float("nan") if calls["n"] == steps + 2 + 5 else loss

    monkeypatch.setattr(LinearHead, "per_sample_loss", poisoned)
    with pytest.raises(NonFiniteLossError, match=rf"epoch 2, step 5 of {steps}"):
        train(tiny(loss="ce", epochs=3), tmp_path, quiet=True, dataset=digits)
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    assert state["epoch"] == 1
    assert [int(r["epoch"]) for r in metrics_rows(tmp_path)] == [1]
    assert not (tmp_path / "summary.json").exists()


def test_bad_config_values(digits, tmp_path):
    for field, value, message in [
        ("loss", "focal", "loss: Input should be 'ce', 'wce'"),
        ("epochs", 0, "epochs: Input should be greater than or equal to 1"),
        ("lr", 0.0, "lr: Input should be greater than 0"),
        ("device", "tpu", "device: Input should be 'auto', 'cpu'"),
        ("bn_momentum", 0.0, "bn_momentum"),
    ]:
        with pytest.raises(ValueError, match=message):
            tiny(**{field: value})
    with pytest.raises(ValueError, match="needs at least one important class"):
        tiny(loss="wce", important=[])
    assert not any(tmp_path.iterdir())


def test_bf16_on_a_cpu_without_bf16_kernels_warns(digits, tmp_path, monkeypatch):
    import warnings

    import camri.train as camri_train

    monkeypatch.setattr(camri_train, "cpu_has_bf16", lambda: False)
    with pytest.warns(RuntimeWarning, match="without native bfloat16"):
        run = Run(tiny(amp="bf16"), tmp_path, quiet=True, dataset=digits)
    assert run.amp
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Run(tiny(amp="auto"), tmp_path, quiet=True, dataset=digits)  # float32 on CPU: nothing to warn about
        monkeypatch.setattr(camri_train, "cpu_has_bf16", lambda: True)
        Run(tiny(amp="bf16"), tmp_path, quiet=True, dataset=digits)


def test_channels_last_by_default_and_a_run_resumes_in_the_format_it_started_with(digits, tmp_path, monkeypatch):
    assert Run(tiny(), tmp_path / "new", quiet=True, dataset=digits).channels_last  # CPU and CUDA: on
    assert not Run(tiny(channels_last="off"), tmp_path / "new", quiet=True, dataset=digits).channels_last
    train(tiny(channels_last="off"), tmp_path / "nchw", quiet=True, dataset=digits)

    # An "auto" run started by a camri whose CPU default was NCHW, interrupted during epoch 2.
    original = Run.train_epoch

    def interrupted_in_epoch_2(self, model, optimizer, epoch, bar=None):
        if epoch == 2:
            raise KeyboardInterrupt
        return original(self, model, optimizer, epoch, bar)

    monkeypatch.setattr(Run, "train_epoch", interrupted_in_epoch_2)
    old = Run(tiny(), tmp_path / "old", quiet=True, dataset=digits)
    old.channels_last = False
    with pytest.raises(KeyboardInterrupt):
        old.execute()
    monkeypatch.undo()
    resumed = Run(tiny(), tmp_path / "old", quiet=True, dataset=digits)
    resumed.execute()
    assert not resumed.channels_last
    assert metrics_rows(tmp_path / "old") == metrics_rows(tmp_path / "nchw")  # bit for bit the NCHW run


def test_bad_margin_writes_nothing_and_the_corrected_command_runs(tmp_path, capsys):
    from camri.cli import main

    out = tmp_path / "d"
    common = [
        "train",
        "--loss",
        "camri",
        "--important",
        "3",
        "--epochs",
        "1",
        "--width",
        "0.125",
        "--z-dim",
        "8",
        "--device",
        "cpu",
        "--quiet",
        "--out",
        str(out),
    ]
    assert main([*common, "--margin", "4"]) == 2
    assert "margin: Input should be less than 3.14159" in capsys.readouterr().err
    assert not out.exists()  # nothing written before every setting is valid
    assert main([*common, "--margin", "4pi/64"]) == 0  # ... so the corrected command is not a conflict


def test_resume_keeps_a_history_of_segments(digits, tmp_path):
    train(tiny(epochs=1), tmp_path / "first", quiet=True, dataset=digits)
    run = tmp_path / "run"
    train(tiny(), run, quiet=True, dataset=digits)
    (run / "summary.json").unlink()  # as if killed after the last checkpoint
    record = json.loads((run / "config.json").read_text())
    record["git_commit"] = record["segments"][0]["git_commit"] = "earlier"
    (run / "config.json").write_text(json.dumps(record))
    train(tiny(), run, quiet=True, dataset=digits)
    record = json.loads((run / "config.json").read_text())
    assert [s["first_epoch"] for s in record["segments"]] == [1, 3]
    assert record["git_commit"] == record["segments"][0]["git_commit"] == "earlier"  # what trained epochs 1-2
    assert record["segments"][1]["torch_version"] == torch.__version__
    # The machine of each segment (issue 15: a wall time means nothing without it).
    machine = record["segments"][1]["machine"]
    assert machine["cpus"] >= 1 and machine["threads"] >= 1 and isinstance(machine["cpu_bf16"], bool)
    assert machine["cpu"] and machine["host"] and "gpu" not in machine
