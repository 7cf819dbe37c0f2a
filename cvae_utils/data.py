"""MNIST as whole tensors, the fixed splits, quadrant masking and batching (chapter "Data and masking").

Everything here works on whole-dataset tensors: images are one float tensor in [0, 1] of shape
(N, 28, 28), masking is a `torch.where` with a (28, 28) boolean mask, and batches are slices of a
tensor under a seeded per-epoch shuffle. There are no per-sample transforms and no DataLoader.

The data root is ``CVAE_DATA_DIR`` if set, else ``~/.cache/cvae_utils/data``. torchvision's
`MNIST` looks for the four official files in ``<root>/MNIST/raw/``; when the ``.gz`` files are there
it checks their MD5 sums and extracts them without touching the network.
"""
from __future__ import annotations

import numbers
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch

__all__ = [
    "MNIST_FILES", "MNISTNotFoundError", "Split", "MNISTData", "QuadrantData", "data_root",
    "load_mnist", "check_num_quadrants", "input_mask", "mask_quadrants", "make_quadrant_data",
    "iterate_minibatches", "VALIDATION_SEED",
]

MNIST_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)
NUM_VAL = 10_000        # validation images held out of the 60,000 training images
VALIDATION_SEED = 2015  # fixes which 10,000 images are validation, whatever the config's seed
IMAGE_SIZE = 28
HALF = IMAGE_SIZE // 2


class MNISTNotFoundError(FileNotFoundError):
    """The MNIST files are not in the data root and could not be downloaded."""


def data_root(root: str | os.PathLike | None = None) -> Path:
    """The data root: the argument, else ``CVAE_DATA_DIR``, else ``~/.cache/cvae_utils/data``."""
    if root is None:
        root = os.environ.get("CVAE_DATA_DIR") or Path.home() / ".cache" / "cvae_utils" / "data"
    return Path(root).expanduser()


