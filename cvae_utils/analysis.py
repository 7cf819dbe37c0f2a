"""What some figures show, computed: nearest neighbours on the input pixels and completions of test
images by the baseline and the CVAE.

Chapter "The problem" finds, for an input, the training digits whose input quadrants look most
alike (`nearest_neighbours`) and the inputs whose neighbours disagree most about the digit
(`most_ambiguous`); `cvae_utils.plot_data.plot_ambiguity` draws them. Chapters "The baseline",
"The CVAE in Pyro" and "Evaluation" complete a few test images with the baseline
(`baseline_completions`) and with CVAE samples drawn from the prior (`completions`);
`cvae_utils.plot_training.plot_completions` draws them. `numpy_images` reads an image batch in
any of the package's shapes, for these functions and the figures.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .data import IMAGE_SIDE, NUM_PIXELS, input_mask
from .networks import device_of

__all__ = ["numpy_images", "nearest_neighbours", "most_ambiguous", "Completions", "completions",
           "baseline_completions"]


def numpy_images(images) -> np.ndarray:
    """Any image batch as a float numpy array (N, 28, 28)."""
    if isinstance(images, torch.Tensor):
        images = images.detach().cpu().float().numpy()
    images = np.asarray(images, dtype=np.float32)
    if images.ndim == 1:
        images = images[None]
    if images.shape[-1] == NUM_PIXELS:
        images = images.reshape(*images.shape[:-1], IMAGE_SIDE, IMAGE_SIDE)
    if images.ndim != 3 or images.shape[1:] != (IMAGE_SIDE, IMAGE_SIDE):
        raise ValueError(f"expected images (N, 784) or (N, 28, 28), got {images.shape}")
    return images


# ------------------------------------------------------------------------------------------------
# Nearest neighbours on the input pixels (chapter "The problem")
# ------------------------------------------------------------------------------------------------

def _input_distances(query_images, pool_images, num_quadrants: int) -> torch.Tensor:
    """Squared distances between queries and pool images on the input pixels, (Q, P)."""
    mask = input_mask(num_quadrants).reshape(-1)
    queries = torch.as_tensor(numpy_images(query_images)).reshape(-1, NUM_PIXELS)[:, mask]
    pool = torch.as_tensor(numpy_images(pool_images)).reshape(-1, NUM_PIXELS)[:, mask]
    return torch.cdist(queries, pool) ** 2


def nearest_neighbours(query_images, pool_images, num_quadrants: int = 1,
                       num_neighbours: int = 7) -> torch.Tensor:
    """Indices (Q, num_neighbours) of the pool images closest to each query on the input
    pixels of ``num_quadrants`` quadrants, nearest first."""
    distances = _input_distances(query_images, pool_images, num_quadrants)    # (Q, P)
    return distances.topk(num_neighbours, largest=False, sorted=True).indices


def most_ambiguous(query_images, pool_images, pool_labels, num_quadrants: int = 1,
                   num_neighbours: int = 7, count: int = 3) -> list[int]:
    """Indices of the ``count`` queries whose nearest pool digits (on the input pixels) carry
    the most different labels; ties go to the earlier query."""
    nearest = nearest_neighbours(query_images, pool_images, num_quadrants, num_neighbours)
    labels = torch.as_tensor(np.asarray(pool_labels))[nearest]         # (Q, neighbours)
    distinct = [len(set(row.tolist())) for row in labels]
    return sorted(range(len(distinct)), key=lambda i: (-distinct[i], i))[:count]


# ------------------------------------------------------------------------------------------------
# Completions of test images (chapters "The baseline", "The CVAE in Pyro", "Evaluation")
# ------------------------------------------------------------------------------------------------

@dataclass
class Completions:
    """A few test images, the baseline's guess and CVAE samples, ready for `plot_completions`.

    ``x``, ``y``: (n, 784) with -1 where not theirs; ``baseline``: (n, 784) probabilities;
    ``samples``: (S, n, 784) probabilities from p(y|x, z) with z drawn from the prior.
    """

    x: np.ndarray
    y: np.ndarray
    baseline: np.ndarray
    samples: np.ndarray
    num_quadrants: int


@torch.no_grad()
def completions(cvae, data, num_images: int = 6, num_samples: int = 10,
                seed: int = 0) -> Completions:
    """Completions of the first ``num_images`` of ``data`` (a QuadrantData) by NN and CVAE."""
    device = device_of(cvae)
    x, y = data.x[:num_images].to(device), data.y[:num_images].to(device)
    torch.manual_seed(seed)  # the samples drawn from the prior are the same at every build
    samples = cvae.sample(x, num_samples)                               # (S, n, 784)
    return Completions(x.cpu().numpy(), y.cpu().numpy(), cvae.baseline(x).cpu().numpy(),
                       samples.cpu().numpy(), data.num_quadrants)


@torch.no_grad()
def baseline_completions(baseline, data, num_images: int = 6) -> Completions:
    """The baseline's guesses for the first ``num_images`` of ``data``, with no CVAE samples."""
    device = device_of(baseline)
    x, y = data.x[:num_images].to(device), data.y[:num_images].to(device)
    guess = baseline(x).cpu().numpy()
    return Completions(x.cpu().numpy(), y.cpu().numpy(), guess,
                       np.empty((0, *guess.shape), dtype=guess.dtype), data.num_quadrants)
