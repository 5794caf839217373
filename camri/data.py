"""The data sets of the CAMRI reproduction, as in-memory uint8 tensors with their train/test split.

``load(name)`` returns a :class:`DataSet`: images ``uint8`` N×C×H×W, labels ``int64`` N, class names
(index = label). Images stay uint8 in memory (4× smaller than float); :func:`to_float` scales a batch to
[0, 1] as in the paper, and :func:`augment_batch` is the optional random crop + flip (the paper uses none).

Data sets (``NAMES``, plus ``imagefolder:<path>``):

``digits``
    scikit-learn's bundled 8×8 digits (1,797 images, no network). Pixels 0..16 are scaled to 0..255 as
    ``round(v * 255 / 16)``. Split: ``sklearn.model_selection.train_test_split(test_size=0.25,
    random_state=0, stratify=labels)``, i.e. 1,347 train / 450 test, each split in the original image order.
``mnist``, ``fashion-mnist``, ``cifar10``
    torchvision's data sets with their official splits (60,000/10,000, 60,000/10,000, 50,000/10,000).
    MNIST's classes are named ``"0"``..``"9"`` like digits'.
``gtsrb``
    torchvision's GTSRB: the official 39,209 training and 12,630 test images, 43 classes. Each whole image
    (torchvision does not crop to the annotated sign) is resized to ``image_size``×``image_size``
    (default 32) with Pillow's bilinear filter, which is antialiased when shrinking; the aspect ratio is not
    kept (GTSRB images are nearly square).
``awa2``
    Animals with Attributes 2, read from ``<data_dir>/Animals_with_Attributes2/JPEGImages/<class>/*.jpg``
    (manual download from https://cvml.ist.ac.at/AwA2/). Classes in the order of ``classes.txt`` when
    present, else sorted folder names. Every image is converted to RGB and resized to
    ``image_size``×``image_size`` (default 64, aspect ratio not kept): JPEGs are first decoded at the
    smallest DCT scale (1/2, 1/4, 1/8) that still covers the target size (Pillow's ``draft``), then resized
    with Pillow's bilinear filter. The paper's split is not published; ours is
    ``train_test_split(test_size=0.2, random_state=0, stratify=labels)`` over the files sorted by class and
    name (about 29,857 train / 7,465 test).
``imagefolder:<path>``
    A folder or ``.zip`` laid out ``<split>/<class>/<image>`` with split ``train`` and ``test`` (a single
    top-level folder around them is allowed, as in ``cifar10-jpeg.zip``). Classes are the sorted folder
    names and must be the same in both splits; files are taken in sorted order. Images are converted to
    one mode: ``L`` (1 channel) if every image is grayscale, else ``RGB`` (alpha is dropped). Images of
    another size than ``image_size`` (or, without it, than the most common size) are resized with Pillow's
    bilinear filter. Hidden files, ``__MACOSX``, ``Thumbs.db`` and ``desktop.ini`` are ignored.

For ``digits``, ``mnist``, ``fashion-mnist`` and ``cifar10``, an ``image_size`` other than the native one
resizes the whole tensor with ``torch.nn.functional.interpolate(mode="bilinear", antialias=True)``.

Where the files are (:func:`resolve_data_dir`): the ``data_dir`` argument, else ``$CAMRI_DATA_DIR``, else
``<repo>/data`` (repo = the folder above this package, when it holds ``pyproject.toml`` and is writable),
else ``./data``. For torchvision's sets that directory is torchvision's ``root``: files laid out there in
torchvision's layout are used without network, and torchvision downloads (progress bar, md5 check) only
when they are absent.

Cache: the first load writes one file per (data set, image size) to ``<data_dir>/cache/`` (``torch.save``
of the tensors and class names, written to a temporary file in the same folder then renamed, so a
failure never leaves a half-written cache). Later loads read only that file. An imagefolder cache is keyed
on the resolved path plus the size and mtime of the zip (or of every file in the folder), so a changed
source is read again.

Every problem with a data set (absent, unreachable, corrupt, badly laid out) raises :class:`DataError`,
whose message names the data set, where it looked and the command or address that fixes it.
"""

from __future__ import annotations

import hashlib
import io
import numbers
import os
import socket
import threading
import urllib.request
import warnings
import zipfile
from collections import Counter
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Callable, Iterable
from urllib.parse import urlsplit

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

from camri.io import atomic_write

NAMES = ("digits", "mnist", "fashion-mnist", "cifar10", "gtsrb", "awa2")
SPLIT_SEED = 0
DIGITS_TEST_FRACTION = 0.25
AWA2_TEST_FRACTION = 0.2
GTSRB_DEFAULT_SIZE = 32
AWA2_DEFAULT_SIZE = 64
AWA2_URL = "https://cvml.ist.ac.at/AwA2/"
PROBE_TIMEOUT_S = 3.0

