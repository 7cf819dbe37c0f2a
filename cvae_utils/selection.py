"""Choosing the recipe on the validation split: each decision as a leave-one-out ablation.

The book's recipe (`CVAEConfig()`) is a list of decisions, each a change from the Pyro
tutorial's configuration. `DECISIONS` names them. For each one, the selection run trains the
recipe with that one decision undone (everything else kept) and scores it against the recipe on
the **validation** images, never the test images:

* a decision of the CVAE: the CVAE's importance-sampled negative CLL (S = 100) on the
  validation images, for the quadrant counts asked (k = 1 by default);
* a decision of the baseline: the baseline's own negative CLL on the validation images, for
  k = 1, 2 and 3 (its training is cheap).

Every model is trained with several training seeds (the CVAE of seed s on the baseline of seed
s), so a difference is paired twice: by seed and by validation image. `selection_table` reports
for each decision the mean gain over seeds (ablation minus recipe: positive means the decision
helps), the standard error over validation images, the spread over seeds, the combined
uncertainty of the mean gain (`cvae_utils.seeds.summarize`), and a verdict by the
rule in `verdict`: a decision is kept because it helps only where the gain exceeds twice its
uncertainty; where the gain is within noise, the simpler configuration, the tutorial's, is
preferred unless the decision is a speed decision with no measured cost.

``python -m cvae_utils select`` runs it (in this process or on a Dask cluster) and writes the
table as CSV and Markdown; `DECISIONS.md` quotes that output. Chapter "Variants of the model"
sets the whole recipe against the tutorial's configuration on the test images.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from .book_models import BookModel
from .cache import checkpoint_path, model_key
from .config import Budget, CVAEConfig, book_config, get_budget
from .seeds import seeded

__all__ = ["Decision", "DECISIONS", "selection_models"]


@dataclass(frozen=True)
class Decision:
    """One decision of the recipe and how to undo it."""

    name: str          # short label, e.g. "KL warm-up"
    model: str         # "cvae" or "baseline": whose config it changes, and who is scored
    undo: dict         # the changes that undo it (for a CVAE decision, the CVAE's fields)
    kind: str = "quality"  # "quality", or "speed": taken for speed, kept unless it costs

    def config(self, recipe: CVAEConfig) -> CVAEConfig:
        """The recipe with this decision undone."""
        if self.model == "baseline":
            return recipe.replace(baseline=self.undo)
        return recipe.replace(**self.undo)


# The recipe's decisions, each undone to the tutorial's value (`config.tutorial_config`).
DECISIONS = (
    Decision("the decoder reads x and z", "cvae", {"decoder_sees_x": False}),
    Decision("KL warm-up", "cvae", {"kl_warmup_epochs": 0}),
    Decision("learning-rate decay per epoch", "cvae", {"lr_decay": 1.0}),
    Decision("moving average of the weights", "cvae", {"weight_average": 0.0}),
    Decision("KL in closed form", "cvae", {"analytic_kl": False}),
    Decision("batch 256 and lr 1.5e-3", "cvae", {"batch_size": 128, "lr": 1e-3}, "speed"),
    Decision("patience 6", "cvae", {"patience": 3}),
    Decision("min_delta 0.05", "cvae", {"min_delta": 0.0}, "speed"),
    Decision("baseline: batch 256", "baseline", {"batch_size": 128}, "speed"),
    Decision("baseline: bf16 products", "baseline", {"precision": "fp32"}, "speed"),
    Decision("CVAE: bf16 products", "cvae", {"precision": "fp32"}, "speed"),
)


def selection_models(seeds=(0, 1), ks=(1,), budget: Budget | str | None = None,
                     recipe: CVAEConfig | None = None, decisions=DECISIONS,
                     directory=None) -> list[BookModel]:
    """Every model the selection run needs, recipe first, then decision by decision, each at
    every seed; a model two rows share (the recipe's baselines) appears once."""
    budget = get_budget(budget)
    recipe = recipe or book_config()
    models: dict = {}

    def add(label, kind, config, k):
        key = model_key(kind, config, budget, k)
        path = checkpoint_path(key, directory)
        if path not in models:
            models[path] = BookModel(label, kind, config, budget, k, key, path,
                                     budget.max_epochs, {"selection"})

    rows = [("recipe", "cvae", recipe), ("recipe", "baseline", recipe)]
    rows += [(d.name, d.model, d.config(recipe)) for d in decisions]
    for name, model, config in rows:
        for seed in seeds:
            for k in (ks if model == "cvae" else (1, 2, 3)):
                add(f"{name} seed {seed} k={k}", model, seeded(config, seed), k)
    return list(models.values())
