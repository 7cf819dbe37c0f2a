"""What every figure of the book shares: `BookFigure`, the colours, and images drawn as tiles.

The figures themselves live with the chapters that draw them: `cvae_utils.plot_data` (chapters
"Data and masking" and "The problem"), `cvae_utils.plot_training` ("The baseline", "The CVAE in
Pyro", "Training, animated"), `cvae_utils.plot_maths` ("Conditional generative models") and
`cvae_utils.plot_results` ("Evaluation", "Variants of the model", "Beyond the table"). Each
function draws one figure and returns it; chapters call exactly one per figure cell, so the
chapters stay thin and every figure is tested (in ``tests/test_plotting.py`` and beside the
results it draws).

Images are drawn as one tiled array per axes: pixels in [0, 1] in grey (ink is dark), missing
pixels (-1) in a pale blue, and padding between tiles in white. Input tensors may be torch tensors
or numpy arrays, flattened (N, 784) or square (N, 28, 28) (see
`cvae_utils.analysis.numpy_images`). Figures are `BookFigure`s, kept out of pyplot's registry,
which Jupyter displays as PNG.
"""
from __future__ import annotations

import io
from typing import Sequence

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure

from .analysis import numpy_images
from .data import HALF, IMAGE_SIDE

__all__ = ["MISSING_COLOR", "PAD_COLOR", "BOUNDARY_COLOR", "TRAIN_COLOR", "VAL_COLOR",
           "BookFigure", "new_figure", "figure_to_array", "image_cmap", "tile_images",
           "show_tiles", "quadrant_boundaries", "with_input"]

MISSING_COLOR = "#c9d9ee"  # pixels that are not part of a tensor (the -1 entries)
PAD_COLOR = "white"        # the gaps between tiles
BOUNDARY_COLOR = "#d95f02"  # the line between input and output quadrants
TRAIN_COLOR, VAL_COLOR = "#1b9e77", "#7570b3"


def image_cmap():
    # -1 is below vmin=0: a missing pixel; NaN: the padding between tiles
    return matplotlib.colormaps["gray_r"].with_extremes(under=MISSING_COLOR, bad=PAD_COLOR)


def tile_images(images, nrows: int, ncols: int, pad: int = 2) -> np.ndarray:
    """Arrange (nrows * ncols) images row by row into one array, NaN between tiles."""
    images = numpy_images(images)
    if len(images) > nrows * ncols:
        raise ValueError(f"{len(images)} images do not fit in {nrows} x {ncols} tiles")
    step = IMAGE_SIDE + pad
    canvas = np.full((nrows * step - pad, ncols * step - pad), np.nan, dtype=np.float32)
    for i, image in enumerate(images):
        r, c = divmod(i, ncols)
        canvas[r * step:r * step + IMAGE_SIDE, c * step:c * step + IMAGE_SIDE] = image
    return canvas


def show_tiles(ax, images, nrows: int, ncols: int, col_labels: Sequence[str] | None = None,
                row_labels: Sequence[str] | None = None, pad: int = 2) -> None:
    """Draw a tiled grid of images on ``ax`` with optional column and row labels."""
    ax.imshow(tile_images(images, nrows, ncols, pad), cmap=image_cmap(), vmin=0.0, vmax=1.0,
              interpolation="nearest")
    step = IMAGE_SIDE + pad
    centres_c = [c * step + IMAGE_SIDE / 2 - 0.5 for c in range(ncols)]
    centres_r = [r * step + IMAGE_SIDE / 2 - 0.5 for r in range(nrows)]
    ax.set_xticks(centres_c if col_labels else [])
    ax.set_yticks(centres_r if row_labels else [])
    if col_labels:
        ax.set_xticklabels(col_labels, fontsize=8)
        ax.xaxis.tick_top()
    if row_labels:
        ax.set_yticklabels(row_labels, fontsize=8)
    ax.tick_params(length=0, pad=2)
    for spine in ax.spines.values():
        spine.set_visible(False)


def quadrant_boundaries(ax, num_quadrants: int, nrows: int, ncols: int, pad: int = 2,
                         columns: Sequence[int] | None = None) -> None:
    """Outline the input region of k quadrants on every tile of the chosen columns."""
    step = IMAGE_SIDE + pad
    columns = range(ncols) if columns is None else columns
    lo, mid, hi = -0.5, HALF - 0.5, IMAGE_SIDE - 0.5
    # the border between input and output pixels, in tile coordinates (x right, y down)
    border = {1: [[(lo, mid), (mid, mid)], [(mid, mid), (mid, hi)]],
              2: [[(mid, lo), (mid, hi)]],
              3: [[(mid, mid), (hi, mid)], [(mid, mid), (mid, hi)]]}[num_quadrants]
    segments = []
    for r in range(nrows):
        for c in columns:
            for (x0, y0), (x1, y1) in border:
                segments.append([(c * step + x0, r * step + y0), (c * step + x1, r * step + y1)])
    ax.add_collection(LineCollection(segments, colors=BOUNDARY_COLOR, linewidths=0.8))


def figure_to_array(fig: Figure) -> np.ndarray:
    """Render a figure to an RGB array (height, width, 3) uint8."""
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()


class BookFigure(Figure):
    """A matplotlib Figure that Jupyter displays as a PNG by itself, whatever the backend.

    The book's figures live outside pyplot's registry (no global state, no figure shown twice,
    memory freed with the object), so they carry their own rich display. The PNG is always
    opaque, on the figure's face colour made fully opaque (white unless a figure chose another),
    whatever ``savefig.transparent`` or a style sheet says: on the theme's dark background a
    transparent figure would show black text and dark ink on near-black.
    """

    def _repr_png_(self) -> bytes:
        buffer = io.BytesIO()
        face = matplotlib.colors.to_rgba(self.get_facecolor())
        opaque = face[:3] + (1.0,) if face[3] > 0 else (1.0, 1.0, 1.0, 1.0)
        self.savefig(buffer, format="png", transparent=False, facecolor=opaque)
        return buffer.getvalue()


def new_figure(figsize, dpi: int = 110) -> Figure:
    """A `BookFigure` with an Agg canvas and constrained layout."""
    fig = BookFigure(figsize=figsize, dpi=dpi, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def with_input(x: np.ndarray, prediction: np.ndarray) -> np.ndarray:
    """Input pixels where x has them, the prediction elsewhere: whole images (..., 28, 28)."""
    return np.where(x >= 0, x, prediction)
