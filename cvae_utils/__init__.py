"""cvae_utils: the tested helper package behind the book on conditional VAEs (Sohn et al., 2015).

Its modules sit in three rooms (`ARCHITECTURE.md` has a line on each):

- the textbook, what a student reads and the chapters include: `data` (MNIST, splits, quadrant
  masking), `networks` (the baseline, the encoders and decoder, the Pyro model and guide),
  `train` (`train_baseline` and `train_cvae`, plain loops), `evaluate` (the CLL estimators),
  `variant_models` (the variants' models and objectives) and `config` (hyperparameters, budgets);
- engineering, beside the textbook and never woven into it: `speed` (precision, denormals, the
  evaluation's split first layer), `optim` (the fused Adam, the weight average), `cache` (trained
  models shared between chapters), `files`, `settings` (every ``CVAE_*`` environment variable),
  `progress` (a line per epoch and per table row, for whoever listens), `book_models` (the models
  a budget needs), `export` and `interactive` (the browser page's files), and ``python -m
  cvae_utils train --help`` to pre-train models;
- results: `tables` (the CLL table and what every table shares), `variants`, `published` (every
  published number, with its source), `classifier`, `diversity` and `complete` (beyond the
  table), `analysis`, `figures` with the figures of each group of chapters in `plot_data`,
  `plot_training`, `plot_maths` and `plot_results`, and `animation`.

The build of the book is not part of the package: its modules are in ``book/_ext/`` and import
the package, never the other way round.

This namespace holds what the chapters and the README use, except the figures, which are imported
from their modules (so that importing the package does not import matplotlib); everything else
is imported from its module.
"""
from .cache import trained_baseline, trained_cvae
from .classifier import classifier_accuracy, trained_classifier
from .complete import complete_digit, draw_digit_strokes
from .config import (BUDGETS, BaselineConfig, Budget, ClassifierConfig, CVAEConfig, book_config,
                     get_budget, tutorial_config)
from .data import (MNISTData, MNISTDataError, MNISTNotFoundError, QuadrantData, Split,
                   input_mask, load_mnist, make_quadrant_data, mask_quadrants)
from .diversity import ambiguous_examples, diversity_table, find_ambiguous, identity_diversity
from .evaluate import (baseline_ncll, cvae_importance_sampling, cvae_mc_prior, cvae_neg_elbo)
from .networks import CVAE, BaselineNet, Decoder, Encoder, masked_bce
from .tables import cll_table, format_table
from .train import History, train_baseline, train_cvae
from .variants import VARIANTS, torchzq_ablation, variant_config, variants_budget, variants_table

__version__ = "0.2.0"

__all__ = [
    # configuration and budgets
    "BUDGETS", "BaselineConfig", "Budget", "ClassifierConfig", "CVAEConfig", "book_config",
    "get_budget", "tutorial_config",
    # data
    "MNISTData", "MNISTDataError", "MNISTNotFoundError", "QuadrantData", "Split", "input_mask",
    "load_mnist", "make_quadrant_data", "mask_quadrants",
    # networks, training and the cache
    "CVAE", "BaselineNet", "Decoder", "Encoder", "masked_bce", "History", "train_baseline",
    "train_cvae", "trained_baseline", "trained_cvae",
    # evaluation and tables
    "baseline_ncll", "cvae_neg_elbo", "cvae_mc_prior", "cvae_importance_sampling", "cll_table",
    "format_table", "VARIANTS", "variant_config", "variants_budget", "variants_table",
    "torchzq_ablation",
    # beyond the table
    "trained_classifier", "classifier_accuracy", "identity_diversity", "diversity_table",
    "find_ambiguous", "ambiguous_examples", "complete_digit", "draw_digit_strokes",
]
