"""The book's figures (`cvae_utils.figures` and the `plot_*` modules), what they show
(`cvae_utils.analysis`) and the training animation (`cvae_utils.animation`).

Fast: synthetic digits and tiny networks, no MNIST. Each figure function must return a matplotlib
Figure with the expected axes and image content; the GIF writer must write a GIF that imageio reads
back with the right number of frames, and must never leave a partial or temporary file behind.
"""
from __future__ import annotations

import imageio.v3 as iio
import numpy as np
import pandas as pd
import pytest
import torch
from matplotlib.figure import Figure

from cvae_utils.variant_models import build_cvae
from cvae_utils import CVAE, BaselineNet, CVAEConfig, History, input_mask, make_quadrant_data
from cvae_utils import (analysis, animation, figures, plot_data, plot_maths, plot_results,
                        plot_training)
from cvae_utils.published import published_table
from cvae_utils.tables import make_table

SMALL = CVAEConfig(hidden_1=32, hidden_2=16, z_dim=4)
STEP = 28 + 2  # a tile and its padding in `tile_images`


def tiled_shape(nrows: int, ncols: int) -> tuple[int, int]:
    return nrows * STEP - 2, ncols * STEP - 2


def image_of(ax) -> np.ndarray:
    """The array drawn by the first imshow on ``ax``."""
    assert ax.images, "no image on these axes"
    return np.ma.getdata(ax.images[0].get_array())


def toy_history(num_epochs: int = 3, n: int = 2, num_samples: int = 3, seed: int = 0) -> History:
    g = torch.Generator().manual_seed(seed)
    history = History(train_loss=[100.0 / e for e in range(1, num_epochs + 1)],
                      val_loss=[110.0 / e for e in range(1, num_epochs + 1)],
                      seconds=[0.1] * num_epochs, best_epoch=num_epochs)
    history.snapshots = torch.randint(0, 256, (num_epochs, n, num_samples, 784), generator=g,
                                      dtype=torch.uint8)
    return history


@pytest.fixture
def quadrants(tiny_data):
    return {k: make_quadrant_data(tiny_data.test, k) for k in (1, 2, 3)}


@pytest.fixture
def small_cvae():
    torch.manual_seed(0)
    return build_cvae(BaselineNet(SMALL), SMALL).eval()


CLL_VALUES = {"baseline": (100.0, 1.0), "neg_elbo": (80.0, 0.5), "mc_prior": (78.0, 0.6),
              "importance": (75.0, 0.6), "gap": (25.0, 0.8)}


def fake_table(ks=(1, 2, 3), labels=None) -> pd.DataFrame:
    """A table shaped like `cll_table`'s: rows by key, columns (inputs, statistic); one seed of
    two images, mean ± standard error, per cell."""
    return make_table({key: {k: torch.tensor([[mean - stderr, mean + stderr]]) for k in ks}
                       for key, (mean, stderr) in CLL_VALUES.items()}, labels=labels)


# ----------------------------------------------------------------------------- helpers
def test_tile_images_places_images_row_by_row_with_nan_padding():
    images = torch.arange(6, dtype=torch.float32).reshape(6, 1, 1).expand(6, 28, 28) / 10
    canvas = figures.tile_images(images, 2, 3)
    assert canvas.shape == tiled_shape(2, 3)
    assert np.isnan(canvas[28:30]).all() and np.isnan(canvas[:, 28:30]).all()
    for i in range(6):
        r, c = divmod(i, 3)
        np.testing.assert_allclose(canvas[r * STEP:r * STEP + 28, c * STEP:c * STEP + 28], i / 10)
    with pytest.raises(ValueError, match="do not fit"):
        figures.tile_images(images, 1, 3)
    with pytest.raises(ValueError, match="784"):
        figures.tile_images(torch.zeros(2, 10), 1, 2)


def test_figures_display_as_png_and_render_to_rgb():
    fig = plot_maths.plot_graphical_models()
    assert isinstance(fig, figures.BookFigure) and isinstance(fig, Figure)
    assert fig._repr_png_().startswith(b"\x89PNG\r\n\x1a\n")
    rgb = figures.figure_to_array(fig)
    assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3
    assert rgb.shape[:2] == (round(fig.get_figheight() * fig.dpi), round(fig.get_figwidth() * fig.dpi))


