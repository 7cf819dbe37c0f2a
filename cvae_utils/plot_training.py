"""The figures of chapters "The baseline", "The CVAE in Pyro" and "Training, animated".

`plot_loss_curves` draws the training and validation losses, `plot_completions` the completions
of `cvae_utils.analysis.completions` and `baseline_completions` (chapter "Evaluation" draws it
too), and `plot_training_frame` one frame of the training animation, which
`cvae_utils.animation` draws frame by frame with `update_training_frame`. Shared machinery:
`cvae_utils.figures`.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from .analysis import Completions, numpy_images
from .data import IMAGE_SIDE, quadrant_label
from .figures import (BOUNDARY_COLOR, TRAIN_COLOR, VAL_COLOR, new_figure, quadrant_boundaries,
                      show_tiles, tile_images, with_input)

__all__ = ["plot_loss_curves", "plot_completions", "plot_training_frame", "update_training_frame"]


# ------------------------------------------------------------------------------------------------
# Chapters "The baseline", "The CVAE in Pyro"
# ------------------------------------------------------------------------------------------------

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
    fig = new_figure((3.2 * len(histories), 3.0))
    axes = fig.subplots(1, len(histories), squeeze=False)[0]
    for ax, (title, history) in zip(axes, histories.items()):
        _draw_losses(ax, history, ylabel=ylabel if ax is axes[0] else "")
        ax.set_title(title, fontsize=10)
    axes[0].legend(fontsize=8, frameon=False)
    return fig


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
        fig = new_figure((0.5 * ncols + 0.6, (0.5 * nrows + 0.35) * len(panels)))
        axes = fig.subplots(len(panels), 1, squeeze=False)[:, 0]
    else:
        fig = new_figure(((0.5 * ncols + 0.5) * len(panels), 0.5 * nrows + 0.6))
        axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, panel in zip(axes, panels):
        x, y = numpy_images(panel.x), numpy_images(panel.y)
        truth = with_input(x, y)
        guess = with_input(x, numpy_images(panel.baseline))
        samples = [with_input(x, numpy_images(s)) for s in panel.samples]
        tiles = np.stack([x, truth, guess, *samples], axis=1).reshape(-1, IMAGE_SIDE, IMAGE_SIDE)
        labels = ["input", "truth", "NN"] + [f"{i + 1}" for i in range(len(samples))]
        show_tiles(ax, tiles, len(x), ncols, col_labels=labels)
        quadrant_boundaries(ax, panel.num_quadrants, len(x), ncols, columns=range(1, ncols))
        k = panel.num_quadrants
        name = quadrant_label(k, "input")
        if num_samples:
            ax.set_ylabel(name, fontsize=9)
        else:
            ax.set_xlabel(name, fontsize=9)
    return fig


# ------------------------------------------------------------------------------------------------
# Chapter "Training, animated"
# ------------------------------------------------------------------------------------------------

def _training_tiles(x, y, snapshot) -> tuple[np.ndarray, int, int]:
    """The tiles of one animation frame: per row the input, the truth and the S completions."""
    x, y = numpy_images(x), numpy_images(y)
    snapshot = np.asarray(snapshot.cpu() if isinstance(snapshot, torch.Tensor) else snapshot)
    n, num_samples = snapshot.shape[:2]
    samples = snapshot.astype(np.float32).reshape(n, num_samples, IMAGE_SIDE, IMAGE_SIDE) / 255.0
    tiles = np.concatenate([x[:, None], with_input(x, y)[:, None],
                            with_input(x[:, None], samples)], axis=1)
    tiles = tiles.reshape(-1, IMAGE_SIDE, IMAGE_SIDE)
    return tiles, n, 2 + num_samples


def _frame_title(num_quadrants: int, epoch: int, history) -> str:
    return (f"CVAE, {quadrant_label(num_quadrants, 'input')}: "
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
    fig = new_figure((9.0, 4.6), dpi=dpi)
    left, right = fig.subplots(1, 2, width_ratios=[1.35, 1.0])
    show_tiles(left, tiles, n, ncols,
                col_labels=["input", "truth"] + [f"{i + 1}" for i in range(ncols - 2)])
    quadrant_boundaries(left, num_quadrants, n, ncols, columns=range(1, ncols))
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
