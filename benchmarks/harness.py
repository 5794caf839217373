"""What benchmarks/throughput.py and its modes share: the machine, and camri's training API
(camri.loop) driven on in-memory tensors for one configuration."""

from __future__ import annotations

import os
import platform
import sys
import time
from pathlib import Path

import torch

from camri import data as camri_data
from camri.loop import EpochResult, Placement, build_model, evaluate, train_epoch
from camri.losses import LOSSES
from camri.train import TrainConfig, cpu_has_bf16
from real_run import CLASSES


def log(message: str) -> None:
    print(f"[throughput] {message}", file=sys.stderr, flush=True)


def loadavg() -> list[float]:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return []


# ---- the machine --------------------------------------------------------------------------------------


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(device: torch.device) -> dict:
    info = {
        "cpu": cpu_model(),
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_native_bf16": cpu_has_bf16(),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---- the model, as camri builds it ---------------------------------------------------------------


def model_config(args, width: float) -> TrainConfig:
    """The benchmarked run's configuration: ``camri train`` with these settings trains the same model."""
    return TrainConfig(
        dataset="synthetic-cifar10",
        loss=args.loss,
        important=[3] if LOSSES[args.loss].class_specific else [],
        width=width,
        z_dim=args.z_dim,
        batch_size=args.batch_size,
        eval_batch_size=args.eval_batch_size,
        seed=0,
        device=args.device,
    )


def make_model(args, width: float, placement: Placement):
    """camri.loop.build_model's model and Adam (compiled with ``--compile``)."""
    model, optimizer = build_model(model_config(args, width), in_channels=3, num_classes=10, placement=placement)
    if args.compile:
        # torch.compile's module forwards attribute access (.head) to the original module, so
        # camri.loop.train_epoch and evaluate run unchanged on the compiled forward.
        model = torch.compile(model)
    return model, optimizer


def synthetic_dataset(
    n_train: int, n_test: int, seed: int = 0, device: torch.device | str = "cpu"
) -> camri_data.DataSet:
    g = torch.Generator().manual_seed(seed)
    return camri_data.DataSet(
        name="synthetic-cifar10",
        x_train=torch.randint(0, 256, (n_train, 3, 32, 32), dtype=torch.uint8, generator=g).to(device),
        y_train=torch.randint(0, 10, (n_train,), generator=g).to(device),
        x_test=torch.randint(0, 256, (n_test, 3, 32, 32), dtype=torch.uint8, generator=g).to(device),
        y_test=torch.randint(0, 10, (n_test,), generator=g).to(device),
        classes=list(CLASSES),
    )


# ---- camri's loop ---------------------------------------------------------------------------------------


class CamriLoop:
    """camri's public training API (camri.loop) for one configuration: ``build_model`` once, then
    ``train_epoch`` and ``evaluate`` on exactly the tensors each call is given (on the device already, as
    camri.train.Run keeps its data set). Nothing is cached between calls."""

    def __init__(self, args, width: float, bf16: bool, channels_last: bool, device: torch.device):
        self.placement = Placement(device, amp=bf16, channels_last=channels_last)
        self.model, self.optimizer = make_model(args, width, self.placement)
        self.epoch = 0

    def train(self, x: torch.Tensor, y: torch.Tensor, batch: int) -> EpochResult:
        self.epoch += 1
        return train_epoch(
            self.model, self.optimizer, x, y, batch_size=batch, seed=0, epoch=self.epoch, placement=self.placement
        )

    def evaluate(self, x: torch.Tensor, y: torch.Tensor, batch: int) -> int:
        """Evaluates (x, y); the number of images evaluated."""
        return evaluate(self.model, x, y, batch_size=batch, placement=self.placement)["images"]


def time_calls(fn, seconds: float, min_calls: int = 1) -> tuple[float, list[float], list]:
    """Call ``fn`` until ``seconds`` have passed (at least ``min_calls`` times): total seconds, each
    call's seconds, each call's result."""
    times, results = [], []
    while sum(times) < seconds or len(times) < min_calls:
        start = time.perf_counter()
        results.append(fn())
        times.append(time.perf_counter() - start)
    return sum(times), times, results
