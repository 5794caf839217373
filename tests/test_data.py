"""camri.data, offline: digits, and small image folders / zips / fake raw layouts built in tmp_path."""

from __future__ import annotations

import argparse
import socket
import struct
import time
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from camri import data
from camri.data import DataError


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    """No test may reach the network, nor see the developer's own data directory."""
    monkeypatch.delenv("CAMRI_DATA_DIR", raising=False)
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)

    def no_network(*args, **kwargs):
        raise OSError("network disabled in tests")

    monkeypatch.setattr(socket, "create_connection", no_network)


def cache_files(data_dir: Path) -> list[str]:
    """Everything under <data_dir>/cache, temporary files included."""
    cache = data_dir / "cache"
    return sorted(p.name for p in cache.iterdir()) if cache.exists() else []


def pixels(seed: int, size=(6, 5), mode="RGB") -> Image.Image:
    """A random image; size is (W, H) as in PIL."""
    channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
    array = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], channels), dtype=np.uint8)
    return Image.fromarray(array[:, :, 0] if channels == 1 else array, mode)


def make_folder(root: Path, layout: dict[str, dict[str, int]], size=(6, 5), mode="RGB") -> dict:
    """Write PNGs root/<split>/<class>/<i>.png; return {(split, class, i): image}."""
    images = {}
    for split, classes in layout.items():
        for cls, count in classes.items():
            (root / split / cls).mkdir(parents=True, exist_ok=True)
            for i in range(count):
                img = pixels(zlib.crc32(f"{split}/{cls}/{i}".encode()), size, mode)
                img.save(root / split / cls / f"{i:03d}.png")
                images[(split, cls, i)] = img
    return images


def zip_folder(folder: Path, archive: Path, top: str | None = None) -> Path:
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted(folder.rglob("*")):
            rel = path.relative_to(folder).as_posix()
            zf.write(path, f"{top}/{rel}" if top else rel)
    return archive


LAYOUT = {"train": {"cat": 3, "dog": 2}, "test": {"cat": 2, "dog": 1}}


# ---- digits, cache ---------------------------------------------------------------------------------------


def test_digits_split_and_scaling(tmp_path):
    ds = data.load("digits", data_dir=tmp_path)
    assert ds.x_train.shape == (1347, 1, 8, 8) and ds.x_test.shape == (450, 1, 8, 8)
    assert ds.x_train.dtype == torch.uint8 and ds.y_train.dtype == torch.int64
    assert ds.classes == [str(k) for k in range(10)] and ds.num_classes == 10 and ds.image_shape == (1, 8, 8)
    assert int(ds.x_train.max()) == 255 and int(ds.x_train.min()) == 0
    # Stratified: every class has about a quarter of its images in the test split.
    total = torch.bincount(ds.y_train, minlength=10) + torch.bincount(ds.y_test, minlength=10)
    assert torch.all((torch.bincount(ds.y_test, minlength=10) - 0.25 * total).abs() <= 1)

    from sklearn.datasets import load_digits

    raw = load_digits()
    first = int(np.flatnonzero(raw.target == int(ds.y_train[0]))[0])
    assert np.array_equal(ds.x_train[0, 0].numpy(), np.rint(raw.images[first] * 255 / 16).astype(np.uint8))
    assert "train=1347" in repr(ds) and len(repr(ds)) < 200


def test_cache_round_trips_exactly(tmp_path):
    built = data.load("digits", data_dir=tmp_path)
    assert cache_files(tmp_path) == ["digits.pt"]
    cached = data.load("digits", data_dir=tmp_path)
    for field in ("x_train", "y_train", "x_test", "y_test"):
        a, b = getattr(built, field), getattr(cached, field)
        assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    assert cached.classes == built.classes and cached.name == built.name


def test_failed_cache_write_leaves_nothing(tmp_path, monkeypatch):
    def broken_save(obj, f, *args, **kwargs):
        f.write(b"half a cache")
        raise RuntimeError("disk died")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(RuntimeError, match="disk died"):
        data.load("digits", data_dir=tmp_path)
    assert cache_files(tmp_path) == []


def test_unreadable_cache_is_rebuilt(tmp_path):
    reference = data.load("digits", data_dir=tmp_path)
    (tmp_path / "cache" / "digits.pt").write_bytes(b"not a torch file")
    with pytest.warns(UserWarning, match="unreadable cache"):
        again = data.load("digits", data_dir=tmp_path)
    assert torch.equal(again.x_test, reference.x_test)
    assert torch.equal(data.load("digits", data_dir=tmp_path).x_train, reference.x_train)  # rewritten