# Side length of the sets whose images all have one size; None: resized to image_size on decoding.
_NATIVE_SIZE = {"digits": 8, "mnist": 28, "fashion-mnist": 28, "cifar10": 32, "gtsrb": None, "awa2": None}
_NUM_CLASSES = {"digits": 10, "mnist": 10, "fashion-mnist": 10, "cifar10": 10, "gtsrb": 43, "awa2": 50}
_IGNORED_NAMES = {"__MACOSX", "Thumbs.db", "desktop.ini"}
_GRAY_MODES = {"1", "L", "LA", "I", "I;16", "F"}
_CACHE_FORMAT = 1

_MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                "t10k-labels-idx1-ubyte")
_CIFAR_FILES = tuple(f"cifar-10-batches-py/{f}" for f in
                     ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5",
                      "test_batch", "batches.meta"))
_GTSRB_URL = "https://sid.erda.dk/public/archives/daaeac0d7ce1152aea9b61d9f1e19370/"


@dataclass(frozen=True)
class _Source:
    """Where torchvision keeps one data set under its root, and where it downloads it from."""

    unpacked: tuple[str, ...]  # paths under root that torchvision reads
    archives: tuple[str, ...]  # downloaded archives under root; torchvision unpacks them without network
    urls: tuple[str, ...]      # the archives' addresses, same order


_SOURCES = {
    "mnist": _Source(
        tuple(f"MNIST/raw/{f}" for f in _MNIST_FILES),
        tuple(f"MNIST/raw/{f}.gz" for f in _MNIST_FILES),
        tuple(f"https://ossci-datasets.s3.amazonaws.com/mnist/{f}.gz" for f in _MNIST_FILES)),
    "fashion-mnist": _Source(
        tuple(f"FashionMNIST/raw/{f}" for f in _MNIST_FILES),
        tuple(f"FashionMNIST/raw/{f}.gz" for f in _MNIST_FILES),
        tuple(f"http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/{f}.gz" for f in _MNIST_FILES)),
    "cifar10": _Source(
        _CIFAR_FILES, ("cifar-10-python.tar.gz",), ("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",)),
    "gtsrb": _Source(
        ("gtsrb/GTSRB/Training", "gtsrb/GTSRB/Final_Test/Images", "gtsrb/GT-final_test.csv"),
        ("gtsrb/GTSRB-Training_fixed.zip", "gtsrb/GTSRB_Final_Test_Images.zip", "gtsrb/GTSRB_Final_Test_GT.zip"),
        tuple(_GTSRB_URL + f for f in
              ("GTSRB-Training_fixed.zip", "GTSRB_Final_Test_Images.zip", "GTSRB_Final_Test_GT.zip"))),
}

# GTSRB ships class ids only (folders 00000..00042); these are the signs they stand for.
GTSRB_CLASSES = [
    "Speed limit (20km/h)", "Speed limit (30km/h)", "Speed limit (50km/h)", "Speed limit (60km/h)",
    "Speed limit (70km/h)", "Speed limit (80km/h)", "End of speed limit (80km/h)", "Speed limit (100km/h)",
    "Speed limit (120km/h)", "No passing", "No passing for vehicles over 3.5 metric tons",
    "Right-of-way at the next intersection", "Priority road", "Yield", "Stop", "No vehicles",
    "Vehicles over 3.5 metric tons prohibited", "No entry", "General caution", "Dangerous curve to the left",
    "Dangerous curve to the right", "Double curve", "Bumpy road", "Slippery road",
    "Road narrows on the right", "Road work", "Traffic signals", "Pedestrians", "Children crossing",
    "Bicycles crossing", "Beware of ice/snow", "Wild animals crossing", "End of all speed and passing limits",
    "Turn right ahead", "Turn left ahead", "Ahead only", "Go straight or right", "Go straight or left",
    "Keep right", "Keep left", "Roundabout mandatory", "End of no passing",
    "End of no passing by vehicles over 3.5 metric tons",
]


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


# ---- public API ---------------------------------------------------------------------------------------

def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """The data directory: ``data_dir``, else ``$CAMRI_DATA_DIR``, else ``<repo>/data``, else ``./data``.

    ``<repo>`` is the folder above the ``camri`` package; it is used only when it holds ``pyproject.toml``
    (a source checkout, not an installed copy in site-packages) and is writable. The folder is not created
    here: downloads and the cache create it when they write.
    """
    if data_dir is not None:
        return Path(data_dir).expanduser().absolute()
    if os.environ.get("CAMRI_DATA_DIR"):
        return Path(os.environ["CAMRI_DATA_DIR"]).expanduser().absolute()
    repo = Path(__file__).resolve().parent.parent
    data = repo / "data"
    if (repo / "pyproject.toml").is_file() and os.access(data if data.exists() else repo, os.W_OK):
        return data
    return Path.cwd() / "data"


