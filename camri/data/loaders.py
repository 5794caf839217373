"""The per-source loaders: digits, torchvision's sets, GTSRB, AwA2 and image folders / zips, with the
parallel image decoding they share. Each returns a :class:`~camri.data.dataset.DataSet` of uint8 tensors."""

from __future__ import annotations

import io
import os
import threading
import zipfile
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

from camri.data.dataset import DataError, DataSet, stratified_split
from camri.data.sources import AWA2_URL, absent_message, awa2_missing_message, probe, raw_present

SPLIT_SEED = 0
DIGITS_TEST_FRACTION = 0.25
AWA2_TEST_FRACTION = 0.2
_IGNORED_NAMES = {"__MACOSX", "Thumbs.db", "desktop.ini"}
_GRAY_MODES = {"1", "L", "LA", "I", "I;16", "F"}

# GTSRB ships class ids only (folders 00000..00042); these are the signs they stand for.
GTSRB_CLASSES = [
    "Speed limit (20km/h)",
    "Speed limit (30km/h)",
    "Speed limit (50km/h)",
    "Speed limit (60km/h)",
    "Speed limit (70km/h)",
    "Speed limit (80km/h)",
    "End of speed limit (80km/h)",
    "Speed limit (100km/h)",
    "Speed limit (120km/h)",
    "No passing",
    "No passing for vehicles over 3.5 metric tons",
    "Right-of-way at the next intersection",
    "Priority road",
    "Yield",
    "Stop",
    "No vehicles",
    "Vehicles over 3.5 metric tons prohibited",
    "No entry",
    "General caution",
    "Dangerous curve to the left",
    "Dangerous curve to the right",
    "Double curve",
    "Bumpy road",
    "Slippery road",
    "Road narrows on the right",
    "Road work",
    "Traffic signals",
    "Pedestrians",
    "Children crossing",
    "Bicycles crossing",
    "Beware of ice/snow",
    "Wild animals crossing",
    "End of all speed and passing limits",
    "Turn right ahead",
    "Turn left ahead",
    "Ahead only",
    "Go straight or right",
    "Go straight or left",
    "Keep right",
    "Keep left",
    "Roundabout mandatory",
    "End of no passing",
    "End of no passing by vehicles over 3.5 metric tons",
]


# ---- digits and torchvision's sets ----------------------------------------------------------------------


def load_digits() -> DataSet:
    from sklearn.datasets import load_digits  # imported here: scikit-learn takes a second to import

    bunch = load_digits()
    x = torch.from_numpy(np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)).unsqueeze(1)
    y = torch.from_numpy(bunch.target.astype(np.int64))
    train, test = stratified_split(bunch.target, DIGITS_TEST_FRACTION, SPLIT_SEED)
    return DataSet("digits", x[train], y[train], x[test], y[test], [str(k) for k in range(10)])


def fetch(name: str, root: Path, download: bool, size: int | None) -> DataSet:
    """Read a torchvision data set from ``root``, downloading it first when allowed and absent."""
    if not raw_present(name, root):
        if not download:
            raise DataError(absent_message(name, root, "it is not there and downloading is off"))
        probe(name, root)  # fail in seconds, not after urllib's long timeouts
    try:
        if name == "gtsrb":
            return _load_gtsrb(root, download, size)
        return _load_torchvision_tensors(name, root, download)
    except DataError:
        raise
    except Exception as error:  # urllib, tarfile, zipfile, checksum and pickle errors all mean the same here
        raise DataError(absent_message(name, root, f"{type(error).__name__}: {error}".strip())) from error


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
        ds = GTSRB(str(root), split=split, download=download, transform=lambda img: _fit(img, "RGB", (size, size)))
        labels = np.empty(len(ds), dtype=np.int64)

        def read(i: int, ds=ds, labels=labels) -> np.ndarray:
            image, labels[i] = ds[i]
            return image

        x = _decode_all(
            len(ds),
            read,
            (size, size, 3),
            lambda i, s=split: (
                f"gtsrb: {s} image #{i} under {root / 'gtsrb'} cannot be read; delete "
                f"that folder and run `camri data gtsrb --data-dir {root}` again"
            ),
            f"gtsrb {split}",
        )
        tensors += [x, torch.from_numpy(labels)]
        if split == "train":
            # torchvision's (path, label) list, in the order of ds[i]: the file names carry the tracks.
            groups = torch.from_numpy(gtsrb_tracks(ds._samples))
    return DataSet("gtsrb", *tensors, list(GTSRB_CLASSES), groups_train=groups)


def gtsrb_tracks(samples: list[tuple[str, int]]) -> np.ndarray:
    """One group id per GTSRB training image: its track, unique over classes (class · 10⁵ + track). The
    official training files are named <track>_<frame>.ppm, about 30 frames of one physical sign per track
    (GTSRB's readme), so frames of one track are near-duplicates that must not straddle a split."""
    ids = []
    for path, label in samples:
        stem = Path(path).stem
        track, sep, _ = stem.partition("_")
        if not sep or not track.isdigit():
            raise DataError(
                f"gtsrb: training file {path} is not named <track>_<frame>.ppm as the official set is; "
                "delete the gtsrb folder and extract the official archive again"
            )
        ids.append(label * 100_000 + int(track))
    return np.asarray(ids, dtype=np.int64)


