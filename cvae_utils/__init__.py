"""cvae_utils: the tested helper package behind the book on conditional VAEs (Sohn et al., 2015).

Modules follow the book's story: `config` (hyperparameters and budgets), `data` (MNIST, splits,
quadrant masking, batching), `networks` (baseline, encoders, decoder, the Pyro model and guide),
`train` (training loops with early stopping), `cache` (trained models shared between chapters),
`evaluate` (the CLL estimators and table), `plotting` and `animation` (figures), and, beyond the
tutorial, `classifier`, `diversity` (how often samples change the digit) and `complete`
(completing any partial digit). Run ``python -m cvae_utils train --help`` to pre-train models.
The build of the book has its own modules: `bookbuild` (the Sphinx extension), `buildplan`
(what a build will train, and how long), `kernel_launcher` (the chapters' kernels, without
transport noise) and `terminal` (the progress lines that training and the tables write to the
build's terminal).
"""
from .cache import trained_baseline, trained_cvae
from .classifier import classifier_accuracy, trained_classifier
from .complete import complete_digit, draw_digit_strokes
from .config import (BUDGETS, Budget, ClassifierConfig, CVAEConfig, book_config, get_budget,
                     tutorial_config)
from .data import (MNISTData, MNISTNotFoundError, QuadrantData, Split, input_mask, load_mnist,
                   make_quadrant_data, mask_quadrants)
from .diversity import diversity_table, find_ambiguous, identity_diversity
from .evaluate import (baseline_ncll, cll_table, cvae_importance_sampling, cvae_mc_prior,
                       cvae_neg_elbo, format_table)
from .networks import CVAE, BaselineNet, Decoder, Encoder, masked_bce
from .train import History, train_baseline, train_cvae

__version__ = "0.1.0"

__all__ = [
    "BUDGETS", "Budget", "ClassifierConfig", "CVAEConfig", "book_config", "get_budget",
    "tutorial_config",
    "MNISTData", "MNISTNotFoundError", "QuadrantData", "Split", "input_mask", "load_mnist",
    "make_quadrant_data", "mask_quadrants",
    "CVAE", "BaselineNet", "Decoder", "Encoder", "masked_bce",
    "History", "train_baseline", "train_cvae", "trained_baseline", "trained_cvae",
    "baseline_ncll", "cvae_neg_elbo", "cvae_mc_prior", "cvae_importance_sampling", "cll_table",
    "format_table", "trained_classifier", "classifier_accuracy", "identity_diversity",
    "diversity_table", "find_ambiguous", "complete_digit", "draw_digit_strokes",
]

# beyond the tutorial: the variants of the model and the examples of changed digits
from .beyond import ambiguous_examples  # noqa: E402
from .variants import (VARIANTS, plot_variants, torchzq_ablation, variant_config,  # noqa: E402
                       variants_budget, variants_table)

__all__ += ["VARIANTS", "variant_config", "variants_budget", "variants_table", "torchzq_ablation",
            "plot_variants", "ambiguous_examples"]
