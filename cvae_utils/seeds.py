"""Training seeds: how many a budget trains, and how a number over seeds and images is summarised.

A trained model is one draw from its training procedure: another seed (weights, shuffling,
noise) gives another model and another score. So every model of a table is trained with several
seeds (the validation split stays fixed): the CVAE of seed s on the baseline of seed s. The
count is part of the protocol: `SEEDS_PER_BUDGET` gives each budget's, and ``CVAE_SEEDS``
(`training_seeds`) overrides it, checked like the budget. Seed s sets the ``seed`` fields of a
config (`seeded`), so each model has its own key in the model cache.

A table asks for its seeds as `resolve_seeds` reads them: None (the run's, `training_seeds`), a
count n (seeds 0 to n-1) or the seeds themselves (``(1,)``: the models of seed 1 alone).
`seeds_origin` says where the run's count came from, for the build's plan.

A table cell is then a grid of numbers: one value per training seed and per test image (the
negative CLL of image i under the model of seed s). `summarize` reduces it to

* ``mean``: the mean over seeds and images, what the table shows;
* ``seed_sd``: the standard deviation over seeds of each seed's mean over images (how much one
  training run differs from another);
* ``test_se``: the standard error over images of each image's mean over seeds (how much another
  test set would move the mean);
* ``uncertainty``: the standard error of ``mean`` when both seeds and images are random,
  sqrt(seed_sd² / n_seeds + test_se²) (a two-way random-effects model; the seed term slightly
  overcounts, since each seed's mean carries a share of image noise too, so the total errs on
  the safe side). With one seed, the seed term is unknown and ``uncertainty`` is NaN.

A difference between two rows is summarised the same way from the per-seed, per-image
differences (`summarize` of ``a - b``): paired by seed and by image, it is far more precise than
the two rows' uncertainties combined. `verdict` turns it into words.

Chapter "Evaluation" explains both uncertainties and their combination on the CLL table; chapter
"Variants of the model" reads its comparisons through `verdict`.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import torch

from . import settings
from .config import Budget, CVAEConfig, check_int, get_budget

__all__ = ["SEEDS_PER_BUDGET", "MAX_SEEDS", "training_seeds", "resolve_seeds", "seeds_origin",
           "seeded", "Summary", "summarize", "verdict", "NOISE_FACTOR"]

SEEDS_PER_BUDGET = {"smoke": 1, "quick": 1, "paper": 3}
MAX_SEEDS = 20
NOISE_FACTOR = 2.0  # a difference is a difference when it exceeds this many uncertainties


def training_seeds(budget: Budget | str | None = None, count: int | str | None = None
                   ) -> tuple[int, ...]:
    """The training seeds of a run: 0, 1, ..., n-1.

    n is ``count`` if given, else ``CVAE_SEEDS`` if set, else the budget's
    (`SEEDS_PER_BUDGET`, 3 at ``paper``). A value that is not a whole number from 1 to
    `MAX_SEEDS` is a ValueError naming where it came from.
    """
    source = "argument count"
    if count is None:
        count, source = settings.seeds(), f"environment variable {settings.SEEDS_ENV}"
    if count is None or count == "":
        budget = get_budget(budget)
        return tuple(range(SEEDS_PER_BUDGET.get(budget.name, 1)))
    hint = (f"; e.g. {settings.SEEDS_ENV}=3, or unset it for the budget's own count "
            f"({', '.join(f'{k}: {v}' for k, v in SEEDS_PER_BUDGET.items())})")
    if isinstance(count, str):
        text = count.strip()
        count = int(text) if text.isdigit() else text
    count = check_int(f"the number of training seeds from the {source}", count, 1, MAX_SEEDS,
                      hint=hint)
    return tuple(range(count))


def resolve_seeds(seeds=None, budget: Budget | str | None = None) -> tuple[int, ...]:
    """The training seeds a table asks for, as a tuple.

    ``seeds`` is None (the run's: `training_seeds` of ``budget``, so ``CVAE_SEEDS`` or the
    budget's count), a count n (seeds 0, 1, ..., n-1, checked as `training_seeds` checks it) or
    a sequence of seeds (distinct ints >= 0, kept in their order: ``(1,)`` is the models of seed
    1 alone). Anything else is a ValueError that says which forms are accepted.
    """
    if seeds is None or isinstance(seeds, numbers.Integral) and not isinstance(seeds, bool):
        return training_seeds(budget, seeds)
    if isinstance(seeds, (str, bytes)) or not hasattr(seeds, "__iter__"):
        raise ValueError(f"seeds must be None (the run's), a count such as 3, or the seeds "
                         f"themselves such as (0, 1, 2), got {seeds!r}")
    chosen = tuple(check_int("a training seed", seed, 0) for seed in seeds)
    if not chosen or len(set(chosen)) != len(chosen) or len(chosen) > MAX_SEEDS:
        raise ValueError(f"seeds must list 1 to {MAX_SEEDS} distinct training seeds, got "
                         f"{tuple(seeds)!r}")
    return chosen


def seeds_origin(budget: Budget | str | None = None) -> str:
    """Where the run's count of training seeds comes from, in words: the environment variable
    (``"CVAE_SEEDS=2"``) or the budget (``"the paper budget's count; CVAE_SEEDS overrides
    it"``)."""
    value = settings.seeds()
    if value:
        return f"{settings.SEEDS_ENV}={value}"
    return f"the {get_budget(budget).name} budget's count; {settings.SEEDS_ENV} overrides it"


def seeded(config: CVAEConfig, seed: int) -> CVAEConfig:
    """``config`` with training seed ``seed`` for the CVAE and its baseline alike."""
    check_int("seed", seed, 0)
    return config.replace(seed=seed, baseline={"seed": seed})


@dataclass(frozen=True)
class Summary:
    """A number over training seeds and test images, with both of its uncertainties apart."""

    mean: float
    seed_sd: float      # standard deviation over seeds of the per-seed means (NaN: one seed)
    test_se: float      # standard error over images of the per-image means over seeds
    uncertainty: float  # standard error of ``mean``, both sources combined (NaN: one seed)
    num_seeds: int
    num_images: int


def summarize(values: torch.Tensor) -> Summary:
    """Summarise ``values`` of shape (n_seeds, n_images), nats per image (see the module).

    Rows are training seeds, columns test images, the same images in every row.
    """
    values = torch.as_tensor(values).detach().double().cpu()
    if values.ndim != 2 or values.shape[0] < 1 or values.shape[1] < 1:
        raise ValueError(f"values must have shape (n_seeds, n_images) with both at least 1, "
                         f"got {tuple(values.shape)}")
    n_seeds, n_images = values.shape
    seed_means = values.mean(dim=1)
    image_means = values.mean(dim=0)
    seed_sd = seed_means.std(correction=1).item() if n_seeds > 1 else math.nan
    test_se = (image_means.std(correction=1).item() / math.sqrt(n_images) if n_images > 1
               else math.nan)
    uncertainty = math.sqrt(seed_sd ** 2 / n_seeds + test_se ** 2)
    return Summary(seed_means.mean().item(), seed_sd, test_se, uncertainty, n_seeds, n_images)


def verdict(difference: Summary, factor: float = NOISE_FACTOR) -> str:
    """"lower", "higher" or "within noise": the sign of a paired difference (a - b) where its
    mean exceeds ``factor`` times its uncertainty. With one seed the uncertainty is unknown and
    the test standard error alone is used (the verdict then holds for that one training run)."""
    noise = difference.uncertainty
    if math.isnan(noise):
        noise = difference.test_se
    if not abs(difference.mean) > factor * noise:  # NaN: no verdict
        return "within noise"
    return "lower" if difference.mean < 0 else "higher"
