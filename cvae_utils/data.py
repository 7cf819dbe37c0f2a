"""MNIST as whole tensors, the fixed splits, quadrant masking and batching (chapter "Data and masking").

Everything here works on whole-dataset tensors: images are one float tensor in [0, 1] of shape
(N, 28, 28), masking is a `torch.where` with a (28, 28) boolean mask, and batches are slices of a
tensor under a seeded per-epoch shuffle. There are no per-sample transforms and no DataLoader.

The data root is ``CVAE_DATA_DIR`` if set, else ``~/.cache/cvae_utils/data``; the four official
files live in ``<root>/MNIST/raw/``. Every load checks what it reads: each extracted file against
the SHA-256 of the official content (`MNIST_SHA256`), each ``.gz`` against the official MD5
(`MNIST_MD5`) before it is extracted. A damaged extracted file is extracted again from its
verified ``.gz``; a damaged or missing ``.gz`` is an error that names the file and the fix. Only
missing files are downloaded (by torchvision, MD5-checked).
"""
from __future__ import annotations

import gzip
import hashlib
import numbers
import os
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch

from . import settings
from .config import check_int
from .files import write_atomically

__all__ = [
    "MNIST_FILES", "MNISTNotFoundError", "Split", "MNISTData", "QuadrantData", "data_root",
    "load_mnist", "check_num_quadrants", "input_mask", "mask_quadrants", "make_quadrant_data",
    "iterate_minibatches", "VALIDATION_SEED", "MNIST_MD5", "MNIST_SHA256", "MNISTDataError",
    "check_quadrant_data", "check_layout", "describe_layout", "IMAGE_SIDE", "NUM_PIXELS",
    "quadrant_label",
]

MNIST_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)
# the official checksums: MD5 of each .gz file (as torchvision lists them), SHA-256 of its content
MNIST_MD5 = {
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}
MNIST_SHA256 = {
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}
NUM_VAL = 10_000        # validation images held out of the 60,000 training images
VALIDATION_SEED = 2015  # fixes which 10,000 images are validation, whatever the config's seed
IMAGE_SIDE = 28                     # MNIST images are IMAGE_SIDE x IMAGE_SIDE pixels
NUM_PIXELS = IMAGE_SIDE * IMAGE_SIDE  # 784, the length of a flattened image
HALF = IMAGE_SIDE // 2              # the side of a quadrant


class MNISTNotFoundError(FileNotFoundError):
    """The MNIST files are not in the data root and could not be downloaded."""


class MNISTDataError(ValueError):
    """An MNIST file in the data root is damaged (its checksum is not the official one)."""


def data_root(root: str | os.PathLike | None = None) -> Path:
    """The data root: the argument, else ``CVAE_DATA_DIR``, else ``~/.cache/cvae_utils/data``."""
    if root is None:
        root = settings.data_dir()
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


def _digest(path: Path, algorithm: str) -> str:
    digest = hashlib.new(algorithm)
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def _extract(gz: Path, target: Path) -> None:
    """Decompress a verified ``.gz`` next to ``target``, then rename it into place."""
    def write(tmp: Path) -> None:
        with gzip.open(gz, "rb") as source, open(tmp, "wb") as out:
            shutil.copyfileobj(source, out, 1 << 22)

    write_atomically(target, write)


def _verified_raw(raw: Path, name: str, how_to_fix: str) -> Path:
    """The extracted file ``name`` in ``raw``, checked against `MNIST_SHA256` (extracted again
    from its ``.gz``, itself checked against `MNIST_MD5`, when missing or damaged)."""
    target, gz = raw / name, raw / f"{name}.gz"
    if target.exists():
        if _digest(target, "sha256") == MNIST_SHA256[name]:
            return target
        if not gz.exists():
            raise MNISTDataError(f"{target} is damaged (its SHA-256 is not the official one) and "
                                 f"{gz.name} is not there to extract it again. Delete {target} "
                                 f"and put the official {gz.name} in {raw}. {how_to_fix}")
        warnings.warn(f"{target} is damaged (its SHA-256 is not the official one): extracting it "
                      f"again from {gz.name}", stacklevel=3)
    if _digest(gz, "md5") != MNIST_MD5[gz.name]:
        raise MNISTDataError(f"{gz} is damaged (its MD5 is not the official "
                             f"{MNIST_MD5[gz.name]}). Delete it and put the official file there "
                             f"again, or delete it and let torchvision download it. {how_to_fix}")
    _extract(gz, target)
    if _digest(target, "sha256") != MNIST_SHA256[name]:  # a verified .gz cannot give this
        raise MNISTDataError(f"{target} extracted from {gz.name} is not the official content; "
                             f"delete both and download them again. {how_to_fix}")
    return target