# ------------------------------------------------------------------ data and the problem
def test_plot_digits_titles_each_digit_with_its_label(tiny_data):
    fig = plot_data.plot_digits(tiny_data.train.images[:12], tiny_data.train.labels[:12], ncols=5)
    assert isinstance(fig, Figure) and len(fig.axes) == 15          # 3 rows of 5, 3 left empty
    drawn = [ax for ax in fig.axes if ax.images]
    assert len(drawn) == 12
    assert [ax.get_title() for ax in drawn] == [str(int(l)) for l in tiny_data.train.labels[:12]]
    np.testing.assert_allclose(image_of(drawn[3]), tiny_data.train.images[3].numpy())


def test_plot_quadrant_masks_labels_input_and_output_quadrants():
    fig = plot_data.plot_quadrant_masks({k: input_mask(k) for k in (1, 2, 3)})
    assert len(fig.axes) == 3
    for k, ax in zip((1, 2, 3), fig.axes):
        letters = sorted(t.get_text() for t in ax.texts)
        assert letters == sorted(["x"] * k + ["y"] * (4 - k))


def test_plot_quadrant_split_interleaves_x_and_y(quadrants):
    fig = plot_data.plot_quadrant_split({k: (q.x, q.y) for k, q in quadrants.items()},
                                        num_images=4)
    assert len(fig.axes) == 3
    for (k, q), ax in zip(quadrants.items(), fig.axes):
        canvas = image_of(ax)
        assert canvas.shape == tiled_shape(1, 8)
        np.testing.assert_allclose(canvas[:28, :28], q.x[0].reshape(28, 28).numpy())
        np.testing.assert_allclose(canvas[:28, STEP:STEP + 28], q.y[0].reshape(28, 28).numpy())
        assert (canvas[:28, :28] == -1).sum() == 196 * (4 - k)      # missing pixels stay -1


def test_nearest_neighbours_and_most_ambiguous_on_planted_data():
    g = torch.Generator().manual_seed(0)
    pool = torch.rand(40, 28, 28, generator=g)
    labels = torch.arange(40) % 10
    mask = input_mask(1)
    queries = pool[[3, 17]].clone()
    queries[:, ~mask] = 0.0                        # only the input quadrant is informative
    nearest = analysis.nearest_neighbours(queries, pool, num_quadrants=1, num_neighbours=5)
    assert nearest.shape == (2, 5) and nearest[:, 0].tolist() == [3, 17]
    # query 1's neighbours: copies of it with four different labels; query 0: one label only
    pool2 = torch.cat([pool[:1].expand(5, 28, 28), pool[1:2].expand(5, 28, 28)])
    labels2 = torch.tensor([7, 7, 7, 7, 7, 1, 2, 3, 4, 1])
    order = analysis.most_ambiguous(pool2[[0, 5]], pool2, labels2, num_quadrants=1,
                                    num_neighbours=5, count=2)
    assert order == [1, 0]


def test_plot_ambiguity_shows_input_neighbours_and_their_mean(tiny_data):
    fig = plot_data.plot_ambiguity(tiny_data.test.images[:2], tiny_data.train.images,
                                   tiny_data.train.labels, num_quadrants=1, num_neighbours=4)
    assert len(fig.axes) == 2 * 6                                   # input + 4 + mean, 2 rows
    first_row = fig.axes[:6]
    x = image_of(first_row[0])
    assert (x[~input_mask(1).numpy()] == -1).all()
    assert first_row[1].get_title().startswith("a ") and first_row[-1].get_title() == "their mean"
    assert len(plot_data.plot_ambiguity(tiny_data.test.images[:1], tiny_data.train.images,
                                        tiny_data.train.labels, show_mean=False).axes) == 8


