"""The figures of chapters "Data and masking" and "The problem", each returning a `BookFigure`.

Chapter "Data and masking" draws `plot_digits`, `plot_quadrant_masks` and `plot_quadrant_split`;
chapter "The problem" `plot_ambiguity`, the nearest neighbours of an input on its input pixels
(found by `cvae_utils.analysis.nearest_neighbours`). Shared machinery: `cvae_utils.figures`.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np
import torch
from matplotlib.figure import Figure

from .analysis import nearest_neighbours, numpy_images
from .data import HALF, IMAGE_SIDE, input_mask, quadrant_label
from .figures import image_cmap, new_figure, quadrant_boundaries, show_tiles, with_input

__all__ = ["plot_digits", "plot_quadrant_masks", "plot_quadrant_split", "plot_ambiguity"]


# ------------------------------------------------------------------------------------------------
# Chapter "Data and masking"
# ------------------------------------------------------------------------------------------------

def plot_digits(images, labels=None, ncols: int = 10, width: float = 7.0) -> Figure:
    """A grid of digits, each titled with its label if labels are given."""
    images = numpy_images(images)
    nrows = -(-len(images) // ncols)
    fig = new_figure((width, width * nrows / ncols + 0.3))
    axes = fig.subplots(nrows, ncols, squeeze=False)
    cmap = image_cmap()
    for i, ax in enumerate(axes.flat):
        ax.set_axis_off()
        if i < len(images):
            ax.imshow(images[i], cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
            if labels is not None:
                ax.set_title(str(int(labels[i])), fontsize=9, pad=2)
    return fig


def plot_quadrant_masks(masks: Mapping[int, object]) -> Figure:
    """The input region x (dark) and output region y (light) of each quadrant count.

    ``masks``: {k: (28, 28) boolean input mask}, e.g. ``{k: input_mask(k) for k in (1, 2, 3)}``.
    """
    fig = new_figure((2.4 * len(masks), 2.6))
    axes = fig.subplots(1, len(masks), squeeze=False)[0]
    for ax, (k, mask) in zip(axes, masks.items()):
        mask = np.asarray(mask.cpu() if isinstance(mask, torch.Tensor) else mask, dtype=bool)
        ax.imshow(np.where(mask, 0.75, 0.1), cmap="Greys", vmin=0, vmax=1)
        for r0 in (0, HALF):
            for c0 in (0, HALF):
                inside = mask[r0 + HALF // 2, c0 + HALF // 2]
                ax.text(c0 + HALF / 2 - 0.5, r0 + HALF / 2 - 0.5, "x" if inside else "y",
                        ha="center", va="center", fontsize=16, style="italic",
                        color="white" if inside else "black")
        ax.axhline(HALF - 0.5, color="grey", lw=0.8)
        ax.axvline(HALF - 0.5, color="grey", lw=0.8)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(quadrant_label(k, "input"), fontsize=10)
    return fig


def plot_quadrant_split(pairs: Mapping[int, tuple], num_images: int = 5) -> Figure:
    """For each quadrant count k, the input x and the output y of a few digits.

    ``pairs``: {k: (x, y)} with x and y shaped (N, 784) and -1 where a pixel is not theirs.
    One axes per k; columns alternate x and y of the same digit.
    """
    fig = new_figure((7.0, 0.8 * len(pairs) + 0.3))
    axes = fig.subplots(len(pairs), 1, squeeze=False)[:, 0]
    for ax, (k, (x, y)) in zip(axes, pairs.items()):
        x, y = numpy_images(x)[:num_images], numpy_images(y)[:num_images]
        # x0 y0 x1 y1 ...
        interleaved = np.stack([x, y], axis=1).reshape(-1, IMAGE_SIDE, IMAGE_SIDE)
        show_tiles(ax, interleaved, 1, 2 * len(x),
                    col_labels=["x", "y"] * len(x) if ax is axes[0] else None,
                    row_labels=[f"k = {k}"])
    return fig


# ------------------------------------------------------------------------------------------------
# Chapter "The problem"
# ------------------------------------------------------------------------------------------------

def plot_ambiguity(query_images, pool_images, pool_labels, num_quadrants: int = 1,
                   num_neighbours: int = 7, show_mean: bool = True) -> Figure:
    """Digits from ``pool`` whose input quadrants look most like each query's.

    For every query (row) the first tile is its input x; the next tiles are the
    ``num_neighbours`` pool images with the smallest squared distance on the input pixels,
    shown whole and titled with their labels: many different completions fit the same input.
    With ``show_mean`` a last tile shows the input completed by the pixel-wise mean of those
    neighbours, the blur that a single best guess under squared or cross-entropy loss tends to.
    """
    queries, pool = numpy_images(query_images), numpy_images(pool_images)
    labels = np.asarray(pool_labels.cpu() if isinstance(pool_labels, torch.Tensor) else pool_labels)
    mask = input_mask(num_quadrants).numpy()
    neighbours = nearest_neighbours(queries, pool, num_quadrants, num_neighbours).numpy()
    ncols = num_neighbours + 1 + int(show_mean)
    fig = new_figure((1.0 * ncols + 0.2, 1.15 * len(queries) + 0.2))
    axes = fig.subplots(len(queries), ncols, squeeze=False)
    cmap = image_cmap()
    for row, query, nearest in zip(axes, queries, neighbours):
        x = np.where(mask, query, -1.0)
        row[0].imshow(x, cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
        row[0].set_title("input x", fontsize=8, pad=2)
        for ax, j in zip(row[1:], nearest):
            ax.imshow(pool[j], cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
            ax.set_title(f"a {labels[j]}", fontsize=8, pad=2)
        if show_mean:
            row[-1].imshow(with_input(x, pool[nearest].mean(axis=0)), cmap=cmap, vmin=0, vmax=1,
                           interpolation="nearest")
            row[-1].set_title("their mean", fontsize=8, pad=2)
        for ax in row:
            ax.set_xticks([])
            ax.set_yticks([])
        for ax in row[1:]:
            quadrant_boundaries(ax, num_quadrants, 1, 1)
    return fig
