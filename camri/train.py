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
import datetime
import os
import pickle
import platform
import random
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

import camri
from camri import data as camri_data
from camri import loop, rundir
from camri.config import TrainConfig, add_arguments, from_args
from camri.io import atomic_write
from camri.loop import NonFiniteLossError  # noqa: F401  (raised by Run.execute; camri.cli catches it)
from camri.metrics import angle_statistics, angles_deg, confusion_matrix, recall_per_class, relative_angle_variance
from camri.models import Classifier


class ConfigMismatchError(ValueError):
    """An output directory already holds a run with another configuration."""


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
            f"command again: the run restarts from epoch 1 in {path.parent}."
        ) from error
    if not isinstance(state, dict) or not {"model", "optimizer", "rng", "history", "epoch"} <= set(state):
        raise CheckpointError(
            f"{path} is not a camri checkpoint (no model, optimizer, rng, history and epoch): "
            "delete it and run the same command again to restart the run from epoch 1."
        )
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
            raise ValueError(
                f"important class {item!r} is not a class of this data set: valid are "
                f"{', '.join(classes)} or their indices 0..{len(classes) - 1}"
            )
        resolved.append(index)
    return resolved


def _git_commit() -> str | None:
    try:
        return (
            subprocess.run(
                ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5
            ).stdout.strip()
            or None
        )
    except (OSError, subprocess.SubprocessError):
        return None


