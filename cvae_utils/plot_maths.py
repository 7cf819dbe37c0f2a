"""The figures of chapter "Conditional generative models": `plot_graphical_models` and
`plot_estimator_intuition`, each returning a `BookFigure` (see `cvae_utils.figures`).
"""
from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Circle, FancyArrowPatch, RegularPolygon

from .figures import new_figure

__all__ = ["plot_graphical_models", "plot_estimator_intuition"]


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
    fig = new_figure((9.0, 2.9))
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

    fig = new_figure((6.4, 3.0))
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
