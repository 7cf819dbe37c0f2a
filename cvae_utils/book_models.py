"""Every model the book trains at a pair of budgets, as a plain list: what to train and where it goes.

The chapters ask for three groups of models (`needs_of` tells which from a chapter's code):

* ``"book"``: the baseline and the CVAE of the book's configuration for each quadrant count and
  each training seed (chapters "The baseline", "The CVAE in Pyro", "Evaluation", ...; the
  chapters other than "Evaluation" read seed 0's), at the book's budget;
* ``"classifier"``: the digit classifier of chapter "Beyond the table", at the book's budget;
* ``"variants"``: the baseline and the CVAE of each of the `cvae_utils.variants.VARIANTS` for each
  quadrant count and training seed, at the budget of the chapter "Variants of the model".

The training seeds are those the tables use: `cvae_utils.seeds.training_seeds` of the book's
budget for both groups (``CVAE_SEEDS``, else 3 at ``paper``; see
`cvae_utils.variants.variants_seeds`). The model of seed s is that of
`cvae_utils.seeds.seeded` (the CVAE of seed s on the baseline of seed s); with several seeds its
label says so ("cvae k=1 seed 2").

`book_models` lists them, each once (a model two groups share, such as the baseline of the book's
configuration at a budget both use, appears once with both groups), with the config, budget and
quadrant count that train it and its file in the model cache. The book's build plans with this
list (``book/_ext/book_plan.py``); a command line or a cluster that trains ahead of a build can
take the same list. Nothing here trains, measures or prints.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .cache import checkpoint_path, model_key
from .classifier import classifier_key
from .config import Budget, ClassifierConfig, CVAEConfig, book_config, get_budget
from .seeds import resolve_seeds, seeded
from .variants import VARIANTS, variant_config, variants_budget, variants_seeds

__all__ = ["QUADRANTS", "GROUPS", "BookModel", "book_models", "needs_of"]

QUADRANTS = (1, 2, 3)
GROUPS = ("book", "classifier", "variants")


@dataclass
class BookModel:
    """One model the book needs: how to train it and where its cache file is."""

    label: str            # e.g. "cvae k=1", "variant gsnn k=2" or "cvae k=1 seed 2"
    kind: str             # "baseline", "cvae" or "classifier" (a key of `cache.MODEL_CODE`)
    config: CVAEConfig | ClassifierConfig  # a CVAE's config stands for its baseline too
    budget: Budget
    num_quadrants: int | None  # None for the classifier (whole images)
    key: dict             # `cvae_utils.cache.model_key` (or `classifier_key`)
    path: Path            # its file in the model cache
    max_epochs: int       # the cap of its run
    groups: set = field(default_factory=set)  # who asks for it: some of `GROUPS`
    seed: int = 0         # its training seed (`cvae_utils.seeds.seeded`)

    @property
    def cached(self) -> bool:
        """Whether its file is in the model cache now."""
        return self.path.exists()


def book_models(budget: Budget | str | None = None, variants: Budget | str | None = None,
                config: CVAEConfig | None = None, directory=None, *, seeds=None,
                variant_seeds=None) -> list[BookModel]:
    """The models of the book at ``budget`` (default ``CVAE_BUDGET``), the variants' at
    ``variants`` (default `cvae_utils.variants.variants_budget()`), in the order the chapters
    meet them (seed 0 first); ``config`` defaults to `book_config()`, ``directory`` to the model
    cache. ``seeds`` and ``variant_seeds``: the training seeds of each group, as the tables take
    them (`cvae_utils.seeds.resolve_seeds`); by default those of the book's budget
    (`cvae_utils.seeds.training_seeds`, `cvae_utils.variants.variants_seeds`)."""
    budget = get_budget(budget)
    variants = variants_budget(variants)
    config = config or book_config()
    seeds = resolve_seeds(seeds, budget)
    variant_seeds = (variants_seeds(book=budget) if variant_seeds is None
                     else resolve_seeds(variant_seeds, budget))
    models: dict[Path, BookModel] = {}

    def add(label, kind, group, model_config, model_budget, k, key, max_epochs, seed=0):
        path = checkpoint_path(key, directory)
        if path not in models:
            models[path] = BookModel(label, kind, model_config, model_budget, k, key, path,
                                     max_epochs, seed=seed)
        models[path].groups.add(group)

    def add_pairs(prefix, group, model_config, model_budget, group_seeds):
        for seed in group_seeds:
            seed_config = seeded(model_config, seed)
            suffix = f" seed {seed}" if len(group_seeds) > 1 else ""
            for k in QUADRANTS:
                add(f"baseline k={k}{suffix}", "baseline", group, seed_config, model_budget, k,
                    model_key("baseline", seed_config, model_budget, k), model_budget.max_epochs,
                    seed)
                add(f"{prefix}k={k}{suffix}", "cvae", group, seed_config, model_budget, k,
                    model_key("cvae", seed_config, model_budget, k), model_budget.max_epochs,
                    seed)

    add_pairs("cvae ", "book", config, budget, seeds)
    classifier = ClassifierConfig()
    add("digit classifier", "classifier", "classifier", classifier, budget, None,
        classifier_key(classifier, budget), min(budget.max_epochs, classifier.max_epochs))
    for name in VARIANTS:
        add_pairs(f"variant {name} ", "variants", variant_config(name, config), variants,
                  variant_seeds)
    return list(models.values())


def needs_of(code: str) -> set[str]:
    """What a chapter's code asks for, from the functions it calls: "book" (the baselines and
    CVAEs of the book's configuration), "classifier", "variants" (the 21 models of the
    variants), "cll_table" and "variants_table" (their scoring)."""
    needs = set()
    if any(name in code for name in ("trained_baseline", "trained_cvae", "cll_table",
                                     "diversity_table")):
        needs.add("book")
    if "trained_classifier" in code:
        needs.add("classifier")
    if "cll_table(" in code:
        needs.add("cll_table")
    if "variants_table(" in code:
        needs |= {"variants", "variants_table"}
    return needs
