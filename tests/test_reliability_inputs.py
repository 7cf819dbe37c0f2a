"""Models know the layout they were trained for, and every function that takes a model and data
checks that they fit; bad inputs get an error that names the problem and the fix."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from cvae_utils import (QuadrantData, baseline_ncll, cll_table, complete_digit,
                        cvae_importance_sampling, cvae_mc_prior, cvae_neg_elbo, make_quadrant_data,
                        mask_quadrants, train_baseline, train_cvae)
from cvae_utils.tables import check_quadrant_counts

ESTIMATORS = [cvae_neg_elbo, cvae_mc_prior, cvae_importance_sampling]


@pytest.fixture(scope="module")
def models(small_config):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from conftest import synthetic_data

    data = synthetic_data()
    train, val = make_quadrant_data(data.train, 1), make_quadrant_data(data.val, 1)
    baseline, _ = train_baseline(train, val, small_config.baseline, max_epochs=1, device="cpu")
    cvae, _ = train_cvae(train, val, baseline, small_config, max_epochs=1, device="cpu")
    return data, baseline, cvae


def test_trained_models_record_their_layout(models):
    _, baseline, cvae = models
    from cvae_utils import input_mask

    for model in (baseline, cvae, cvae.baseline):
        assert torch.equal(model.input_mask, input_mask(1).reshape(-1))


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_a_model_of_one_layout_refuses_data_of_another(models, estimator):
    data, baseline, cvae = models
    two = make_quadrant_data(data.test, 2)
    with pytest.raises(ValueError, match="trained for the 1-quadrant layout.*has the 2-quadrant layout"):
        estimator(cvae, two, num_samples=2)
    with pytest.raises(ValueError, match="trained for the 1-quadrant layout.*has the 2-quadrant layout"):
        baseline_ncll(baseline, two)


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_swapped_x_and_y_are_refused(models, estimator):
    data, _, cvae = models
    test = make_quadrant_data(data.test, 1)
    swapped = QuadrantData(test.y, test.x, test.labels, 1)
    with pytest.raises(ValueError, match="has x and y swapped"):
        estimator(cvae, swapped, num_samples=2)


@pytest.mark.parametrize("change, match", [
    (lambda t: QuadrantData(t.x, torch.where(t.y >= 0, t.y * 255, t.y), t.labels, 1),
     "pixels in \\[0, 1\\].*divided by 255"),
    (lambda t: QuadrantData(t.x.double(), t.y.double(), t.labels, 1), "float32, got torch.float64"),
    (lambda t: QuadrantData(torch.where(t.x >= 0, float("nan"), t.x), t.y, t.labels, 1),
     "x holds NaN"),
    (lambda t: QuadrantData(t.x[:0], t.y[:0], t.labels[:0], 1), "N >= 1"),
])
def test_bad_values_are_refused_by_the_estimators_and_the_baseline(models, change, match):
    data, baseline, cvae = models
    bad = change(make_quadrant_data(data.test, 1))
    for estimator in ESTIMATORS:
        with pytest.raises((ValueError, TypeError), match=match):
            estimator(cvae, bad, num_samples=2)
    with pytest.raises((ValueError, TypeError), match=match):
        baseline_ncll(baseline, bad)


def test_a_split_instead_of_masked_data_is_explained(models):
    data, _, cvae = models
    with pytest.raises(TypeError, match="must be a QuadrantData.*make_quadrant_data"):
        cvae_importance_sampling(cvae, data.test, num_samples=2)


@pytest.mark.parametrize("count", [0, -1, 1.5, True])
def test_a_bad_sample_count_is_refused(models, count):
    data, _, cvae = models
    with pytest.raises(ValueError, match="num_samples must be an int >= 1"):
        cvae.sample(make_quadrant_data(data.test, 1).x[:2], count)


def test_images_of_the_wrong_kind_are_explained():
    images = np.random.default_rng(0).random((2, 28, 28), dtype=np.float32)
    with pytest.raises(TypeError, match="torch.Tensor, got ndarray.*torch.from_numpy"):
        mask_quadrants(images, 1)
    with pytest.raises(TypeError, match="floats in \\[0, 1\\], got dtype torch.uint8.*/ 255"):
        mask_quadrants(torch.zeros(2, 28, 28, dtype=torch.uint8), 1)


def test_one_quadrant_count_is_a_table_of_one_column_and_nonsense_is_explained():
    assert check_quadrant_counts(1) == [1]
    assert check_quadrant_counts((3, 1)) == [3, 1]
    with pytest.raises(ValueError, match="e.g. \\(1, 2, 3\\) or 1"):
        check_quadrant_counts("12")
    with pytest.raises(ValueError, match="the int 1, 2 or 3"):
        cll_table(4)


def test_complete_digit_refuses_a_model_of_another_layout(models):
    _, _, cvae = models  # trained for one quadrant
    image = np.zeros((28, 28), dtype=np.float32)
    with pytest.raises(ValueError, match="trained for the 1-quadrant layout and this completion"):
        complete_digit(image, num_quadrants=2, cvae=cvae)
    completion = complete_digit(image, num_quadrants=1, cvae=cvae, num_samples=2)
    assert completion.samples.shape == (2, 28, 28)


def test_a_layout_of_its_own_trains_and_is_then_required(models, small_config):
    data, _, _ = models
    right = torch.zeros(28, 28, dtype=torch.bool)
    right[:, 14:] = True

    def masked(split):
        images = split.images.reshape(len(split), -1)
        flat = right.reshape(-1)
        return QuadrantData(torch.where(flat, images, -1.0), torch.where(flat, -1.0, images),
                            split.labels, 2)

    baseline, _ = train_baseline(masked(data.train), masked(data.val), small_config.baseline,
                                 max_epochs=1, device="cpu")
    assert baseline_ncll(baseline, masked(data.test)).mean > 0
    with pytest.raises(ValueError, match="trained for a layout of its own .392 input pixels"):
        baseline_ncll(baseline, make_quadrant_data(data.test, 1))
    with pytest.raises(ValueError, match="has x and y swapped"):  # the left half is its mirror
        baseline_ncll(baseline, make_quadrant_data(data.test, 2))


def test_training_refuses_targets_in_0_255_before_it_starts(models, small_config):
    data, baseline, _ = models
    train = make_quadrant_data(data.train, 1)
    scaled = QuadrantData(train.x, torch.where(train.y >= 0, train.y * 255, train.y),
                          train.labels, 1)
    with pytest.raises(ValueError, match="training data: y must hold pixels in \\[0, 1\\]"):
        train_cvae(scaled, make_quadrant_data(data.val, 1), baseline, small_config, max_epochs=1,
                   device="cpu")
    with pytest.raises(ValueError, match="trained for the 1-quadrant layout.*has the 2-quadrant layout"):
        train_cvae(make_quadrant_data(data.train, 2), make_quadrant_data(data.val, 2), baseline,
                   small_config, max_epochs=1, device="cpu")


@pytest.mark.parametrize("kwargs, error, match", [
    ({"config": "book"}, TypeError, "config must be a CVAEConfig"),
    ({"data": "mnist"}, TypeError, "data must be the MNISTData of load_mnist"),
    ({"budget": "huge"}, ValueError, "unknown budget 'huge'"),
    ({"budget": " paper"}, ValueError, "did you mean 'paper'"),
])
def test_the_cache_functions_explain_bad_arguments(kwargs, error, match, tmp_path, small_config):
    from cvae_utils import trained_cvae

    with pytest.raises(error, match=match):
        trained_cvae(1, **{"cache": tmp_path, "budget": "smoke", **kwargs})
    with pytest.raises(ValueError, match="the int 1, 2 or 3"):
        trained_cvae(4, small_config, "smoke", cache=tmp_path)


def test_the_variants_budget_follows_the_same_rule_as_the_books(monkeypatch):
    from cvae_utils import variants_budget

    monkeypatch.setenv("CVAE_VARIANTS_BUDGET", " quick")
    with pytest.raises(ValueError, match="CVAE_VARIANTS_BUDGET.*did you mean 'quick'"):
        variants_budget()
    monkeypatch.setenv("CVAE_VARIANTS_BUDGET", "quick")
    assert variants_budget().name == "quick"


def test_an_unknown_device_is_named(tmp_path, small_config):
    from cvae_utils import trained_cvae

    with pytest.raises(ValueError, match="unknown device 'cpux'"):
        trained_cvae(1, small_config, "smoke", device="cpux", cache=tmp_path)
