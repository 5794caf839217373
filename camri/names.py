"""How the package spells things for readers: data sets (the paper's names; a local image folder as the
data set it copies, never its path) and hyperparameters in the paper's notation (m = 4π/64). Used by the
protocol's tables, the claims, the notebooks' headings and the figures' titles."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

from camri.losses import LOSSES

#: The paper's data sets, as its Table 1 spells them.
DATASET_NAMES = {"cifar10": "CIFAR-10", "gtsrb": "GTSRB", "awa2": "AwA2"}
_HYPERPARAMETER_LABELS = {"margin": "m", "scale": "s", "weight": "w", "fp_weight": "w_fp"}


def _imagefolder_match(name: str) -> tuple[str, str, str | None]:
    """For ``imagefolder:<path>``: (file name, what follows the paper's data set in it, that set's key or
    None). ``cifar10-jpeg.zip`` → ("cifar10-jpeg.zip", "jpeg", "cifar10")."""
    file = Path(name.split(":", 1)[1].rstrip("/")).name
    stem = file.split(".")[0].lower()
    for key in DATASET_NAMES:
        if stem == key or stem.startswith(key + "-") or stem.startswith(key + "_"):
            return file, stem[len(key) + 1 :], key
    return file, "", None


def display_dataset(name: str) -> str:
    """The paper's spelling of a data set (cifar10 → CIFAR-10, gtsrb → GTSRB, awa2 → AwA2); others as-is.

    An ``imagefolder:`` source whose folder or zip is named after one of them (``cifar10-jpeg.zip``, how
    CIFAR-10 is read without internet) is shown as that data set, so the paper's numbers join beside it.
    """
    if name.startswith("imagefolder:"):
        key = _imagefolder_match(name)[2]
        if key is not None:
            return DATASET_NAMES[key]
    return DATASET_NAMES.get(name, name)


#: Data sets outside the paper, as readers know them.
_READER_NAMES = {"mnist": "MNIST", "fashion-mnist": "Fashion-MNIST", "digits": "digits (scikit-learn, 8x8)"}


def dataset_label(name: str) -> str:
    """A data set as a reader knows it, for figure titles and headings; never a local path.

    ``imagefolder:/data/cifar10-jpeg.zip`` → "CIFAR-10 (JPEG copy)", an unrecognised folder → its file
    name; ``mnist`` → "MNIST", ``digits`` → "digits (scikit-learn, 8x8)"; the paper's sets as
    ``display_dataset`` spells them.
    """
    if name.startswith("imagefolder:"):
        file, variant, key = _imagefolder_match(name)
        if key is None:
            return file
        return f"{DATASET_NAMES[key]} ({variant.upper() + ' copy' if variant else 'image folder'})"
    return _READER_NAMES.get(name, display_dataset(name))


def format_margin(radians: float, denominator: int = 64) -> str:
    """A margin in the paper's notation k·π/denominator: 0.19635 → "4π/64"; k is shown to 3 significant
    digits when it is not an integer."""
    k = radians * denominator / math.pi
    text = str(round(k)) if abs(k - round(k)) < 1e-6 else f"{k:.3g}"
    if text == "0":
        return "0"
    return f"{'' if text == '1' else text}π/{denominator}"


def format_hyperparameters(loss: str, run: Mapping) -> str:
    """The hyperparameters of ``loss`` in ``run`` as text, e.g. "m=4π/64, s=16", "w=2, w_fp=1", "" for CE."""
    parts = []
    for field in LOSSES[loss].axes:
        value = run[field]
        if field == "margin":
            margins = [format_margin(m) for m in value]
            text = margins[0] if len(margins) == 1 else "(" + ", ".join(margins) + ")"
        else:
            text = f"{value:g}"
        parts.append(f"{_HYPERPARAMETER_LABELS[field]}={text}")
    return ", ".join(parts)
