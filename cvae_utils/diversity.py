"""Identity diversity and the ambiguous examples: do the CVAE's completions of one input show
different digits? (chapter "Beyond the table").

The paper's figure 3 shows that, given one quadrant, the CVAE sometimes completes a "3" as a "5" or
a "4" as a "9", where the baseline can only draw one blurry average. Here that is counted. For each
test input, ``S`` completions are drawn from the CVAE (`CVAE.sample`), pasted into the input
(`assemble`: input pixels kept, output pixels from the sample) and read by the digit classifier of
`cvae_utils.classifier`. Per quadrant setting, `identity_diversity` reports:

- ``multi_class_share``: the share of inputs whose samples span two or more predicted digits;
- ``mean_entropy``: the mean over inputs of the entropy (nats) of the histogram of predicted
  digits of its samples (0 when all agree, log S at most);
- ``mode_accuracy``: how often the most common predicted digit of the samples is the true one
  (ties go to the smallest digit);
- ``sample_accuracy``: the share of all samples that read as the true digit;
- ``baseline_accuracy``: for comparison, how often the baseline's one completion reads as the
  true digit.

`diversity_frame` puts several settings in one pandas table and `diversity_table` builds it for
k = 1, 2, 3 from the cached models.

The examples. `find_ambiguous` picks inputs whose samples the classifier reads, confidently, as
both digits of a look-alike pair (3 and 5, 4 and 9, 7 and 9). Well-trained models give many; the
barely trained models of a ``smoke`` build may give none, and the chapter must still show a figure
that is true to its data. `ambiguous_examples` therefore tries the criteria of `CRITERIA` from
strict to loose and says which one it used:

1. ``"look-alike pairs"``: `find_ambiguous` as it is, a look-alike pair, at least two samples of
   each digit read with probability >= 0.9;
2. ``"any two digits"``: any pair of digits that includes the true one, at least one sample of
   each, whatever the classifier's confidence;
3. ``"most varied"``: failing both, the inputs whose samples show the most distinct digits,
   grouped by the two digits read most often (the second group may be empty).

`cvae_utils.plot_results.plot_identity_groups` draws the result.

Randomness: all sampling happens inside `torch.random.fork_rng` after seeding with ``seed``, so the
global random state is untouched and the same seed, chunk size and device give identical numbers;
the three criteria of `ambiguous_examples` read the same samples.
"""
from __future__ import annotations

import os
from contextlib import closing
from dataclasses import dataclass, field
from itertools import combinations
from typing import TYPE_CHECKING, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from .cache import trained_cvae
from .classifier import NUM_CLASSES, digit_probabilities, predict_digits, trained_classifier
from .config import Budget, CVAEConfig, check_int, get_budget
from .data import (IMAGE_SIDE, NUM_PIXELS, MNISTData, Split, check_num_quadrants, load_mnist,
                   make_quadrant_data, mask_quadrants)
from .networks import device_of

if TYPE_CHECKING:  # imported where used: pandas is slow to import
    import pandas as pd

__all__ = ["assemble", "class_histogram", "histogram_entropy", "IdentityDiversity",
           "identity_diversity", "diversity_frame", "diversity_table", "AmbiguousInput",
           "AMBIGUOUS_PAIRS", "find_ambiguous", "AmbiguousExamples", "ambiguous_examples",
           "CRITERIA", "sample_completions", "DEFAULT_DIVERSITY_SAMPLES", "INPUTS_PER_CHUNK"]

DEFAULT_DIVERSITY_SAMPLES = 16  # completions per input
INPUTS_PER_CHUNK = 512          # inputs per chunk: S * 512 completed images (25 MiB at S = 16)
AMBIGUOUS_PAIRS = ((3, 5), (4, 9), (7, 9))  # look-alike digits whose lower halves differ