def machine(device: torch.device) -> dict:
    """What a segment of a run trained on, so that its wall time can be read (issue 15: CPUs differ between
    sessions, with and without native bf16): host, CPU model, CPUs available, torch threads, native bf16,
    and the GPU's name on CUDA."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:  # not Linux: platform's answer
        pass
    record = {
        "host": platform.node(),
        "cpu": cpu,
        "cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "threads": torch.get_num_threads(),
        "cpu_bf16": cpu_has_bf16(),
    }
    if device.type == "cuda":
        record["gpu"] = torch.cuda.get_device_name(device)
    return record


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

    def __init__(
        self,
        config: TrainConfig,
        out_dir: str | Path,
        *,
        quiet: bool = False,
        dataset: camri_data.DataSet | None = None,
    ):
        self.out = Path(out_dir)
        self.quiet = quiet
        loaded = (
            dataset
            if dataset is not None
            else camri_data.load(config.dataset, data_dir=config.data_dir, image_size=config.image_size)
        )
        # The validation split is carved here, from the config, so every run of a profile has the same one.
        self.data = loaded.with_validation(
            config.validation_fraction, config.split_seed, by_group=config.validation_groups
        )
        # The last check of the config needs the data set's class names; nothing is written before it.
        self.config = config.replace(important=tuple(resolve_important(config.important, self.data.classes)))
        self.device = resolve_device(self.config.device)
        self.amp = resolve_amp(self.config.amp, self.device)
        self.channels_last = resolve_channels_last(self.config.channels_last, self.device)
        if self.amp and self.device.type == "cpu" and not cpu_has_bf16():
            # Without bf16 kernels oneDNN emulates them: 17-23x slower than float32 (docs/performance.md).
            warnings.warn(
                "--amp bf16 on a CPU without native bfloat16 support (no avx512_bf16/amx): oneDNN "
                "falls back to slow kernels and training runs about 20x slower than float32. "
                "Use --amp off (or auto) on this machine.",
                RuntimeWarning,
                stacklevel=2,
            )
        self._tensors: dict[str, torch.Tensor] = {}  # the data set on the device (_device_tensors)
        self._tensors_of: tuple[torch.Tensor, ...] = ()  # ... made from these tensors of self.data

    # ---- files -------------------------------------------------------------------------------------
    def _check_existing_config(self) -> None:
        record = rundir.read_config(self.out)
        if record is None:
            return
        diff = rundir.config_conflicts(record, self.config.identity())
        if diff:
            lines = ", ".join(f"{k}: stored {a!r} vs now {b!r}" for k, (a, b) in diff.items())
            raise ConfigMismatchError(
                f"{self.out} already holds a run with another configuration ({lines}). "
                "Use another --out, or delete that directory to start over."
            )
        # An "auto" setting resolves by camri's defaults of the day; a run resumes with what it started with
        # (a default that changed since, e.g. channels_last on CPU, would change its last bits mid-run).
        same_device = str(record.get("device", "")).split(":")[0] == self.device.type
        for key, attribute in (("channels_last", "channels_last"), ("amp_bf16", "amp")):  # attribute = config field
            if (
                same_device
                and getattr(self.config, attribute) == "auto"
                and key in record
                and bool(record[key]) != getattr(self, attribute)
            ):
                self._log(f"{self.out}: resuming with {key} = {bool(record[key])}, as the run started")
                setattr(self, attribute, bool(record[key]))

    def _write_config(self, first_epoch: int) -> None:
        """config.json, with one entry in ``segments`` per start or resume of the run: what trained the
        epochs from ``first_epoch`` on (the top-level version fields stay those of the first segment)."""
        rundir.write_config(
            self.out,
            self.config.to_json(),
            classes=self.data.classes,
            segment={
                "first_epoch": first_epoch,
                "started": datetime.datetime.now().isoformat(timespec="seconds"),
                "camri_version": camri.__version__,
                "git_commit": _git_commit(),
                "torch_version": torch.__version__,
                "device": str(self.device),
                "amp_bf16": self.amp,
                "channels_last": self.channels_last,
                "machine": machine(self.device),
            },
        )

    def _write_metrics(self, rows: list[dict]) -> None:
        rundir.write_metrics(self.out, rows)

    # ---- model, training and evaluation: camri.loop on this run's data ------------------------------
    @property
    def placement(self) -> loop.Placement:
        """Device, bf16 autocast and memory format as resolved (a resumed run keeps what it started with)."""
        return loop.Placement(self.device, amp=self.amp, channels_last=self.channels_last)

    def build_model(self) -> tuple[Classifier, torch.optim.Optimizer]:
        """This run's model (seeded by its config) and optimiser: camri.loop.build_model."""
        return loop.build_model(
            self.config,
            in_channels=self.data.image_shape[0],
            num_classes=self.data.num_classes,
            placement=self.placement,
        )

    def _device_tensors(self) -> dict[str, torch.Tensor]:
        """The data set's uint8 images and labels on the training device, moved there once: on a GPU a
        batch is then gathered on the device, not on the CPU and copied from pageable memory every step
        (CIFAR-10 is 180 MB as uint8). On the CPU these are the data set's own tensors (``to`` is a no-op).
        The copy belongs to the tensors it was made from: replacing ``self.data`` (or one of its tensors)
        makes a new one, so training never runs on a stale copy."""
        names = ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test")
        source = tuple(getattr(self.data, name) for name in names)
        if len(source) != len(self._tensors_of) or any(a is not b for a, b in zip(source, self._tensors_of)):
            self._tensors = {name: t.to(self.device) for name, t in zip(names, source)}
            self._tensors_of = source
        return self._tensors

    def train_epoch(self, model, optimizer, epoch: int, bar=None) -> loop.EpochResult:
        """One epoch of camri.loop.train_epoch over this run's training set (``self.data`` as it is now)."""
        c, tensors = self.config, self._device_tensors()
        steps = loop.steps_per_epoch(len(tensors["y_train"]), c.batch_size)
        done = (epoch - 1) * steps  # optimiser steps of the epochs before this one

        def lr_at(step: int) -> float:
            return loop.learning_rate(c.lr, c.lr_schedule, done + step, c.epochs * steps)

        return loop.train_epoch(
            model,
            optimizer,
            tensors["x_train"],
            tensors["y_train"],
            batch_size=c.batch_size,
            seed=c.seed,
            epoch=epoch,
            placement=self.placement,
            augment=c.augment,
            progress=bar,
            # A constant rate is the optimiser's own (set at its creation): nothing to set per step.
            lr_at=None if c.lr_schedule == "constant" else lr_at,
        )

    def evaluate(self, model, split: str = "test") -> dict | None:
        """camri.loop.evaluate over this run's ``split`` ("test" or "val"): features, cosines, logits and
        loss; None for a split without images (no validation split)."""
        tensors = self._device_tensors()
        if not len(tensors[f"y_{split}"]):
            return None
        return loop.evaluate(
            model,
            tensors[f"x_{split}"],
            tensors[f"y_{split}"],
            batch_size=self.config.eval_batch_size,
            placement=self.placement,
        )

    def _confusion(self, ev: dict) -> torch.Tensor:
        if "confusion" not in ev:  # once per evaluation: the last epoch's row and the summary share it
            ev["confusion"] = confusion_matrix(ev["labels"].cpu(), ev["logits"].argmax(1).cpu(), self.data.num_classes)
        return ev["confusion"]

    def _epoch_row(self, epoch, train_loss, train_acc, ev, ev_val, seconds) -> dict:
        row = {"epoch": epoch, "train_loss": train_loss, "train_accuracy": train_acc}
        # Test columns keep their original names (test_*, recall_<class>); validation ones are prefixed val_.
        for prefix, recall_prefix, split in (("test_", "recall_", ev), ("val_", "val_recall_", ev_val)):
            if split is None:
                continue
            confusion = self._confusion(split)
            recall = recall_per_class(confusion)
            row[f"{prefix}loss"] = split["loss"]
            row[f"{prefix}accuracy"] = confusion.diagonal().sum().item() / confusion.sum().item()
            row.update({f"{recall_prefix}{name}": recall[i].item() for i, name in enumerate(self.data.classes)})
        row["seconds"] = round(seconds, 3)
        return row

    def _split_summary(self, ev: dict) -> tuple[dict, dict[str, np.ndarray]]:
        """One split's summary fields (accuracy, recall, confusion, angle statistics, loss) and its arrays
        for angles.npz (theta_deg, labels, logits)."""
        k = self.data.num_classes
        labels = ev["labels"].cpu()
        confusion = self._confusion(ev)
        theta = angles_deg(ev["cosines"].cpu(), labels)
        means, variances = angle_statistics(theta, labels, k)
        fields = {
            "accuracy": confusion.diagonal().sum().item() / confusion.sum().item(),
            "recall": recall_per_class(confusion).tolist(),
            "confusion": confusion.tolist(),
            "angle_mean_deg": means,
            "angle_var_deg2": variances,
            "relative_angle_variance": relative_angle_variance(variances, self.config.important or range(k)),
        }
        arrays = {
            "theta_deg": theta.float().numpy(),
            "labels": labels.numpy(),
            "logits": ev["logits"].float().cpu().numpy(),
        }
        return fields, arrays

    def _finish(self, ev: dict, ev_val: dict | None, history: list[dict], seconds: float) -> dict:
        test, arrays = self._split_summary(ev)
        if self.config.z_dim == 2:
            arrays["features2d"] = ev["z"].float().cpu().numpy()
        summary = {
            "dataset": self.config.dataset,
            "loss": self.config.loss,
            "seed": self.config.seed,
            "classes": self.data.classes,
            "important": list(self.config.important),
            "config": self.config.to_json(),
            **test,
            "test_loss": ev["loss"],
        }
        if ev_val is not None:
            validation, val_arrays = self._split_summary(ev_val)
            summary["validation"] = {**validation, "loss": ev_val["loss"], "images": len(self.data.y_val)}
            arrays.update({f"val_{name}": value for name, value in val_arrays.items()})
        summary.update({"epochs_completed": len(history), "seconds": round(seconds, 3)})
        rundir.write_angles(self.out, arrays)
        rundir.write_summary(self.out, summary)  # last: its presence means "finished"
        return summary

    def execute(self) -> dict:
        """Train (or resume, or skip a finished run) and return the summary."""
        c = self.config
        self._check_existing_config()
        if rundir.is_finished(self.out):
            self._log(f"{self.out}: finished run with the same config found; skipping")
            return rundir.read_summary(self.out)
        model, optimizer = self.build_model()  # builds the loss too: the last validation before any file
        history: list[dict] = []
        checkpoint_path = self.out / "checkpoint.pt"
        state = load_checkpoint(checkpoint_path, self.device) if checkpoint_path.exists() else None
        self._write_config(first_epoch=state["epoch"] + 1 if state else 1)
        if state is not None:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            _set_rng_state(state["rng"], self.device)
            history = state["history"]
            self._write_metrics(history)  # metrics.csv may be one epoch behind the checkpoint
            self._log(f"{self.out}: resuming after epoch {state['epoch']} of {c.epochs}")
        steps = loop.steps_per_epoch(len(self.data.y_train), c.batch_size)
        ev = ev_val = None
        for epoch in range(len(history) + 1, c.epochs + 1):
            start = time.perf_counter()
            bar = (
                None
                if self.quiet
                else tqdm(
                    total=steps, desc=f"epoch {epoch}/{c.epochs}", leave=False, file=sys.stderr, dynamic_ncols=True
                )
            )
            try:
                result = self.train_epoch(model, optimizer, epoch, bar)
            except NonFiniteLossError as error:
                raise NonFiniteLossError(
                    f"{error} The checkpoint of epoch {epoch - 1} in {self.out} is intact. "
                    "Try a lower --lr or --scale, or --amp off."
                ) from None
            finally:
                if bar is not None:
                    bar.close()
            eval_start = time.perf_counter()
            ev = self.evaluate(model)
            eval_s = time.perf_counter() - eval_start  # the test set's: what the benchmark compares
            ev_val = self.evaluate(model, "val")
            row = self._epoch_row(epoch, result.loss, result.accuracy, ev, ev_val, time.perf_counter() - start)
            history.append(row)
            atomic_write(
                checkpoint_path,
                lambda f: torch.save(
                    {
                        "model": model.state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "epoch": epoch,
                        "rng": _rng_state(self.device),
                        "history": history,
                        "config": c.identity(),
                    },
                    f,
                ),
            )
            self._write_metrics(history)
            # The rates are what benchmarks/throughput.py reads back to check its own loop figures (EPOCH_RATES).
            self._log(
                f"epoch {epoch}/{c.epochs}  loss {result.loss:.4f}  train acc {result.accuracy:.4f}  "
                f"test acc {row['test_accuracy']:.4f}"
                + "".join(
                    f"  recall[{self.data.classes[i]}] {row[f'recall_{self.data.classes[i]}']:.4f}" for i in c.important
                )
                + f"  ({row['seconds']:.1f} s; training {result.images} images at {result.images_per_s:.1f} "
                f"img/s, evaluation {ev['images']} at {ev['images'] / max(eval_s, 1e-9):.1f} img/s)"
            )
        if ev is None:  # every epoch was done before a crash between the last checkpoint and summary.json
            ev, ev_val = self.evaluate(model), self.evaluate(model, "val")
        return self._finish(ev, ev_val, history, sum(r["seconds"] for r in history))

    def _log(self, message: str) -> None:
        if not self.quiet:
            tqdm.write(message, file=sys.stderr)


