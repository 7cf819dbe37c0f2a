"""The figures of chapters "Evaluation", "Variants of the model" and "Beyond the table".

Chapter "Evaluation" draws `plot_cll_comparison` (the CLL table beside the published numbers of
`cvae_utils.published`) and `plot_estimator_convergence`; chapter "Variants of the model"
`plot_variants`; chapter "Beyond the table" `plot_identity_groups` and `plot_completion`. The
table figures pick rows by their keys (see `cvae_utils.tables`), never by their labels. Shared
machinery: `cvae_utils.figures`.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import matplotlib.lines
import numpy as np
from matplotlib.figure import Figure

from .config import check_int
from .data import IMAGE_SIDE
from .figures import BOUNDARY_COLOR, image_cmap, new_figure
from .tables import error_bar

if TYPE_CHECKING:  # the results these figures draw
    from .complete import Completion
    from .diversity import AmbiguousInput

__all__ = ["ESTIMATOR_STYLE", "plot_cll_comparison", "plot_estimator_convergence", "plot_variants",
           "plot_identity_groups", "plot_completion"]


# ------------------------------------------------------------------------------------------------
# Chapter "Evaluation"
# ------------------------------------------------------------------------------------------------

ESTIMATOR_STYLE = {  # row key of the CLL table: (label, colour, marker)
    "baseline": ("NN baseline", "#666666", "o"),
    "neg_elbo": ("CVAE $-$ELBO", "#7570b3", "s"),
    "mc_prior": ("CVAE MC prior", "#1b9e77", "^"),
    "importance": ("CVAE IS", "#d95f02", "D"),
}


def plot_cll_comparison(table, published=None) -> Figure:
    """The negative CLL of each estimator with its uncertainty, beside published numbers.

    ``table``: the DataFrame of `cvae_utils.tables.cll_table` (rows by key: "baseline",
    "neg_elbo", "mc_prior", "importance", and "gap", which is not drawn; columns (inputs,
    statistic) with statistics "mean", "seed_sd", "test_se" and "uncertainty").
    ``published``: optionally that of `cvae_utils.published.published_table`, each row placed at
    the estimator its "estimator" column names. One axes per quadrant count; filled markers are
    this book's numbers with bars of two uncertainties (`cvae_utils.tables.error_bar`: over
    seeds and test images, or over test images alone with one seed), hollow markers the
    published ones. Rows are picked by key, never by label.
    """
    inputs = list(dict.fromkeys(table.columns.get_level_values("inputs")))
    keys = [key for key in ESTIMATOR_STYLE if key in table.index]
    fig = new_figure((3.0 * len(inputs) + 0.4, 3.6))
    axes = fig.subplots(1, len(inputs), squeeze=False)[0]
    sources = [] if published is None else list(dict.fromkeys(
        published.index.get_level_values("source")))
    hollow = ["o", "v", "P", "X"]
    for ax, label in zip(axes, inputs):
        for position, key in enumerate(keys):
            _, colour, marker = ESTIMATOR_STYLE[key]
            mean = float(table.loc[key, (label, "mean")])
            error = error_bar(table, key, label)
            ax.errorbar([position], [mean], yerr=[2 * error if np.isfinite(error) else 0],
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
                                       label="this book (± 2 uncertainties)")]
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
    fig = new_figure((5.6, 3.4))
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


# ------------------------------------------------------------------------------------------------
# Chapter "Variants of the model"
# ------------------------------------------------------------------------------------------------

def plot_variants(table) -> Figure:
    """The variants table as a dot plot: one panel per quadrant setting, one row per variant.

    ``table``: the DataFrame of `cvae_utils.variants.variants_table` (rows by key, "baseline"
    first; labels and estimators in ``attrs``). Markers are means with error bars of two
    uncertainties (`cvae_utils.tables.error_bar`: over seeds and test images, or over test
    images alone with one seed); the row keyed "baseline" is grey (and a dashed line across
    the panel), rows estimated by Monte Carlo from the prior are hollow. The tick labels are the
    rows' labels.
    """
    inputs = list(dict.fromkeys(table.columns.get_level_values("inputs")))
    keys = list(table.index)
    labels = table.attrs.get("labels", {})
    estimators = table.attrs.get("estimators", {})
    fig = new_figure((2.6 * len(inputs) + 2.4, 0.42 * len(keys) + 1.3))
    axes = fig.subplots(1, len(inputs), squeeze=False, sharey=True)[0]
    positions = np.arange(len(keys))[::-1]                  # first row at the top
    for ax, label in zip(axes, inputs):
        for y, key in zip(positions, keys):
            mean = float(table.loc[key, (label, "mean")])
            error = error_bar(table, key, label)
            colour = "#7f7f7f" if key == "baseline" else "#1b9e77"
            hollow = estimators.get(key, "importance") == "mc_prior"
            ax.errorbar([mean], [y], xerr=[2 * error if np.isfinite(error) else 0],
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
                                       label="importance sampling (± 2 unc.)"),
               matplotlib.lines.Line2D([], [], ls="none", marker="o", color="#1b9e77",
                                       mfc="white", label="MC from the prior (± 2 unc.)"),
               matplotlib.lines.Line2D([], [], ls="--", marker="s", color="#7f7f7f",
                                       label="baseline (exact)")]
    fig.legend(handles=handles, fontsize=8, frameon=False, loc="outside lower center",
               ncols=len(handles))
    return fig


# ------------------------------------------------------------------------------------------------
# Chapter "Beyond the table"
# ------------------------------------------------------------------------------------------------

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
    fig = new_figure((0.55 * sum(widths) + 0.8, 0.95 * len(inputs) + 0.2))
    axes = fig.subplots(len(inputs), len(widths), squeeze=False,
                        gridspec_kw={"width_ratios": widths})
    cmap = image_cmap()
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
            strip = np.full((IMAGE_SIDE, slots * (IMAGE_SIDE + 2) - 2), np.nan, dtype=np.float32)
            for i, image in enumerate(images):
                strip[:, i * (IMAGE_SIDE + 2):i * (IMAGE_SIDE + 2) + IMAGE_SIDE] = image
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
    fig = new_figure((0.85 * len(panels) + 0.2, 1.25))
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    cmap = image_cmap()
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