# ---------------------------------------------------------------- training and samples
def test_plot_loss_curves_one_axes_per_run_with_both_curves():
    histories = {"k = 1": toy_history(4), "k = 2": toy_history(1)}
    fig = plot_training.plot_loss_curves(histories)
    assert len(fig.axes) == 2
    ax = fig.axes[0]
    lines = {line.get_label(): line for line in ax.get_lines()}
    np.testing.assert_allclose(lines["training"].get_ydata(), histories["k = 1"].train_loss)
    np.testing.assert_allclose(lines["validation"].get_ydata(), histories["k = 1"].val_loss)
    assert "kept (epoch 4)" in lines
    assert all(float(t).is_integer() for t in fig.axes[1].get_xticks())  # one epoch: tick 1 only


def test_completions_and_plot_completions(quadrants, small_cvae):
    panels = [analysis.completions(small_cvae, quadrants[k], num_images=3, num_samples=5)
              for k in (1, 2, 3)]
    panel = panels[0]
    assert panel.x.shape == panel.y.shape == panel.baseline.shape == (3, 784)
    assert panel.samples.shape == (5, 3, 784)
    assert np.isfinite(panel.samples).all() and ((panel.samples >= 0) & (panel.samples <= 1)).all()
    again = analysis.completions(small_cvae, quadrants[1], num_images=3, num_samples=5)
    np.testing.assert_array_equal(again.samples, panel.samples)    # seeded: same every build

    fig = plot_training.plot_completions(panels)
    assert len(fig.axes) == 3
    canvas = image_of(fig.axes[0])
    assert canvas.shape == tiled_shape(3, 3 + 5)
    x = panel.x[0].reshape(28, 28)
    np.testing.assert_allclose(canvas[:28, :28], x)                      # the input, with -1
    truth = np.where(x >= 0, x, panel.y[0].reshape(28, 28))
    np.testing.assert_allclose(canvas[:28, STEP:STEP + 28], truth)      # the whole digit
    sample = canvas[:28, 3 * STEP:3 * STEP + 28]                         # first CVAE sample
    np.testing.assert_allclose(sample[x >= 0], x[x >= 0])                # keeps the input
    np.testing.assert_allclose(sample[x < 0], panel.samples[0, 0].reshape(28, 28)[x < 0],
                               rtol=1e-6)


def test_baseline_completions_have_no_samples_and_plot_side_by_side(quadrants, small_cvae):
    panels = [analysis.baseline_completions(small_cvae.baseline, quadrants[k], num_images=4)
              for k in (1, 2, 3)]
    assert panels[0].samples.shape == (0, 4, 784)
    fig = plot_training.plot_completions(panels)
    assert len(fig.axes) == 3 and fig.get_figwidth() > fig.get_figheight()
    assert image_of(fig.axes[1]).shape == tiled_shape(4, 3)


def test_plot_training_frame_draws_samples_beside_the_losses(quadrants):
    history = toy_history(num_epochs=3, n=2, num_samples=3)
    q = quadrants[2]
    fig = plot_training.plot_training_frame(q.x[:2], q.y[:2], history.snapshots[1], history,
                                            epoch=2, num_quadrants=2)
    assert len(fig.axes) == 2
    canvas = image_of(fig.axes[0])
    assert canvas.shape == tiled_shape(2, 2 + 3)
    x = q.x[0].reshape(28, 28).numpy()
    sample = canvas[:28, 2 * STEP:2 * STEP + 28]
    expected = history.snapshots[1, 0, 0].reshape(28, 28).numpy() / 255.0
    np.testing.assert_allclose(sample[x < 0], expected[x < 0], rtol=1e-6)
    assert "epoch 2 of 3" in fig._suptitle.get_text()
    dashed = [line for line in fig.axes[1].get_lines() if line.get_linestyle() == "--"]
    assert len(dashed) == 1 and list(dashed[0].get_xdata()) == [2, 2]


# ------------------------------------------------------------------------------- maths
def test_plot_graphical_models_draws_four_models():
    fig = plot_maths.plot_graphical_models()
    assert len(fig.axes) == 4
    nodes = [sorted(t.get_text() for t in ax.texts) for ax in fig.axes]
    assert nodes[0] == ["$x$", "$y$"] and nodes[1] == ["$x$", "$y$", "$z$"]
    assert r"$\hat{y}$" in nodes[3]
    arrows = [sum(type(p).__name__ == "FancyArrowPatch" for p in ax.patches) for ax in fig.axes]
    assert arrows == [1, 3, 2, 5]


