"""cvae_utils: the tested helper package behind the book on conditional VAEs (Sohn et al., 2015).

Modules follow the book's story: `config` (hyperparameters and budgets), `data` (MNIST, splits,
quadrant masking, batching), `networks` (baseline, encoders, decoder, the Pyro model and guide),
`train` (training loops with early stopping) and `cache` (trained models shared between chapters).
Run ``python -m cvae_utils train --help`` to pre-train models from the command line.
"""
from .cache import trained_baseline, trained_cvae
from .config import BUDGETS, Budget, CVAEConfig, get_budget, tutorial_config
from .data import (MNISTData, MNISTNotFoundError, QuadrantData, Split, input_mask, load_mnist,
                   make_quadrant_data, mask_quadrants)
from .networks import CVAE, BaselineNet, Decoder, Encoder, masked_bce
from .train import History, train_baseline, train_cvae

__version__ = "0.1.0"

__all__ = [
    "BUDGETS", "Budget", "CVAEConfig", "get_budget", "tutorial_config",
    "MNISTData", "MNISTNotFoundError", "QuadrantData", "Split", "input_mask", "load_mnist",
    "make_quadrant_data", "mask_quadrants",
    "CVAE", "BaselineNet", "Decoder", "Encoder", "masked_bce",
    "History", "train_baseline", "train_cvae", "trained_baseline", "trained_cvae",
]
