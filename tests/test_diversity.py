"""Identity diversity: `assemble`, the metrics against hand-computed values on test doubles (a
fake CVAE whose samples are known and a classifier that reads one pixel), entropy of a known
histogram, seeding, the ambiguous-input picker and its figure, the table on tiny models, and
`ambiguous_examples` falling from the strict criterion to the loose ones exactly when the stricter
finds nothing."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from cvae_utils.variant_models import build_cvae
from cvae_utils.config import Budget
from cvae_utils.data import Split, make_quadrant_data
from cvae_utils.diversity import (CRITERIA, AmbiguousInput, ambiguous_examples, assemble,
                                  class_histogram, diversity_frame, diversity_table,
                                  find_ambiguous, histogram_entropy, identity_diversity)
from cvae_utils.networks import CVAE, BaselineNet
from cvae_utils.plot_results import plot_identity_groups

ID_PIXEL = 27 * 28        # bottom-left corner: an input pixel for k = 1, 2, 3; carries the input id
READ_PIXEL = 783          # bottom-right corner: an output pixel for k = 1, 2, 3; carries the digit


class PixelClassifier(nn.Module):
    """Reads the digit written in pixel 783 as value digit / 10, sure of it unless told not."""

    def __init__(self, unsure_digit: int | None = None):
        super().__init__()
        self.unsure_digit = unsure_digit

    def forward(self, images):
        digit = (images.reshape(len(images), -1)[:, READ_PIXEL] * 10).round().long()
        logits = 20.0 * nn.functional.one_hot(digit.clamp(0, 9), 10).float()
        if self.unsure_digit is not None:   # that digit only just wins: probability about 0.5
            logits[digit == self.unsure_digit, (self.unsure_digit + 1) % 10] = 19.9
        return logits


# the digits the fake CVAE's samples show, per input (rows) and sample (columns)
SAMPLE_DIGITS = torch.tensor([[3, 3, 3, 3],     # one digit: entropy 0
                              [3, 5, 3, 5],     # two digits 2/2: log 2; tie -> mode 3
                              [1, 2, 3, 4],     # four digits: log 4; tie -> mode 1
                              [7, 7, 9, 7]])    # 3/1: H(3/4, 1/4)
LABELS = torch.tensor([3, 5, 4, 7])
BASELINE_DIGITS = torch.tensor([3, 3, 4, 1])    # baseline right on inputs 0 and 2


class FakeCVAE(nn.Module):
    """`sample` returns images whose pixel 783 shows the digit of SAMPLE_DIGITS for the input."""

    def __init__(self):
        super().__init__()
        self.baseline = FakeBaseline()

    def sample(self, x, num_samples=1):
        ids = (x[:, ID_PIXEL] * 10).round().long()                     # (n,)
        out = torch.full((num_samples, len(x), 784), 0.5)
        out[:, :, READ_PIXEL] = SAMPLE_DIGITS[ids].T[:num_samples] / 10
        out[:, :, ID_PIXEL] = 0.9   # an input pixel: assemble must not take it from the sample
        return out


class FakeBaseline(nn.Module):
    def forward(self, x):
        ids = (x[:, ID_PIXEL] * 10).round().long()
        out = torch.full((len(x), 784), 0.5)
        out[:, READ_PIXEL] = BASELINE_DIGITS[ids] / 10
        return out


def fake_split() -> Split:
    images = torch.zeros(4, 28, 28)
    images.view(4, 784)[:, ID_PIXEL] = torch.arange(4) / 10
    images.view(4, 784)[:, READ_PIXEL] = 0.0   # the truth's pixel is never what is read
    return Split(images, LABELS.clone())


def test_assemble_keeps_x_and_takes_y_from_predictions():
    g = torch.Generator().manual_seed(0)
    images = torch.rand(5, 784, generator=g)
    data = make_quadrant_data(Split(images.reshape(5, 28, 28), torch.zeros(5)), 2)
    y_pred = torch.rand(3, 5, 784, generator=g)                         # (S, N, 784)
    out = assemble(data.x, y_pred)
    assert out.shape == (3, 5, 784)
    known = data.x >= 0
    assert torch.equal(out[:, known], data.x[known].expand(3, -1))
    assert torch.equal(out[:, ~known], y_pred[:, ~known])
    # square images work the same; y pixels of x's shape broadcast too
    square = assemble(data.x.reshape(5, 28, 28), y_pred.reshape(3, 5, 28, 28))
    assert torch.equal(square.reshape(3, 5, 784), out)
    with pytest.raises(ValueError, match="shape"):
        assemble(data.x, torch.rand(3, 5, 783))


def test_histogram_and_entropy_by_hand():
    counts = class_histogram(SAMPLE_DIGITS)
    assert counts.shape == (4, 10) and counts.sum(-1).tolist() == [4, 4, 4, 4]
    assert counts[3, 7] == 3 and counts[3, 9] == 1
    entropy = histogram_entropy(counts)
    expected = [0.0, math.log(2), math.log(4), -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))]
    torch.testing.assert_close(entropy, torch.tensor(expected, dtype=torch.float64))
    assert histogram_entropy(torch.tensor([[0, 5, 0, 5]])).item() == pytest.approx(math.log(2))


@pytest.mark.parametrize("chunk_size", [1, 3, 512])
def test_metrics_against_hand_computed_values(chunk_size):
    result = identity_diversity(FakeCVAE(), PixelClassifier(), fake_split(), num_quadrants=1,
                                num_samples=4, chunk_size=chunk_size)
    assert torch.equal(result.sample_classes, SAMPLE_DIGITS)
    assert torch.equal(result.baseline_classes, BASELINE_DIGITS)
    assert (result.num_inputs, result.num_samples, result.num_quadrants) == (4, 4, 1)
    assert result.multi_class_share == 3 / 4
    h = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert result.mean_entropy == pytest.approx((0 + math.log(2) + math.log(4) + h) / 4)
    assert result.mode_accuracy == 2 / 4            # modes 3, 3 (tie), 1 (tie), 7
    assert result.sample_accuracy == (4 + 2 + 1 + 3) / 16
    assert result.baseline_accuracy == 2 / 4
    assert result.mean_distinct == (1 + 2 + 4 + 2) / 4
    frame = diversity_frame([result])
    assert frame.loc["mean entropy of sample digits (nats)", "1 quadrant"] == result.mean_entropy
    assert frame.loc["baseline: completion shows true digit", "1 quadrant"] == 0.5


def test_seed_gives_identical_numbers_and_leaves_global_rng_alone(tiny_data, toy_config):
    torch.manual_seed(0)
    cvae = build_cvae(BaselineNet(toy_config), toy_config).eval()
    torch.manual_seed(0)
    classifier = nn.Sequential(nn.Linear(784, 10)).eval()
    state = torch.get_rng_state()
    a = identity_diversity(cvae, classifier, tiny_data.test, 2, num_samples=6, seed=7)
    assert torch.equal(torch.get_rng_state(), state)
    b = identity_diversity(cvae, classifier, tiny_data.test, 2, num_samples=6, seed=7)
    c = identity_diversity(cvae, classifier, tiny_data.test, 2, num_samples=6, seed=8)
    assert a.to_dict() == b.to_dict() and torch.equal(a.sample_classes, b.sample_classes)
    assert not torch.equal(a.sample_classes, c.sample_classes)


def test_find_ambiguous_and_figure():
    split = fake_split()
    found = find_ambiguous(FakeCVAE(), PixelClassifier(), split, 1, num_samples=4, min_count=1,
                           pairs=((3, 5), (7, 9), (4, 9)))
    # input 1 (a 5 read as 3 or 5) and input 3 (a 7 read as 7 or 9); input 2 (a 4) has no 9
    assert [(f.index, f.pair) for f in found] == [(1, (3, 5)), (3, (7, 9))]
    first = found[0]
    assert isinstance(first, AmbiguousInput) and first.label == 5
    assert first.groups[3].shape == (2, 28, 28) and first.groups[5].shape == (2, 28, 28)
    assert first.counts == {3: 2, 5: 2} and first.num_samples == 4
    pixels = first.groups[3].reshape(2, 784)
    assert pixels[:, READ_PIXEL].tolist() == pytest.approx([0.3, 0.3])   # from the samples
    assert pixels[:, ID_PIXEL].tolist() == pytest.approx([0.1, 0.1])     # from the input
    assert first.x.shape == (28, 28) and (first.x == -1).sum() == 3 * 196
    assert found[1].counts == {7: 3, 9: 1} and found[1].num_unsure == 0
    # samples the classifier is unsure about count for no digit
    unsure = find_ambiguous(FakeCVAE(), PixelClassifier(unsure_digit=3), split, 1,
                            num_samples=4, min_count=1)
    assert [f.index for f in unsure] == [3]
    assert find_ambiguous(FakeCVAE(), PixelClassifier(unsure_digit=3), split, 1, num_samples=4,
                          min_count=1, min_confidence=0.0)[0].counts == {3: 2, 5: 2}
    assert torch.equal(class_histogram(torch.tensor([[1, 1, 2]]),
                                       include=torch.tensor([[True, False, True]]))[0, :3],
                       torch.tensor([0, 1, 1]))
    # min_count=2 excludes the 3-to-1 split
    assert [f.index for f in find_ambiguous(FakeCVAE(), PixelClassifier(), split, 1,
                                            num_samples=4)] == [1]
    fig = plot_identity_groups(found, max_per_group=3)
    assert len(fig.axes) == 2 * 4
    fig.canvas.draw()
    assert fig._repr_png_().startswith(b"\x89PNG")  # shown as an image under any backend
    with pytest.raises(ValueError, match="at least one input"):
        plot_identity_groups([])


def test_diversity_table_on_tiny_cached_models(tiny_data, tmp_path, toy_config):
    budget = Budget("smoke", num_train=64, num_val=32, num_test=16, max_epochs=1)
    config = toy_config.replace(batch_size=32)
    classifier = nn.Sequential(nn.Linear(784, 10))
    frame = diversity_table((1, 3), config, budget, tiny_data, classifier, num_samples=3,
                            device="cpu", progress=False, cache=tmp_path)
    assert list(frame.columns) == ["1 quadrant", "3 quadrants"]
    assert frame.attrs == {"num_samples": 3, "num_inputs": 16}
    assert ((frame.loc["inputs with >= 2 digits among samples"] >= 0)
            & (frame.loc["inputs with >= 2 digits among samples"] <= 1)).all()


# ------------------------------------------------------------------- ambiguous_examples
class DigitsCVAE:
    """Samples whose pixel 783 shows, for input i, the digits ``digits[i]`` in turn."""

    def __init__(self, digits):
        self.digits = torch.tensor(digits)                               # (N, S)

    def sample(self, x, num_samples=1):
        ids = (x[:, ID_PIXEL] * 10).round().long()                      # (n,)
        out = torch.full((num_samples, len(x), 784), 0.5)
        out[:, :, READ_PIXEL] = self.digits[ids].T[:num_samples] / 10
        return out


def split_of(labels) -> Split:
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
    examples = ambiguous_examples(DigitsCVAE(digits), PixelClassifier(), split_of(labels), 1,
                                  num_samples=4)
    assert examples.criterion == criterion and examples.description == CRITERIA[criterion]
    assert [(e.index, e.pair) for e in examples.inputs] == chosen
    first = examples.inputs[0]
    assert first.num_samples == 4 and first.x.shape == (28, 28)
    assert sum(len(first.groups[d]) for d in first.pair) <= 4
    fig = plot_identity_groups(examples.inputs)
    fig.canvas.draw()


def test_most_varied_groups_and_limits():
    examples = ambiguous_examples(DigitsCVAE([[2, 2, 2, 2], [4, 8, 4, 4]]), PixelClassifier(),
                                  split_of([7, 7]), 3, num_samples=4, max_inputs=1)
    (only,) = examples.inputs
    assert only.counts == {4: 3, 8: 1} and only.groups[4].shape == (3, 28, 28)
    assert only.groups[4].reshape(3, 784)[:, READ_PIXEL].tolist() == pytest.approx([0.4] * 3)
    assert only.num_quadrants == 3 and (only.x == -1).sum() == 196
    with pytest.raises(ValueError, match="max_inputs"):
        ambiguous_examples(DigitsCVAE([[1]]), PixelClassifier(), split_of([1]), 1, max_inputs=0)
    with pytest.raises(ValueError, match="at least one image"):
        ambiguous_examples(DigitsCVAE([[1]]), PixelClassifier(), split_of([1]).head(0), 1)
