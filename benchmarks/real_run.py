"""A real ``camri train`` of one benchmark configuration, for throughput.py to check its loop figures
against (issue 13): the command-line tool as a user runs it, on an image folder of random CIFAR-10-shaped
PNGs (the data set's pixel values do not change the arithmetic), one epoch of a few hundred batches.
Its images/s come from its own log line (camri.train.Run.execute writes "training N images at R img/s,
evaluation M at S img/s"), its epoch time from its metrics.csv."""

from __future__ import annotations

import csv
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
EPOCH_RATES = re.compile(r"training (\d+) images at ([\d.]+) img/s, evaluation (\d+) at ([\d.]+) img/s")


def write_pngs(root: Path, count: int, seed: int = 0) -> None:
    """``count`` random 32x32 RGB PNGs in the ten CIFAR-10 class folders under ``root``."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for name in CLASSES:
        (root / name).mkdir(parents=True, exist_ok=True)
    for i in range(count):
        pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / CLASSES[i % 10] / f"{i:05d}.png")


def write_imagefolder(root: Path, n_train: int, n_test: int) -> str:
    """A camri ``imagefolder:`` data set (train/<class>/, test/<class>/) of random PNGs; its name."""
    write_pngs(root / "train", n_train, seed=1)
    write_pngs(root / "test", n_test, seed=2)
    return f"imagefolder:{root}"


def parse_epoch_rates(log: str) -> dict:
    """The last epoch line's rates in a camri train log: {"images", "img_s", "eval_images", "eval_img_s"}.
    Raises ValueError when there is none (the run failed, or its log format changed)."""
    found = EPOCH_RATES.findall(log)
    if not found:
        raise ValueError(
            f"no epoch line with 'training N images at R img/s' in the camri train log; its end:\n{log[-1500:]}"
        )
    images, rate, eval_images, eval_rate = found[-1]
    return {
        "images": int(images),
        "img_s": float(rate),
        "eval_images": int(eval_images),
        "eval_img_s": float(eval_rate),
    }


def train_command(
    dataset: str,
    data_dir: Path,
    out: Path,
    *,
    loss: str,
    width: float,
    z_dim: int,
    batch_size: int,
    eval_batch_size: int,
    device: str,
    bf16: bool,
    channels_last: bool,
) -> list[str]:
    command = [
        sys.executable,
        "-m",
        "camri",
        "train",
        "--dataset",
        dataset,
        "--data-dir",
        str(data_dir),
        "--loss",
        loss,
        "--width",
        str(width),
        "--z-dim",
        str(z_dim),
        "--epochs",
        "1",
        "--batch-size",
        str(batch_size),
        "--eval-batch-size",
        str(eval_batch_size),
        "--device",
        device,
        "--amp",
        "bf16" if bf16 else "off",
        "--channels-last",
        "on" if channels_last else "off",
        "--out",
        str(out),
        # The loop it is checked against trains every image and evaluates the test set only: no validation
        # split here, so the real run does the same work.
        "--validation-fraction",
        "0",
    ]
    if loss in ("wce", "crwwce", "camri"):
        command += ["--important", "3"]
    return command


def real_run(command: list[str], out: Path, threads: int, timeout_s: float) -> dict:
    """Run ``command`` (a train_command) with ``threads`` torch threads; its rates and epoch seconds."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(ROOT)}
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT, timeout=timeout_s)
    if result.returncode != 0:
        raise RuntimeError(
            f"camri train failed (exit {result.returncode}): {' '.join(command)}\n{result.stderr[-2000:]}"
        )
    rates = parse_epoch_rates(result.stderr)
    with open(out / "metrics.csv") as f:
        rates["epoch_s"] = float(list(csv.DictReader(f))[-1]["seconds"])
    return rates
