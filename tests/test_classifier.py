"""The digit classifier: it learns a separable toy problem, its accuracy is a plain count, its
training is reproducible and leaves the global random state alone, and it round-trips the cache."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import cvae_utils.classifier as classifier_module
from cvae_utils.classifier import (ClassifierConfig, DigitClassifier, classifier_accuracy,
                                   classifier_key, classifier_path, predict_digits, random_shift,
                                   train_classifier, trained_classifier)
from cvae_utils.config import Budget
from cvae_utils.data import MNISTData, Split

SMALL = ClassifierConfig(hidden=(32,), batch_size=16, patience=2, max_shift=0, lr=3e-3)
TINY = Budget("smoke", num_train=200, num_val=100, num_test=100, max_epochs=4)


def toy_data(seed: int = 0) -> MNISTData:
    """Digit c is a bright 2-row band at rows 2c..2c+1, plus faint noise: linearly separable."""
    g = torch.Generator().manual_seed(seed)

    def split(n: int) -> Split:
        labels = torch.randint(0, 10, (n,), generator=g)
        images = 0.1 * torch.rand(n, 28, 28, generator=g)
        rows = torch.arange(28)
        band = (rows[None, :] // 2 == labels[:, None]).float()          # (n, 28)
        images = torch.maximum(images, band[:, :, None].expand(n, 28, 28))
        return Split(images, labels)

    return MNISTData(split(200), split(100), split(100))


class FixedLogits(nn.Module):
    """A 'classifier' whose prediction for image i is the value of its pixel 0 times 10."""

    def forward(self, images):
        digit = (images.reshape(len(images), -1)[:, 0] * 10).round().long()
        return torch.nn.functional.one_hot(digit, 10).float()


def test_classifier_learns_a_separable_problem():
    data = toy_data()
    model, history = train_classifier(data, SMALL, TINY, device="cpu")
    assert not model.training
    assert 1 <= history.num_epochs <= 4 and history.best_val_loss == min(history.val_loss)
    assert all(0 < seconds < 60 for seconds in history.seconds)  # each epoch's wall time
    assert classifier_accuracy(model, data.test) >= 0.95
    assert predict_digits(model, data.test.images).shape == (100,)


def test_accuracy_is_a_plain_count():
    labels = torch.tensor([0, 1, 2, 3, 4, 5, 6, 7])
    predicted = torch.tensor([0, 1, 2, 9, 4, 9, 9, 7])     # 5 of 8 right, by hand
    images = torch.zeros(8, 28, 28)
    images[:, 0, 0] = predicted / 10
    split = Split(images, labels)
    assert classifier_accuracy(FixedLogits(), split) == pytest.approx(5 / 8)
    # chunking does not change predictions; flat and square images give the same
    assert predict_digits(FixedLogits(), images, chunk_size=3).tolist() == predicted.tolist()
    assert predict_digits(FixedLogits(), images.reshape(8, 784)).tolist() == predicted.tolist()
    with pytest.raises(ValueError, match="at least one image"):
        classifier_accuracy(FixedLogits(), split.head(0))


def test_training_is_seeded_and_leaves_global_rng_alone():
    data = toy_data()
    config = SMALL.replace(max_shift=2, dropout=0.3)
    torch.manual_seed(123)
    state = torch.get_rng_state()
    _, h1 = train_classifier(data, config, TINY, device="cpu")
    assert torch.equal(torch.get_rng_state(), state)
    _, h2 = train_classifier(data, config, TINY, device="cpu")
    assert h1.train_loss == h2.train_loss and h1.val_loss == h2.val_loss
    _, h3 = train_classifier(data, config.replace(seed=1), TINY, device="cpu")
    assert h3.train_loss != h1.train_loss


def test_random_shift_moves_images_within_bounds():
    images = torch.zeros(64, 28, 28)
    images[:, 14, 14] = 1.0
    shifted = random_shift(images, 2, torch.Generator().manual_seed(0))
    assert shifted.shape == images.shape and torch.all(shifted.sum((1, 2)) == 1)
    rows, cols = shifted.nonzero()[:, 1], shifted.nonzero()[:, 2]
    assert rows.min() >= 12 and rows.max() <= 16 and cols.min() >= 12 and cols.max() <= 16
    assert len(set(zip(rows.tolist(), cols.tolist()))) > 1   # each image its own offset
    assert random_shift(images, 0, torch.Generator()) is images


def test_config_is_validated():
    with pytest.raises(ValueError, match="hidden"):
        ClassifierConfig(hidden=())
    with pytest.raises(ValueError, match="dropout"):
        ClassifierConfig(dropout=1.0)
    assert ClassifierConfig(hidden=[8, 4]).hidden == (8, 4)


def test_cache_round_trip(tmp_path, monkeypatch):
    data = toy_data()
    cache = tmp_path / "models"
    model, history = trained_classifier(TINY, data, SMALL, device="cpu", progress=False,
                                        cache=cache)
    path = classifier_path(SMALL, TINY, cache)
    assert path.exists() and path.name.startswith("classifier-smoke-")
    assert list(cache.iterdir()) == [path]
    assert classifier_key(SMALL, TINY)["kind"] == "classifier"

    def no_training(*args, **kwargs):
        raise AssertionError("the cached classifier should have been loaded")

    monkeypatch.setattr(classifier_module, "train_classifier", no_training)
    loaded, loaded_history = trained_classifier(TINY, data, SMALL, device="cpu", progress=False,
                                                cache=cache)
    assert isinstance(loaded, DigitClassifier) and not loaded.training
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name
    assert loaded_history.val_loss == history.val_loss
    # another config is another file: it would train (and here fail loudly)
    with pytest.raises(AssertionError, match="cached classifier"):
        trained_classifier(TINY, data, SMALL.replace(seed=5), device="cpu", progress=False,
                           cache=cache)
