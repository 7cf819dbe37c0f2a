"""Examples for the chapter "Beyond the table": inputs whose completions change the digit.

`find_ambiguous` (in `cvae_utils.diversity`) looks for inputs whose CVAE samples the digit
classifier reads, confidently, as both digits of a look-alike pair (3 and 5, 4 and 9, 7 and 9).
Well-trained models give many; the barely trained models of a ``smoke`` build may give none, and a
chapter must still show a figure that is true to its data. `ambiguous_examples` therefore tries
criteria from strict to loose and says which one it used:

1. ``"look-alike pairs"``: `find_ambiguous` as it is, a look-alike pair, at least two samples of
   each digit read with probability >= 0.9;
2. ``"any two digits"``: any pair of digits that includes the true one, at least one sample of
   each, whatever the classifier's confidence;
3. ``"most varied"``: failing both, the inputs whose samples show the most distinct digits,
   grouped by the two digits read most often (the second group may be empty).

The result feeds `plot_identity_groups` unchanged.
"""
from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations
from typing import Sequence

import torch
from torch import nn

from .classifier import NUM_CLASSES, predict_digits
from .data import Split, check_num_quadrants, make_quadrant_data
from .diversity import (AMBIGUOUS_PAIRS, DEFAULT_DIVERSITY_SAMPLES, AmbiguousInput, assemble,
                        class_histogram, find_ambiguous)
from .networks import NUM_PIXELS

__all__ = ["AmbiguousExamples", "ambiguous_examples", "CRITERIA"]

# the criteria, from strict to loose, in words a chapter can print
CRITERIA = {
    "look-alike pairs": "their samples are read, with probability at least 0.9, as both digits of "
                        "a look-alike pair (3 and 5, 4 and 9, 7 and 9), at least twice each",
    "any two digits": "their samples are read as two different digits, one of them the true "
                      "digit (no look-alike pair qualified, and the classifier's confidence is "
                      "not checked)",
    "most varied": "their samples show the most distinct digits (no input's samples included "
                   "the true digit and another one)",
}


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
                 count: int) -> list[AmbiguousInput]:
    """The ``count`` inputs whose samples show the most distinct digits (ties: lower index)."""
    data = make_quadrant_data(split, k)
    parameter = next(iter(cvae.parameters()), None) if isinstance(cvae, nn.Module) else None
    device = parameter.device if parameter is not None else torch.device("cpu")
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        samples = cvae.sample(data.x.to(device), num_samples).cpu()      # (S, N, 784)
    completed = assemble(data.x, samples)                                 # (S, N, 784)
    classes = predict_digits(classifier, completed.reshape(-1, NUM_PIXELS))
    classes = classes.reshape(num_samples, len(data)).T                   # (N, S)
    counts = class_histogram(classes)                                     # (N, 10)
    distinct = (counts > 0).sum(-1)                                       # (N,)
    order = sorted(range(len(data)), key=lambda i: (-int(distinct[i]), i))[:count]
    chosen = []
    for index in order:
        ranked = sorted(range(NUM_CLASSES), key=lambda d: (-int(counts[index, d]), d))
        pair = (ranked[0], ranked[1])
        groups = {d: completed[:, index][classes[index] == d].reshape(-1, 28, 28).numpy()
                  for d in pair}
        chosen.append(AmbiguousInput(
            index, int(split.labels[index]), pair, k,
            split.images[index].reshape(28, 28).cpu().numpy(),
            data.x[index].reshape(28, 28).numpy(), groups,
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
    if isinstance(max_inputs, bool) or not isinstance(max_inputs, int) or max_inputs < 1:
        raise ValueError(f"max_inputs must be a positive int, got {max_inputs!r}")
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