def test_image_size_resizes_and_has_its_own_cache(tmp_path):
    ds = data.load("digits", data_dir=tmp_path, image_size=16)
    assert ds.image_shape == (1, 16, 16) and len(ds.y_train) == 1347
    assert data.load("digits", data_dir=tmp_path, image_size=8).image_shape == (1, 8, 8)
    assert cache_files(tmp_path) == ["digits-16px.pt", "digits.pt"]
    with pytest.raises(ValueError, match="image_size must be a positive int or None, got 0"):
        data.load("digits", data_dir=tmp_path, image_size=0)


def test_unknown_name(tmp_path):
    with pytest.raises(DataError, match="cifar10"):
        data.load("cifar11", data_dir=tmp_path)


# ---- imagefolder -------------------------------------------------------------------------------------------


def test_imagefolder_folder_and_zip_read_the_same_pixels(tmp_path):
    images = make_folder(tmp_path / "set", LAYOUT)
    ds = data.load(f"imagefolder:{tmp_path / 'set'}", data_dir=tmp_path / "d")
    assert ds.classes == ["cat", "dog"] and ds.image_shape == (3, 5, 6)
    assert ds.y_train.tolist() == [0, 0, 0, 1, 1] and ds.y_test.tolist() == [0, 0, 1]
    expected = np.asarray(images[("train", "dog", 1)]).transpose(2, 0, 1)
    assert np.array_equal(ds.x_train[4].numpy(), expected)

    archive = zip_folder(tmp_path / "set", tmp_path / "set.zip", top="wrapped")
    from_zip = data.load(f"imagefolder:{archive}", data_dir=tmp_path / "d")
    assert torch.equal(from_zip.x_train, ds.x_train) and torch.equal(from_zip.x_test, ds.x_test)
    assert torch.equal(from_zip.y_train, ds.y_train) and from_zip.classes == ds.classes
    cached = data.load(f"imagefolder:{archive}", data_dir=tmp_path / "d")
    assert torch.equal(cached.x_test, ds.x_test)
    assert len(cache_files(tmp_path / "d")) == 2


def test_imagefolder_ignores_hidden_files_and_macos_debris(tmp_path):
    make_folder(tmp_path / "set", LAYOUT)
    (tmp_path / "set" / "train" / "cat" / ".DS_Store").write_bytes(b"junk")
    archive = zip_folder(tmp_path / "set", tmp_path / "set.zip")
    with zipfile.ZipFile(archive, "a") as zf:
        zf.writestr("__MACOSX/train/cat/._000.png", b"junk")
    ds = data.load(f"imagefolder:{archive}", data_dir=tmp_path / "d")
    assert len(ds.y_train) == 5


def test_imagefolder_changed_source_is_read_again(tmp_path):
    make_folder(tmp_path / "set", LAYOUT)
    name = f"imagefolder:{tmp_path / 'set'}"
    assert len(data.load(name, data_dir=tmp_path / "d").y_train) == 5
    pixels(99).save(tmp_path / "set" / "train" / "dog" / "new.png")
    assert len(data.load(name, data_dir=tmp_path / "d").y_train) == 6
    assert len(cache_files(tmp_path / "d")) == 1  # the stale cache was removed


def test_imagefolder_mixed_sizes_go_to_the_most_common_or_image_size(tmp_path):
    make_folder(tmp_path / "set", LAYOUT, size=(6, 5))
    pixels(7, size=(12, 10)).save(tmp_path / "set" / "train" / "cat" / "big.png")
    name = f"imagefolder:{tmp_path / 'set'}"
    assert data.load(name, data_dir=tmp_path / "d").image_shape == (3, 5, 6)
    ds = data.load(name, data_dir=tmp_path / "d", image_size=4)
    assert ds.image_shape == (3, 4, 4) and len(ds.y_train) == 6


def test_imagefolder_grayscale_stays_one_channel(tmp_path):
    make_folder(tmp_path / "set", LAYOUT, mode="L")
    assert data.load(f"imagefolder:{tmp_path / 'set'}", data_dir=tmp_path / "d").image_shape == (1, 5, 6)


def test_imagefolder_mixed_modes_become_rgb(tmp_path):
    make_folder(tmp_path / "set", LAYOUT, mode="L")
    gray = pixels(5, mode="L")
    gray.save(tmp_path / "set" / "test" / "dog" / "000.png")
    rgba = pixels(6, mode="RGBA")
    rgba.save(tmp_path / "set" / "train" / "cat" / "000.png")
    ds = data.load(f"imagefolder:{tmp_path / 'set'}", data_dir=tmp_path / "d")
    assert ds.image_shape == (3, 5, 6)
    assert np.array_equal(ds.x_train[0].numpy(), np.asarray(rgba)[:, :, :3].transpose(2, 0, 1))
    assert np.array_equal(ds.x_test[2].numpy(), np.stack([np.asarray(gray)] * 3))


