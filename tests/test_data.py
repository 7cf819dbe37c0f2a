"""Data loading, splits, quadrant masking and batching."""
from __future__ import annotations

import socket

import numpy as np
import pytest
import torch

from cvae_utils.data import (MNIST_FILES, MNISTNotFoundError, check_num_quadrants, input_mask,
                             iterate_minibatches, load_mnist, make_quadrant_data, mask_quadrants)

# official label counts (MNIST documentation): the 60k training and the 10k test images
TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def reference_input_mask(k: int) -> np.ndarray:
    """Quadrant layout written independently, quadrant by quadrant."""
    quadrants = {  # (rows, cols) of each quadrant
        "top_left": (slice(0, 14), slice(0, 14)), "top_right": (slice(0, 14), slice(14, 28)),
        "bottom_left": (slice(14, 28), slice(0, 14)), "bottom_right": (slice(14, 28), slice(14, 28)),
    }
    inputs = {1: ["bottom_left"], 2: ["bottom_left", "top_left"],
              3: ["bottom_left", "top_left", "top_right"]}[k]
    mask = np.zeros((28, 28), dtype=bool)
    for name in inputs:
        mask[quadrants[name]] = True
    return mask


@pytest.mark.parametrize("k", [1, 2, 3])
def test_masks_partition_every_image(k):
    images = torch.rand(50, 28, 28)
    x, y, x_mask, y_mask = mask_quadrants(images, k)
    np.testing.assert_array_equal(x_mask.numpy(), reference_input_mask(k))
    assert (x_mask ^ y_mask).all()                       # every pixel in exactly one of them
    assert x_mask.sum() == 196 * k and y_mask.sum() == 196 * (4 - k)
    assert torch.equal(torch.where(x_mask, x, y), images)  # together they rebuild the image
    assert (x[:, ~x_mask] == -1).all() and (y[:, ~y_mask] == -1).all()
    assert ((x >= 0) == x_mask).all() and ((y >= 0) == y_mask).all()


@pytest.mark.parametrize("k", [1, 2, 3])
def test_flat_and_square_masking_agree(k):
    images = torch.rand(7, 28, 28)
    x, y, _, _ = mask_quadrants(images, k)
    xf, yf, _, _ = mask_quadrants(images.reshape(7, 784), k)
    assert torch.equal(x.reshape(7, 784), xf) and torch.equal(y.reshape(7, 784), yf)


@pytest.mark.parametrize("bad", [0, 4, -1, "2", 1.5, 2.0, None, True])
def test_bad_quadrant_counts_raise(bad):
    with pytest.raises(ValueError, match="1, 2 or 3"):
        check_num_quadrants(bad)
    with pytest.raises(ValueError, match="1, 2 or 3"):
        mask_quadrants(torch.rand(2, 28, 28), bad)


def test_numpy_integers_are_accepted():
    assert check_num_quadrants(np.int64(2)) == 2
    assert input_mask(np.int32(3)).sum() == 588


def test_bad_image_shapes_raise():
    with pytest.raises(ValueError, match="28, 28"):
        mask_quadrants(torch.rand(2, 27, 28), 1)
    with pytest.raises(ValueError, match="28, 28"):
        mask_quadrants(torch.rand(28, 28, 1, 1), 1)


def test_minibatches_cover_each_index_once_and_are_seeded():
    batches = list(iterate_minibatches(1000, 128, torch.Generator().manual_seed(3)))
    assert [len(b) for b in batches] == [128] * 7 + [104]
    assert torch.equal(torch.cat(batches).sort().values, torch.arange(1000))
    again = list(iterate_minibatches(1000, 128, torch.Generator().manual_seed(3)))
    assert all(torch.equal(a, b) for a, b in zip(batches, again))
    other = torch.cat(list(iterate_minibatches(1000, 128, torch.Generator().manual_seed(4))))
    assert not torch.equal(torch.cat(batches), other)


def test_splits_have_the_documented_sizes_and_range(mnist):
    assert mnist.train.images.shape == (50_000, 28, 28)
    assert mnist.val.images.shape == (10_000, 28, 28)
    assert mnist.test.images.shape == (10_000, 28, 28)
    for split in (mnist.train, mnist.val, mnist.test):
        assert split.images.dtype == torch.float32
        assert split.images.min() == 0 and split.images.max() == 1
    counts = torch.bincount(torch.cat([mnist.train.labels, mnist.val.labels]), minlength=10)
    assert counts.tolist() == TRAIN_COUNTS        # train + val is exactly the official 60k
    assert torch.bincount(mnist.test.labels, minlength=10).tolist() == TEST_COUNTS


def test_validation_split_is_fixed_and_disjoint_from_training(mnist, mnist_root):
    again = load_mnist(mnist_root, download=False)
    assert torch.equal(again.val.images, mnist.val.images)
    # no validation image appears in the training split (compare exact pixel rows by hashing)
    train_keys = {row.numpy().tobytes() for row in (mnist.train.images * 255).to(torch.uint8)}
    val_bytes = [row.numpy().tobytes() for row in (mnist.val.images[:500] * 255).to(torch.uint8)]
    overlap = sum(key in train_keys for key in val_bytes)
    assert overlap <= 5  # MNIST holds a handful of exact duplicate images, no more


def test_quadrant_data_is_flat(mnist):
    data = make_quadrant_data(mnist.test.head(10), 2)
    assert data.x.shape == data.y.shape == (10, 784) and len(data) == 10
    assert ((data.x >= 0).sum(1) == 392).all()


def test_loads_from_local_root_with_network_disabled(mnist_raw, tmp_path, monkeypatch):
    root = tmp_path / "root"
    (root / "MNIST" / "raw").mkdir(parents=True)
    for name in MNIST_FILES:
        (root / "MNIST" / "raw" / name).write_bytes((mnist_raw / name).read_bytes())

    def no_network(*args, **kwargs):
        raise OSError("network disabled by the test")

    monkeypatch.setattr(socket, "socket", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setenv("CVAE_DATA_DIR", str(root))
    data = load_mnist()  # download=True, but the files are there: no network needed
    assert len(data.test) == 10_000


def test_missing_files_without_network_name_directory_and_files(tmp_path, monkeypatch):
    def no_network(*args, **kwargs):
        raise OSError("network disabled by the test")

    monkeypatch.setattr(socket, "socket", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    with pytest.raises(MNISTNotFoundError) as info:
        load_mnist(tmp_path / "empty")
    message = str(info.value)
    assert str(tmp_path / "empty" / "MNIST" / "raw") in message
    assert all(name in message for name in MNIST_FILES)
    assert "CVAE_DATA_DIR" in message
