"""The book's figures: one function per figure, each returning a matplotlib `Figure`.

Chapters call exactly one function per figure cell, so the chapters stay thin and every figure is
tested (in ``tests/test_plotting.py`` and beside the results it draws). Images are drawn as one tiled array per axes: pixels in [0, 1]
in grey (ink is dark), missing pixels (-1) in a pale blue, and padding between tiles in white.
Input tensors may be torch tensors or numpy arrays, flattened (N, 784) or square (N, 28, 28).
Figures are `BookFigure`s, kept out of pyplot's registry, which Jupyter displays as PNG.

Which chapter uses what: chapter "The problem" `most_ambiguous`, `plot_ambiguity`; chapter
"Data and masking" `plot_digits`, `plot_quadrant_masks`, `plot_quadrant_split`; chapters "The
baseline" and "The CVAE in Pyro" `plot_loss_curves`, `plot_completions`; chapter "Conditional
generative models" `plot_graphical_models`, `plot_estimator_intuition`; chapter "Training,
animated" `plot_training_frame` (drawn frame by frame by `cvae_utils.animation`); chapter
"Evaluation" `plot_completions`, `plot_cll_comparison`, `plot_estimator_convergence`; chapter
"Variants of the model" `plot_variants`; chapter "Beyond the table" `plot_identity_groups`,
`plot_completion`. The table figures pick rows by their keys (see `cvae_utils.tables`), never by
their labels.
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from typing import TYPE_CHECKING, Mapping, Sequence

import matplotlib
import matplotlib.lines
import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure
from matplotlib.patches import Circle, FancyArrowPatch, RegularPolygon
from matplotlib.ticker import MaxNLocator

from .config import check_int
from .networks import device_of

if TYPE_CHECKING:  # the results these figures draw
    from .complete import Completion
    from .diversity import AmbiguousInput

__all__ = [
    "MISSING_COLOR", "BookFigure", "figure_to_array", "tile_images",
    "plot_digits", "plot_quadrant_masks", "plot_quadrant_split",
    "nearest_neighbours", "most_ambiguous", "plot_ambiguity",
    "plot_loss_curves", "Completions", "completions", "baseline_completions", "plot_completions",
    "plot_training_frame", "update_training_frame", "plot_graphical_models", "plot_estimator_intuition",
    "ESTIMATOR_STYLE", "plot_cll_comparison", "plot_estimator_convergence", "plot_variants",
    "plot_identity_groups", "plot_completion",
]

SIDE = 28                  # MNIST images are SIDE x SIDE pixels
HALF = SIDE // 2
MISSING_COLOR = "#c9d9ee"  # pixels that are not part of a tensor (the -1 entries)
PAD_COLOR = "white"        # the gaps between tiles
BOUNDARY_COLOR = "#d95f02"  # the line between input and output quadrants
TRAIN_COLOR, VAL_COLOR = "#1b9e77", "#7570b3"


# ------------------------------------------------------------------------------------ helpers
def _numpy_images(images) -> np.ndarray:
    """Any image batch as a float numpy array (N, 28, 28)."""
    if isinstance(images, torch.Tensor):
        images = images.detach().cpu().float().numpy()
    images = np.asarray(images, dtype=np.float32)
    if images.ndim == 1:
        images = images[None]
    if images.shape[-1] == SIDE * SIDE:
        images = images.reshape(*images.shape[:-1], SIDE, SIDE)
    if images.ndim != 3 or images.shape[1:] != (SIDE, SIDE):
        raise ValueError(f"expected images (N, 784) or (N, 28, 28), got {images.shape}")
    return images


def _image_cmap():
    # -1 is below vmin=0: a missing pixel; NaN: the padding between tiles
    return matplotlib.colormaps["gray_r"].with_extremes(under=MISSING_COLOR, bad=PAD_COLOR)


def tile_images(images, nrows: int, ncols: int, pad: int = 2) -> np.ndarray:
    """Arrange (nrows * ncols) images row by row into one array, NaN between tiles."""
    images = _numpy_images(images)
    if len(images) > nrows * ncols:
        raise ValueError(f"{len(images)} images do not fit in {nrows} x {ncols} tiles")
    step = SIDE + pad
    canvas = np.full((nrows * step - pad, ncols * step - pad), np.nan, dtype=np.float32)
    for i, image in enumerate(images):
        r, c = divmod(i, ncols)
        canvas[r * step:r * step + SIDE, c * step:c * step + SIDE] = image
    return canvas


def _show_tiles(ax, images, nrows: int, ncols: int, col_labels: Sequence[str] | None = None,
                row_labels: Sequence[str] | None = None, pad: int = 2) -> None:
    """Draw a tiled grid of images on ``ax`` with optional column and row labels."""
    ax.imshow(tile_images(images, nrows, ncols, pad), cmap=_image_cmap(), vmin=0.0, vmax=1.0,
              interpolation="nearest")
    step = SIDE + pad
    centres_c = [c * step + SIDE / 2 - 0.5 for c in range(ncols)]
    centres_r = [r * step + SIDE / 2 - 0.5 for r in range(nrows)]
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


def _quadrant_boundaries(ax, num_quadrants: int, nrows: int, ncols: int, pad: int = 2,
                         columns: Sequence[int] | None = None) -> None:
    """Outline the input region of k quadrants on every tile of the chosen columns."""
    step = SIDE + pad
    columns = range(ncols) if columns is None else columns
    lo, mid, hi = -0.5, HALF - 0.5, SIDE - 0.5
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


def _new_figure(figsize, dpi: int = 110) -> Figure:
    """A `BookFigure` with an Agg canvas and constrained layout."""
    fig = BookFigure(figsize=figsize, dpi=dpi, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _complete(x: np.ndarray, prediction: np.ndarray) -> np.ndarray:
    """Input pixels where x has them, the prediction elsewhere: whole images (..., 28, 28)."""
    return np.where(x >= 0, x, prediction)


# ------------------------------------------------------------------ chapter "Data and masking"
def plot_digits(images, labels=None, ncols: int = 10, width: float = 7.0) -> Figure:
    """A grid of digits, each titled with its label if labels are given."""
    images = _numpy_images(images)
    nrows = -(-len(images) // ncols)
    fig = _new_figure((width, width * nrows / ncols + 0.3))
    axes = fig.subplots(nrows, ncols, squeeze=False)
    cmap = _image_cmap()
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
    fig = _new_figure((2.4 * len(masks), 2.6))
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
        ax.set_title(f"{k} input quadrant{'s' if k > 1 else ''}", fontsize=10)
    return fig


def plot_quadrant_split(pairs: Mapping[int, tuple], num_images: int = 5) -> Figure:
    """For each quadrant count k, the input x and the output y of a few digits.

    ``pairs``: {k: (x, y)} with x and y shaped (N, 784) and -1 where a pixel is not theirs.
    One axes per k; columns alternate x and y of the same digit.
    """
    fig = _new_figure((7.0, 0.8 * len(pairs) + 0.3))
    axes = fig.subplots(len(pairs), 1, squeeze=False)[:, 0]
    for ax, (k, (x, y)) in zip(axes, pairs.items()):
        x, y = _numpy_images(x)[:num_images], _numpy_images(y)[:num_images]
        interleaved = np.stack([x, y], axis=1).reshape(-1, SIDE, SIDE)  # x0 y0 x1 y1 ...
        _show_tiles(ax, interleaved, 1, 2 * len(x),
                    col_labels=["x", "y"] * len(x) if ax is axes[0] else None,
                    row_labels=[f"k = {k}"])
    return fig


# ------------------------------------------------------------------------- chapter "The problem"
def _input_distances(query_images, pool_images, num_quadrants: int) -> torch.Tensor:
    """Squared distances between queries and pool images on the input pixels, (Q, P)."""
    from .data import input_mask

    mask = input_mask(num_quadrants).reshape(-1)
    queries = torch.as_tensor(_numpy_images(query_images)).reshape(-1, SIDE * SIDE)[:, mask]
    pool = torch.as_tensor(_numpy_images(pool_images)).reshape(-1, SIDE * SIDE)[:, mask]
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


def plot_ambiguity(query_images, pool_images, pool_labels, num_quadrants: int = 1,
                   num_neighbours: int = 7, show_mean: bool = True) -> Figure:
    """Digits from ``pool`` whose input quadrants look most like each query's.

    For every query (row) the first tile is its input x; the next tiles are the
    ``num_neighbours`` pool images with the smallest squared distance on the input pixels,
    shown whole and titled with their labels: many different completions fit the same input.
    With ``show_mean`` a last tile shows the input completed by the pixel-wise mean of those
    neighbours, the blur that a single best guess under squared or cross-entropy loss tends to.
    """
    from .data import input_mask

    queries, pool = _numpy_images(query_images), _numpy_images(pool_images)
    labels = np.asarray(pool_labels.cpu() if isinstance(pool_labels, torch.Tensor) else pool_labels)
    mask = input_mask(num_quadrants).numpy()
    neighbours = nearest_neighbours(queries, pool, num_quadrants, num_neighbours).numpy()
    ncols = num_neighbours + 1 + int(show_mean)
    fig = _new_figure((1.0 * ncols + 0.2, 1.15 * len(queries) + 0.2))
    axes = fig.subplots(len(queries), ncols, squeeze=False)
    cmap = _image_cmap()
    for row, query, nearest in zip(axes, queries, neighbours):
        x = np.where(mask, query, -1.0)
        row[0].imshow(x, cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
        row[0].set_title("input x", fontsize=8, pad=2)
        for ax, j in zip(row[1:], nearest):
            ax.imshow(pool[j], cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
            ax.set_title(f"a {labels[j]}", fontsize=8, pad=2)
        if show_mean:
            row[-1].imshow(_complete(x, pool[nearest].mean(axis=0)), cmap=cmap, vmin=0, vmax=1,
                           interpolation="nearest")
            row[-1].set_title("their mean", fontsize=8, pad=2)
        for ax in row:
            ax.set_xticks([])
            ax.set_yticks([])
        for ax in row[1:]:
            _quadrant_boundaries(ax, num_quadrants, 1, 1)
    return fig


# ---------------------------------------------------- chapters "The baseline", "The CVAE in Pyro"
def _draw_losses(ax, history, epoch: int | None = None, ylabel: str = "nats per image") -> None:
    epochs = np.arange(1, len(history.train_loss) + 1)
    ax.plot(epochs, history.train_loss, "o-", color=TRAIN_COLOR, ms=3, lw=1.5, label="training")
    ax.plot(epochs, history.val_loss, "s-", color=VAL_COLOR, ms=3, lw=1.5, label="validation")
    if history.best_epoch:
        ax.plot([history.best_epoch], [history.val_loss[history.best_epoch - 1]], "*",
                color="black", ms=10, label=f"kept (epoch {history.best_epoch})", zorder=3)
    if epoch is not None:
        ax.axvline(epoch, color=BOUNDARY_COLOR, lw=1.2, ls="--")
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.set_xlim(0.5, max(len(epochs), 1) + 0.5)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    ax.grid(alpha=0.3)


def plot_loss_curves(histories: Mapping[str, object], ylabel: str = "nats per image") -> Figure:
    """Training and validation loss per epoch, one axes per run, the kept epoch starred.

    ``histories``: {panel title: History}, e.g. ``{"k = 1": history, ...}``.
    """
    fig = _new_figure((3.2 * len(histories), 3.0))
    axes = fig.subplots(1, len(histories), squeeze=False)[0]
    for ax, (title, history) in zip(axes, histories.items()):
        _draw_losses(ax, history, ylabel=ylabel if ax is axes[0] else "")
        ax.set_title(title, fontsize=10)
    axes[0].legend(fontsize=8, frameon=False)
    return fig


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


def plot_completions(panels: Sequence[Completions] | Completions) -> Figure:
    """For each panel (one per quadrant count): input, truth, NN guess and CVAE samples.

    Rows are test images; every tile after the input shows the input pixels completed by the
    truth, the baseline's guess or one CVAE sample, with the input region outlined. Panels are
    stacked vertically, or side by side when they hold no samples (baseline only).
    """
    panels = [panels] if isinstance(panels, Completions) else list(panels)
    nrows, num_samples = len(panels[0].x), len(panels[0].samples)
    ncols = 3 + num_samples
    if num_samples:
        fig = _new_figure((0.5 * ncols + 0.6, (0.5 * nrows + 0.35) * len(panels)))
        axes = fig.subplots(len(panels), 1, squeeze=False)[:, 0]
    else:
        fig = _new_figure(((0.5 * ncols + 0.5) * len(panels), 0.5 * nrows + 0.6))
        axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, panel in zip(axes, panels):
        x, y = _numpy_images(panel.x), _numpy_images(panel.y)
        truth = _complete(x, y)
        guess = _complete(x, _numpy_images(panel.baseline))
        samples = [_complete(x, _numpy_images(s)) for s in panel.samples]
        tiles = np.stack([x, truth, guess, *samples], axis=1).reshape(-1, SIDE, SIDE)
        labels = ["input", "truth", "NN"] + [f"{i + 1}" for i in range(len(samples))]
        _show_tiles(ax, tiles, len(x), ncols, col_labels=labels)
        _quadrant_boundaries(ax, panel.num_quadrants, len(x), ncols, columns=range(1, ncols))
        k = panel.num_quadrants
        name = f"{k} input quadrant{'s' if k > 1 else ''}"
        if num_samples:
            ax.set_ylabel(name, fontsize=9)
        else:
            ax.set_xlabel(name, fontsize=9)
    return fig


# -------------------------------------------------------------- chapter "Training, animated"
def _training_tiles(x, y, snapshot) -> tuple[np.ndarray, int, int]:
    """The tiles of one animation frame: per row the input, the truth and the S completions."""
    x, y = _numpy_images(x), _numpy_images(y)
    snapshot = np.asarray(snapshot.cpu() if isinstance(snapshot, torch.Tensor) else snapshot)
    n, num_samples = snapshot.shape[:2]
    samples = snapshot.astype(np.float32).reshape(n, num_samples, SIDE, SIDE) / 255.0
    tiles = np.concatenate([x[:, None], _complete(x, y)[:, None],
                            _complete(x[:, None], samples)], axis=1).reshape(-1, SIDE, SIDE)
    return tiles, n, 2 + num_samples


def _frame_title(num_quadrants: int, epoch: int, history) -> str:
    return (f"CVAE, {num_quadrants} input quadrant{'s' if num_quadrants > 1 else ''}: "
            f"epoch {epoch} of {len(history.train_loss)}")


def plot_training_frame(x, y, snapshot, history, epoch: int, num_quadrants: int,
                        dpi: int = 80) -> Figure:
    """One frame of the training animation: completions after ``epoch`` beside the loss curves.

    ``x``, ``y``: (n, 784) the recorded test inputs and their true outputs (-1 elsewhere);
    ``snapshot``: (n, S, 784) uint8 completions recorded after ``epoch`` (one slice of
    ``history.snapshots``). Left: per row the input, the truth and the S samples; right: the
    training and validation losses, a dashed line at ``epoch``. `update_training_frame` turns
    the figure into the frame of another epoch.
    """
    tiles, n, ncols = _training_tiles(x, y, snapshot)
    fig = _new_figure((9.0, 4.6), dpi=dpi)
    left, right = fig.subplots(1, 2, width_ratios=[1.35, 1.0])
    _show_tiles(left, tiles, n, ncols,
                col_labels=["input", "truth"] + [f"{i + 1}" for i in range(ncols - 2)])
    _quadrant_boundaries(left, num_quadrants, n, ncols, columns=range(1, ncols))
    _draw_losses(right, history, epoch=epoch, ylabel="-ELBO, nats per image")
    right.legend(fontsize=8, frameon=False, loc="upper right")  # fixed: no jumping legend
    # the artists that change from frame to frame, for update_training_frame
    fig.frame_artists = {"tiles": left.images[0], "epoch_line": right.lines[-1],
                         "title": fig.suptitle(_frame_title(num_quadrants, epoch, history),
                                               fontsize=11)}
    return fig


def update_training_frame(fig: Figure, x, y, snapshot, history, epoch: int,
                          num_quadrants: int) -> Figure:
    """Turn a figure of `plot_training_frame` (same inputs, same history) into another epoch's.

    Only the completions, the dashed line and the title change; the axes, the labels and the
    loss curves are kept, so a frame costs a redraw instead of a new figure (about a third of
    the time). The result looks exactly like ``plot_training_frame(..., epoch, ...)``.
    """
    tiles, n, ncols = _training_tiles(x, y, snapshot)
    artists = fig.frame_artists
    artists["tiles"].set_data(tile_images(tiles, n, ncols))
    artists["epoch_line"].set_xdata([epoch, epoch])
    artists["title"].set_text(_frame_title(num_quadrants, epoch, history))
    return fig


# ------------------------------------------------- chapter "Conditional generative models"
def _node(ax, xy, label, observed=False, deterministic=False, radius=0.32):
    """A node of a graphical model; returns (centre, patch) for `_edge`."""
    face = "#bdbdbd" if observed else "white"
    if deterministic:
        patch = RegularPolygon(xy, numVertices=4, radius=radius * 1.3, facecolor=face,
                               edgecolor="black", lw=1.3, zorder=2)
    else:
        patch = Circle(xy, radius, facecolor=face, edgecolor="black", lw=1.3, zorder=2)
    ax.add_patch(patch)
    ax.text(*xy, label, ha="center", va="center", fontsize=14, zorder=3)
    return xy, patch


def _edge(ax, start, end, dashed=False, rad=0.0):
    """An arrow between two nodes made by `_node`, clipped at their borders."""
    (xy0, patch0), (xy1, patch1) = start, end
    ax.add_patch(FancyArrowPatch(xy0, xy1, patchA=patch0, patchB=patch1, arrowstyle="-|>",
                                 mutation_scale=14, lw=1.3, color="#333333",
                                 linestyle=(0, (4, 3)) if dashed else "-",
                                 connectionstyle=f"arc3,rad={rad}", zorder=1))


def plot_graphical_models() -> Figure:
    """The four graphical models: (a) baseline NN, (b) CGM generation, (c) recognition,
    (d) generation with the baseline's guess feeding the prior.

    Grey nodes are observed, white ones latent, the diamond is a deterministic quantity;
    solid arrows belong to the model p, dashed ones to the recognition network q.
    """
    fig = _new_figure((9.0, 2.9))
    axes = fig.subplots(1, 4)
    titles = ["(a) baseline NN", "(b) CGM: generation", "(c) CGM: recognition",
              "(d) generation with\nbaseline-initialised prior"]
    X, Y, Z, YH = (0.0, 0.0), (0.0, 2.0), (1.2, 1.0), (-1.2, 1.0)
    for ax, title in zip(axes, titles):
        ax.set_xlim(-1.9, 1.9)
        ax.set_ylim(-0.6, 2.6)
        ax.set_aspect("equal")
        ax.set_axis_off()
        ax.set_title(title, fontsize=10)
    # (a) y is a deterministic function of x
    a = axes[0]
    _edge(a, _node(a, X, "$x$", observed=True), _node(a, Y, "$y$"))
    # (b) z ~ p(z|x), y ~ p(y|x,z)
    b = axes[1]
    x, y, z = _node(b, X, "$x$", observed=True), _node(b, Y, "$y$"), _node(b, Z, "$z$")
    _edge(b, x, z)
    _edge(b, z, y)
    _edge(b, x, y)
    # (c) q(z|x,y): x and y are both observed during training
    c = axes[2]
    x, y, z = (_node(c, X, "$x$", observed=True), _node(c, Y, "$y$", observed=True),
               _node(c, Z, "$z$"))
    _edge(c, x, z, dashed=True)
    _edge(c, y, z, dashed=True)
    # (d) x -> y_hat (the frozen baseline) -> z; otherwise as in (b)
    d = axes[3]
    x, y, z = _node(d, X, "$x$", observed=True), _node(d, Y, "$y$"), _node(d, Z, "$z$")
    y_hat = _node(d, YH, r"$\hat{y}$", deterministic=True)
    _edge(d, x, y_hat)
    _edge(d, y_hat, z, rad=-0.3)
    _edge(d, x, z)
    _edge(d, z, y)
    _edge(d, x, y)
    return fig


def _normal_pdf(z: np.ndarray, loc: float, scale: float) -> np.ndarray:
    return np.exp(-0.5 * ((z - loc) / scale) ** 2) / (scale * np.sqrt(2 * np.pi))


def plot_estimator_intuition(likelihood=(1.8, 0.3), proposal_shift=0.1,
                             proposal_widen=1.3, num_draws: int = 40, seed: int = 0) -> Figure:
    """Why drawing z from the prior is a poor way to estimate p(y|x): a 1-D Gaussian toy.

    The prior p(z|x) is N(0, 1); the likelihood p(y|x,z), seen as a function of z, is a
    Gaussian bump (``likelihood`` = (centre, width)), so the posterior p(z|x,y) is Gaussian too.
    A recognition network q(z|x,y) is drawn near the posterior (shifted by ``proposal_shift``,
    ``proposal_widen`` times wider). Ticks at the bottom are ``num_draws`` draws from the prior
    and from q: few prior draws land where the likelihood is large.
    """
    centre, width = likelihood
    post_var = 1.0 / (1.0 + 1.0 / width**2)                  # product of two Gaussians
    post_loc, post_scale = post_var * centre / width**2, np.sqrt(post_var)
    q_loc, q_scale = post_loc + proposal_shift, post_scale * proposal_widen
    z = np.linspace(-3.2, 3.6, 600)
    prior, posterior = _normal_pdf(z, 0.0, 1.0), _normal_pdf(z, post_loc, post_scale)
    lik = _normal_pdf(z, centre, width)
    lik = lik / lik.max() * posterior.max() * 0.8            # drawn to a comparable height

    fig = _new_figure((6.4, 3.0))
    ax = fig.subplots()
    ax.plot(z, prior, color="#1b9e77", lw=2, label=r"prior $p_\theta(z\mid x)$")
    ax.plot(z, lik, color="#999999", lw=1.5, ls=":",
            label=r"likelihood $p_\theta(y\mid x,z)$ (rescaled)")
    ax.plot(z, posterior, color="#d95f02", lw=2, label=r"posterior $p_\theta(z\mid x,y)$")
    ax.plot(z, _normal_pdf(z, q_loc, q_scale), color="#7570b3", lw=2, ls="--",
            label=r"recognition $q_\phi(z\mid x,y)$")
    rng = np.random.default_rng(seed)
    top = posterior.max()
    for draws, row, colour in ((rng.normal(0.0, 1.0, num_draws), -0.06, "#1b9e77"),
                               (rng.normal(q_loc, q_scale, num_draws), -0.12, "#7570b3")):
        ax.plot(draws, np.full_like(draws, row * top), "|", color=colour, ms=9, mew=1.2)
    ax.axhline(0, color="black", lw=0.6)
    ax.set_xlim(z[0], z[-1])
    ax.set_ylim(-0.17 * top, 1.1 * top)
    ax.set_yticks([])
    ax.set_xlabel("latent variable $z$")
    ax.legend(fontsize=8, frameon=False, loc="upper left")
    return fig


# ------------------------------------------------------------------------ chapter "Evaluation"
ESTIMATOR_STYLE = {  # row key of the CLL table: (label, colour, marker)
    "baseline": ("NN baseline", "#666666", "o"),
    "neg_elbo": ("CVAE $-$ELBO", "#7570b3", "s"),
    "mc_prior": ("CVAE MC prior", "#1b9e77", "^"),
    "importance": ("CVAE IS", "#d95f02", "D"),
}


def plot_cll_comparison(table, published=None) -> Figure:
    """The negative CLL of each estimator with its standard error, beside published numbers.

    ``table``: the DataFrame of `cvae_utils.tables.cll_table` (rows by key: "baseline",
    "neg_elbo", "mc_prior", "importance", and "gap", which is not drawn; columns (inputs,
    statistic) with statistic "mean" and "stderr"). ``published``: optionally that of
    `cvae_utils.tables.published_table`, each row placed at the estimator its "estimator" column
    names. One axes per quadrant count; filled markers with 2-standard-error bars are this book's
    numbers, hollow markers the published ones. Rows are picked by key, never by label.
    """
    inputs = list(dict.fromkeys(table.columns.get_level_values("inputs")))
    keys = [key for key in ESTIMATOR_STYLE if key in table.index]
    fig = _new_figure((3.0 * len(inputs) + 0.4, 3.6))
    axes = fig.subplots(1, len(inputs), squeeze=False)[0]
    sources = [] if published is None else list(dict.fromkeys(
        published.index.get_level_values("source")))
    hollow = ["o", "v", "P", "X"]
    for ax, label in zip(axes, inputs):
        for position, key in enumerate(keys):
            _, colour, marker = ESTIMATOR_STYLE[key]
            mean = float(table.loc[key, (label, "mean")])
            stderr = float(table.loc[key, (label, "stderr")])
            ax.errorbar([position], [mean], yerr=[2 * stderr if np.isfinite(stderr) else 0],
                        fmt=marker, color=colour, ms=7, capsize=4, lw=1.5,
                        label="this book" if position == 0 else None)
            for s, source in enumerate(sources):
                rows = published.xs(source, level="source")
                for row in rows.index[rows["estimator"] == key]:
                    value = rows.loc[row, label] if label in rows.columns else np.nan
                    if np.isfinite(value):
                        ax.plot([position + 0.22], [value], hollow[s % len(hollow)],
                                mfc="none", mec="black", ms=7, mew=1.2)
        ax.set_xticks(range(len(keys)))
        ax.set_xticklabels([ESTIMATOR_STYLE[key][0].replace("CVAE ", "CVAE\n") for key in keys],
                           fontsize=8)
        ax.set_xlim(-0.5, len(keys) - 0.3)
        ax.set_title(label, fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel(r"$-\log p(y\mid x)$, nats per image")
    handles = [matplotlib.lines.Line2D([], [], ls="none", marker="o", color="#444444", ms=7,
                                       label="this book (± 2 s.e.)")]
    handles += [matplotlib.lines.Line2D([], [], ls="none", marker=hollow[s % len(hollow)],
                                        mfc="none", mec="black", ms=7, label=source)
                for s, source in enumerate(sources)]
    fig.legend(handles=handles, fontsize=8, frameon=False, loc="outside lower center",
               ncols=len(handles))
    return fig


def plot_estimator_convergence(sweep, reference: float | None = None,
                               reference_label: str = "NN baseline") -> Figure:
    """Mean estimate of -log p(y|x) against the number of samples S, one line per estimator.

    ``sweep``: a DataFrame indexed by S with one column per estimator, named by the row keys of
    the CLL table ("neg_elbo", "mc_prior", "importance"; another name is drawn in a default
    style, labelled by itself), values in nats per image on the same images. ``reference``: an
    optional horizontal line, e.g. the baseline's exact value.
    """
    fig = _new_figure((5.6, 3.4))
    ax = fig.subplots()
    for column in sweep.columns:
        name, colour, marker = ESTIMATOR_STYLE.get(column, (column, None, "o"))
        ax.plot(sweep.index, sweep[column], marker=marker, color=colour, label=name, lw=1.5)
    if reference is not None:
        ax.axhline(reference, color=ESTIMATOR_STYLE["baseline"][1], ls="--", lw=1.2,
                   label=reference_label)
    ax.set_xscale("log")
    ax.set_xlabel("samples of $z$ per image, $S$")
    ax.set_ylabel(r"mean $-\log p(y\mid x)$, nats")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, frameon=False)
    return fig


# --------------------------------------------------------------- chapter "Variants of the model"
def plot_variants(table) -> Figure:
    """The variants table as a dot plot: one panel per quadrant setting, one row per variant.

    ``table``: the DataFrame of `cvae_utils.tables.variants_table` (rows by key, "baseline"
    first; labels and estimators in ``attrs``). Markers are means with error bars of two
    standard errors over test images; the row keyed "baseline" is grey (and a dashed line across
    the panel), rows estimated by Monte Carlo from the prior are hollow. The tick labels are the
    rows' labels.
    """
    inputs = list(dict.fromkeys(table.columns.get_level_values("inputs")))
    keys = list(table.index)
    labels = table.attrs.get("labels", {})
    estimators = table.attrs.get("estimators", {})
    fig = _new_figure((2.6 * len(inputs) + 2.4, 0.42 * len(keys) + 1.3))
    axes = fig.subplots(1, len(inputs), squeeze=False, sharey=True)[0]
    positions = np.arange(len(keys))[::-1]                  # first row at the top
    for ax, label in zip(axes, inputs):
        for y, key in zip(positions, keys):
            mean = float(table.loc[key, (label, "mean")])
            stderr = float(table.loc[key, (label, "stderr")])
            colour = "#7f7f7f" if key == "baseline" else "#1b9e77"
            hollow = estimators.get(key, "importance") == "mc_prior"
            ax.errorbar([mean], [y], xerr=[2 * stderr if np.isfinite(stderr) else 0],
                        fmt="s" if key == "baseline" else "o", color=colour, capsize=3, ms=6,
                        mfc="white" if hollow else colour, lw=1.4)
            if key == "baseline":
                ax.axvline(mean, color=colour, ls="--", lw=0.9)
        ax.set_title(label, fontsize=10)
        ax.set_xlabel(r"$-\log p(y\mid x)$, nats")
        ax.grid(axis="x", alpha=0.3)
        ax.margins(x=0.15)
    axes[0].set_yticks(positions)
    axes[0].set_yticklabels([labels.get(key, key) for key in keys], fontsize=8)
    handles = [matplotlib.lines.Line2D([], [], ls="none", marker="o", color="#1b9e77",
                                       label="importance sampling (± 2 s.e.)"),
               matplotlib.lines.Line2D([], [], ls="none", marker="o", color="#1b9e77",
                                       mfc="white", label="MC from the prior (± 2 s.e.)"),
               matplotlib.lines.Line2D([], [], ls="--", marker="s", color="#7f7f7f",
                                       label="baseline (exact)")]
    fig.legend(handles=handles, fontsize=8, frameon=False, loc="outside lower center",
               ncols=len(handles))
    return fig


# ------------------------------------------------------------------- chapter "Beyond the table"
def plot_identity_groups(inputs: Sequence["AmbiguousInput"], max_per_group: int = 5,
                         show_truth: bool = True) -> Figure:
    """One row per ambiguous input: the input, its true image, then its samples by digit read.

    ``inputs``: `cvae_utils.diversity.AmbiguousInput`s, e.g. ``ambiguous_examples(...).inputs``.
    Each group of samples is titled with the digit the classifier reads and how many of the
    input's samples read so; a group shows at most ``max_per_group`` of them.
    """
    if not inputs:
        raise ValueError("plot_identity_groups needs at least one input (find_ambiguous found "
                         "none: try more inputs, more samples or a smaller min_count)")
    check_int("max_per_group", max_per_group, 1, rule="a positive int")
    lead = 2 if show_truth else 1
    widths = [1] * lead + [max_per_group] * 2
    fig = _new_figure((0.55 * sum(widths) + 0.8, 0.95 * len(inputs) + 0.2))
    axes = fig.subplots(len(inputs), len(widths), squeeze=False,
                        gridspec_kw={"width_ratios": widths})
    cmap = _image_cmap()
    for row, item in zip(axes, inputs):
        panels = [(item.x[None], f"input (k={item.num_quadrants})")]
        if show_truth:
            panels.append((item.image[None], f"true {item.label}"))
        for digit in item.pair:
            group = item.groups[digit][:max_per_group]
            panels.append((group, f"read as {digit}: {item.counts.get(digit, 0)}/"
                                  f"{item.num_samples}"))
        for ax, (images, title), slots in zip(row, panels, widths):
            # up to ``slots`` images in a row, padding after them: one (28, 30 slots - 2) array
            strip = np.full((SIDE, slots * (SIDE + 2) - 2), np.nan, dtype=np.float32)
            for i, image in enumerate(images):
                strip[:, i * (SIDE + 2):i * (SIDE + 2) + SIDE] = image
            ax.imshow(strip, cmap=cmap, vmin=0.0, vmax=1.0, interpolation="nearest")
            ax.set_title(title, fontsize=7, pad=2, loc="left")
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
    return fig


def plot_completion(result: "Completion", max_samples: int | None = None) -> Figure:
    """One row: the input (missing pixels pale blue), the baseline's completion, the CVAE samples.

    ``result``: a `cvae_utils.complete.Completion` (of `complete_digit`). The border of the known
    region is outlined on every tile; the title names the layout whose models completed it.
    """
    samples = result.samples if max_samples is None else result.samples[:max_samples]
    panels = [(result.x, "input"), (result.baseline, "baseline")] + \
        [(sample, f"CVAE {i + 1}") for i, sample in enumerate(samples)]
    fig = _new_figure((0.85 * len(panels) + 0.2, 1.25))
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    cmap = _image_cmap()
    for ax, (image, title) in zip(axes, panels):
        ax.imshow(image, cmap=cmap, vmin=0.0, vmax=1.0, interpolation="nearest")
        ax.contour(result.known_mask.astype(float), levels=[0.5], colors=BOUNDARY_COLOR,
                   linewidths=0.8, corner_mask=False)
        ax.set_title(title, fontsize=7, pad=2)
        ax.set_xticks([])
        ax.set_yticks([])
    label = (f"{result.num_quadrants} quadrant layout" if result.mask_match == 1.0 else
             f"mask, models of the {result.num_quadrants} quadrant layout "
             f"(match {result.mask_match:.2f})")
    fig.suptitle(label, fontsize=8)
    return fig