def test_plot_estimator_intuition_has_normalised_densities():
    fig = plot_maths.plot_estimator_intuition()
    assert len(fig.axes) == 1
    lines = {line.get_label(): line for line in fig.axes[0].get_lines()
             if not line.get_label().startswith("_")}
    assert len(lines) == 4
    for label, line in lines.items():
        if "rescaled" in label:
            continue
        z, density = line.get_xdata(), line.get_ydata()
        assert abs(np.trapezoid(density, z) - 1) < 1e-2, label


# -------------------------------------------------------------------------- evaluation
def drawn_estimates(ax) -> list[tuple[float, float, str]]:
    """(x, y, colour) of every errorbar estimate of an axes."""
    return [(*map(float, c.lines[0].get_xydata()[0]), c.lines[0].get_color())
            for c in ax.containers]


def test_plot_cll_comparison_marks_every_estimate_with_error_bars():
    fig = plot_results.plot_cll_comparison(fake_table(), published_table())
    assert len(fig.axes) == 3
    ax = fig.axes[0]
    assert ax.get_title() == "1 quadrant" and len(ax.containers) == 4   # 4 errorbar estimates
    # each estimator at its place, in its colour; the gap is not drawn
    expected = [(float(position), CLL_VALUES[key][0], plot_results.ESTIMATOR_STYLE[key][1])
                for position, key in enumerate(("baseline", "neg_elbo", "mc_prior", "importance"))]
    assert drawn_estimates(ax) == expected
    # published numbers beside the estimator they report: the tutorial's baseline and -ELBO,
    # TorchZQ's baseline and two IS numbers (one quadrant only)
    hollow = sorted((float(line.get_xdata()[0]), float(line.get_ydata()[0]))
                    for line in ax.get_lines() if line.get_markerfacecolor() == "none")
    assert hollow == [(0.22, 100.4), (0.22, 112.382), (1.22, 71.8), (3.22, 67.813),
                      (3.22, 72.255)]
    assert len(plot_results.plot_cll_comparison(fake_table((2,))).axes) == 1


def test_plot_cll_comparison_picks_rows_by_key_not_label():
    """Labels that say the opposite of the keys change nothing in the figure."""
    misleading = {"baseline": "CVAE IS (S=100)", "importance": "NN baseline",
                  "gap": "CVAE -ELBO", "neg_elbo": "Performance gap"}
    drawn = [plot_results.plot_cll_comparison(table, published_table())
             for table in (fake_table(), fake_table(labels=misleading))]
    for ax, relabelled in zip(drawn[0].axes, drawn[1].axes):
        assert drawn_estimates(ax) == drawn_estimates(relabelled)
        assert [t.get_text() for t in ax.get_xticklabels()] == \
            [t.get_text() for t in relabelled.get_xticklabels()]


def test_plot_estimator_convergence_one_line_per_estimator():
    sweep = pd.DataFrame({"neg_elbo": [90.0, 90.0], "mc_prior": [99.0, 85.0],
                          "importance": [90.0, 80.0]}, index=pd.Index([1, 10], name="S"))
    fig = plot_results.plot_estimator_convergence(sweep, reference=100.0)
    ax = fig.axes[0]
    labels = [line.get_label() for line in ax.get_lines()]
    assert len(fig.axes) == 1 and labels == ["CVAE $-$ELBO", "CVAE MC prior", "CVAE IS",
                                             "NN baseline"]
    colours = [line.get_color() for line in ax.get_lines()[:3]]
    assert colours == [plot_results.ESTIMATOR_STYLE[key][1] for key in sweep.columns]
    assert ax.get_xscale() == "log"


