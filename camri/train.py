"""Train one model with one loss on one data set, reproducibly and resumably (``camri train``).

A run directory holds config.json, metrics.csv, checkpoint.pt, and when finished angles.npz and
summary.json (format: docs/run-format.md). Defaults are the paper's: Adam, lr 1e-3, batch 64, 300 epochs,
no augmentation, pixels scaled to [0, 1].

Reproducibility:
- CPU: the same config and seed give identical metrics.csv and summary.json (timing columns aside), and a
  run killed at any moment and resumed ends with exactly the metrics of an uninterrupted one: the batch
  order of epoch e comes from a generator seeded by (seed, e), and the checkpoint holds every RNG state
  (dropout) with the optimiser and the metrics history.
- CUDA: cuDNN picks its fastest (non-deterministic) kernels, so two runs agree statistically, not bit for
  bit; resume is exact up to that non-determinism.
"""

from __future__ import annotations

import argparse
import dataclasses
import csv
import io
import math
import pickle
import random
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

import camri
from camri import data as camri_data
from camri.io import atomic_write, atomic_write_json, atomic_write_text, read_json
from camri.losses import IMPORTANT_LOSSES, LOSS_NAMES, build_loss, paper_margin, parse_margin
from camri.metrics import (
    angle_statistics,
    angles_deg,
    confusion_matrix,
    recall_per_class,
    relative_angle_variance,
)
from camri.models import Classifier, PaperCNN