# the criteria of `ambiguous_examples`, from strict to loose, in words a chapter can print
CRITERIA = {
    "look-alike pairs": "their samples are read, with probability at least 0.9, as both digits of "
                        "a look-alike pair (3 and 5, 4 and 9, 7 and 9), at least twice each",
    "any two digits": "their samples are read as two different digits, one of them the true "
                      "digit (no look-alike pair qualified, and the classifier's confidence is "
                      "not checked)",
    "most varied": "their samples show the most distinct digits (no input's samples included "
                   "the true digit and another one)",
}


def assemble(x: torch.Tensor, y_pred: torch.Tensor) -> torch.Tensor:
    """Complete images: the pixels of ``x`` where it has them, those of ``y_pred`` elsewhere.

    ``x``: (..., 784) or (..., 28, 28) with -1 at the missing pixels; ``y_pred``: predictions of
    the same image shape whose leading dimensions broadcast against x's, e.g. CVAE samples
    (S, N, 784) for inputs (N, 784). Returns the broadcast shape, e.g. (S, N, 784).
    """
    x, y_pred = torch.as_tensor(x), torch.as_tensor(y_pred)
    if x.shape[-1:] != (NUM_PIXELS,) and x.shape[-2:] != (IMAGE_SIDE, IMAGE_SIDE):
        raise ValueError(f"x must end in 784 pixels or 28 x 28, got shape {tuple(x.shape)}")
    image_dims = 1 if x.shape[-1] == NUM_PIXELS else 2
    if y_pred.shape[-image_dims:] != x.shape[-image_dims:]:
        raise ValueError(f"y_pred's images {tuple(y_pred.shape)} must have the shape of x's "
                         f"{tuple(x.shape)}")
    return torch.where(x >= 0, x.to(y_pred.dtype), y_pred)


def class_histogram(classes: torch.Tensor, num_classes: int = NUM_CLASSES,
                    include: torch.Tensor | None = None) -> torch.Tensor:
    """Counts of each class per row: ``classes`` (N, S) int -> (N, num_classes) int64.

    ``include``: optional (N, S) bool; only the entries where it is True are counted.
    """
    ones = (torch.ones_like(classes, dtype=torch.int64) if include is None
            else include.to(torch.int64))
    counts = torch.zeros(classes.shape[0], num_classes, dtype=torch.int64, device=classes.device)
    return counts.scatter_add_(1, classes.long(), ones)


def histogram_entropy(counts: torch.Tensor) -> torch.Tensor:
    """Entropy in nats of each row of a histogram of counts, (N, C) -> (N,) float64; 0 log 0 = 0."""
    p = counts.double() / counts.sum(-1, keepdim=True).double()
    return -torch.special.xlogy(p, p).sum(-1)


@dataclass(frozen=True, eq=False)  # holds arrays, so == is identity (compare fields)
class IdentityDiversity:
    """How many different digits the CVAE's completions show, for one quadrant setting.

    The shares and accuracies are plain floats in [0, 1]; ``mean_entropy`` is in nats. The
    per-input tensors (on the CPU) allow further analysis: ``sample_classes`` (N, S) digits read
    from the samples, ``baseline_classes`` (N,) from the baseline's completion, ``labels`` (N,).
    """

    num_quadrants: int
    num_inputs: int
    num_samples: int
    multi_class_share: float
    mean_entropy: float
    mode_accuracy: float
    sample_accuracy: float
    baseline_accuracy: float
    mean_distinct: float          # mean number of distinct digits among an input's samples
    sample_classes: torch.Tensor = field(repr=False)
    baseline_classes: torch.Tensor = field(repr=False)
    labels: torch.Tensor = field(repr=False)

    @classmethod
    def from_classes(cls, num_quadrants: int, sample_classes: torch.Tensor,
                     baseline_classes: torch.Tensor, labels: torch.Tensor) -> "IdentityDiversity":
        """The summary from the digits read: ``sample_classes`` (N, S), the others (N,)."""
        sample_classes, labels = sample_classes.cpu().long(), labels.cpu().long()
        baseline_classes = baseline_classes.cpu().long()
        counts = class_histogram(sample_classes)                         # (N, 10)
        distinct = (counts > 0).sum(-1)                                  # (N,)
        mode = counts.argmax(-1)          # first maximum: ties go to the smallest digit
        return cls(
            num_quadrants=num_quadrants,
            num_inputs=sample_classes.shape[0],
            num_samples=sample_classes.shape[1],
            multi_class_share=(distinct >= 2).double().mean().item(),
            mean_entropy=histogram_entropy(counts).mean().item(),
            mode_accuracy=(mode == labels).double().mean().item(),
            sample_accuracy=(sample_classes == labels[:, None]).double().mean().item(),
            baseline_accuracy=(baseline_classes == labels).double().mean().item(),
            mean_distinct=distinct.double().mean().item(),
            sample_classes=sample_classes, baseline_classes=baseline_classes, labels=labels,
        )

    def to_dict(self) -> dict:
        """The summary numbers (no tensors), e.g. for a table row or `myst_nb.glue`."""
        return {name: getattr(self, name) for name in (
            "num_quadrants", "num_inputs", "num_samples", "multi_class_share", "mean_entropy",
            "mode_accuracy", "sample_accuracy", "baseline_accuracy", "mean_distinct")}



