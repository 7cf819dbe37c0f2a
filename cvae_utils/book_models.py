"""Every model the book trains at a pair of budgets, as a plain list: what to train and where it goes.

The chapters ask for three groups of models (`needs_of` tells which from a chapter's code):

* ``"book"``: the baseline and the CVAE of the book's configuration for each quadrant count
  (chapters "The baseline", "The CVAE in Pyro", "Evaluation", ...), at the book's budget;
* ``"classifier"``: the digit classifier of chapter "Beyond the table", at the book's budget;
* ``"variants"``: the baseline and the CVAE of each of the `cvae_utils.variants.VARIANTS` for each
  quadrant count, at the budget of the chapter "Variants of the model".

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
from .variants import VARIANTS, variant_config, variants_budget

__all__ = ["QUADRANTS", "GROUPS", "BookModel", "book_models", "needs_of"]

QUADRANTS = (1, 2, 3)
GROUPS = ("book", "classifier", "variants")


@dataclass
class BookModel:
    """One model the book needs: how to train it and where its cache file is."""

    label: str            # e.g. "cvae k=1" or "variant gsnn k=2"
    kind: str             # "baseline", "cvae" or "classifier" (a key of `cache.MODEL_CODE`)
    config: CVAEConfig | ClassifierConfig  # a CVAE's config stands for its baseline too
    budget: Budget
    num_quadrants: int | None  # None for the classifier (whole images)
    key: dict             # `cvae_utils.cache.model_key` (or `classifier_key`)
    path: Path            # its file in the model cache
    max_epochs: int       # the cap of its run
    groups: set = field(default_factory=set)  # who asks for it: some of `GROUPS`

    @property
    def cached(self) -> bool:
        """Whether its file is in the model cache now."""
        return self.path.exists()


def book_models(budget: Budget | str | None = None, variants: Budget | str | None = None,
                config: CVAEConfig | None = None, directory=None) -> list[BookModel]:
    """The models of the book at ``budget`` (default ``CVAE_BUDGET``), the variants' at
    ``variants`` (default `cvae_utils.variants.variants_budget()`), in the order the chapters
    meet them; ``config`` defaults to `book_config()`, ``directory`` to the model cache."""
    budget = get_budget(budget)
    variants = variants_budget(variants)
    config = config or book_config()
    models: dict[Path, BookModel] = {}

    def add(label, kind, group, model_config, model_budget, k, key, max_epochs):
        path = checkpoint_path(key, directory)
        if path not in models:
            models[path] = BookModel(label, kind, model_config, model_budget, k, key, path,
                                     max_epochs)
        models[path].groups.add(group)

    def add_pair(prefix, group, model_config, model_budget):
        for k in QUADRANTS:
            add(f"baseline k={k}", "baseline", group, model_config, model_budget, k,
                model_key("baseline", model_config, model_budget, k), model_budget.max_epochs)
            add(f"{prefix}k={k}", "cvae", group, model_config, model_budget, k,
                model_key("cvae", model_config, model_budget, k), model_budget.max_epochs)

    add_pair("cvae ", "book", config, budget)
    classifier = ClassifierConfig()
    add("digit classifier", "classifier", "classifier", classifier, budget, None,
        classifier_key(classifier, budget), min(budget.max_epochs, classifier.max_epochs))
    for name in VARIANTS:
        add_pair(f"variant {name} ", "variants", variant_config(name, config), variants)
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