@dataclass
class Split:
    """One split of MNIST: ``images`` (N, 28, 28) float32 in [0, 1] and ``labels`` (N,) int64."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return self.images.shape[0]

    def head(self, n: int) -> "Split":
        """The first ``n`` images (all of them if ``n`` is larger)."""
        return Split(self.images[:n], self.labels[:n])

    def to(self, device) -> "Split":
        return Split(self.images.to(device), self.labels.to(device))


@dataclass
class MNISTData:
    """The three splits: 50k ``train``, 10k ``val`` (early stopping only), 10k official ``test``."""

    train: Split
    val: Split
    test: Split

    def subset(self, budget) -> "MNISTData":
        """The first images of each split, as many as ``budget`` allows."""
        return MNISTData(self.train.head(budget.num_train), self.val.head(budget.num_val),
                         self.test.head(budget.num_test))


def _to_float(images: torch.Tensor) -> torch.Tensor:
    return images.to(torch.float32).div_(255.0)  # (N, 28, 28) in [0, 1]


def load_mnist(root: str | os.PathLike | None = None, download: bool = True) -> MNISTData:
    """Load MNIST from the data root and split it into train / validation / test.

    ``download=False`` forbids any network access: the files must already be in the root.

    The 60,000 official training images are split by a permutation with a fixed seed
    (`VALIDATION_SEED`) into 50,000 for training and 10,000 for validation; the official 10,000
    test images are kept whole for the final numbers. Raises `MNISTNotFoundError`, naming the
    directory and the four files, when they are absent and cannot be downloaded.
    """
    from torchvision.datasets import MNIST  # imported here: torchvision is slow to import

    root = data_root(root)
    raw = root / "MNIST" / "raw"
    missing = [name for name in MNIST_FILES
               if not (raw / name).exists() and not (raw / name[:-3]).exists()]
    how_to_fix = (f"Put the four official files {', '.join(MNIST_FILES)} in {raw}, or set "
                  f"CVAE_DATA_DIR to a directory whose MNIST/raw/ holds them, or connect to the "
                  f"network so torchvision can download them (MD5-checked).")
    if missing and not download:
        raise MNISTNotFoundError(f"MNIST files missing in {raw}: {', '.join(missing)}.\n"
                                 f"{how_to_fix}")
    try:
        # with the .gz files present, torchvision checks their MD5 sums and extracts them
        # without any network access; only missing files are downloaded
        train = MNIST(str(root), train=True, download=True)
        test = MNIST(str(root), train=False, download=True)
    except Exception as error:  # torchvision raises RuntimeError, URLError, OSError, ...
        raise MNISTNotFoundError(
            f"could not load MNIST from {raw} ({type(error).__name__}: {error}).\n"
            f"Missing there: {', '.join(missing) or 'none (a file may be corrupt)'}.\n{how_to_fix}"
        ) from error
    images, labels = train.data, train.targets.to(torch.int64)  # uint8: index before converting
    order = torch.randperm(images.shape[0], generator=torch.Generator().manual_seed(VALIDATION_SEED))
    train_idx, val_idx = order[:-NUM_VAL], order[-NUM_VAL:]
    return MNISTData(
        train=Split(_to_float(images[train_idx]), labels[train_idx]),
        val=Split(_to_float(images[val_idx]), labels[val_idx]),
        test=Split(_to_float(test.data), test.targets.to(torch.int64)),
    )


def check_num_quadrants(num_quadrants) -> int:
    """Return ``num_quadrants`` as an int if it is 1, 2 or 3; raise ValueError otherwise."""
    if (isinstance(num_quadrants, bool) or not isinstance(num_quadrants, numbers.Integral)
            or int(num_quadrants) not in (1, 2, 3)):
        raise ValueError(
            f"the number of input quadrants must be the int 1, 2 or 3, got {num_quadrants!r}"
        )
    return int(num_quadrants)


def input_mask(num_quadrants: int, device=None) -> torch.Tensor:
    """(28, 28) boolean mask of the input pixels x for k input quadrants.

    1 quadrant: bottom-left; 2 quadrants: the left half; 3 quadrants: all but bottom-right.
    The output pixels y are the complement.
    """
    k = check_num_quadrants(num_quadrants)
    mask = torch.zeros(IMAGE_SIZE, IMAGE_SIZE, dtype=torch.bool, device=device)
    mask[HALF:, :HALF] = True          # bottom-left, always an input
    if k >= 2:
        mask[:HALF, :HALF] = True      # top-left
    if k == 3:
        mask[:HALF, HALF:] = True      # top-right
    return mask


def mask_quadrants(images: torch.Tensor, num_quadrants: int):
    """Split images into input x and output y for k input quadrants.

    ``images``: (N, 28, 28) or (N, 784) in [0, 1]. Returns ``(x, y, x_mask, y_mask)``: x holds the
    input pixels and -1 elsewhere, y the output pixels and -1 elsewhere (same shape as
    ``images``); the masks are boolean, shaped like one image, and partition it.
    """
    if images.dim() != 3 and images.dim() != 2:
        raise ValueError(f"images must be (N, 28, 28) or (N, 784), got shape {tuple(images.shape)}")
    x_mask = input_mask(num_quadrants, device=images.device)
    if images.shape[1:] == (IMAGE_SIZE * IMAGE_SIZE,):
        x_mask = x_mask.reshape(-1)
    elif images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE):
        raise ValueError(f"images must be (N, 28, 28) or (N, 784), got shape {tuple(images.shape)}")
    y_mask = ~x_mask
    missing = torch.tensor(-1.0, dtype=images.dtype, device=images.device)
    x = torch.where(x_mask, images, missing)
    y = torch.where(y_mask, images, missing)
    return x, y, x_mask, y_mask


@dataclass
class QuadrantData:
    """One split masked for k input quadrants, flattened for the networks.

    ``x`` and ``y``: (N, 784), -1 where a pixel is not part of them; ``labels``: (N,) digits.
    """

    x: torch.Tensor
    y: torch.Tensor
    labels: torch.Tensor
    num_quadrants: int

    def __len__(self) -> int:
        return self.x.shape[0]

    def to(self, device) -> "QuadrantData":
        """The same data with x and y on ``device``."""
        return QuadrantData(self.x.to(device), self.y.to(device), self.labels,
                            self.num_quadrants)


def make_quadrant_data(split: Split, num_quadrants: int) -> QuadrantData:
    """Mask a whole split at once (one vectorized `torch.where`)."""
    flat = split.images.reshape(len(split), -1)  # (N, 784)
    x, y, _, _ = mask_quadrants(flat, num_quadrants)
    return QuadrantData(x, y, split.labels, check_num_quadrants(num_quadrants))


def iterate_minibatches(num_items: int, batch_size: int, generator: torch.Generator | None = None,
                        shuffle: bool = True) -> Iterator[torch.Tensor]:
    """Index tensors of the minibatches of one epoch: a seeded permutation cut into slices.

    The last batch is shorter when ``batch_size`` does not divide ``num_items``; callers weight
    per-image losses by batch size so that it counts for what it holds.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    order = (torch.randperm(num_items, generator=generator) if shuffle
             else torch.arange(num_items))
    yield from order.split(batch_size)