def _check_positive(value, name: str) -> int:
    return check_int(name, value, 1, rule="a positive int")


@torch.no_grad()
def sample_completions(cvae, x: torch.Tensor, num_samples: int, seed: int = 0,
                       chunk_size: int = INPUTS_PER_CHUNK) -> Iterator[tuple[int, torch.Tensor]]:
    """Chunks of CVAE completions of ``x`` (N, 784): (start index, completed images (S, n, 784)
    on the CPU), each sample pasted into its input by `assemble`.

    Seeded by ``seed`` inside `fork_rng`: the caller's global random state is left alone, and
    the same seed, chunk size and device give the same samples.
    """
    device = device_of(cvae)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        for start in range(0, len(x), chunk_size):
            chunk = x[start:start + chunk_size].to(device)              # (n, 784)
            samples = cvae.sample(chunk, num_samples)                   # (S, n, 784)
            yield start, assemble(chunk, samples).cpu()                 # (S, n, 784)


def _quadrant_inputs(split: Split, num_quadrants: int) -> torch.Tensor:
    return make_quadrant_data(split, num_quadrants).x                   # (N, 784)


@torch.no_grad()
def identity_diversity(cvae, classifier: nn.Module, split: Split, num_quadrants: int,
                       baseline: nn.Module | None = None,
                       num_samples: int = DEFAULT_DIVERSITY_SAMPLES, seed: int = 0,
                       chunk_size: int = INPUTS_PER_CHUNK) -> IdentityDiversity:
    """Identity diversity of the CVAE's completions of every image of ``split`` (k quadrants).

    ``cvae`` needs ``sample(x, num_samples)`` -> (S, n, 784) pixel probabilities, and
    ``baseline`` (default ``cvae.baseline``) maps x (n, 784) to (n, 784) probabilities; both
    must belong to ``num_quadrants``. ``classifier`` maps images (n, 784) to digit logits (n, 10).
    Completions are classified as drawn (grey probabilities, not binarised).
    """
    k = check_num_quadrants(num_quadrants)
    _check_positive(num_samples, "num_samples")
    _check_positive(chunk_size, "chunk_size")
    if len(split) == 0:
        raise ValueError("identity_diversity needs a split with at least one image")
    baseline = baseline if baseline is not None else cvae.baseline
    x = _quadrant_inputs(split, k)                                       # (N, 784)
    sample_classes = torch.empty(len(x), num_samples, dtype=torch.int64)  # (N, S)
    baseline_classes = torch.empty(len(x), dtype=torch.int64)           # (N,)
    baseline_device = device_of(baseline)
    # closing(): on an error the generator ends at once, restoring the global random state
    with closing(sample_completions(cvae, x, num_samples, seed, chunk_size)) as chunks:
        for start, completed in chunks:
            n = completed.shape[1]
            classes = predict_digits(classifier, completed.reshape(-1, NUM_PIXELS))  # (S * n,)
            sample_classes[start:start + n] = classes.reshape(num_samples, n).T
            chunk = x[start:start + n]
            guess = baseline(chunk.to(baseline_device)).cpu()               # (n, 784)
            baseline_classes[start:start + n] = predict_digits(classifier, assemble(chunk, guess))
    return IdentityDiversity.from_classes(k, sample_classes, baseline_classes, split.labels)


