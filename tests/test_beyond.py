"""Tests of cvae_utils.beyond: `ambiguous_examples` falls from the strict criterion to the loose
ones exactly when the stricter finds nothing, on a fake CVAE whose samples show known digits and a
classifier that reads the digit from one pixel."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from cvae_utils.beyond import CRITERIA, ambiguous_examples
from cvae_utils.data import Split
from cvae_utils.diversity import plot_identity_groups

ID_PIXEL = 27 * 28   # bottom-left corner: an input pixel for every layout; holds the input's id
READ_PIXEL = 783     # bottom-right corner: an output pixel for every layout; holds the digit


class PixelClassifier(nn.Module):
    """Reads the digit written in pixel 783 as value digit / 10, with probability near 1."""

    def forward(self, images):
        digit = (images.reshape(len(images), -1)[:, READ_PIXEL] * 10).round().long()
        return 20.0 * nn.functional.one_hot(digit.clamp(0, 9), 10).float()


class FakeCVAE:
    """Samples whose pixel 783 shows, for input i, the digits ``digits[i]`` in turn."""

    def __init__(self, digits):
        self.digits = torch.tensor(digits)                               # (N, S)

    def sample(self, x, num_samples=1):
        ids = (x[:, ID_PIXEL] * 10).round().long()                      # (n,)
        out = torch.full((num_samples, len(x), 784), 0.5)
        out[:, :, READ_PIXEL] = self.digits[ids].T[:num_samples] / 10
        return out


def split(labels) -> Split:
    images = torch.zeros(len(labels), 28, 28)
    images.view(len(labels), 784)[:, ID_PIXEL] = torch.arange(len(labels)) / 10
    return Split(images, torch.tensor(labels))


@pytest.mark.parametrize("digits, labels, criterion, chosen", [
    # input 1, a 5 whose samples read 3 and 5: a look-alike pair
    ([[3, 3, 3, 3], [3, 5, 3, 5]], [3, 5], "look-alike pairs", [(1, (3, 5))]),
    # input 0, a 1 whose samples read 0 and 1: no look-alike pair, but two digits
    ([[0, 1, 1, 1], [6, 6, 6, 6]], [1, 6], "any two digits", [(0, (0, 1))]),
    # no sample shows the true digit: the inputs with the most distinct digits first
    ([[2, 2, 2, 2], [4, 8, 4, 4]], [7, 7], "most varied", [(1, (4, 8)), (0, (2, 0))]),
])
def test_criteria_from_strict_to_loose(digits, labels, criterion, chosen):
    examples = ambiguous_examples(FakeCVAE(digits), PixelClassifier(), split(labels), 1,
                                  num_samples=4)
    assert examples.criterion == criterion and examples.description == CRITERIA[criterion]
    assert [(e.index, e.pair) for e in examples.inputs] == chosen
    first = examples.inputs[0]
    assert first.num_samples == 4 and first.x.shape == (28, 28)
    assert sum(len(first.groups[d]) for d in first.pair) <= 4
    fig = plot_identity_groups(examples.inputs)
    fig.canvas.draw()


def test_most_varied_groups_and_limits():
    examples = ambiguous_examples(FakeCVAE([[2, 2, 2, 2], [4, 8, 4, 4]]), PixelClassifier(),
                                  split([7, 7]), 3, num_samples=4, max_inputs=1)
    (only,) = examples.inputs
    assert only.counts == {4: 3, 8: 1} and only.groups[4].shape == (3, 28, 28)
    assert only.groups[4].reshape(3, 784)[:, READ_PIXEL].tolist() == pytest.approx([0.4] * 3)
    assert only.num_quadrants == 3 and (only.x == -1).sum() == 196
    with pytest.raises(ValueError, match="max_inputs"):
        ambiguous_examples(FakeCVAE([[1]]), PixelClassifier(), split([1]), 1, max_inputs=0)
    with pytest.raises(ValueError, match="at least one image"):
        ambiguous_examples(FakeCVAE([[1]]), PixelClassifier(), split([1]).head(0), 1)
