"""The in-memory data set type, its error, and the batch operations of training: uint8 → float, augmentation."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F


class DataError(RuntimeError):
    """A data set is absent, cannot be downloaded, or is corrupt or badly laid out."""


@dataclass(repr=False)
class DataSet:
    """One data set in memory.

    ``x_train``: uint8 N×C×H×W, ``y_train``: int64 N (same for test); ``classes[k]`` names label k.
    ``x_val`` / ``y_val``: the validation split carved from the training set (``with_validation``), empty
    (0 images) until then. ``groups_train``: int64 N or None, a group id per training image where the
    source has groups of near-duplicates (GTSRB: the ~30 frames of one track, one physical sign filmed in
    a row), so that a validation split can hold out whole groups.
    """

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    classes: list[str]
    x_val: torch.Tensor | None = None
    y_val: torch.Tensor | None = None
    groups_train: torch.Tensor | None = None

    def __post_init__(self):
        if self.x_val is None:
            self.x_val = self.x_train[:0]
            self.y_val = self.y_train[:0]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W)."""
        return tuple(self.x_train.shape[1:])

    def __repr__(self) -> str:
        # The default dataclass repr would print every pixel.
        return (
            f"DataSet(name={self.name!r}, train={len(self.y_train)}, val={len(self.y_val)}, "
            f"test={len(self.y_test)}, image_shape={self.image_shape}, num_classes={self.num_classes})"
        )

    def with_validation(self, fraction: float, seed: int = 0, *, by_group: bool = False) -> DataSet:
        """This data set with a stratified ``fraction`` of its training images moved to the validation split.

        The split depends only on the training labels (and groups), ``fraction`` and ``seed`` (not on a run's
        seed), so every method and seed of a profile trains on the same images and is selected on the same
        ones. ``fraction`` 0 leaves the data set as it is (no validation split: the paper's protocol).
        ``by_group``: hold out whole groups (``grouped_split``), so that no validation image has a
        near-duplicate in training; the data set must have ``groups_train``.
        """
        if not 0 <= fraction < 1:
            raise ValueError(f"validation_fraction must be in [0, 1); got {fraction}")
        if fraction == 0:
            return self
        if len(self.y_val):
            raise ValueError(f"{self.name} already has a validation split of {len(self.y_val)} images")
        what = f"{self.name}'s training set"
        if by_group:
            if self.groups_train is None:
                raise ValueError(
                    f"validation_groups: {self.name} has no groups of near-duplicate images (only gtsrb has: "
                    "its tracks); set validation_groups: false for it"
                )
            train, val = grouped_split(self.y_train.numpy(), self.groups_train.numpy(), fraction, seed, what=what)
        else:
            train, val = stratified_split(self.y_train.numpy(), fraction, seed, what=what)
        return replace(
            self,
            x_train=self.x_train[train],
            y_train=self.y_train[train],
            x_val=self.x_train[val],
            y_val=self.y_train[val],
            groups_train=None if self.groups_train is None else self.groups_train[train],
        )


def stratified_split(
    labels: np.ndarray, fraction: float, seed: int, *, what: str = "the data"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (kept, held out) of a deterministic stratified split holding out ``fraction`` of ``labels``,
    each sorted so the splits keep the source order (scikit-learn's ``train_test_split``)."""
    from sklearn.model_selection import train_test_split

    try:
        kept, held = train_test_split(np.arange(len(labels)), test_size=fraction, random_state=seed, stratify=labels)
    except ValueError as error:  # e.g. a class with a single image cannot be split in a stratified way
        raise ValueError(
            f"cannot split {fraction:g} of {what} off in a stratified way ({error}); "
            "use a larger data set or another fraction (validation_fraction: 0 turns it off)"
        ) from None
    return torch.from_numpy(np.sort(kept)), torch.from_numpy(np.sort(held))


def grouped_split(
    labels: np.ndarray, groups: np.ndarray, fraction: float, seed: int, *, what: str = "the data"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (kept, held out) of a deterministic split that holds out whole groups, per class: each
    class's groups in an order drawn from ``seed``, held out until they hold at least ``fraction`` of the
    class's images (at least one group held out and one kept). The held-out share is therefore about
    ``fraction``, a group's size more at most. A group must belong to one class (GTSRB's tracks do).
    Each index list is sorted, so the splits keep the source order."""
    pairs = np.unique(np.stack([groups, labels]), axis=1)  # the distinct (group, label) pairs
    if len(np.unique(pairs[0])) != pairs.shape[1]:
        raise ValueError(f"some groups of {what} hold images of several classes: a group must belong to one class")
    rng = np.random.default_rng(seed)
    held = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        ids = np.unique(groups[members])
        if len(ids) < 2:
            raise ValueError(
                f"cannot hold out whole groups of class {label} of {what}: it has {len(ids)} group; "
                "set validation_groups: false"
            )
        target, count = fraction * len(members), 0
        for group in rng.permutation(ids)[: len(ids) - 1]:
            if count >= target:
                break
            chosen = members[groups[members] == group]
            held.append(chosen)
            count += len(chosen)
    held_out = np.sort(np.concatenate(held))
    kept = np.setdiff1d(np.arange(len(labels)), held_out)
    return torch.from_numpy(kept), torch.from_numpy(held_out)


def to_float(x: torch.Tensor) -> torch.Tensor:
    """uint8 images (any shape) → float32 in [0, 1], the paper's only preprocessing."""
    if x.dtype != torch.uint8:
        # Scaling a float batch a second time would silently divide it by 255 again.
        raise TypeError(f"to_float expects uint8 images, got {x.dtype}")
    return x.to(torch.float32).div_(255.0)


def augment_batch(
    x: torch.Tensor, generator: torch.Generator, *, pad: int = 4, flip: bool = True, padding_mode: str = "constant"
) -> torch.Tensor:
    """Random crop + horizontal flip of a whole float batch N×C×H×W, with tensor ops only.

    Each image is padded by ``pad`` pixels on every side (``padding_mode="constant"``: zeros, the usual
    CIFAR recipe; ``"reflect"``: mirrored), a random H×W window is cut from it, and it is mirrored left-right
    with probability 1/2 when ``flip``. Random numbers come from ``generator`` (offsets of y, then x, then
    the flips), drawn on the generator's device, so a seeded generator gives the same batch every time.
    """
    if not x.is_floating_point():
        raise TypeError(f"augment_batch expects a float batch (see to_float), got {x.dtype}")
    n, c, h, w = x.shape
    dev = generator.device
    if pad > 0:
        x = F.pad(x, (pad, pad, pad, pad), mode=padding_mode)
        dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator, device=dev).to(x.device)
        dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator, device=dev).to(x.device)
    else:
        dy = dx = torch.zeros(n, dtype=torch.long, device=x.device)
    cols = torch.arange(w, device=x.device).expand(n, w)
    if flip:
        mirrored = (torch.rand(n, generator=generator, device=dev) < 0.5).to(x.device)
        # Reading the window's columns backwards crops and flips in one gather.
        cols = torch.where(mirrored[:, None], (w - 1) - cols, cols)
    rows = dy[:, None] + torch.arange(h, device=x.device)
    cols = dx[:, None] + cols
    x = x.gather(2, rows[:, None, :, None].expand(n, c, h, x.shape[3]))
    return x.gather(3, cols[:, None, None, :].expand(n, c, h, w))