def load(name: str, *, data_dir: str | os.PathLike | None = None, download: bool = True,
         image_size: int | None = None) -> DataSet:
    """Load data set ``name`` (see the module docstring) from the cache, or build the cache first.

    ``image_size``: side length of the square images to produce; None keeps the native size (GTSRB: 32,
    AwA2: 64, imagefolder: the most common size). ``download``: allow torchvision to download absent files.
    Raises :class:`DataError` when the data cannot be had.
    """
    root = resolve_data_dir(data_dir)
    canonical, cache, build = _plan(name, root, image_size)
    dataset = _read_cache(cache)
    if dataset is not None:
        return dataset
    dataset = build(download)
    _validate(dataset)
    try:
        _write_cache(cache, dataset)
    except OSError as error:
        # The cache only saves time; a read-only data directory must not stop a run.
        warnings.warn(f"camri: could not write the cache {cache} ({error}); the data set will be read again "
                      f"next time", stacklevel=2)
    else:
        if canonical.startswith("imagefolder:"):
            _remove_stale_imagefolder_caches(cache)
    return dataset


def check_available(name: str, data_dir: str | os.PathLike | None = None, download: bool = True, *,
                    image_size: int | None = None) -> None:
    """Raise :class:`DataError` unless ``load(name, ...)`` can get the data, without loading it.

    Cheap: looks for the cache file of (name, image_size) and for the raw files; for an absent torchvision
    set with ``download``, tries a TCP connection to the download host (``PROBE_TIMEOUT_S`` seconds; skipped
    behind an HTTP proxy), so a machine without network gets the error at once, not after hours of training.
    """
    root = resolve_data_dir(data_dir)
    canonical, cache, _ = _plan(name, root, image_size)
    if cache.is_file() or canonical == "digits" or canonical.startswith("imagefolder:"):
        return  # digits ships with scikit-learn; _plan already checked that an imagefolder source exists
    if _raw_present(canonical, root):
        return
    if canonical == "awa2":
        raise DataError(_awa2_missing(root))
    if not download:
        raise DataError(_absent(canonical, root, "it is not there and downloading is off"))
    _probe(canonical, root)


def describe(data_dir: str | os.PathLike | None = None) -> list[dict]:
    """One row per named data set: ``name``, ``classes`` (count), ``found`` (cache / raw / absent),
    ``where`` (the cache files, the raw files, or where they are expected) and ``get`` (how to get it)."""
    root = resolve_data_dir(data_dir)
    rows = []
    for name in NAMES:
        caches = sorted((root / "cache").glob(f"{name}.pt")) + sorted((root / "cache").glob(f"{name}-*px.pt"))
        if caches:
            found, where = "cache", ", ".join(str(c) for c in caches)
        elif _raw_present(name, root):
            found, where = "raw", _raw_location(name, root)
        else:
            found, where = "absent", _raw_location(name, root)
        rows.append({"name": name, "classes": _NUM_CLASSES[name], "found": found, "where": where,
                     "get": _how_to_get(name, root)})
    return rows


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


def add_cli(subparsers) -> None:
    """Register ``camri data [NAME] [--data-dir DIR] [--image-size N] [--no-download]``."""
    parser = subparsers.add_parser(
        "data", help="list the data sets, or download / import one into the cache",
        description="Without NAME: list the data sets and where each is found. With NAME: download or import "
                    "it into <data dir>/cache and print where it is.")
    parser.add_argument("name", nargs="?", metavar="NAME",
                        help=f"one of {', '.join(NAMES)}, or imagefolder:PATH (a folder or .zip laid out "
                             f"train|test/<class>/<image>)")
    parser.add_argument("--data-dir", default=None, metavar="DIR",
                        help="data directory (default: $CAMRI_DATA_DIR, else <repo>/data, else ./data)")
    parser.add_argument("--image-size", type=int, default=None, metavar="N",
                        help="side length of the stored images (default: native; GTSRB 32, AwA2 64)")
    parser.add_argument("--no-download", action="store_true", help="use local files only")
    parser.set_defaults(func=_cli_data)


# ---- planning: name → cache file and builder ---------------------------------------------------------