def _read_idx(path: Path) -> torch.Tensor:
    """An IDX file of unsigned bytes (MNIST's format) as a uint8 tensor of its shape."""
    import numpy as np

    data = path.read_bytes()
    if len(data) < 4 or data[:2] != b"\x00\x00" or data[2] != 0x08:
        raise MNISTDataError(f"{path} is not an IDX file of unsigned bytes")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    array = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if array.size != int(np.prod(shape)):
        raise MNISTDataError(f"{path} holds {array.size} values, its header says {shape}")
    return torch.from_numpy(array.reshape(shape).copy())


def load_mnist(root: str | os.PathLike | None = None, download: bool = True) -> MNISTData:
    """Load MNIST from the data root and split it into train / validation / test.

    ``download=False`` forbids any network access: the files must already be in the root.
    Every file read is checked against the official checksums (see the module docstring).

    The 60,000 official training images are split by a permutation with a fixed seed
    (`VALIDATION_SEED`) into 50,000 for training and 10,000 for validation; the official 10,000
    test images are kept whole for the final numbers. Raises `MNISTNotFoundError`, naming the
    directory and the four files, when they are absent and cannot be downloaded, and
    `MNISTDataError`, naming the file, when one is damaged.
    """
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
    if missing:
        from torchvision.datasets import MNIST  # imported here: torchvision is slow to import

        try:  # downloads the missing files only, each checked against its MD5
            MNIST(str(root), train=True, download=True)
            MNIST(str(root), train=False, download=True)
        except Exception as error:  # torchvision raises RuntimeError, URLError, OSError, ...
            raise MNISTNotFoundError(
                f"could not download MNIST into {raw} ({type(error).__name__}: {error}).\n"
                f"Missing there: {', '.join(missing)}.\n{how_to_fix}") from error
    files = {name[:-3]: _read_idx(_verified_raw(raw, name[:-3], how_to_fix))
             for name in MNIST_FILES}
    images = files["train-images-idx3-ubyte"]               # (60000, 28, 28) uint8
    labels = files["train-labels-idx1-ubyte"].to(torch.int64)
    order = torch.randperm(images.shape[0], generator=torch.Generator().manual_seed(VALIDATION_SEED))
    train_idx, val_idx = order[:-NUM_VAL], order[-NUM_VAL:]
    return MNISTData(
        train=Split(_to_float(images[train_idx]), labels[train_idx]),
        val=Split(_to_float(images[val_idx]), labels[val_idx]),
        test=Split(_to_float(files["t10k-images-idx3-ubyte"]),
                   files["t10k-labels-idx1-ubyte"].to(torch.int64)),
    )


def check_num_quadrants(num_quadrants) -> int:
    """Return ``num_quadrants`` as an int if it is 1, 2 or 3; raise ValueError otherwise."""
    return check_int("the number of input quadrants", num_quadrants, 1, 3,
                     rule="the int 1, 2 or 3")


def quadrant_label(num_quadrants: int, word: str = "") -> str:
    """The name of a quadrant count: "1 quadrant", "2 quadrants", "3 quadrants" (the columns of
    the tables); with ``word="input"``, "1 input quadrant" and so on (the figures' titles)."""
    k = check_num_quadrants(num_quadrants)
    return f"{k} {word + ' ' if word else ''}quadrant" + ("s" if k > 1 else "")


def input_mask(num_quadrants: int, device=None) -> torch.Tensor:
    """(28, 28) boolean mask of the input pixels x for k input quadrants.

    1 quadrant: bottom-left; 2 quadrants: the left half; 3 quadrants: all
    but bottom-right. The output pixels y are the complement.
    """
    k = check_num_quadrants(num_quadrants)
    mask = torch.zeros(IMAGE_SIDE, IMAGE_SIDE, dtype=torch.bool,
                       device=device)
    mask[HALF:, :HALF] = True          # bottom-left, always an input
    if k >= 2:
        mask[:HALF, :HALF] = True      # top-left
    if k == 3:
        mask[:HALF, HALF:] = True      # top-right
    return mask


def mask_quadrants(images: torch.Tensor, num_quadrants: int):
    """Split images into input x and output y for k input quadrants.

    ``images``: (N, 28, 28) or (N, 784) floats in [0, 1]. Returns
    ``(x, y, x_mask, y_mask)``: x holds the input pixels and -1 elsewhere,
    y the output pixels and -1 elsewhere (same shape as ``images``); the
    masks are boolean, shaped like one image, and partition it.
    """
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"images must be a torch.Tensor, got "
                        f"{type(images).__name__}; for a numpy array use "
                        f"torch.from_numpy(array).float() (divided by "
                        f"255 if it holds bytes)")
    if not images.is_floating_point():
        raise TypeError(f"images must hold floats in [0, 1], got dtype "
                        f"{images.dtype}; for bytes 0-255 use "
                        f"images.float() / 255")
    if images.dim() != 3 and images.dim() != 2:
        raise ValueError(f"images must be (N, 28, 28) or (N, 784), got "
                         f"shape {tuple(images.shape)}")
    x_mask = input_mask(num_quadrants, device=images.device)
    if images.shape[1:] == (NUM_PIXELS,):
        x_mask = x_mask.reshape(-1)
    elif images.shape[1:] != (IMAGE_SIDE, IMAGE_SIDE):
        raise ValueError(f"images must be (N, 28, 28) or (N, 784), got "
                         f"shape {tuple(images.shape)}")
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