def diversity_frame(results: Sequence[IdentityDiversity]) -> "pd.DataFrame":
    """Settings side by side: a pandas DataFrame with one column per quadrant count.

    Rows: share of inputs with >= 2 digits among their samples, mean entropy (nats), mean number
    of distinct digits, accuracy of the samples' most common digit, of single samples, and of the
    baseline's completion. Values are plain floats; format them for display.
    """
    import pandas as pd

    rows = {
        "inputs with >= 2 digits among samples": "multi_class_share",
        "mean entropy of sample digits (nats)": "mean_entropy",
        "mean number of distinct digits": "mean_distinct",
        "CVAE: most common digit is true": "mode_accuracy",
        "CVAE: sample shows true digit": "sample_accuracy",
        "baseline: completion shows true digit": "baseline_accuracy",
    }
    columns = {f"{r.num_quadrants} quadrant{'s' if r.num_quadrants > 1 else ''}":
               [float(getattr(r, name)) for name in rows.values()] for r in results}
    frame = pd.DataFrame(columns, index=pd.Index(list(rows), name="measure"))
    if results:
        frame.attrs.update(num_samples=results[0].num_samples, num_inputs=results[0].num_inputs)
    return frame


def diversity_table(num_quadrants: Sequence[int] = (1, 2, 3), config: CVAEConfig | None = None,
                    budget: Budget | str | None = None, data: MNISTData | None = None,
                    classifier: nn.Module | None = None,
                    num_samples: int = DEFAULT_DIVERSITY_SAMPLES, seed: int = 0, device=None,
                    progress: bool | None = None,
                    cache: str | os.PathLike | None = None) -> "pd.DataFrame":
    """`diversity_frame` for the cached CVAEs of the given quadrant counts on the test split.

    Models come from `trained_cvae` (and the classifier from `trained_classifier`), trained now if
    the cache lacks them. ``data`` defaults to `load_mnist()`; the budget limits the test images.
    """
    budget = get_budget(budget)
    data = (data if data is not None else load_mnist()).subset(budget)
    if classifier is None:
        classifier, _ = trained_classifier(budget, data, device=device, progress=progress,
                                           cache=cache)
    results = []
    for k in num_quadrants:
        cvae, _ = trained_cvae(k, config, budget, data, device=device, progress=progress,
                               cache=cache)
        results.append(identity_diversity(cvae, classifier, data.test, k,
                                          num_samples=num_samples, seed=seed))
    return diversity_frame(results)


@dataclass(frozen=True, eq=False)  # holds arrays, so == is identity (compare fields)
class AmbiguousInput:
    """One input whose CVAE completions read as two look-alike digits.

    ``image``: the true image (28, 28); ``x``: the input (28, 28) with -1 at the missing pixels;
    ``groups``: digit -> completed samples confidently read as it, (n_digit, 28, 28), for the two
    digits of ``pair`` (numpy arrays); ``counts``: digit -> number of samples confidently read as
    it, over all digits; ``num_unsure``: samples the classifier was not confident about.
    """

    index: int
    label: int
    pair: tuple[int, int]
    num_quadrants: int
    image: np.ndarray
    x: np.ndarray
    groups: dict[int, np.ndarray]
    counts: dict[int, int]
    num_unsure: int = 0

    @property
    def num_samples(self) -> int:
        return sum(self.counts.values()) + self.num_unsure


