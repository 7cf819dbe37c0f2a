"""complete_digit: clear errors for bad input, shapes, known pixels kept exactly, masks mapped to
the best layout, seeding; the stroke drawer and the figure."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from cvae_utils.variant_models import build_cvae
from cvae_utils.complete import Completion, best_layout, complete_digit, draw_digit_strokes
from cvae_utils.data import input_mask
from cvae_utils.networks import CVAE, BaselineNet
from cvae_utils.plot_results import plot_completion


@pytest.fixture(scope="module")
def cvae(toy_config) -> CVAE:
    torch.manual_seed(0)
    return build_cvae(BaselineNet(toy_config), toy_config).eval()


@pytest.fixture
def image() -> np.ndarray:
    return np.random.default_rng(0).random((28, 28)).astype(np.float32)


@pytest.mark.parametrize("k", [1, 2, 3])
def test_shapes_and_known_pixels_kept_exactly(cvae, image, k):
    result = complete_digit(image, k, cvae=cvae, num_samples=5)
    assert isinstance(result, Completion)
    assert result.samples.shape == (5, 28, 28) and result.baseline.shape == (28, 28)
    assert result.x.shape == (28, 28) and result.known_mask.shape == (28, 28)
    known = input_mask(k).numpy()
    assert np.array_equal(result.known_mask, known)
    assert np.array_equal(result.baseline[known], image[known])
    assert np.array_equal(result.samples[:, known], np.broadcast_to(image[known], (5, known.sum())))
    assert np.all(result.x[~known] == -1) and np.array_equal(result.x[known], image[known])
    # unknown pixels are the models' predictions: probabilities, and the CVAE's differ
    assert np.all((result.samples >= 0) & (result.samples <= 1))
    with torch.no_grad():
        expected = cvae.baseline(torch.from_numpy(result.x.reshape(1, 784))).numpy()
    np.testing.assert_array_equal(result.baseline[~known], expected.reshape(28, 28)[~known])
    assert (result.num_quadrants, result.mask_match) == (k, 1.0)


def test_inputs_of_every_kind_give_the_same_result(cvae, image):
    reference = complete_digit(image, 2, cvae=cvae)
    for variant in (torch.from_numpy(image), image.reshape(784), image.astype(np.float64)):
        other = complete_digit(variant, 2, cvae=cvae)
        np.testing.assert_array_equal(other.samples, reference.samples)


def test_seeded_and_global_rng_untouched(cvae, image):
    torch.manual_seed(1)
    state = torch.get_rng_state()
    a = complete_digit(image, 1, cvae=cvae, seed=3)
    assert torch.equal(torch.get_rng_state(), state)
    b = complete_digit(image, 1, cvae=cvae, seed=3)
    c = complete_digit(image, 1, cvae=cvae, seed=4)
    np.testing.assert_array_equal(a.samples, b.samples)
    assert not np.array_equal(a.samples, c.samples)


def test_mask_equal_to_a_layout_gives_that_layout(cvae, image):
    by_k = complete_digit(image, 3, cvae=cvae)
    by_mask = complete_digit(image, known_mask=input_mask(3).numpy(), cvae=cvae)
    assert (by_mask.num_quadrants, by_mask.mask_match) == (3, 1.0)
    np.testing.assert_array_equal(by_mask.samples, by_k.samples)
    np.testing.assert_array_equal(by_mask.baseline, by_k.baseline)


def test_mask_picks_models_by_best_layout_and_warns_when_far(image, toy_config):
    models = {}
    for k in (1, 2, 3):
        torch.manual_seed(k)
        models[k] = build_cvae(BaselineNet(toy_config), toy_config).eval()
    mask = input_mask(2).numpy().copy()
    mask[:3, 14:17] = True                       # the left half and a few more pixels
    assert best_layout(mask)[0] == 2
    with warnings.catch_warnings():
        warnings.simplefilter("error")           # a close match does not warn
        result = complete_digit(image, known_mask=torch.from_numpy(mask), cvae=models)
    assert result.num_quadrants == 2 and 0.9 < result.mask_match < 1
    assert np.array_equal(result.samples[:, mask], np.broadcast_to(image[mask], (8, mask.sum())))
    expected = complete_digit(image, known_mask=mask, cvae=models[2])
    np.testing.assert_array_equal(result.samples, expected.samples)
    checker = np.indices((28, 28)).sum(0) % 2 == 0  # half the pixels, like no layout
    with pytest.warns(UserWarning, match="matches no trained layout"):
        far = complete_digit(image, known_mask=checker, cvae=models)
    assert far.mask_match < 0.8
    assert np.array_equal(far.baseline[checker], image[checker])
    with pytest.raises(ValueError, match="no model for 2"):
        complete_digit(image, 2, cvae={1: models[1]})


@pytest.mark.parametrize("bad, message", [
    (np.zeros((28, 27)), "one 28 x 28 image or 784"),
    (np.zeros((1, 28, 28)), "for a batch call complete_digit once"),
    (np.full((28, 28), 255.0), "in \\[0, 1\\].*divide by 255"),
    (np.full((28, 28), -0.5), "in \\[0, 1\\]"),
    (np.where(np.eye(28) > 0, np.nan, 0.0), "NaN or infinite"),
    (np.where(np.eye(28) > 0, np.inf, 0.0), "NaN or infinite"),
    (np.array([["a"] * 28] * 28), "numbers"),
])
def test_bad_images_raise_clear_errors(cvae, bad, message):
    with pytest.raises(ValueError, match=message):
        complete_digit(bad, 1, cvae=cvae)


def test_bad_layouts_and_masks_raise_clear_errors(cvae, image):
    mask = input_mask(1).numpy()
    with pytest.raises(ValueError, match="exactly one of num_quadrants .* not both"):
        complete_digit(image, 1, mask, cvae=cvae)
    with pytest.raises(ValueError, match="exactly one of num_quadrants .* not neither"):
        complete_digit(image, cvae=cvae)
    with pytest.raises(ValueError, match="1, 2 or 3"):
        complete_digit(image, 4, cvae=cvae)
    with pytest.raises(ValueError, match="boolean.*mask > 0.5"):
        complete_digit(image, known_mask=mask.astype(float), cvae=cvae)
    with pytest.raises(ValueError, match="shape \\(28, 28\\)"):
        complete_digit(image, known_mask=mask[:, :14], cvae=cvae)
    with pytest.raises(ValueError, match="no known pixel"):
        complete_digit(image, known_mask=np.zeros((28, 28), bool), cvae=cvae)
    with pytest.raises(ValueError, match="no unknown pixel"):
        complete_digit(image, known_mask=np.ones((28, 28), bool), cvae=cvae)
    with pytest.raises(ValueError, match="num_samples"):
        complete_digit(image, 1, cvae=cvae, num_samples=0)
    with pytest.raises(ValueError, match="needs cvae"):
        complete_digit(image, 1, cvae=None)


def test_drawn_digit_and_figure(cvae):
    seven = draw_digit_strokes("7")
    assert seven.shape == (28, 28) and seven.dtype == np.float32
    assert seven.min() == 0.0 and seven.max() == 1.0
    assert 0 < ((seven > 0) & (seven < 1)).sum()          # anti-aliased edges
    assert seven[6, 14] == 1.0 and seven[0, 0] == 0.0     # on the top bar; a corner is blank
    line = draw_digit_strokes([[(4.0, 10.0), (20.0, 10.0)]], thickness=2.0)
    assert line[10, 4:21].min() == 1.0 and line[8, 12] == 0.0 and line[11, 12] == 0.5
    with pytest.raises(ValueError, match="no strokes"):
        draw_digit_strokes("8")
    result = complete_digit(seven, 2, cvae=cvae, num_samples=4)
    fig = plot_completion(result)
    assert len(fig.axes) == 6
    fig.canvas.draw()
    assert fig._repr_png_().startswith(b"\x89PNG")  # shown as an image under any backend
