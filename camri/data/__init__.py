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
    kept (GTSRB images are nearly square). ``groups_train`` holds each training image's track (its file
    name, <track>_<frame>.ppm), for a validation split of whole tracks (``validation_groups``).
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

Modules: :mod:`camri.data.api` (load, check_available, describe, the cache, ``camri data``),
:mod:`camri.data.dataset` (DataSet, DataError, to_float, augment_batch), :mod:`camri.data.loaders` (one
loader per source and the parallel image decoding) and :mod:`camri.data.sources` (where the raw files are,
the network probe, how to get each set). The public names are exported here.
"""

from camri.data.api import (
    AWA2_DEFAULT_SIZE,
    GTSRB_DEFAULT_SIZE,
    NAMES,
    add_cli,
    check_available,
    describe,
    load,
    resolve_data_dir,
)
from camri.data.dataset import DataError, DataSet, augment_batch, to_float
from camri.data.loaders import AWA2_TEST_FRACTION, DIGITS_TEST_FRACTION, GTSRB_CLASSES, SPLIT_SEED
from camri.data.sources import AWA2_URL, PROBE_TIMEOUT_S

__all__ = [
    "AWA2_DEFAULT_SIZE",
    "AWA2_TEST_FRACTION",
    "AWA2_URL",
    "DIGITS_TEST_FRACTION",
    "GTSRB_CLASSES",
    "GTSRB_DEFAULT_SIZE",
    "NAMES",
    "PROBE_TIMEOUT_S",
    "SPLIT_SEED",
    "DataError",
    "DataSet",
    "add_cli",
    "augment_batch",
    "check_available",
    "describe",
    "load",
    "resolve_data_dir",
    "to_float",
]
