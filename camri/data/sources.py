"""Where each downloadable data set comes from: whether its raw files are present, the network probe, and
the messages that say how to get it."""

from __future__ import annotations

import socket
import threading
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from camri.data.dataset import DataError

AWA2_URL = "https://cvml.ist.ac.at/AwA2/"
PROBE_TIMEOUT_S = 3.0

_MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
_CIFAR_FILES = tuple(
    f"cifar-10-batches-py/{f}"
    for f in (
        "data_batch_1",
        "data_batch_2",
        "data_batch_3",
        "data_batch_4",
        "data_batch_5",
        "test_batch",
        "batches.meta",
    )
)
_GTSRB_URL = "https://sid.erda.dk/public/archives/daaeac0d7ce1152aea9b61d9f1e19370/"


@dataclass(frozen=True)
class _Source:
    """Where torchvision keeps one data set under its root, and where it downloads it from."""

    unpacked: tuple[str, ...]  # paths under root that torchvision reads
    archives: tuple[str, ...]  # downloaded archives under root; torchvision unpacks them without network
    urls: tuple[str, ...]  # the archives' addresses, same order


_SOURCES = {
    "mnist": _Source(
        tuple(f"MNIST/raw/{f}" for f in _MNIST_FILES),
        tuple(f"MNIST/raw/{f}.gz" for f in _MNIST_FILES),
        tuple(f"https://ossci-datasets.s3.amazonaws.com/mnist/{f}.gz" for f in _MNIST_FILES),
    ),
    "fashion-mnist": _Source(
        tuple(f"FashionMNIST/raw/{f}" for f in _MNIST_FILES),
        tuple(f"FashionMNIST/raw/{f}.gz" for f in _MNIST_FILES),
        tuple(f"http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/{f}.gz" for f in _MNIST_FILES),
    ),
    "cifar10": _Source(
        _CIFAR_FILES, ("cifar-10-python.tar.gz",), ("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",)
    ),
    "gtsrb": _Source(
        ("gtsrb/GTSRB/Training", "gtsrb/GTSRB/Final_Test/Images", "gtsrb/GT-final_test.csv"),
        ("gtsrb/GTSRB-Training_fixed.zip", "gtsrb/GTSRB_Final_Test_Images.zip", "gtsrb/GTSRB_Final_Test_GT.zip"),
        tuple(
            _GTSRB_URL + f
            for f in ("GTSRB-Training_fixed.zip", "GTSRB_Final_Test_Images.zip", "GTSRB_Final_Test_GT.zip")
        ),
    ),
}


def raw_present(name: str, root: Path) -> bool:
    """Whether the source files are in ``root`` (unpacked, or as downloaded archives)."""
    if name == "digits":
        return True
    if name == "awa2":
        return (root / "Animals_with_Attributes2" / "JPEGImages").is_dir()
    source = _SOURCES[name]
    return all((root / p).exists() for p in source.unpacked) or all((root / p).exists() for p in source.archives)


def raw_location(name: str, root: Path) -> str:
    if name == "digits":
        return "bundled with scikit-learn"
    if name == "awa2":
        return str(root / "Animals_with_Attributes2" / "JPEGImages")
    return str(root / Path(_SOURCES[name].unpacked[0]).parts[0])


def how_to_get(name: str, root: Path) -> str:
    if name == "digits":
        return "nothing to do (ships with scikit-learn)"
    if name == "awa2":
        return f"manual: AwA2-data.zip from {AWA2_URL}, then `unzip AwA2-data.zip -d {root}`"
    return f"`camri data {name} --data-dir {root}` (torchvision downloads it from {_host(_SOURCES[name].urls[0])})"


def _host(url: str) -> str:
    return urlsplit(url).hostname or url


def probe(name: str, root: Path) -> None:
    """Raise DataError unless a TCP connection to one of the download hosts opens within the timeout."""
    urls = _SOURCES[name].urls
    schemes = {urlsplit(u).scheme for u in urls}
    if any(s in urllib.request.getproxies() for s in schemes):
        return  # behind a proxy a direct connection proves nothing; let torchvision try
    errors = []
    for host, port in dict.fromkeys(
        (_host(u), urlsplit(u).port or (443 if urlsplit(u).scheme == "https" else 80)) for u in urls
    ):
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
    raise DataError(absent_message(name, root, "the download host cannot be reached (" + "; ".join(errors) + ")"))


def absent_message(name: str, root: Path, reason: str) -> str:
    source = _SOURCES[name]
    archives = "\n".join(f"    {url}  ->  {root / path}" for url, path in zip(source.urls, source.archives))
    return (
        f"data set {name!r} is not available from {root}: {reason}.\n"
        f"Looked under {root} for {', '.join(source.unpacked)} (torchvision's layout) and for the archives "
        f"below.\n"
        f"Fix, with internet:  camri data {name} --data-dir {root}\n"
        f"or download these by hand and put them there (they are unpacked on first use when downloads are "
        f"allowed, or unpack them yourself):\n{archives}"
    )


def awa2_missing_message(root: Path) -> str:
    return (
        f"data set 'awa2' (Animals with Attributes 2) is not in {root}: "
        f"{root / 'Animals_with_Attributes2' / 'JPEGImages'} does not exist. It cannot be downloaded "
        f"automatically (about 13 GB). Download AwA2-data.zip from {AWA2_URL} and run\n"
        f"    unzip AwA2-data.zip -d {root}\n"
        f"so that the images are at {root}/Animals_with_Attributes2/JPEGImages/<class>/<image>.jpg "
        f"(and the class order at {root}/Animals_with_Attributes2/classes.txt)."
    )
