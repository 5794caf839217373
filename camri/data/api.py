"""The public entry points of :mod:`camri.data` (load, check_available, describe, resolve_data_dir, the
``camri data`` command) and what they share: planning a request (name → cache file and builder) and the cache."""

from __future__ import annotations

import hashlib
import numbers
import os
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path

import torch

from camri.data import loaders
from camri.data.dataset import DataError, DataSet
from camri.data.sources import absent_message, awa2_missing_message, how_to_get, probe, raw_location, raw_present
from camri.io import atomic_write

NAMES = ("digits", "mnist", "fashion-mnist", "cifar10", "gtsrb", "awa2")
GTSRB_DEFAULT_SIZE = 32
AWA2_DEFAULT_SIZE = 64

# Side length of the sets whose images all have one size; None: resized to image_size on decoding.
_NATIVE_SIZE = {"digits": 8, "mnist": 28, "fashion-mnist": 28, "cifar10": 32, "gtsrb": None, "awa2": None}
_NUM_CLASSES = {"digits": 10, "mnist": 10, "fashion-mnist": 10, "cifar10": 10, "gtsrb": 43, "awa2": 50}
# 2: caches carry groups_train (GTSRB's tracks); a format-1 cache is rebuilt once, with a warning.
_CACHE_FORMAT = 2


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
    repo = Path(__file__).resolve().parents[2]  # camri/data/api.py → the folder above camri/
    data = repo / "data"
    if (repo / "pyproject.toml").is_file() and os.access(data if data.exists() else repo, os.W_OK):
        return data
    return Path.cwd() / "data"


def load(
    name: str, *, data_dir: str | os.PathLike | None = None, download: bool = True, image_size: int | None = None
) -> DataSet:
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
        warnings.warn(
            f"camri: could not write the cache {cache} ({error}); the data set will be read again next time",
            stacklevel=2,
        )
    else:
        if canonical.startswith("imagefolder:"):
            _remove_stale_imagefolder_caches(cache)
    return dataset


def check_available(
    name: str, data_dir: str | os.PathLike | None = None, download: bool = True, *, image_size: int | None = None
) -> None:
    """Raise :class:`DataError` unless ``load(name, ...)`` can get the data, without loading it.

    Cheap: looks for the cache file of (name, image_size) and for the raw files; for an absent torchvision
    set with ``download``, tries a TCP connection to the download host (``PROBE_TIMEOUT_S`` seconds; skipped
    behind an HTTP proxy), so a machine without network gets the error at once, not after hours of training.
    """
    root = resolve_data_dir(data_dir)
    canonical, cache, _ = _plan(name, root, image_size)
    if cache.is_file() or canonical == "digits" or canonical.startswith("imagefolder:"):
        return  # digits ships with scikit-learn; _plan already checked that an imagefolder source exists
    if raw_present(canonical, root):
        return
    if canonical == "awa2":
        raise DataError(awa2_missing_message(root))
    if not download:
        raise DataError(absent_message(canonical, root, "it is not there and downloading is off"))
    probe(canonical, root)


def describe(data_dir: str | os.PathLike | None = None) -> list[dict]:
    """One row per named data set: ``name``, ``classes`` (count), ``found`` (cache / raw / absent),
    ``where`` (the cache files, the raw files, or where they are expected) and ``get`` (how to get it)."""
    root = resolve_data_dir(data_dir)
    rows = []
    for name in NAMES:
        caches = sorted((root / "cache").glob(f"{name}.pt")) + sorted((root / "cache").glob(f"{name}-*px.pt"))
        if caches:
            found, where = "cache", ", ".join(str(c) for c in caches)
        elif raw_present(name, root):
            found, where = "raw", raw_location(name, root)
        else:
            found, where = "absent", raw_location(name, root)
        rows.append(
            {"name": name, "classes": _NUM_CLASSES[name], "found": found, "where": where, "get": how_to_get(name, root)}
        )
    return rows