def expect_error(tmp_path, source: Path, *fragments: str) -> None:
    """Loading ``source`` raises a DataError containing each fragment, and leaves no cache behind."""
    with pytest.raises(DataError) as caught:
        data.load(f"imagefolder:{source}", data_dir=tmp_path / "d")
    for fragment in fragments:
        assert fragment in str(caught.value)
    assert cache_files(tmp_path / "d") == []


def test_truncated_zip(tmp_path):
    make_folder(tmp_path / "set", LAYOUT)
    archive = zip_folder(tmp_path / "set", tmp_path / "set.zip")
    archive.write_bytes(archive.read_bytes()[:-60])  # cut into the central directory
    expect_error(tmp_path, archive, "set.zip", "zip")
    with pytest.raises(
        DataError, match=r"set\.zip: not a zip archive \(corrupt or truncated\?\)\. Copy or download it again"
    ):
        data.check_available(f"imagefolder:{archive}", data_dir=tmp_path / "d")


def test_zip_with_a_corrupt_member_names_it(tmp_path):
    make_folder(tmp_path / "set", LAYOUT)
    archive = zip_folder(tmp_path / "set", tmp_path / "set.zip")
    raw = bytearray(archive.read_bytes())
    with zipfile.ZipFile(archive) as zf:
        info = zf.getinfo("train/dog/001.png")
    start = info.header_offset + 30 + len(info.filename) + len(info.extra)
    raw[start + 20] ^= 0xFF  # one byte of the member's data: its CRC no longer matches
    archive.write_bytes(bytes(raw))
    expect_error(tmp_path, archive, "train/dog/001.png")


def test_corrupt_and_truncated_images_are_named(tmp_path):
    make_folder(tmp_path / "set", LAYOUT)
    (tmp_path / "set" / "test" / "cat" / "notes.png").write_text("not an image")
    expect_error(tmp_path, tmp_path / "set", "test/cat/notes.png")

    (tmp_path / "set" / "test" / "cat" / "notes.png").unlink()
    target = tmp_path / "set" / "train" / "dog" / "001.png"
    pixels(3, size=(60, 50)).save(target)
    target.write_bytes(target.read_bytes()[:200])  # header intact, pixel data cut short
    expect_error(tmp_path, tmp_path / "set", "train/dog/001.png")


def test_class_missing_from_one_split(tmp_path):
    make_folder(tmp_path / "a", {"train": {"cat": 1, "dog": 1}, "test": {"cat": 1}})
    expect_error(tmp_path, tmp_path / "a", "only in train/: ['dog']")
    make_folder(tmp_path / "b", {"train": {"cat": 1}, "test": {"cat": 1, "dog": 1}})
    expect_error(tmp_path, tmp_path / "b", "only in test/: ['dog']")


def test_empty_class_folder(tmp_path):
    make_folder(tmp_path / "set", LAYOUT)
    (tmp_path / "set" / "train" / "bird").mkdir()
    (tmp_path / "set" / "test" / "bird").mkdir()
    (tmp_path / "set" / "test" / "bird" / "x.png").touch()
    expect_error(tmp_path, tmp_path / "set", "train/bird/", "no images")


def test_missing_split(tmp_path):
    make_folder(tmp_path / "set", {"train": {"cat": 1}})
    expect_error(tmp_path, tmp_path / "set", "no test/ folder", "(found: train)")
    expect_error(tmp_path, tmp_path / "nowhere", "no such folder")


def test_file_outside_class_folders(tmp_path):
    make_folder(tmp_path / "set", LAYOUT)
    pixels(1).save(tmp_path / "set" / "train" / "stray.png")
    expect_error(tmp_path, tmp_path / "set", "train/stray.png", "class folder")


# ---- AwA2, torchvision layouts, availability ------------------------------------------------------------


def test_awa2_absent(tmp_path):
    started = time.monotonic()
    with pytest.raises(DataError) as caught:
        data.check_available("awa2", data_dir=tmp_path)
    assert time.monotonic() - started < 2
    message = str(caught.value)
    assert "https://cvml.ist.ac.at/AwA2/" in message and "Animals_with_Attributes2/JPEGImages" in message
    assert str(tmp_path) in message
    with pytest.raises(DataError, match="cvml.ist.ac.at"):
        data.load("awa2", data_dir=tmp_path)