# --------------------------------------------------------------------------- animation
def test_training_frames_one_frame_per_epoch(quadrants):
    history = toy_history(num_epochs=3, n=2)
    q = quadrants[1]
    frames = animation.training_frames(history, q.x[:2], q.y[:2], num_quadrants=1, dpi=40)
    assert frames.shape[0] == 3 and frames.shape[-1] == 3 and frames.dtype == np.uint8
    assert not np.array_equal(frames[0], frames[1])                   # frames differ
    # each frame, drawn by updating the first epoch's figure, is the one a new figure would show
    for epoch in (2, 3):
        fresh = plot_training.plot_training_frame(q.x[:2], q.y[:2], history.snapshots[epoch - 1],
                                                  history, epoch, num_quadrants=1, dpi=40)
        np.testing.assert_array_equal(frames[epoch - 1], figures.figure_to_array(fresh))
    with pytest.raises(ValueError, match="no snapshots"):
        animation.training_frames(History(train_loss=[1.0], val_loss=[1.0], seconds=[0.1]),
                                  q.x[:2], q.y[:2], 1)


def random_frames(count: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, 24, 32, 3), dtype=np.uint8)


@pytest.mark.parametrize("count", [1, 5])
def test_write_gif_round_trips_the_frame_count(tmp_path, count):
    frames = random_frames(count)
    path = animation.write_gif(frames, tmp_path / "sub" / "anim.gif", fps=4)
    assert path == tmp_path / "sub" / "anim.gif" and path.read_bytes()[:6] == b"GIF89a"
    back = iio.imread(path, index=None)
    assert back.shape[0] == count and back.shape[1:3] == (24, 32)
    if count > 1:
        props = iio.improps(path, index=None)
        assert props.n_images == count
    assert [p.name for p in path.parent.iterdir()] == ["anim.gif"]     # no temporary left


def test_write_gif_is_atomic_when_writing_fails(tmp_path, monkeypatch):
    path = tmp_path / "anim.gif"
    animation.write_gif(random_frames(2), path)
    before = path.read_bytes()

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(iio, "imwrite", broken)
    with pytest.raises(OSError, match="disk full"):
        animation.write_gif(random_frames(3, seed=1), path)
    assert path.read_bytes() == before                                 # old file untouched
    assert [p.name for p in tmp_path.iterdir()] == ["anim.gif"]        # temporary removed


def test_write_gif_rejects_bad_frames(tmp_path):
    for bad in (np.zeros((2, 8, 8), np.uint8), np.zeros((2, 8, 8, 3), np.float32),
                np.zeros((0, 8, 8, 3), np.uint8)):
        with pytest.raises(ValueError, match="uint8"):
            animation.write_gif(bad, tmp_path / "bad.gif")
    assert not list(tmp_path.iterdir())


def test_mp4_is_skipped_without_ffmpeg(tmp_path, monkeypatch):
    monkeypatch.setattr(animation, "mp4_available", lambda: False)
    paths = animation.save_animation(random_frames(2), tmp_path, "anim")
    assert paths["mp4"] is None and paths["gif"] == tmp_path / "anim.gif"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["anim.gif"]


@pytest.mark.skipif(not animation.mp4_available(), reason="no ffmpeg for imageio (imageio-ffmpeg or av)")
def test_write_mp4_when_ffmpeg_is_available(tmp_path):
    path = animation.write_mp4(random_frames(4)[:, :23, :31], tmp_path / "anim.mp4", fps=4)
    assert path is not None and path.stat().st_size > 0
    frames = list(iio.imiter(path))
    assert len(frames) == 4 and frames[0].shape == (24, 32, 3)   # padded to even sizes
    assert [p.name for p in tmp_path.iterdir()] == ["anim.mp4"]


def test_book_figures_are_opaque_even_with_a_transparent_style():
    """Dark mode: a figure's PNG must carry its own background (alpha 255 everywhere)."""
    import io

    import matplotlib
    from PIL import Image

    images = torch.rand(6, 784)
    with matplotlib.rc_context({"savefig.transparent": True, "figure.facecolor": "none",
                                "axes.facecolor": "none"}):
        drawn = [plot_data.plot_digits(images, ncols=3), plot_maths.plot_graphical_models(),
                 plot_maths.plot_estimator_intuition()]
        for fig in drawn:
            rgba = np.asarray(Image.open(io.BytesIO(fig._repr_png_())).convert("RGBA"))
            assert rgba[..., 3].min() == 255
            # the background is white, as in light mode (a corner pixel of the figure)
            assert tuple(rgba[0, 0, :3]) == (255, 255, 255)