def resized(dataset: DataSet, size: int | None) -> DataSet:
    """Resize a fixed-size data set to size×size (antialiased bilinear), or return it unchanged."""
    if size is None:
        return dataset

    def resize(x: torch.Tensor) -> torch.Tensor:
        # In chunks: a float copy of all of CIFAR-10 at 64×64 would take 2.4 GB.
        return torch.cat(
            [
                F.interpolate(part.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
                .round_()
                .clamp_(0, 255)
                .to(torch.uint8)
                for part in x.split(4096)
            ]
        )

    return replace(dataset, x_train=resize(dataset.x_train), x_test=resize(dataset.x_test))


# ---- AwA2 ---------------------------------------------------------------------------------------------


def load_awa2(root: Path, size: int) -> DataSet:
    base = root / "Animals_with_Attributes2"
    images = base / "JPEGImages"
    if not images.is_dir():
        raise DataError(awa2_missing_message(root))
    folders = sorted(d.name for d in images.iterdir() if d.is_dir() and not _ignored(d.name))
    classes = folders
    if (base / "classes.txt").is_file():
        # Lines are "<number>\t<class>"; their order is the official label order.
        listed = [line.split()[-1] for line in (base / "classes.txt").read_text().splitlines() if line.strip()]
        if sorted(listed) != folders:
            raise DataError(
                f"awa2: {base / 'classes.txt'} lists other classes than the folders in {images} "
                f"(only in classes.txt: {sorted(set(listed) - set(folders))}; only folders: "
                f"{sorted(set(folders) - set(listed))}). Unpack AwA2-data.zip from {AWA2_URL} again."
            )
        classes = listed
    files, labels = [], []
    for label, cls in enumerate(classes):
        members = sorted(p for p in (images / cls).iterdir() if p.is_file() and not _ignored(p.name))
        if not members:
            raise DataError(f"awa2: class folder {images / cls} is empty. Unpack AwA2-data.zip from {AWA2_URL} again.")
        files += members
        labels += [label] * len(members)
    y = torch.tensor(labels, dtype=torch.int64)
    train, test = stratified_split(np.asarray(labels), AWA2_TEST_FRACTION, SPLIT_SEED)
    x = _decode_all(
        len(files),
        lambda i: _read_image(files[i], "RGB", (size, size)),
        (size, size, 3),
        lambda i: f"awa2: {files[i]}",
        "awa2",
    )
    return DataSet("awa2", x[train], y[train], x[test], y[test], classes)


# ---- imagefolder ----------------------------------------------------------------------------------------


def load_imagefolder(source: Path, name: str, image_size: int | None) -> DataSet:
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


def _build_imagefolder(
    name: str, source: Path, entries: Iterable[str], opener: Callable[[str], io.IOBase], image_size: int | None
) -> DataSet:
    """Check the ``<split>/<class>/<image>`` layout of ``entries`` (paths, folders ending in "/"), decode."""
    layout = (
        "Lay it out as train/<class>/<image> and test/<class>/<image> (optionally inside one top "
        "folder), with the same class folders in both splits."
    )
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
        top = {p[len(prefix) :].split("/")[0] for p in files | folders if p.startswith(prefix)}
    missing = [s for s in ("train", "test") if s not in top]
    if missing:
        raise DataError(
            f"{name}: no {' and no '.join(s + '/' for s in missing)} folder in {source}"
            f"{' under ' + prefix if prefix else ''} (found: {', '.join(sorted(top)) or 'nothing'}). "
            f"{layout}"
        )

    split_classes: dict[str, set[str]] = {}
    members: dict[tuple[str, str], list[str]] = {}
    for split in ("train", "test"):
        base = prefix + split + "/"
        split_classes[split] = {p[len(base) :].split("/")[0] for p in folders if p.startswith(base)}
        for f in sorted(p for p in files if p.startswith(base)):
            rest = f[len(base) :]
            if "/" not in rest:
                raise DataError(f"{name}: {f} is not inside a class folder. {layout}")
            members.setdefault((split, rest.split("/")[0]), []).append(f)
    if split_classes["train"] != split_classes["test"]:
        only_train = sorted(split_classes["train"] - split_classes["test"])
        only_test = sorted(split_classes["test"] - split_classes["train"])
        raise DataError(
            f"{name}: the splits have different classes in {source} (only in train/: {only_train}; "
            f"only in test/: {only_test}). {layout}"
        )
    classes = sorted(split_classes["train"])
    for split in ("train", "test"):
        for cls in classes:
            if not members.get((split, cls)):
                raise DataError(
                    f"{name}: class folder {prefix}{split}/{cls}/ in {source} has no images. "
                    f"Add images or remove the class from both splits."
                )

    items = [
        (split, label, f)
        for split in ("train", "test")
        for label, cls in enumerate(classes)
        for f in members[(split, cls)]
    ]

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


def _decode_all(
    count: int,
    read: Callable[[int], np.ndarray],
    shape_hwc: tuple[int, int, int],
    what: Callable[[int], str],
    desc: str,
) -> torch.Tensor:
    """Fill an N×H×W×C uint8 array with ``read(i)`` in parallel; return it as an N×C×H×W tensor."""
    out = np.empty((count, *shape_hwc), dtype=np.uint8)

    def fill(i: int) -> None:
        out[i] = read(i)

    _run_parallel(count, fill, what, desc)
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()
