"""camri's training and evaluation loop on given tensors: the public API that ``camri train``
(camri.train.Run) and the benchmarks (benchmarks/throughput.py) both call.

    placement = Placement(torch.device("cpu"), amp=False, channels_last=True)
    model, optimizer = build_model(config, in_channels=3, num_classes=10, placement=placement)
    result = train_epoch(model, optimizer, x_train, y_train, batch_size=64, seed=0, epoch=1, placement=placement)
    ev = evaluate(model, x_test, y_test, batch_size=1024, placement=placement)

Every function works on exactly the tensors it is given (uint8 images N×C×H×W, int64 labels N): nothing
is cached between calls, so the images counted are the images trained on. ``result.images`` and
``result.steps`` say what one epoch did.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from camri import data as camri_data
from camri.losses import build_loss
from camri.models import Classifier, PaperCNN

if TYPE_CHECKING:
    from camri.train import TrainConfig

PROGRESS_EVERY = 50  # steps between progress-bar updates (and the only host syncs of an epoch)


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or inf; the last good checkpoint is left as it was."""


@dataclass(frozen=True)
class Placement:
    """Where and how a model computes: its device, bf16 autocast on or off, and its memory format
    (channels_last or NCHW). The model and every input batch follow the same memory format."""

    device: torch.device
    amp: bool = False  # bf16 autocast of the backbone; the loss head stays float32 (camri.losses)
    channels_last: bool = False

    def inputs(self, x_uint8: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """uint8 images (N, C, H, W) -> float in [0, 1] on the device, augmented when ``generator`` is given,
        in the placement's memory format."""
        x = camri_data.to_float(x_uint8.to(self.device, non_blocking=True))
        if generator is not None:
            x = camri_data.augment_batch(x, generator)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp)


@dataclass(frozen=True)
class EpochResult:
    """What one ``train_epoch`` call did: mean training loss and accuracy over ``images`` images in
    ``steps`` optimiser steps, in ``seconds`` of wall time (the device synchronised at the end)."""

    loss: float
    accuracy: float
    images: int
    steps: int
    seconds: float

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else math.inf


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    # A fresh generator per (seed, epoch): the batch order needs no saved state to be resumed exactly.
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


def steps_per_epoch(images: int, batch_size: int) -> int:
    """Optimiser steps of one epoch over ``images`` in batches of ``batch_size``, the last one partial."""
    return math.ceil(images / batch_size)


def learning_rate(base_lr: float, schedule: str, step: int, total_steps: int) -> float:
    """The learning rate of optimiser step ``step`` (0-based, counted over the whole run of ``total_steps``):
    ``base_lr`` for "constant"; for "cosine" base_lr · (1 + cos(π · step / total_steps)) / 2, SGDR's
    annealing without restarts (Loshchilov & Hutter, ICLR 2017): base_lr at the first step, decreasing
    to near 0 at the last one. A function of the step alone, so a resumed run needs no scheduler state."""
    if schedule == "constant":
        return base_lr
    if schedule == "cosine":
        return base_lr * 0.5 * (1.0 + math.cos(math.pi * step / total_steps))
    raise ValueError(f"unknown learning-rate schedule {schedule!r}; allowed are constant, cosine")


def build_model(
    config: TrainConfig, *, in_channels: int, num_classes: int, placement: Placement
) -> tuple[Classifier, torch.optim.Optimizer]:
    """The paper CNN with ``config.loss``'s head, on ``placement``'s device and memory format, and its
    Adam optimiser. Seeds torch, numpy and random with ``config.seed`` first (weights and dropout).
    ``config.important`` must hold class indices and ``config.margin`` a tuple of radians (TrainConfig's
    parsed form)."""
    c = config
    torch.manual_seed(c.seed)
    np.random.seed(c.seed)
    random.seed(c.seed)
    backbone = PaperCNN(in_channels=in_channels, width=c.width, z_dim=c.z_dim, bn_momentum=c.bn_momentum)
    head = build_loss(
        c.loss,
        num_classes,
        c.z_dim,
        important=c.important,
        margin=c.margin,
        scale=c.scale,
        weight=c.weight,
        fp_weight=c.fp_weight,
    )
    model = Classifier(backbone, head).to(placement.device)
    if placement.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model, torch.optim.Adam(model.parameters(), lr=c.lr)