def test_awa2_layout_order_and_split(tmp_path):
    base = tmp_path / "Animals_with_Attributes2"
    for k, cls in enumerate(["zebra", "antelope", "grizzly+bear"]):
        (base / "JPEGImages" / cls).mkdir(parents=True)
        for i in range(10):
            img = pixels(k * 100 + i, size=(40 + i, 30))
            (img.convert("L") if i == 0 else img).save(base / "JPEGImages" / cls / f"{cls}_{i:05d}.jpg")
    (base / "classes.txt").write_text("1\tzebra\n2\tantelope\n3\tgrizzly+bear\n")
    data.check_available("awa2", data_dir=tmp_path)
    ds = data.load("awa2", data_dir=tmp_path, image_size=8)
    assert ds.classes == ["zebra", "antelope", "grizzly+bear"]
    assert ds.image_shape == (3, 8, 8) and len(ds.y_train) == 24 and len(ds.y_test) == 6
    assert torch.bincount(ds.y_test).tolist() == [2, 2, 2]
    assert cache_files(tmp_path) == ["awa2-8px.pt"]


def write_idx(path: Path, array: np.ndarray) -> None:
    """MNIST's idx format: magic (0, 0, 0x08 = ubyte, ndim), big-endian dims, then the bytes."""
    header = bytes([0, 0, 8, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def test_mnist_laid_out_by_hand_is_read_without_network(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    images = {"train": rng.integers(0, 256, (5, 28, 28)), "t10k": rng.integers(0, 256, (3, 28, 28))}
    write_idx(raw / "train-images-idx3-ubyte", images["train"])
    write_idx(raw / "train-labels-idx1-ubyte", np.array([0, 1, 2, 3, 9]))
    write_idx(raw / "t10k-images-idx3-ubyte", images["t10k"])
    write_idx(raw / "t10k-labels-idx1-ubyte", np.array([4, 5, 6]))
    data.check_available("mnist", data_dir=tmp_path, download=False)
    ds = data.load("mnist", data_dir=tmp_path, download=False)
    assert ds.x_train.shape == (5, 1, 28, 28) and ds.y_test.tolist() == [4, 5, 6]
    assert np.array_equal(ds.x_test[:, 0].numpy(), images["t10k"]) and ds.classes[9] == "9"
    assert [r["found"] for r in data.describe(tmp_path) if r["name"] == "mnist"] == ["cache"]


def test_gtsrb_laid_out_by_hand_is_resized(tmp_path):
    base = tmp_path / "gtsrb"
    # The official names: <track>_<frame>.ppm. Class 0: one track of 2 frames; class 1: 2 tracks of 1.
    for cls, names in (("00000", ("00000_00000", "00000_00001")), ("00001", ("00000_00000", "00001_00000"))):
        (base / "GTSRB" / "Training" / cls).mkdir(parents=True)
        for i, name in enumerate(names):
            pixels(i, size=(30 + i, 33)).save(base / "GTSRB" / "Training" / cls / f"{name}.ppm")
    (base / "GTSRB" / "Final_Test" / "Images").mkdir(parents=True)
    pixels(8, size=(40, 41)).save(base / "GTSRB" / "Final_Test" / "Images" / "00000.ppm")
    (base / "GT-final_test.csv").write_text(
        "Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId\n00000.ppm;40;41;5;5;35;36;1\n"
    )
    ds = data.load("gtsrb", data_dir=tmp_path, download=False, image_size=8)
    assert ds.image_shape == (3, 8, 8) and ds.y_train.tolist() == [0, 0, 1, 1] and ds.y_test.tolist() == [1]
    assert ds.num_classes == 43 and ds.classes[14] == "Stop"
    assert ds.groups_train.tolist() == [0, 0, 100_000, 100_001]  # a track per class: class · 10⁵ + track
    cached = data.load("gtsrb", data_dir=tmp_path, download=False, image_size=8)  # from the cache this time
    assert torch.equal(cached.groups_train, ds.groups_train)
    for old in (tmp_path / "cache").glob("*.pt"):
        old.unlink()
    (base / "GTSRB" / "Training" / "00001" / "00001_00000.ppm").rename(base / "GTSRB" / "Training" / "00001" / "x.ppm")
    with pytest.raises(DataError, match=r"x.ppm is not named <track>_<frame>.ppm"):
        data.load("gtsrb", data_dir=tmp_path, download=False, image_size=8)


def test_absent_torchvision_set_fails_fast_and_says_how(tmp_path):
    started = time.monotonic()
    with pytest.raises(DataError) as offline:
        data.check_available("cifar10", data_dir=tmp_path, download=True)  # the probe hits no_network
    with pytest.raises(DataError) as no_download:
        data.load("mnist", data_dir=tmp_path, download=False)
    assert time.monotonic() - started < 5
    assert "cannot be reached" in str(offline.value)
    assert "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz" in str(offline.value)
    assert f"camri data mnist --data-dir {tmp_path}" in str(no_download.value)
    assert cache_files(tmp_path) == []


def test_check_available_present_cases(tmp_path):
    data.check_available("digits", data_dir=tmp_path)
    make_folder(tmp_path / "set", LAYOUT)
    data.check_available(f"imagefolder:{tmp_path / 'set'}", data_dir=tmp_path)
    with pytest.raises(DataError, match="no such folder"):
        data.check_available(f"imagefolder:{tmp_path / 'missing'}", data_dir=tmp_path)


def test_resolve_data_dir_precedence(tmp_path, monkeypatch):
    assert data.resolve_data_dir(tmp_path / "x") == tmp_path / "x"
    monkeypatch.setenv("CAMRI_DATA_DIR", str(tmp_path / "env"))
    assert data.resolve_data_dir() == tmp_path / "env"
    assert data.resolve_data_dir(tmp_path / "x") == tmp_path / "x"
    monkeypatch.delenv("CAMRI_DATA_DIR")
    assert data.resolve_data_dir().name == "data"


def test_describe(tmp_path):
    rows = {r["name"]: r for r in data.describe(tmp_path)}
    assert list(rows) == list(data.NAMES)
    assert rows["digits"]["found"] == "raw" and rows["cifar10"]["found"] == "absent"
    assert rows["gtsrb"]["classes"] == 43 and "cvml.ist.ac.at" in rows["awa2"]["get"]
    data.load("digits", data_dir=tmp_path)
    assert data.describe(tmp_path)[0]["found"] == "cache"


# ---- preprocessing ---------------------------------------------------------------------------------------


def test_to_float():
    x = torch.tensor([[0, 51, 255]], dtype=torch.uint8)
    y = data.to_float(x)
    assert y.dtype == torch.float32 and torch.allclose(y, torch.tensor([[0.0, 0.2, 1.0]]))
    with pytest.raises(TypeError, match="to_float expects uint8 images, got torch.float32"):
        data.to_float(y)


def test_augment_batch_crops_and_flips_like_a_loop():
    x = torch.rand(16, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    out = data.augment_batch(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == x.dtype
    assert torch.equal(out, data.augment_batch(x, torch.Generator().manual_seed(0)))

    # Reference: the same random draws, applied image by image.
    g = torch.Generator().manual_seed(0)
    dy, dx = torch.randint(0, 9, (16,), generator=g), torch.randint(0, 9, (16,), generator=g)
    flips = torch.rand(16, generator=g) < 0.5
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    for i in range(16):
        crop = padded[i, :, dy[i] : dy[i] + 8, dx[i] : dx[i] + 8]
        assert torch.equal(out[i], crop.flip(-1) if flips[i] else crop)


def test_augment_batch_options():
    x = torch.rand(32, 1, 6, 6, generator=torch.Generator().manual_seed(2))
    flipped = data.augment_batch(x, torch.Generator().manual_seed(0), pad=0)
    same = [torch.equal(a, b) for a, b in zip(flipped, x)]
    mirrored = [torch.equal(a, b.flip(-1)) for a, b in zip(flipped, x)]
    assert all(s or m for s, m in zip(same, mirrored)) and any(same) and any(mirrored)
    reflect = data.augment_batch(x, torch.Generator().manual_seed(0), flip=False, padding_mode="reflect")
    assert (reflect > 0).all()  # reflection never brings in the zeros of constant padding
    with pytest.raises(TypeError, match=r"augment_batch expects a float batch \(see to_float\), got torch.uint8"):
        data.augment_batch(x.to(torch.uint8), torch.Generator())


# ---- command line ---------------------------------------------------------------------------------------


def run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="camri")
    data.add_cli(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_lists_and_imports(tmp_path, capsys):
    assert run_cli(["data", "--data-dir", str(tmp_path)]) == 0
    listing = capsys.readouterr().out
    assert all(name in listing for name in data.NAMES) and "cvml.ist.ac.at" in listing
    assert run_cli(["data", "digits", "--data-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "1347 train / 450 test" in out and str(tmp_path / "cache" / "digits.pt") in out
    with pytest.raises(DataError, match="cvml.ist.ac.at"):
        run_cli(["data", "awa2", "--data-dir", str(tmp_path)])