@torch.no_grad()
def find_ambiguous(cvae, classifier: nn.Module, split: Split, num_quadrants: int = 1,
                   pairs: Sequence[tuple[int, int]] = AMBIGUOUS_PAIRS, per_pair: int = 2,
                   num_samples: int = DEFAULT_DIVERSITY_SAMPLES, min_count: int = 2,
                   min_confidence: float = 0.9, max_inputs: int | None = None, seed: int = 0,
                   chunk_size: int = INPUTS_PER_CHUNK) -> list[AmbiguousInput]:
    """Inputs whose samples split clearly between the two digits of a look-alike pair.

    A sample counts as a digit only when the classifier gives that digit a probability of at
    least ``min_confidence`` (so that the figure shows samples that really look like different
    digits, not blurs the classifier hesitates about); the others are "unsure". Among the first
    ``max_inputs`` images of ``split`` (all if None), an input qualifies for a pair (a, b) when its
    true digit is a or b and at least ``min_count`` of its samples count as a and as b each. For
    each pair the ``per_pair`` most balanced inputs are kept (largest smaller group, then more
    samples in the pair, then the lower index); an input serves one pair only. Returns them pair by
    pair, in the order of ``pairs``.
    """
    k = check_num_quadrants(num_quadrants)
    for value, name in ((num_samples, "num_samples"), (per_pair, "per_pair"),
                        (min_count, "min_count"), (chunk_size, "chunk_size")):
        _check_positive(value, name)
    if not 0 <= min_confidence <= 1:
        raise ValueError(f"min_confidence must be in [0, 1], got {min_confidence!r}")
    pairs = [tuple(int(d) for d in pair) for pair in pairs]
    split = split.head(max_inputs) if max_inputs is not None else split
    x = _quadrant_inputs(split, k)                                       # (N, 784)
    labels = split.labels.cpu()
    candidates: dict[tuple[int, int], list] = {pair: [] for pair in pairs}
    with closing(sample_completions(cvae, x, num_samples, seed, chunk_size)) as chunks:
        for start, completed in chunks:
            n = completed.shape[1]
            probs = digit_probabilities(classifier, completed.reshape(-1, NUM_PIXELS))
            confidence, classes = probs.reshape(num_samples, n, NUM_CLASSES).max(-1)  # (S, n)
            sure = (confidence >= min_confidence).T                          # (n, S)
            classes = classes.T                                              # (n, S)
            counts = class_histogram(classes, include=sure)                  # (n, 10), sure only
            for pair in pairs:
                a, b = pair
                in_pair = (labels[start:start + n] == a) | (labels[start:start + n] == b)
                both = in_pair & (counts[:, a] >= min_count) & (counts[:, b] >= min_count)
                for row in both.nonzero().flatten().tolist():
                    score = (min(counts[row, a], counts[row, b]).item(),
                             (counts[row, a] + counts[row, b]).item(), -(start + row))
                    groups = {d: completed[:, row][sure[row] & (classes[row] == d)]
                              .reshape(-1, IMAGE_SIDE, IMAGE_SIDE).numpy() for d in pair}
                    row_counts = {d: int(c) for d, c in enumerate(counts[row].tolist()) if c}
                    candidates[pair].append((score, start + row, groups, row_counts,
                                             int((~sure[row]).sum())))
    chosen, used = [], set()
    for pair in pairs:
        kept = 0
        for _, index, groups, row_counts, unsure in sorted(candidates[pair], key=lambda c: c[0],
                                                           reverse=True):
            if kept == per_pair:
                break
            if index in used:
                continue
            used.add(index)
            kept += 1
            image = split.images[index].reshape(IMAGE_SIDE, IMAGE_SIDE).cpu()
            x_image, _, _, _ = mask_quadrants(image[None], k)
            chosen.append(AmbiguousInput(index, int(labels[index]), pair, k, image.numpy(),
                                         x_image[0].numpy(), groups, row_counts, unsure))
    return chosen