def train_epoch(
    model: Classifier,
    optimizer: torch.optim.Optimizer,
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    *,
    batch_size: int,
    seed: int,
    epoch: int,
    placement: Placement,
    augment: bool = False,
    progress=None,
    lr_at: Callable[[int], float] | None = None,
) -> EpochResult:
    """One epoch over (x_train, y_train) in the order drawn from (seed, epoch), batches of ``batch_size``
    (the last one partial). ``progress``: a tqdm bar of ``ceil(N / batch_size)`` steps, or None.
    ``lr_at``: the learning rate of this epoch's step i (0-based), set before that step; None leaves the
    optimiser's rate as it is.

    The tensors should already be on the device (camri.train.Run moves its data set there once): a batch
    is then gathered there, not on the CPU and copied every step. Raises NonFiniteLossError at the first
    NaN or inf loss (checked every PROGRESS_EVERY steps, so that no step waits for the host)."""
    device = placement.device
    start = time.perf_counter()
    model.train()
    # The order is drawn on the CPU (the same on every device: seeded by (seed, epoch)), used on the device.
    order = torch.randperm(len(y_train), generator=epoch_generator(seed, epoch)).to(device)
    augment_gen = epoch_generator(seed + 7919, epoch) if augment else None
    total_loss = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    first_bad = torch.full((), -1, dtype=torch.int64, device=device)
    steps = steps_per_epoch(len(order), batch_size)
    seen = 0  # images so far: the running loss is per image, and the last batch may be partial
    for step in range(steps):
        index = order[step * batch_size : (step + 1) * batch_size]
        x = placement.inputs(x_train[index], augment_gen)
        y = y_train[index].to(device, non_blocking=True)
        with placement.autocast():
            z = model(x)
        loss = model.head(z, y)
        if lr_at is not None:
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        seen += len(index)
        with torch.no_grad():
            bad = ~torch.isfinite(loss)
            first_bad = torch.where(bad & (first_bad < 0), torch.tensor(step, device=device), first_bad)
            total_loss += loss.double() * len(index)
            correct += (model.head.logits(z.detach()).argmax(1) == y).sum()
        if step % PROGRESS_EVERY == PROGRESS_EVERY - 1 or step == steps - 1:
            if first_bad.item() >= 0:
                raise NonFiniteLossError(
                    f"the loss became NaN or inf at epoch {epoch}, step {first_bad.item() + 1} of {steps}; stopped."
                )
            if progress is not None:
                progress.update(step % PROGRESS_EVERY + 1)
                progress.set_postfix(loss=f"{total_loss.item() / seen:.4f}")
    n = len(order)
    loss_mean, accuracy = (total_loss.item() / n, correct.item() / n) if n else (math.nan, math.nan)
    return EpochResult(loss=loss_mean, accuracy=accuracy, images=seen, steps=steps, seconds=time.perf_counter() - start)


@torch.no_grad()
def evaluate(
    model: Classifier, x_test: torch.Tensor, y_test: torch.Tensor, *, batch_size: int, placement: Placement
) -> dict:
    """Features ``z`` (N, z_dim), ``labels`` (N), ``logits`` and ``cosines`` (N, K) of (x_test, y_test)
    (no margin in the logits), and ``loss``: the training objective, margin included, on these images,
    as Keras reports a test loss. ``images`` = N."""
    model.eval()
    features = []
    for start in range(0, len(y_test), batch_size):
        x = placement.inputs(x_test[start : start + batch_size])
        with placement.autocast():
            features.append(model(x).float())
    z = torch.cat(features)
    y = y_test.to(placement.device)
    head = model.head
    return {
        "z": z,
        "labels": y,
        "logits": head.logits(z),
        "cosines": head.cosines(z),
        "loss": head(z, y).item(),
        "images": len(y),
    }
