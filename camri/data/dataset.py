"""The in-memory data set type, its error, and the batch operations of training: uint8 → float, augmentation."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


class DataError(RuntimeError):
    """A data set is absent, cannot be downloaded, or is corrupt or badly laid out."""


@dataclass(repr=False)
class DataSet:
    """One data set in memory.

    ``x_train``: uint8 N×C×H×W, ``y_train``: int64 N (same for test); ``classes[k]`` names label k.
    """

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    classes: list[str]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W)."""
        return tuple(self.x_train.shape[1:])

    def __repr__(self) -> str:
        # The default dataclass repr would print every pixel.
        return (f"DataSet(name={self.name!r}, train={len(self.y_train)}, test={len(self.y_test)}, "
                f"image_shape={self.image_shape}, num_classes={self.num_classes})")



def to_float(x: torch.Tensor) -> torch.Tensor:
    """uint8 images (any shape) → float32 in [0, 1], the paper's only preprocessing."""
    if x.dtype != torch.uint8:
        # Scaling a float batch a second time would silently divide it by 255 again.
        raise TypeError(f"to_float expects uint8 images, got {x.dtype}")
    return x.to(torch.float32).div_(255.0)


def augment_batch(x: torch.Tensor, generator: torch.Generator, *, pad: int = 4, flip: bool = True,
                  padding_mode: str = "constant") -> torch.Tensor:
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