def add_cli(subparsers) -> None:
    """Register ``camri data [NAME] [--data-dir DIR] [--image-size N] [--no-download]``."""
    parser = subparsers.add_parser(
        "data",
        help="list the data sets, or download / import one into the cache",
        description="Without NAME: list the data sets and where each is found. With NAME: download or import "
        "it into <data dir>/cache and print where it is.",
    )
    parser.add_argument(
        "name",
        nargs="?",
        metavar="NAME",
        help=f"one of {', '.join(NAMES)}, or imagefolder:PATH (a folder or .zip laid out train|test/<class>/<image>)",
    )
    parser.add_argument(
        "--data-dir",
        default=None,
        metavar="DIR",
        help="data directory (default: $CAMRI_DATA_DIR, else <repo>/data, else ./data)",
    )
    parser.add_argument(
        "--image-size",
        type=int,
        default=None,
        metavar="N",
        help="side length of the stored images (default: native; GTSRB 32, AwA2 64)",
    )
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
        return _plan_imagefolder(name[len("imagefolder:") :], root, image_size)
    canonical = name.strip().lower()
    if canonical not in NAMES:
        raise DataError(f"unknown data set {name!r}: choose one of {', '.join(NAMES)}, or imagefolder:PATH")
    if canonical == "gtsrb":
        size = image_size or GTSRB_DEFAULT_SIZE
        return canonical, _cache_path(root, f"gtsrb-{size}px"), lambda dl: loaders.fetch("gtsrb", root, dl, size)
    if canonical == "awa2":
        size = image_size or AWA2_DEFAULT_SIZE
        return canonical, _cache_path(root, f"awa2-{size}px"), lambda dl: loaders.load_awa2(root, size)
    size = None if image_size == _NATIVE_SIZE[canonical] else image_size
    key = canonical if size is None else f"{canonical}-{size}px"
    if canonical == "digits":
        return canonical, _cache_path(root, key), lambda dl: loaders.resized(loaders.load_digits(), size)
    return canonical, _cache_path(root, key), lambda dl: loaders.resized(loaders.fetch(canonical, root, dl, None), size)


def _plan_imagefolder(path: str, root: Path, size: int | None):
    if not path.strip():
        raise DataError("imagefolder: needs a path, as in imagefolder:/data/my-set.zip")
    source = Path(path).expanduser().resolve()
    name = f"imagefolder:{source}"
    if not source.exists():
        raise DataError(
            f"{name}: no such folder or zip file. Give the path of a folder or .zip laid out "
            f"train/<class>/<image> and test/<class>/<image>."
        )
    if source.is_file() and not zipfile.is_zipfile(source):
        raise DataError(
            f"{name}: not a zip archive (corrupt or truncated?). Copy or download it again, or "
            f"unpack it and give the folder instead."
        )
    # The path hash groups all caches of one source (stale ones are removed); the fingerprint changes
    # whenever the source does, so an edited source is read again.
    path_hash = hashlib.sha256(str(source).encode()).hexdigest()[:10]
    stem = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in source.stem)[:40]
    key = f"imagefolder-{stem}-{path_hash}-{_fingerprint(source)}-{size or 'native'}"
    return name, _cache_path(root, key), lambda dl: loaders.load_imagefolder(source, name, size)


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
        dataset = DataSet(
            blob["name"],
            blob["x_train"],
            blob["y_train"],
            blob["x_test"],
            blob["y_test"],
            list(blob["classes"]),
            groups_train=blob["groups_train"],
        )
        _validate(dataset)
        return dataset
    except Exception as error:  # any unreadable cache is rebuilt from the source
        warnings.warn(
            f"camri: ignoring unreadable cache {path} ({type(error).__name__}: {error}); rebuilding it", stacklevel=3
        )
        return None


def _write_cache(path: Path, dataset: DataSet) -> None:
    atomic_write(
        path,
        lambda f: torch.save(
            {
                "format": _CACHE_FORMAT,
                "name": dataset.name,
                "x_train": dataset.x_train,
                "y_train": dataset.y_train,
                "x_test": dataset.x_test,
                "y_test": dataset.y_test,
                "classes": list(dataset.classes),
                "groups_train": dataset.groups_train,
            },
            f,
        ),
    )


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
            raise ValueError(
                f"{split} split has images {x.dtype} {tuple(x.shape)} and labels {y.dtype} {tuple(y.shape)}"
            )
        if len(y) and (int(y.min()) < 0 or int(y.max()) >= len(dataset.classes)):
            raise ValueError(f"{split} labels outside 0..{len(dataset.classes) - 1}")
    groups = dataset.groups_train
    if groups is not None and (groups.dtype != torch.int64 or groups.shape != dataset.y_train.shape):
        raise ValueError(f"groups_train is {groups.dtype} {tuple(groups.shape)}, not int64 of y_train's shape")
    if dataset.x_train.shape[1:] != dataset.x_test.shape[1:]:
        raise ValueError("train and test images differ in shape")


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
    print(
        f"{dataset.name}: {len(dataset.y_train)} train / {len(dataset.y_test)} test images, {c}x{h}x{w}, "
        f"{dataset.num_classes} classes"
    )
    print(f"cached at {cache}" if cache.is_file() else "not cached (the cache could not be written)")
    return 0
