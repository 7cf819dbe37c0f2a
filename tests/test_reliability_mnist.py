"""MNIST is verified every time it is read: damaged extracted files are extracted again from their
verified .gz, damaged .gz files are errors that name the file and the fix."""
from __future__ import annotations

import shutil

import pytest

from cvae_utils.data import MNIST_FILES, MNISTDataError, load_mnist

TRAIN_IMAGES = "train-images-idx3-ubyte"


@pytest.fixture
def root(mnist_raw, tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in MNIST_FILES:
        shutil.copy(mnist_raw / name, raw / name)
    load_mnist(tmp_path, download=False)  # extracts the four files
    return tmp_path


def test_zeroed_bytes_in_an_extracted_file_are_caught_and_repaired(root):
    extracted = root / "MNIST" / "raw" / TRAIN_IMAGES
    data = bytearray(extracted.read_bytes())
    data[1_000_000:1_000_000 + 2**20] = bytes(2**20)  # 1 MiB of zeros
    extracted.write_bytes(bytes(data))
    with pytest.warns(UserWarning, match=f"{TRAIN_IMAGES} is damaged.*extracting it again"):
        repaired = load_mnist(root, download=False)
    # the official training mean over all 60,000 images is 0.1307; the split's is the same
    assert abs(float(repaired.train.images.mean()) - 0.1306) < 5e-4
    assert extracted.read_bytes() != bytes(data)


def test_a_truncated_extracted_file_is_caught_and_repaired(root):
    extracted = root / "MNIST" / "raw" / TRAIN_IMAGES
    extracted.write_bytes(extracted.read_bytes()[:12345])
    with pytest.warns(UserWarning, match="is damaged"):
        data = load_mnist(root, download=False)
    assert len(data.train) == 50_000


def test_a_damaged_gz_is_an_error_naming_the_file_and_the_fix(root):
    raw = root / "MNIST" / "raw"
    (raw / TRAIN_IMAGES).unlink()
    gz = raw / f"{TRAIN_IMAGES}.gz"
    data = bytearray(gz.read_bytes())
    data[5000] ^= 0xFF
    gz.write_bytes(bytes(data))
    with pytest.raises(MNISTDataError, match=f"{TRAIN_IMAGES}.gz is damaged.*Delete it"):
        load_mnist(root, download=False)


def test_a_damaged_extracted_file_without_its_gz_is_an_error(root):
    raw = root / "MNIST" / "raw"
    (raw / f"{TRAIN_IMAGES}.gz").unlink()
    (raw / TRAIN_IMAGES).write_bytes(b"\x00" * 100)
    with pytest.raises(MNISTDataError, match=f"{TRAIN_IMAGES} is damaged.*not there"):
        load_mnist(root, download=False)