@dataclass
class TrainConfig:
    """Everything that defines a run. Saved to config.json; a run directory belongs to one config."""

    dataset: str = "digits"
    loss: str = "ce"
    important: list = field(default_factory=list)  # class indices (or names, resolved before training)
    margin: list = field(default_factory=lambda: [paper_margin(4)])  # radians; one, or one per important
    scale: float = 16.0
    weight: float = 2.0  # WCE weight / CRWWCE false-negative weight of the important classes
    fp_weight: float = 1.0  # CRWWCE false-positive weight
    epochs: int = 300
    batch_size: int = 64
    lr: float = 1e-3
    width: float = 1.0
    z_dim: int = 512
    bn_momentum: float = 0.01  # PyTorch convention; 0.01 = Keras's 0.99, the authors' (see camri.models)
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | mps
    amp: str = "auto"  # auto | bf16 | off: bf16 autocast; auto = on for CUDA
    channels_last: str = "auto"  # auto | on | off: auto = on for CUDA and CPU (faster on both), off for MPS
    augment: bool = False  # random crop + flip (camri.data.augment_batch); the paper uses none
    image_size: int | None = None  # data sets that are resized (gtsrb, awa2); None = their default
    eval_batch_size: int = 1024
    data_dir: str | None = None  # where the data is; not part of the run's identity

    def identity(self) -> dict:
        """The fields that must match for an existing run directory to be resumed or skipped."""
        fields = dataclasses.asdict(self)
        fields.pop("data_dir")
        return fields

    def validate(self) -> None:
        if self.loss not in LOSS_NAMES:
            raise ValueError(f"unknown loss {self.loss!r}: valid are {', '.join(LOSS_NAMES)}")
        for name in ("epochs", "batch_size", "eval_batch_size", "z_dim"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1; got {getattr(self, name)}")
        if not 0 < self.bn_momentum <= 1:
            raise ValueError(f"bn_momentum must be in (0, 1]; got {self.bn_momentum}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0; got {self.lr}")
        choices = {"device": ("auto", "cpu", "cuda", "mps"), "amp": ("auto", "bf16", "off"),
                   "channels_last": ("auto", "on", "off")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}; got {getattr(self, name)!r}")


class ConfigMismatchError(ValueError):
    """An output directory already holds a run with another configuration."""


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or inf; the last good checkpoint is left as it was."""


class CheckpointError(ValueError):
    """A run directory's checkpoint.pt cannot be read (truncated or corrupt)."""


#: What torch.load raises on a file cut short or overwritten: RuntimeError from the zip reader
#: ("PytorchStreamReader failed ..."), EOFError / UnpicklingError from the pickle inside it.
_UNREADABLE = (RuntimeError, EOFError, pickle.UnpicklingError)


def load_checkpoint(path: Path, device: torch.device) -> dict:
    """The state ``Run.execute`` saved after an epoch; a CheckpointError naming the file and the fix when it
    cannot be read. checkpoint.pt is written atomically, so this is a file damaged after the fact (a copy
    cut short, a full disk during a sync, a user's edit), never a crash of camri during its write."""
    try:
        state = torch.load(path, map_location=device, weights_only=False)
    except _UNREADABLE as error:
        # The first sentence of torch's message ("PytorchStreamReader failed reading zip archive: ..."), not its
        # advice about miniz.
        reason = str(error).strip().split(". ")[0].splitlines()[0] if str(error).strip() else type(error).__name__
        raise CheckpointError(
            f"{path} cannot be read: it is truncated or corrupt ({reason}). Delete it and run the same "
            f"command again: the run restarts from epoch 1 in {path.parent}.") from error
    if not isinstance(state, dict) or not {"model", "optimizer", "rng", "history", "epoch"} <= set(state):
        raise CheckpointError(f"{path} is not a camri checkpoint (no model, optimizer, rng, history and epoch): "
                              "delete it and run the same command again to restart the run from epoch 1.")
    return state


def resolve_device(name: str) -> torch.device:
    """auto: CUDA, then Apple's MPS, then CPU."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but no CUDA GPU is available: use --device cpu or auto")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError("device 'mps' was asked for but MPS is not available: use --device cpu or auto")
    return torch.device(name)


def resolve_important(important, classes: list[str]) -> list[int]:
    """Class indices from indices or names (``3`` or ``cat``)."""
    resolved = []
    for item in important:
        if isinstance(item, int) or (isinstance(item, str) and item.isdigit() and item not in classes):
            index = int(item)
            if not 0 <= index < len(classes):
                raise ValueError(f"important class {index} is out of range: allowed are 0..{len(classes) - 1}")
        elif item in classes:
            index = classes.index(item)
        else:
            raise ValueError(f"important class {item!r} is not a class of this data set: valid are "
                             f"{', '.join(classes)} or their indices 0..{len(classes) - 1}")
        resolved.append(index)
    return resolved


def _git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                              text=True, timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _epoch_generator(seed: int, epoch: int) -> torch.Generator:
    # A fresh generator per (seed, epoch): the batch order needs no saved state to be resumed exactly.
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


def _rng_state(device: torch.device) -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state_all(state["cuda"])


class Run:
    """One training run in ``out_dir``. ``Run(config, out_dir).execute()`` trains, resumes or skips."""

    def __init__(self, config: TrainConfig, out_dir: str | Path, *, quiet: bool = False,
                 dataset: camri_data.DataSet | None = None):
        config.validate()
        self.out = Path(out_dir)
        self.quiet = quiet
        self.data = dataset if dataset is not None else camri_data.load(
            config.dataset, data_dir=config.data_dir, image_size=config.image_size)
        self.config = dataclasses.replace(
            config,
            important=resolve_important(config.important, self.data.classes),
            margin=[parse_margin(m) for m in (config.margin if isinstance(config.margin, (list, tuple))
                                               else [config.margin])],
        )
        if self.config.loss in IMPORTANT_LOSSES and not self.config.important:
            raise ValueError(f"loss {self.config.loss!r} needs at least one important class (--important)")
        self.device = resolve_device(self.config.device)
        cuda = self.device.type == "cuda"
        self.amp = self.config.amp == "bf16" or (self.config.amp == "auto" and cuda)
        self.channels_last = resolve_channels_last(self.config.channels_last, self.device)
        if self.amp and self.device.type == "cpu" and not cpu_has_bf16():
            # Without bf16 kernels oneDNN emulates them: 17-23x slower than float32 (docs/performance.md).
            warnings.warn("--amp bf16 on a CPU without native bfloat16 support (no avx512_bf16/amx): oneDNN "
                          "falls back to slow kernels and training runs about 20x slower than float32. "
                          "Use --amp off (or auto) on this machine.", RuntimeWarning, stacklevel=2)
        self._tensors: dict[str, torch.Tensor] | None = None

    # ---- files -------------------------------------------------------------------------------------
    def _check_existing_config(self) -> None:
        path = self.out / "config.json"
        if not path.exists():
            return
        record = read_json(path)
        stored = record["config"]
        stored.pop("data_dir", None)
        mine = self.config.identity()
        diff = {k: (stored.get(k), v) for k, v in mine.items() if stored.get(k) != v}
        if diff:
            lines = ", ".join(f"{k}: stored {a!r} vs now {b!r}" for k, (a, b) in diff.items())
            raise ConfigMismatchError(
                f"{self.out} already holds a run with another configuration ({lines}). "
                "Use another --out, or delete that directory to start over.")
        # An "auto" setting resolves by camri's defaults of the day; a run resumes with what it started with
        # (a default that changed since, e.g. channels_last on CPU, would change its last bits mid-run).
        same_device = str(record.get("device", "")).split(":")[0] == self.device.type
        for key, attribute in (("channels_last", "channels_last"), ("amp_bf16", "amp")):  # attribute = config field
            if (same_device and getattr(self.config, attribute) == "auto" and key in record
                    and bool(record[key]) != getattr(self, attribute)):
                self._log(f"{self.out}: resuming with {key} = {bool(record[key])}, as the run started")
                setattr(self, attribute, bool(record[key]))

    def _write_config(self) -> None:
        atomic_write_json(self.out / "config.json", {
            "config": dataclasses.asdict(self.config),
            "camri_version": camri.__version__,
            "git_commit": _git_commit(),
            "torch_version": torch.__version__,
            "device": str(self.device),
            "amp_bf16": self.amp,
            "channels_last": self.channels_last,
            "classes": self.data.classes,
        })

    def _write_metrics(self, rows: list[dict]) -> None:
        buffer = io.StringIO()
        if rows:
            writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
            writer.writeheader()
            writer.writerows(rows)
        atomic_write_text(self.out / "metrics.csv", buffer.getvalue())

    # ---- model -------------------------------------------------------------------------------------
    def _build(self) -> tuple[Classifier, torch.optim.Optimizer]:
        c = self.config
        torch.manual_seed(c.seed)
        np.random.seed(c.seed)
        random.seed(c.seed)
        backbone = PaperCNN(in_channels=self.data.image_shape[0], width=c.width, z_dim=c.z_dim,
                            bn_momentum=c.bn_momentum)
        head = build_loss(c.loss, self.data.num_classes, c.z_dim, important=c.important,
                          margin=c.margin if len(c.margin) > 1 else c.margin[0],
                          scale=c.scale, weight=c.weight, fp_weight=c.fp_weight)
        model = Classifier(backbone, head).to(self.device)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        return model, torch.optim.Adam(model.parameters(), lr=c.lr)

    def _device_tensors(self) -> dict[str, torch.Tensor]:
        """The data set's uint8 images and labels on the training device, moved there once: on a GPU a
        batch is then gathered on the device, not on the CPU and copied from pageable memory every step
        (CIFAR-10 is 180 MB as uint8). On the CPU these are the data set's own tensors (``to`` is a no-op)."""
        if self._tensors is None:
            d = self.data
            self._tensors = {name: getattr(d, name).to(self.device)
                             for name in ("x_train", "y_train", "x_test", "y_test")}
        return self._tensors

    def _inputs(self, x_uint8: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        x = camri_data.to_float(x_uint8.to(self.device, non_blocking=True))
        if generator is not None:
            x = camri_data.augment_batch(x, generator)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp)

    # ---- training and evaluation -------------------------------------------------------------------
    def _train_epoch(self, model, optimizer, epoch: int, bar) -> tuple[float, float]:
        c = self.config
        model.train()
        tensors = self._device_tensors()
        x_all, y_all = tensors["x_train"], tensors["y_train"]
        # The order is drawn on the CPU (the same on every device: seeded by (seed, epoch)), used on the device.
        order = torch.randperm(len(y_all), generator=_epoch_generator(c.seed, epoch)).to(self.device)
        augment_gen = _epoch_generator(c.seed + 7919, epoch) if c.augment else None
        total_loss = torch.zeros((), dtype=torch.float64, device=self.device)
        correct = torch.zeros((), dtype=torch.int64, device=self.device)
        # The first non-finite step, tracked on the device so that no step waits for a host sync.
        first_bad = torch.full((), -1, dtype=torch.int64, device=self.device)
        steps = math.ceil(len(order) / c.batch_size)
        for step in range(steps):
            index = order[step * c.batch_size:(step + 1) * c.batch_size]
            x = self._inputs(x_all[index], augment_gen)
            y = y_all[index].to(self.device, non_blocking=True)
            with self._autocast():
                z = model(x)
            loss = model.head(z, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                bad = ~torch.isfinite(loss)
                first_bad = torch.where(bad & (first_bad < 0), torch.tensor(step, device=self.device), first_bad)
                total_loss += loss.double() * len(y)
                correct += (model.head.logits(z.detach()).argmax(1) == y).sum()
            if step % 50 == 49 or step == steps - 1:
                if first_bad.item() >= 0:
                    raise NonFiniteLossError(
                        f"the loss became NaN or inf at epoch {epoch}, step {first_bad.item() + 1} of {steps}; "
                        f"stopped. The checkpoint of epoch {epoch - 1} in {self.out} is intact. "
                        "Try a lower --lr or --scale, or --amp off.")
                if bar is not None:
                    bar.update(min(50, step % 50 + 1))
                    bar.set_postfix(loss=f"{total_loss.item() / ((step + 1) * c.batch_size):.4f}")
        n = len(order)
        return total_loss.item() / n, correct.item() / n

    @torch.no_grad()
    def evaluate(self, model) -> dict:
        """Features, cosines, logits and loss of the whole test set (no margin in the logits)."""
        model.eval()
        tensors = self._device_tensors()
        features = []
        for start in range(0, len(tensors["y_test"]), self.config.eval_batch_size):
            x = self._inputs(tensors["x_test"][start:start + self.config.eval_batch_size])
            with self._autocast():
                features.append(model(x).float())
        z = torch.cat(features)
        y = tensors["y_test"]
        head = model.head
        logits = head.logits(z)
        cosines = head.cosines(z)
        # The test loss is the training objective (with its margin) on the test set, as Keras reports it.
        return {"z": z, "labels": y, "logits": logits, "cosines": cosines, "loss": head(z, y).item()}

    def _confusion(self, ev: dict) -> torch.Tensor:
        if "confusion" not in ev:  # once per evaluation: the last epoch's row and the summary share it
            ev["confusion"] = confusion_matrix(ev["labels"].cpu(), ev["logits"].argmax(1).cpu(), self.data.num_classes)
        return ev["confusion"]

    def _epoch_row(self, epoch, train_loss, train_acc, ev, seconds) -> dict:
        confusion = self._confusion(ev)
        recall = recall_per_class(confusion)
        row = {"epoch": epoch, "train_loss": train_loss, "train_accuracy": train_acc,
               "test_loss": ev["loss"], "test_accuracy": confusion.diagonal().sum().item() / confusion.sum().item()}
        row.update({f"recall_{name}": recall[i].item() for i, name in enumerate(self.data.classes)})
        row["seconds"] = round(seconds, 3)
        return row

    def _finish(self, ev: dict, history: list[dict], seconds: float) -> dict:
        k = self.data.num_classes
        labels = ev["labels"].cpu()
        confusion = self._confusion(ev)
        theta = angles_deg(ev["cosines"].cpu(), labels)
        means, variances = angle_statistics(theta, labels, k)
        arrays = {"theta_deg": theta.float().numpy(), "labels": labels.numpy(),
                  "logits": ev["logits"].float().cpu().numpy()}
        if self.config.z_dim == 2:
            arrays["features2d"] = ev["z"].float().cpu().numpy()
        atomic_write(self.out / "angles.npz", lambda f: np.savez_compressed(f, **arrays))
        summary = {
            "dataset": self.config.dataset, "loss": self.config.loss, "seed": self.config.seed,
            "classes": self.data.classes, "important": self.config.important,
            "config": dataclasses.asdict(self.config),
            "accuracy": confusion.diagonal().sum().item() / confusion.sum().item(),
            "recall": recall_per_class(confusion).tolist(),
            "confusion": confusion.tolist(),
            "angle_mean_deg": means, "angle_var_deg2": variances,
            "relative_angle_variance": relative_angle_variance(
                variances, self.config.important or range(k)),
            "test_loss": ev["loss"],
            "epochs_completed": len(history),
            "seconds": round(seconds, 3),
        }
        atomic_write_json(self.out / "summary.json", summary)  # last: its presence means "finished"
        return summary

    def execute(self) -> dict:
        """Train (or resume, or skip a finished run) and return the summary."""
        c = self.config
        self._check_existing_config()
        if (self.out / "summary.json").exists():
            self._log(f"{self.out}: finished run with the same config found; skipping")
            return read_json(self.out / "summary.json")
        self.out.mkdir(parents=True, exist_ok=True)
        self._write_config()
        model, optimizer = self._build()
        history: list[dict] = []
        checkpoint_path = self.out / "checkpoint.pt"
        if checkpoint_path.exists():
            state = load_checkpoint(checkpoint_path, self.device)
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            _set_rng_state(state["rng"], self.device)
            history = state["history"]
            self._write_metrics(history)  # metrics.csv may be one epoch behind the checkpoint
            self._log(f"{self.out}: resuming after epoch {state['epoch']} of {c.epochs}")
        steps = math.ceil(len(self.data.y_train) / c.batch_size)
        ev = None
        for epoch in range(len(history) + 1, c.epochs + 1):
            start = time.perf_counter()
            bar = None if self.quiet else tqdm(total=steps, desc=f"epoch {epoch}/{c.epochs}", leave=False,
                                               file=sys.stderr, dynamic_ncols=True)
            try:
                train_loss, train_acc = self._train_epoch(model, optimizer, epoch, bar)
            finally:
                if bar is not None:
                    bar.close()
            ev = self.evaluate(model)
            row = self._epoch_row(epoch, train_loss, train_acc, ev, time.perf_counter() - start)
            history.append(row)
            atomic_write(checkpoint_path, lambda f: torch.save({
                "model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch,
                "rng": _rng_state(self.device), "history": history, "config": c.identity()}, f))
            self._write_metrics(history)
            self._log(f"epoch {epoch}/{c.epochs}  loss {train_loss:.4f}  train acc {train_acc:.4f}  "
                      f"test acc {row['test_accuracy']:.4f}"
                      + "".join(f"  recall[{self.data.classes[i]}] {row[f'recall_{self.data.classes[i]}']:.4f}"
                                for i in c.important)
                      + f"  ({row['seconds']:.1f} s)")
        if ev is None:  # every epoch was done before a crash between the last checkpoint and summary.json
            ev = self.evaluate(model)
        return self._finish(ev, history, sum(r["seconds"] for r in history))

    def _log(self, message: str) -> None:
        if not self.quiet:
            tqdm.write(message, file=sys.stderr)


def resolve_channels_last(setting: str, device: torch.device) -> bool:
    """``channels_last`` "on" / "off", or "auto": on for CUDA and CPU, where it measured +4% (width 1.0)
    to +24% (width 0.125) on CPU (docs/performance.md); MPS is not measured and stays NCHW."""
    return setting == "on" or (setting == "auto" and device.type in ("cuda", "cpu"))


def cpu_has_bf16() -> bool:
    """Whether oneDNN has native bfloat16 kernels on this CPU (AVX512-BF16 or AMX); without them bf16
    autocast on the CPU is emulated and far slower than float32."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a build without oneDNN: no bf16 kernels either
        return False


def train(config: TrainConfig, out_dir: str | Path, *, quiet: bool = False,
          dataset: camri_data.DataSet | None = None) -> dict:
    """Train one run (resuming or skipping as needed) and return its summary (docs/run-format.md)."""
    return Run(config, out_dir, quiet=quiet, dataset=dataset).execute()


# ---- command line ------------------------------------------------------------------------------------
def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    d = TrainConfig()
    parser.add_argument("--dataset", default=d.dataset, help="data set name (see `camri data`)")
    parser.add_argument("--loss", default=d.loss, choices=LOSS_NAMES)
    parser.add_argument("--important", nargs="+", default=[], metavar="CLASS",
                        help="important class(es): index or name (e.g. 3 or cat)")
    parser.add_argument("--margin", nargs="+", default=["4pi/64"], metavar="M",
                        help="margin in radians or the paper's notation (4pi/64); one per important class")
    parser.add_argument("--scale", type=float, default=d.scale, help="s of the angular losses")
    parser.add_argument("--weight", type=float, default=d.weight, help="WCE / CRWWCE false-negative weight")
    parser.add_argument("--fp-weight", type=float, default=d.fp_weight, help="CRWWCE false-positive weight")
    parser.add_argument("--epochs", type=int, default=d.epochs)
    parser.add_argument("--batch-size", type=int, default=d.batch_size)
    parser.add_argument("--lr", type=float, default=d.lr)
    parser.add_argument("--width", type=float, default=d.width, help="channel multiplier (1.0 = paper)")
    parser.add_argument("--z-dim", type=int, default=d.z_dim, help="feature dimension (512 = paper)")
    parser.add_argument("--bn-momentum", type=float, default=d.bn_momentum,
                        help="BatchNorm momentum, PyTorch convention (0.01 = Keras 0.99, the paper's)")
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument("--device", default=d.device, choices=("auto", "cpu", "cuda", "mps"))
    parser.add_argument("--amp", default=d.amp, choices=("auto", "bf16", "off"),
                        help="bf16 autocast (auto: on for CUDA)")
    parser.add_argument("--channels-last", default=d.channels_last, choices=("auto", "on", "off"))
    parser.add_argument("--augment", action="store_true", help="random crop + flip (the paper uses none)")
    parser.add_argument("--image-size", type=int, default=None)
    parser.add_argument("--eval-batch-size", type=int, default=d.eval_batch_size)
    parser.add_argument("--data-dir", default=None, help="data directory (default $CAMRI_DATA_DIR or data/)")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(
        dataset=args.dataset, loss=args.loss, important=list(args.important),
        margin=[parse_margin(m) for m in args.margin], scale=args.scale, weight=args.weight,
        fp_weight=args.fp_weight, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
        width=args.width, z_dim=args.z_dim, bn_momentum=args.bn_momentum, seed=args.seed, device=args.device, amp=args.amp,
        channels_last=args.channels_last, augment=args.augment, image_size=args.image_size,
        eval_batch_size=args.eval_batch_size, data_dir=args.data_dir)


def _train_command(args: argparse.Namespace) -> int:
    summary = train(config_from_args(args), args.out, quiet=args.quiet)
    classes = summary["classes"]
    print(f"{args.out}: test accuracy {summary['accuracy']:.4f}")
    for c in summary["important"]:
        print(f"  recall of important class {c} ({classes[c]}): {summary['recall'][c]:.4f}   "
              f"relative angle variance {summary['relative_angle_variance'][str(c)]:.3f}")
    return 0


def add_cli(subparsers) -> None:
    parser = subparsers.add_parser("train", help="train one model with one loss on one data set",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_train_arguments(parser)
    parser.add_argument("--out", required=True, help="run directory (resumed or skipped if it exists)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar or per-epoch lines")
    parser.set_defaults(func=_train_command)