def resolve_amp(setting: str, device: torch.device) -> bool:
    """bf16 autocast: "bf16" on, "off" off, "auto" on for CUDA only. On a CPU "auto" stays float32, with
    or without native bf16 kernels: where bf16 is emulated it trains ~20x slower (docs/performance.md), and
    on a native-bf16 CPU the switch awaits the measurement docs/performance.md ("bf16 on the CPU") asks for."""
    return setting == "bf16" or (setting == "auto" and device.type == "cuda")


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


def train(
    config: TrainConfig, out_dir: str | Path, *, quiet: bool = False, dataset: camri_data.DataSet | None = None
) -> dict:
    """Train one run (resuming or skipping as needed) and return its summary (docs/run-format.md)."""
    return Run(config, out_dir, quiet=quiet, dataset=dataset).execute()


# ---- command line ------------------------------------------------------------------------------------
def _train_command(args: argparse.Namespace) -> int:
    summary = train(from_args(args), args.out, quiet=args.quiet)
    classes = summary["classes"]
    print(f"{args.out}: test accuracy {summary['accuracy']:.4f}")
    for c in summary["important"]:
        print(
            f"  recall of important class {c} ({classes[c]}): {summary['recall'][c]:.4f}   "
            f"relative angle variance {summary['relative_angle_variance'][str(c)]:.3f}"
        )
    return 0


def add_cli(subparsers) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train one model with one loss on one data set",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(parser)  # one option per TrainConfig field
    parser.add_argument("--out", required=True, help="run directory (resumed or skipped if it exists)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar or per-epoch lines")
    parser.set_defaults(func=_train_command)