def _plan(name: str, root: Path, image_size: int | None) -> tuple[str, Path, Callable[[bool], DataSet]]:
    """Canonical name, cache file and ``build(download) -> DataSet`` for one request."""
    if image_size is not None:
        if isinstance(image_size, bool) or not isinstance(image_size, numbers.Integral) or image_size < 1:
            raise ValueError(f"image_size must be a positive int or None, got {image_size!r}")
        image_size = int(image_size)  # numpy integers from configs would otherwise leak into file names
    if name.startswith("imagefolder:"):
        return _plan_imagefolder(name[len("imagefolder:"):], root, image_size)
    canonical = name.strip().lower()
    if canonical not in NAMES:
        raise DataError(f"unknown data set {name!r}: choose one of {', '.join(NAMES)}, or imagefolder:PATH")
    if canonical == "gtsrb":
        size = image_size or GTSRB_DEFAULT_SIZE
        return canonical, _cache_path(root, f"gtsrb-{size}px"), lambda dl: _fetch("gtsrb", root, dl, size)
    if canonical == "awa2":
        size = image_size or AWA2_DEFAULT_SIZE
        return canonical, _cache_path(root, f"awa2-{size}px"), lambda dl: _load_awa2(root, size)
    size = None if image_size == _NATIVE_SIZE[canonical] else image_size
    key = canonical if size is None else f"{canonical}-{size}px"
    if canonical == "digits":
        return canonical, _cache_path(root, key), lambda dl: _resized(_load_digits(), size)
    return canonical, _cache_path(root, key), lambda dl: _resized(_fetch(canonical, root, dl, None), size)


def _plan_imagefolder(path: str, root: Path, size: int | None):
    if not path.strip():
        raise DataError("imagefolder: needs a path, as in imagefolder:/data/my-set.zip")
    source = Path(path).expanduser().resolve()
    name = f"imagefolder:{source}"
    if not source.exists():
        raise DataError(f"{name}: no such folder or zip file. Give the path of a folder or .zip laid out "
                        f"train/<class>/<image> and test/<class>/<image>.")
    if source.is_file() and not zipfile.is_zipfile(source):
        raise DataError(f"{name}: not a zip archive (corrupt or truncated?). Copy or download it again, or "
                        f"unpack it and give the folder instead.")
    # The path hash groups all caches of one source (stale ones are removed); the fingerprint changes
    # whenever the source does, so an edited source is read again.
    path_hash = hashlib.sha256(str(source).encode()).hexdigest()[:10]
    stem = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in source.stem)[:40]
    key = f"imagefolder-{stem}-{path_hash}-{_fingerprint(source)}-{size or 'native'}"
    return name, _cache_path(root, key), lambda dl: _load_imagefolder(source, name, size)


def _fingerprint(source: Path) -> str:
    """Short hash of a zip's size and mtime, or of (path, size, mtime) of every file in a folder."""
    digest = hashlib.sha256()
    if source.is_file():
        stat = source.stat()
        digest.update(f"{stat.st_size}:{stat.st_mtime_ns}".encode())
    else:
        for dirpath, dirnames, filenames in os.walk(source):
            dirnames.sort()
            for filename in sorted(filenames):
                stat = os.stat(os.path.join(dirpath, filename))
                rel = os.path.relpath(os.path.join(dirpath, filename), source)
                digest.update(f"{rel}\0{stat.st_size}:{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:10]


# ---- cache ----------------------------------------------------------------------------------------------

def _cache_path(root: Path, key: str) -> Path:
    return root / "cache" / f"{key}.pt"


def _read_cache(path: Path) -> DataSet | None:
    """The cached data set, or None when there is none or it cannot be read (it is then rebuilt)."""
    if not path.is_file():
        return None
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        if blob.get("format") != _CACHE_FORMAT:
            raise ValueError(f"cache format {blob.get('format')!r}, expected {_CACHE_FORMAT}")
        dataset = DataSet(blob["name"], blob["x_train"], blob["y_train"], blob["x_test"], blob["y_test"],
                          list(blob["classes"]))
        _validate(dataset)
        return dataset
    except Exception as error:  # any unreadable cache is rebuilt from the source
        warnings.warn(f"camri: ignoring unreadable cache {path} ({type(error).__name__}: {error}); rebuilding it",
                      stacklevel=3)
        return None


def _write_cache(path: Path, dataset: DataSet) -> None:
    atomic_write(path, lambda f: torch.save(
        {"format": _CACHE_FORMAT, "name": dataset.name, "x_train": dataset.x_train, "y_train": dataset.y_train,
         "x_test": dataset.x_test, "y_test": dataset.y_test, "classes": list(dataset.classes)}, f))


def _remove_stale_imagefolder_caches(current: Path) -> None:
    """Delete caches of the same imagefolder source and size built from an older version of it."""
    stem, path_hash, _, size = current.stem.rsplit("-", 3)
    for old in current.parent.glob(f"{stem}-{path_hash}-*-{size}.pt"):
        if old != current:
            old.unlink(missing_ok=True)


def _validate(dataset: DataSet) -> None:
    """Check dtypes, shapes and label range, so a bad cache or a builder bug fails here, not in training."""
    for split in ("train", "test"):
        x, y = getattr(dataset, f"x_{split}"), getattr(dataset, f"y_{split}")
        if x.dtype != torch.uint8 or x.ndim != 4 or y.dtype != torch.int64 or y.ndim != 1 or len(x) != len(y):
            raise ValueError(f"{split} split has images {x.dtype} {tuple(x.shape)} and labels "
                             f"{y.dtype} {tuple(y.shape)}")
        if len(y) and (int(y.min()) < 0 or int(y.max()) >= len(dataset.classes)):
            raise ValueError(f"{split} labels outside 0..{len(dataset.classes) - 1}")
    if dataset.x_train.shape[1:] != dataset.x_test.shape[1:]:
        raise ValueError("train and test images differ in shape")


# ---- digits and torchvision's sets ----------------------------------------------------------------------

def _load_digits() -> DataSet:
    from sklearn.datasets import load_digits  # imported here: scikit-learn takes a second to import

    bunch = load_digits()
    x = torch.from_numpy(np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)).unsqueeze(1)
    y = torch.from_numpy(bunch.target.astype(np.int64))
    train, test = _stratified_split(bunch.target, DIGITS_TEST_FRACTION)
    return DataSet("digits", x[train], y[train], x[test], y[test], [str(k) for k in range(10)])


