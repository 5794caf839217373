"""The run directory (docs/run-format.md): the one place that knows its file names and how they are read and
written. The trainer writes through it, the grid, status and the notebooks read through it.

Questions it answers: is a run finished (``is_finished``: summary.json is there, written last), what
config it holds (``read_config``) and whether that conflicts with another (``config_conflicts``), its
``summary``, ``metrics``, ``angles`` and head weights, and how many epochs it has done.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from camri.config import with_legacy_values
from camri.io import atomic_write, atomic_write_json, atomic_write_text, read_json

CONFIG = "config.json"
METRICS = "metrics.csv"
SUMMARY = "summary.json"
ANGLES = "angles.npz"
CHECKPOINT = "checkpoint.pt"
LOG = "log.txt"
LOCK = ".grid.lock"
#: A finished run's records: what a campaign commits (the checkpoint is large and only serves resuming).
RECORDS = (CONFIG, METRICS, SUMMARY, ANGLES, LOG)
#: Fields of a segment of config.json that also stand at its top level (those of the first segment).
_SEGMENT_FIELDS = ("camri_version", "git_commit", "torch_version", "device", "amp_bf16", "channels_last")

PathLike = str | os.PathLike


# ---- finished or not ---------------------------------------------------------------------------------


def is_finished(run_dir: PathLike) -> bool:
    """summary.json is written last, atomically: its presence means the run finished."""
    return (Path(run_dir) / SUMMARY).is_file()


def finished_dirs(root: PathLike) -> list[Path]:
    """Every finished run directory below ``root``, sorted by path."""
    return [path.parent for path in _files(root, SUMMARY)]


def unfinished_dirs(root: PathLike) -> list[Path]:
    """Every run directory below ``root`` that was started (config.json) but has not finished."""
    return [path.parent for path in _files(root, CONFIG) if not is_finished(path.parent)]


def _files(root: PathLike, name: str) -> Iterator[Path]:
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"no run directory {root}")
    return iter(sorted(root.rglob(name)))


def epochs_done(run_dir: PathLike) -> int:
    """Finished epochs according to metrics.csv (0 when there is none)."""
    try:
        with open(Path(run_dir) / METRICS) as f:
            return max(0, sum(1 for line in f if line.strip()) - 1)
    except OSError:
        return 0


# ---- config.json -----------------------------------------------------------------------------------


def read_config(run_dir: PathLike) -> dict | None:
    """config.json as stored (``{"config": {...}, "classes", "segments", ...}``), or None without one."""
    path = Path(run_dir) / CONFIG
    return read_json(path) if path.is_file() else None


def write_config(run_dir: PathLike, config: dict, *, classes: list[str], segment: dict) -> None:
    """Write config.json for a start (or a resume) of a run. ``segment`` says what trains from its
    ``first_epoch`` on (versions, device); it is appended to ``segments``, so a resumed run keeps what
    trained its earlier epochs. The top-level version fields are those of the first segment."""
    record = read_config(run_dir)
    if record is None:
        record = {"config": config, **{k: segment[k] for k in _SEGMENT_FIELDS}, "classes": classes, "segments": []}
    elif "segments" not in record:  # written before segments were kept: its fields describe the first one
        record["segments"] = [{"first_epoch": 1, **{k: record[k] for k in _SEGMENT_FIELDS if k in record}}]
    record["config"] = config  # the same identity (config_conflicts); data_dir may have moved
    record["segments"].append(segment)
    atomic_write_json(Path(run_dir) / CONFIG, record)


def config_conflicts(record: dict, identity: dict) -> dict[str, tuple[Any, Any]]:
    """``{field: (stored, mine)}`` for each field of ``identity`` (``TrainConfig.identity()``) that the
    stored config.json ``record`` holds differently; empty when the run directory may be resumed."""
    stored = with_legacy_values(record.get("config", {}))
    return {key: (stored.get(key), value) for key, value in identity.items() if stored.get(key) != value}


# ---- summary, metrics, angles, weights --------------------------------------------------------------


def read_summary(run_dir: PathLike) -> dict:
    return read_json(Path(run_dir) / SUMMARY)


def write_summary(run_dir: PathLike, summary: dict) -> None:
    atomic_write_json(Path(run_dir) / SUMMARY, summary)


def write_metrics(run_dir: PathLike, rows: list[dict]) -> None:
    """metrics.csv: one row per finished epoch, columns in the order of the first row."""
    buffer = io.StringIO()
    if rows:
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    atomic_write_text(Path(run_dir) / METRICS, buffer.getvalue())


def read_metrics(run_dir: PathLike):
    """metrics.csv as a DataFrame."""
    import pandas as pd

    return pd.read_csv(Path(run_dir) / METRICS)


def write_angles(run_dir: PathLike, arrays: dict[str, np.ndarray]) -> None:
    atomic_write(Path(run_dir) / ANGLES, lambda f: np.savez_compressed(f, **arrays))


def read_angles(run_dir: PathLike) -> dict[str, np.ndarray]:
    """angles.npz as a dict of arrays (theta_deg, labels, logits, features2d when z_dim = 2)."""
    with np.load(Path(run_dir) / ANGLES) as npz:
        return {k: npz[k] for k in npz.files}


def read_head_weight(run_dir: PathLike) -> np.ndarray | None:
    """The (K, D) class weight vectors of a run's head (checkpoint.pt), or None without a checkpoint."""
    import torch

    path = Path(run_dir) / CHECKPOINT
    if not path.is_file():
        return None
    state = torch.load(path, map_location="cpu", weights_only=False)
    return state["model"]["head.weight"].float().numpy()