@dataclass(frozen=True)
class AmbiguousExamples:
    """The inputs to show, the criterion that selected them (a key of `CRITERIA`), its words."""

    inputs: list[AmbiguousInput]
    criterion: str

    @property
    def description(self) -> str:
        return CRITERIA[self.criterion]


@torch.no_grad()
def _most_varied(cvae, classifier: nn.Module, split: Split, k: int, num_samples: int, seed: int,
                 count: int, chunk_size: int = INPUTS_PER_CHUNK) -> list[AmbiguousInput]:
    """The ``count`` inputs whose samples show the most distinct digits (ties: lower index)."""
    x = _quadrant_inputs(split, k)                                       # (N, 784)
    classes = torch.empty(len(x), num_samples, dtype=torch.int64)       # (N, S)
    completed = torch.empty(num_samples, len(x), NUM_PIXELS)             # (S, N, 784)
    with closing(sample_completions(cvae, x, num_samples, seed, chunk_size)) as chunks:
        for start, chunk in chunks:
            n = chunk.shape[1]
            completed[:, start:start + n] = chunk
            read = predict_digits(classifier, chunk.reshape(-1, NUM_PIXELS))  # (S * n,)
            classes[start:start + n] = read.reshape(num_samples, n).T
    counts = class_histogram(classes)                                     # (N, 10)
    distinct = (counts > 0).sum(-1)                                       # (N,)
    order = sorted(range(len(x)), key=lambda i: (-int(distinct[i]), i))[:count]
    chosen = []
    for index in order:
        ranked = sorted(range(NUM_CLASSES), key=lambda d: (-int(counts[index, d]), d))
        pair = (ranked[0], ranked[1])
        groups = {d: completed[:, index][classes[index] == d]
                  .reshape(-1, IMAGE_SIDE, IMAGE_SIDE).numpy()
                  for d in pair}
        chosen.append(AmbiguousInput(
            index, int(split.labels[index]), pair, k,
            split.images[index].reshape(IMAGE_SIDE, IMAGE_SIDE).cpu().numpy(),
            x[index].reshape(IMAGE_SIDE, IMAGE_SIDE).numpy(), groups,
            {d: int(c) for d, c in enumerate(counts[index].tolist()) if c}))
    return chosen


def ambiguous_examples(cvae, classifier: nn.Module, split: Split, num_quadrants: int = 1,
                       max_inputs: int = 6, num_samples: int = DEFAULT_DIVERSITY_SAMPLES,
                       pairs: Sequence[tuple[int, int]] = AMBIGUOUS_PAIRS,
                       seed: int = 0) -> AmbiguousExamples:
    """Up to ``max_inputs`` inputs whose samples change the digit, by the strictest criterion
    that finds any (see the module docstring); never empty when ``split`` holds an image.

    With the first criterion, `find_ambiguous` keeps up to ``max_inputs // len(pairs)`` inputs
    per look-alike pair (at least one). ``seed`` fixes the samples, so the same call gives the
    same inputs.
    """
    k = check_num_quadrants(num_quadrants)
    _check_positive(max_inputs, "max_inputs")
    if len(split) == 0:
        raise ValueError("ambiguous_examples needs a split with at least one image")
    per_pair = max(1, max_inputs // max(1, len(pairs)))
    found = find_ambiguous(cvae, classifier, split, k, pairs=pairs, per_pair=per_pair,
                           num_samples=num_samples, seed=seed)
    if found:
        return AmbiguousExamples(found[:max_inputs], "look-alike pairs")
    found = find_ambiguous(cvae, classifier, split, k, pairs=list(combinations(range(10), 2)),
                           per_pair=1, num_samples=num_samples, min_count=1, min_confidence=0.0,
                           seed=seed)
    if found:
        return AmbiguousExamples(found[:max_inputs], "any two digits")
    return AmbiguousExamples(_most_varied(cvae, classifier, split, k, num_samples, seed,
                                          min(max_inputs, len(split))), "most varied")