def _stratified_split(labels: np.ndarray, test_fraction: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices of a deterministic stratified split, each sorted so the splits keep the source order."""
    from sklearn.model_selection import train_test_split

    train, test = train_test_split(np.arange(len(labels)), test_size=test_fraction, random_state=SPLIT_SEED,
                                   stratify=labels)
    return torch.from_numpy(np.sort(train)), torch.from_numpy(np.sort(test))


def _fetch(name: str, root: Path, download: bool, size: int | None) -> DataSet:
    """Read a torchvision data set from ``root``, downloading it first when allowed and absent."""
    if not _raw_present(name, root):
        if not download:
            raise DataError(_absent(name, root, "it is not there and downloading is off"))
        _probe(name, root)  # fail in seconds, not after urllib's long timeouts
    try:
        if name == "gtsrb":
            return _load_gtsrb(root, download, size)
        return _load_torchvision_tensors(name, root, download)
    except DataError:
        raise
    except Exception as error:  # urllib, tarfile, zipfile, checksum and pickle errors all mean the same here
        raise DataError(_absent(name, root, f"{type(error).__name__}: {error}".strip())) from error


def _load_torchvision_tensors(name: str, root: Path, download: bool) -> DataSet:
    import torchvision.datasets as tvd  # imported here: torchvision is slow to import and rarely needed

    cls = {"mnist": tvd.MNIST, "fashion-mnist": tvd.FashionMNIST, "cifar10": tvd.CIFAR10}[name]
    tensors = []
    for train in (True, False):
        ds = cls(str(root), train=train, download=download)
        x = torch.as_tensor(np.asarray(ds.data))
        # MNIST keeps N×H×W tensors, CIFAR N×H×W×C arrays.
        x = x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2)
        tensors += [x.contiguous(), torch.as_tensor(ds.targets, dtype=torch.int64)]
    classes = [str(k) for k in range(10)] if name == "mnist" else list(ds.classes)
    return DataSet(name, *tensors, classes)


def _load_gtsrb(root: Path, download: bool, size: int) -> DataSet:
    from torchvision.datasets import GTSRB

    tensors = []
    for split in ("train", "test"):
        ds = GTSRB(str(root), split=split, download=download,
                   transform=lambda img: _fit(img, "RGB", (size, size)))
        labels = np.empty(len(ds), dtype=np.int64)

        def read(i: int, ds=ds, labels=labels) -> np.ndarray:
            image, labels[i] = ds[i]
            return image

        x = _decode_all(len(ds), read, (size, size, 3),
                        lambda i, s=split: f"gtsrb: {s} image #{i} under {root / 'gtsrb'} cannot be read; delete "
                                           f"that folder and run `camri data gtsrb --data-dir {root}` again",
                        f"gtsrb {split}")
        tensors += [x, torch.from_numpy(labels)]
    return DataSet("gtsrb", *tensors, list(GTSRB_CLASSES))


def _resized(dataset: DataSet, size: int | None) -> DataSet:
    """Resize a fixed-size data set to size×size (antialiased bilinear), or return it unchanged."""
    if size is None:
        return dataset

    def resize(x: torch.Tensor) -> torch.Tensor:
        # In chunks: a float copy of all of CIFAR-10 at 64×64 would take 2.4 GB.
        return torch.cat([F.interpolate(part.float(), size=(size, size), mode="bilinear", antialias=True,
                                        align_corners=False).round_().clamp_(0, 255).to(torch.uint8)
                          for part in x.split(4096)])

    return DataSet(dataset.name, resize(dataset.x_train), dataset.y_train, resize(dataset.x_test),
                   dataset.y_test, dataset.classes)


# ---- AwA2 ---------------------------------------------------------------------------------------------

def _load_awa2(root: Path, size: int) -> DataSet:
    base = root / "Animals_with_Attributes2"
    images = base / "JPEGImages"
    if not images.is_dir():
        raise DataError(_awa2_missing(root))
    folders = sorted(d.name for d in images.iterdir() if d.is_dir() and not _ignored(d.name))
    classes = folders
    if (base / "classes.txt").is_file():
        # Lines are "<number>\t<class>"; their order is the official label order.
        listed = [line.split()[-1] for line in (base / "classes.txt").read_text().splitlines() if line.strip()]
        if sorted(listed) != folders:
            raise DataError(f"awa2: {base / 'classes.txt'} lists other classes than the folders in {images} "
                            f"(only in classes.txt: {sorted(set(listed) - set(folders))}; only folders: "
                            f"{sorted(set(folders) - set(listed))}). Unpack AwA2-data.zip from {AWA2_URL} again.")
        classes = listed
    files, labels = [], []
    for label, cls in enumerate(classes):
        members = sorted(p for p in (images / cls).iterdir() if p.is_file() and not _ignored(p.name))
        if not members:
            raise DataError(f"awa2: class folder {images / cls} is empty. Unpack AwA2-data.zip from {AWA2_URL} "
                            f"again.")
        files += members
        labels += [label] * len(members)
    y = torch.tensor(labels, dtype=torch.int64)
    train, test = _stratified_split(np.asarray(labels), AWA2_TEST_FRACTION)
    x = _decode_all(len(files), lambda i: _read_image(files[i], "RGB", (size, size)), (size, size, 3),
                    lambda i: f"awa2: {files[i]}", "awa2")
    return DataSet("awa2", x[train], y[train], x[test], y[test], classes)


# ---- imagefolder ----------------------------------------------------------------------------------------

def _load_imagefolder(source: Path, name: str, image_size: int | None) -> DataSet:
    if source.is_dir():
        rels = []
        for dirpath, dirnames, filenames in os.walk(source):
            rel_dir = Path(dirpath).relative_to(source).as_posix()
            prefix = "" if rel_dir == "." else rel_dir + "/"
            rels += [prefix + d + "/" for d in dirnames] + [prefix + f for f in filenames]
        return _build_imagefolder(name, source, rels, lambda rel: open(source / rel, "rb"), image_size)
    try:
        archive = zipfile.ZipFile(source)
    except (zipfile.BadZipFile, OSError) as error:
        raise DataError(f"{name}: cannot open the zip archive ({error}). Copy or download it again.") from error
    lock = threading.Lock()

    def read_member(member: str) -> io.BytesIO:
        # ZipFile's open/close bookkeeping is not thread-safe; reading one member's bytes is quick, decoding
        # them (the slow part) runs outside the lock.
        with lock:
            return io.BytesIO(archive.read(member))

    with archive:
        return _build_imagefolder(name, source, archive.namelist(), read_member, image_size)


def _build_imagefolder(name: str, source: Path, entries: Iterable[str], opener: Callable[[str], io.IOBase],
                       image_size: int | None) -> DataSet:
    """Check the ``<split>/<class>/<image>`` layout of ``entries`` (paths, folders ending in "/"), decode."""
    layout = ("Lay it out as train/<class>/<image> and test/<class>/<image> (optionally inside one top "
              "folder), with the same class folders in both splits.")
    files, folders = set(), set()
    for entry in entries:
        parts = [p for p in entry.split("/") if p]
        if not parts or any(_ignored(p) for p in parts):
            continue
        # Zips need not list folders, so every file's parent folders count as folders too.
        folders.update("/".join(parts[:k]) for k in range(1, len(parts)))
        (folders if entry.endswith("/") else files).add("/".join(parts))
    top = {p.split("/")[0] for p in files | folders}
    prefix = ""
    if top.isdisjoint({"train", "test"}) and len(top) == 1 and top <= folders:
        prefix = top.pop() + "/"
        top = {p[len(prefix):].split("/")[0] for p in files | folders if p.startswith(prefix)}
    missing = [s for s in ("train", "test") if s not in top]
    if missing:
        raise DataError(f"{name}: no {' and no '.join(s + '/' for s in missing)} folder in {source}"
                        f"{' under ' + prefix if prefix else ''} (found: {', '.join(sorted(top)) or 'nothing'}). "
                        f"{layout}")

    split_classes: dict[str, set[str]] = {}
    members: dict[tuple[str, str], list[str]] = {}
    for split in ("train", "test"):
        base = prefix + split + "/"
        split_classes[split] = {p[len(base):].split("/")[0] for p in folders if p.startswith(base)}
        for f in sorted(p for p in files if p.startswith(base)):
            rest = f[len(base):]
            if "/" not in rest:
                raise DataError(f"{name}: {f} is not inside a class folder. {layout}")
            members.setdefault((split, rest.split("/")[0]), []).append(f)
    if split_classes["train"] != split_classes["test"]:
        only_train = sorted(split_classes["train"] - split_classes["test"])
        only_test = sorted(split_classes["test"] - split_classes["train"])
        raise DataError(f"{name}: the splits have different classes in {source} (only in train/: {only_train}; "
                        f"only in test/: {only_test}). {layout}")
    classes = sorted(split_classes["train"])
    for split in ("train", "test"):
        for cls in classes:
            if not members.get((split, cls)):
                raise DataError(f"{name}: class folder {prefix}{split}/{cls}/ in {source} has no images. "
                                f"Add images or remove the class from both splits.")

    items = [(split, label, f) for split in ("train", "test") for label, cls in enumerate(classes)
             for f in members[(split, cls)]]

    def what(i: int) -> str:
        return f"{name}: {items[i][2]} cannot be read as an image; replace or delete it"

    # First pass reads headers only (cheap) to choose one size and one mode before decoding anything.
    headers: list[tuple[tuple[int, int], str]] = [((0, 0), "")] * len(items)

    def read_header(i: int) -> None:
        with opener(items[i][2]) as f, Image.open(f) as img:
            headers[i] = (img.size, img.mode)

    _run_parallel(len(items), read_header, what, "scanning")
    if image_size is not None:
        size = (image_size, image_size)
    else:
        size = Counter(s for s, _ in headers).most_common(1)[0][0]  # ties: the first in file order
    mode = "L" if all(m in _GRAY_MODES for _, m in headers) else "RGB"

    def read(i: int) -> np.ndarray:
        with opener(items[i][2]) as f:
            return _read_image(f, mode, size)

    x = _decode_all(len(items), read, (size[1], size[0], 1 if mode == "L" else 3), what, "decoding")
    is_train = torch.tensor([s == "train" for s, _, _ in items])
    y = torch.tensor([label for _, label, _ in items], dtype=torch.int64)
    return DataSet(name, x[is_train], y[is_train], x[~is_train], y[~is_train], classes)


def _ignored(part: str) -> bool:
    return part.startswith(".") or part in _IGNORED_NAMES


# ---- decoding ----------------------------------------------------------------------------------------------

def _fit(img: Image.Image, mode: str, size: tuple[int, int]) -> np.ndarray:
    """A PIL image in ``mode`` at ``size`` (W, H) as an H×W×C uint8 array (bilinear resize if needed)."""
    if img.mode != mode:
        img = img.convert(mode)
    if img.size != size:
        img = img.resize(size, Image.Resampling.BILINEAR)
    array = np.asarray(img, dtype=np.uint8)
    return array[:, :, None] if array.ndim == 2 else array


def _read_image(fp, mode: str, size: tuple[int, int]) -> np.ndarray:
    """Decode one image file (path or binary file object) with :func:`_fit`."""
    with Image.open(fp) as img:
        if img.size != size:
            # JPEG only (a no-op otherwise): decode at 1/2, 1/4 or 1/8 scale when that still covers size,
            # which makes AwA2's large photos several times faster to read.
            img.draft(None, size)
        return _fit(img, mode, size)


def _workers() -> int:
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(8, cpus))


def _run_parallel(count: int, fn: Callable[[int], None], what: Callable[[int], str], desc: str) -> None:
    """Call ``fn(i)`` for i in range(count) on a thread pool with a progress bar.

    Threads suffice because Pillow releases the GIL while decoding and resizing. The first failure cancels
    the rest and is raised as a DataError described by ``what(i)``.
    """
    def run(chunk: range) -> int:
        for i in chunk:
            try:
                fn(i)
            except DataError:
                raise
            except Exception as error:  # PIL, zipfile, zlib and OS errors all mean "this file is bad"
                raise DataError(f"{what(i)} ({type(error).__name__}: {error})") from error
        return len(chunk)

    chunks = [range(start, min(start + 256, count)) for start in range(0, count, 256)]
    with ThreadPoolExecutor(_workers()) as pool, tqdm(total=count, desc=desc, unit="img") as bar:
        futures = [pool.submit(run, chunk) for chunk in chunks]
        try:
            for future in as_completed(futures):
                bar.update(future.result())
        finally:
            for future in futures:
                future.cancel()


def _decode_all(count: int, read: Callable[[int], np.ndarray], shape_hwc: tuple[int, int, int],
                what: Callable[[int], str], desc: str) -> torch.Tensor:
    """Fill an N×H×W×C uint8 array with ``read(i)`` in parallel; return it as an N×C×H×W tensor."""
    out = np.empty((count, *shape_hwc), dtype=np.uint8)

    def fill(i: int) -> None:
        out[i] = read(i)

    _run_parallel(count, fill, what, desc)
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()


# ---- presence, network probe, messages -----------------------------------------------------------------

def _raw_present(name: str, root: Path) -> bool:
    """Whether the source files are in ``root`` (unpacked, or as downloaded archives)."""
    if name == "digits":
        return True
    if name == "awa2":
        return (root / "Animals_with_Attributes2" / "JPEGImages").is_dir()
    source = _SOURCES[name]
    return (all((root / p).exists() for p in source.unpacked)
            or all((root / p).exists() for p in source.archives))


def _raw_location(name: str, root: Path) -> str:
    if name == "digits":
        return "bundled with scikit-learn"
    if name == "awa2":
        return str(root / "Animals_with_Attributes2" / "JPEGImages")
    return str(root / Path(_SOURCES[name].unpacked[0]).parts[0])


def _how_to_get(name: str, root: Path) -> str:
    if name == "digits":
        return "nothing to do (ships with scikit-learn)"
    if name == "awa2":
        return f"manual: AwA2-data.zip from {AWA2_URL}, then `unzip AwA2-data.zip -d {root}`"
    return f"`camri data {name} --data-dir {root}` (torchvision downloads it from {_host(_SOURCES[name].urls[0])})"


def _host(url: str) -> str:
    return urlsplit(url).hostname or url


def _probe(name: str, root: Path) -> None:
    """Raise DataError unless a TCP connection to one of the download hosts opens within the timeout."""
    urls = _SOURCES[name].urls
    schemes = {urlsplit(u).scheme for u in urls}
    if any(s in urllib.request.getproxies() for s in schemes):
        return  # behind a proxy a direct connection proves nothing; let torchvision try
    errors = []
    for host, port in dict.fromkeys((_host(u), urlsplit(u).port or (443 if urlsplit(u).scheme == "https" else 80))
                                    for u in urls):
        outcome: list[BaseException | None] = []

        def attempt(host=host, port=port, outcome=outcome) -> None:
            try:
                socket.create_connection((host, port), timeout=PROBE_TIMEOUT_S).close()
                outcome.append(None)
            except OSError as error:
                outcome.append(error)

        # A daemon thread bounds the name lookup too, which socket timeouts do not cover.
        thread = threading.Thread(target=attempt, daemon=True)
        thread.start()
        thread.join(PROBE_TIMEOUT_S + 1)
        if outcome and outcome[0] is None:
            return
        errors.append(f"{host}:{port}: {outcome[0] if outcome else 'timed out'}")
    raise DataError(_absent(name, root, "the download host cannot be reached (" + "; ".join(errors) + ")"))


def _absent(name: str, root: Path, reason: str) -> str:
    source = _SOURCES[name]
    archives = "\n".join(f"    {url}  ->  {root / path}" for url, path in zip(source.urls, source.archives))
    return (f"data set {name!r} is not available from {root}: {reason}.\n"
            f"Looked under {root} for {', '.join(source.unpacked)} (torchvision's layout) and for the archives "
            f"below.\n"
            f"Fix, with internet:  camri data {name} --data-dir {root}\n"
            f"or download these by hand and put them there (they are unpacked on first use when downloads are "
            f"allowed, or unpack them yourself):\n{archives}")


def _awa2_missing(root: Path) -> str:
    return (f"data set 'awa2' (Animals with Attributes 2) is not in {root}: "
            f"{root / 'Animals_with_Attributes2' / 'JPEGImages'} does not exist. It cannot be downloaded "
            f"automatically (about 13 GB). Download AwA2-data.zip from {AWA2_URL} and run\n"
            f"    unzip AwA2-data.zip -d {root}\n"
            f"so that the images are at {root}/Animals_with_Attributes2/JPEGImages/<class>/<image>.jpg "
            f"(and the class order at {root}/Animals_with_Attributes2/classes.txt).")


# ---- command line ----------------------------------------------------------------------------------------

def _cli_data(args) -> int:
    if args.name is None:
        root = resolve_data_dir(args.data_dir)
        print(f"data directory: {root}")
        rows = describe(args.data_dir)
        width = max(len(r["name"]) for r in rows)
        for row in rows:
            print(f"  {row['name']:<{width}}  {row['classes']:>2} classes  {row['found']:<6}  {row['where']}")
            if row["found"] == "absent":
                print(f"  {'':<{width}}  get it: {row['get']}")
        print("  imagefolder:PATH  a folder or .zip laid out train|test/<class>/<image>")
        for cache in sorted((root / "cache").glob("imagefolder-*.pt")):
            print(f"    cached: {cache}")
        return 0
    dataset = load(args.name, data_dir=args.data_dir, download=not args.no_download, image_size=args.image_size)
    _, cache, _ = _plan(args.name, resolve_data_dir(args.data_dir), args.image_size)
    c, h, w = dataset.image_shape
    print(f"{dataset.name}: {len(dataset.y_train)} train / {len(dataset.y_test)} test images, {c}x{h}x{w}, "
          f"{dataset.num_classes} classes")
    print(f"cached at {cache}" if cache.is_file() else "not cached (the cache could not be written)")
    return 0