def describe_layout(mask: torch.Tensor) -> str:
    """A layout in words: "the 2-quadrant layout", or "a layout of its own (392 input pixels)"."""
    mask = mask.reshape(-1).cpu()
    for k in (1, 2, 3):
        if torch.equal(mask, input_mask(k).reshape(-1)):
            return f"the {k}-quadrant layout"
    return f"a layout of its own ({int(mask.sum())} input pixels)"


def check_quadrant_data(x: torch.Tensor, y: torch.Tensor | None,
                        what: str = "data") -> torch.Tensor:
    """Check that x (and y) are masked images as the models read them; return the input mask.

    x and y: (N, 784) float32 tensors; every image of x holds values in [0, 1] on the same
    input pixels and -1 elsewhere, and y holds values in [0, 1] exactly on the other pixels.
    Returns that input mask, (784,) bool, so that callers can compare it with the layout a
    model was trained for. Raises a ValueError (TypeError for a wrong type) that says what is
    wrong and how to build the data.
    """
    how = "build x and y with cvae_utils.make_quadrant_data(split, k)"
    masks = {}
    for name, tensor in (("x", x), ("y", y)):
        if tensor is None:
            continue
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"{what}: {name} must be a torch.Tensor, got "
                            f"{type(tensor).__name__}; {how}")
        if tensor.dim() != 2 or tensor.shape[1] != NUM_PIXELS or len(tensor) == 0:
            raise ValueError(f"{what}: {name} must be (N, 784) with N >= 1, got "
                             f"{tuple(tensor.shape)}; {how}")
        if tensor.dtype != torch.float32:
            raise TypeError(f"{what}: {name} must be float32, got {tensor.dtype}; use "
                            f"{name}.float()")
        if not torch.isfinite(tensor).all():
            raise ValueError(f"{what}: {name} holds NaN or infinite values")
        present = tensor >= 0
        if not ((tensor == -1) | (present & (tensor <= 1))).all():
            raise ValueError(f"{what}: {name} must hold pixels in [0, 1] and -1 where absent, "
                             f"got values in [{tensor.min().item():g}, {tensor.max().item():g}]"
                             f" (images in 0-255 must be divided by 255)")
        if not (present == present[:1]).all():
            rows = (present != present[:1]).any(dim=1).nonzero().flatten()[:5].tolist()
            raise ValueError(f"{what}: the images of {name} do not all have the same pixels "
                             f"present (rows {rows} differ from row 0); {how}")
        masks[name] = present[0]
    if x is not None and y is not None:
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"{what}: x has {x.shape[0]} images, y {y.shape[0]}")
        if not torch.equal(masks["y"], ~masks["x"]):
            raise ValueError(f"{what}: the pixels present in y must be exactly those absent "
                             f"from x (are x and y swapped, or y empty?); {how}")
    return masks["x"] if x is not None else ~masks["y"]


def check_layout(model, mask: torch.Tensor, what: str = "the data") -> None:
    """Raise a ValueError when ``model`` records an input layout (``model.input_mask``, set
    by training and by the cache) other than ``mask``, naming both layouts and the fix."""
    trained = getattr(model, "input_mask", None)
    if trained is not None and not torch.equal(trained.reshape(-1).cpu(), mask.reshape(-1).cpu()):
        if torch.equal(trained.reshape(-1).cpu(), ~mask.reshape(-1).cpu()):
            raise ValueError(f"{what} has x and y swapped: its x holds the pixels the model "
                             f"predicts ({describe_layout(trained)} reads the others); pass "
                             f"x and y as make_quadrant_data builds them")
        raise ValueError(f"the model was trained for {describe_layout(trained)} and {what} "
                         f"has {describe_layout(mask)}: use the model trained for that layout "
                         f"(e.g. trained_cvae(k) for k input quadrants), or mask the data for "
                         f"the model's layout (make_quadrant_data(split, k))")


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
    check_int("batch_size", batch_size, 1, rule=">= 1")
    order = (torch.randperm(num_items, generator=generator) if shuffle
             else torch.arange(num_items))
    yield from order.split(batch_size)
