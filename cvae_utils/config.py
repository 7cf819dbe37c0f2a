"""Configuration: the one place where sizes, rates and run lengths live.

Three frozen dataclasses describe what determines a trained model, and nothing else does:

- `BaselineConfig`: the deterministic MLP of chapter "The baseline";
- `CVAEConfig`: the conditional VAE of chapter "The CVAE in Pyro", with the `BaselineConfig` of
  the baseline it is built on as its field ``baseline``;
- `ClassifierConfig`: the digit classifier that judges the completions (chapter "Beyond the
  table").

The defaults are the book's recipe: ``CVAEConfig()`` is what the book trains and reports.
`tutorial_config()` is the configuration of the Pyro tutorial, kept by name for the reference
row of chapter "Variants of the model"; `DECISIONS.md` gives the measurement behind each default.
The model cache (`cvae_utils.cache`) derives each model's key from its own config, so changing a
field retrains exactly the models that read it.

`Budget` says how much data and how many epochs a run may use; the environment variable
``CVAE_BUDGET`` picks one of three named budgets (``smoke`` for tests and CI, ``quick`` for a
laptop, ``paper`` for the full protocol). Every value, from the library, the environment or the
command line, is checked by the same rules here.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass, field, fields, replace

from . import settings

__all__ = ["BaselineConfig", "CVAEConfig", "ClassifierConfig", "Budget", "BUDGETS", "get_budget",
           "parse_budget", "tutorial_config", "book_config", "PRECISIONS", "check_int",
           "check_number"]

PRECISIONS = ("auto", "fp32", "bf16")  # "auto": bf16 where this machine multiplies it fast


# ------------------------------------------------------------------------------------------------
# Checks shared by every config
# ------------------------------------------------------------------------------------------------

def check_int(name: str, value, smallest: int | None = None, largest: int | None = None, *,
              rule: str | None = None, hint: str = "") -> int:
    """``value`` as an int, if it is an integer (not a bool) in [``smallest``, ``largest``];
    else a ValueError: "<name> must be <rule>, got <value!r><hint>".

    The one check of every integer argument of the package. ``rule`` defaults to "an int",
    "an int >= <smallest>" or "an int in [<smallest>, <largest>]".
    """
    if (isinstance(value, bool) or not isinstance(value, numbers.Integral)
            or (smallest is not None and value < smallest)
            or (largest is not None and value > largest)):
        if rule is None:
            rule = ("an int" if smallest is None and largest is None
                    else f"an int >= {smallest}" if largest is None
                    else f"an int <= {largest}" if smallest is None
                    else f"an int in [{smallest}, {largest}]")
        raise ValueError(f"{name} must be {rule}, got {value!r}{hint}")
    return int(value)


def check_number(name: str, value, low: float, high: float, *, low_open: bool = False,
                 high_open: bool = False, rule: str | None = None) -> float:
    """``value`` if it is a finite real number (not a bool) in the interval from ``low`` to
    ``high`` (open at either end on request); else a ValueError: "<name> must be <rule>, got
    <value!r>", ``rule`` defaulting to "a finite number in [low, high]" (or open brackets)."""
    ok = (not isinstance(value, bool) and isinstance(value, numbers.Real)
          and math.isfinite(value)
          and (value > low if low_open else value >= low)
          and (value < high if high_open else value <= high))
    if not ok:
        if rule is None:
            left, right = "(" if low_open else "[", ")" if high_open else "]"
            rule = f"a finite number in {left}{low:g}, {high:g}{right}"
        raise ValueError(f"{name} must be {rule}, got {value!r}")
    return value


def _fail(owner: str, name: str, rule: str, value) -> None:
    raise ValueError(f"{owner}.{name} must be {rule}, got {value!r}")


def _int(owner: str, name: str, value, smallest: int) -> None:
    check_int(f"{owner}.{name}", value, smallest)


def _number(owner: str, name: str, value, low: float, high: float, *, low_open: bool = False,
            high_open: bool = False) -> None:
    check_number(f"{owner}.{name}", value, low, high, low_open=low_open, high_open=high_open)


def _flag(owner: str, name: str, value) -> None:
    if not isinstance(value, bool):
        _fail(owner, name, "True or False", value)


def _choice(owner: str, name: str, value, choices: tuple[str, ...]) -> None:
    if not isinstance(value, str) or value not in choices:
        _fail(owner, name, "one of " + ", ".join(repr(c) for c in choices), value)


class _Config:
    """What the three configs share: ``to_dict``, ``replace`` and ``differences``."""

    def to_dict(self) -> dict:
        return asdict(self)

    def differences(self, other: "_Config") -> dict:
        """The fields where this config differs from ``other``, with this config's values as
        ``to_dict`` gives them (a nested baseline as a dict), e.g. ``{"z_dim": 50}``."""
        mine, theirs = self.to_dict(), other.to_dict()
        return {name: value for name, value in mine.items() if value != theirs[name]}

    def replace(self, **changes):
        """A copy with some fields changed, e.g. ``config.replace(z_dim=50)``.

        An unknown field name raises a TypeError that lists the valid ones.
        """
        names = {f.name for f in fields(self)}
        unknown = sorted(set(changes) - names)
        if unknown:
            raise TypeError(f"{type(self).__name__} has no field {', '.join(unknown)}; its "
                            f"fields are {', '.join(sorted(names))}")
        return replace(self, **changes)


# ------------------------------------------------------------------------------------------------
# The models
# ------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class BaselineConfig(_Config):
    """What determines a trained baseline (chapter "The baseline")."""

    hidden_1: int = 500           # width of the first hidden layer
    hidden_2: int = 500           # width of the second hidden layer
    lr: float = 1e-3              # Adam's learning rate
    batch_size: int = 256         # images per gradient step (the tutorial: 128)
    patience: int = 3             # epochs without a lower validation loss before stopping
    precision: str = "auto"       # matrix products of training: "fp32", "bf16" or "auto"
    seed: int = 0                 # seeds the weights and the shuffling

    def __post_init__(self) -> None:
        owner = "BaselineConfig"
        for name in ("hidden_1", "hidden_2", "batch_size", "patience"):
            _int(owner, name, getattr(self, name), 1)
        _int(owner, "seed", self.seed, 0)
        _number(owner, "lr", self.lr, 0.0, math.inf, low_open=True, high_open=True)
        _choice(owner, "precision", self.precision, PRECISIONS)


@dataclass(frozen=True)
class CVAEConfig(_Config):
    """What determines a trained CVAE (chapter "The CVAE in Pyro"): the book's recipe.

    ``baseline`` is the config of the frozen baseline the CVAE reads; every other field is the
    CVAE's own, so changing one of them leaves the baseline (and its cache entry) alone.
    """

    baseline: BaselineConfig = field(default_factory=BaselineConfig)
    # the networks
    hidden_1: int = 500           # width of the first hidden layer of the three networks
    hidden_2: int = 500           # width of their second hidden layer
    z_dim: int = 200              # size of the Gaussian latent variable z
    decoder_sees_x: bool = True   # the generation network reads x as well as z (tutorial: z)
    scale: str = "exp"            # positive scale of the Gaussians: "exp" or "softplus"
    prior_uses_baseline: bool = True  # the prior reads x completed by the baseline's guess
    # the objective
    objective: str = "cvae"       # "cvae" (SGVB), "gsnn" (prior network alone) or "hybrid"
    hybrid_alpha: float = 0.5     # weight of the CVAE term in the hybrid objective
    analytic_kl: bool = True      # KL(q || p) in closed form, else from the sampled z
    kl_warmup_epochs: int = 10    # the KL weight rises linearly to 1 over these epochs ...
    kl_warmup_max_share: float = 0.5  # ... but over at most this share of the epoch cap
    joint_baseline: bool = False  # fine-tune the baseline with the CVAE (else frozen)
    # the optimiser
    lr: float = 1e-3              # Adam's learning rate
    lr_decay: float = 1.0         # the learning rate is multiplied by this after every epoch
    #                               (1: constant; 0.99 hurt on validation, see DECISIONS.md)
    batch_size: int = 128         # images per gradient step (256 with lr 1.5e-3 hurt)
    weight_average: float = 0.999  # moving average of the weights, validated and kept: its
    #                                decay per step (0: no average, the weights as trained)
    average_every: int = 4        # steps between two updates of that average
    precision: str = "auto"       # matrix products of training: "fp32", "bf16" or "auto"
    # early stopping
    patience: int = 6             # epochs without a counted improvement before stopping
    min_delta: float = 0.0        # nats per image: a smaller fall of the validation loss is
    #                               not counted as an improvement (0: every fall is; 0.05
    #                               hurt on validation, see DECISIONS.md)
    # what the run records besides the weights
    snapshot_inputs: int = 8      # test inputs whose completions are recorded every epoch
    snapshot_samples: int = 8     # completions per input and epoch (the training animation)
    seed: int = 0                 # seeds weights, shuffling, sampling and validation noise

    def __post_init__(self) -> None:
        owner = "CVAEConfig"
        if not isinstance(self.baseline, BaselineConfig):
            _fail(owner, "baseline", "a BaselineConfig", self.baseline)
        for name in ("hidden_1", "hidden_2", "z_dim", "batch_size", "patience",
                     "average_every", "snapshot_inputs", "snapshot_samples"):
            _int(owner, name, getattr(self, name), 1)
        for name in ("kl_warmup_epochs", "seed"):
            _int(owner, name, getattr(self, name), 0)
        for name in ("decoder_sees_x", "prior_uses_baseline", "analytic_kl", "joint_baseline"):
            _flag(owner, name, getattr(self, name))
        _choice(owner, "scale", self.scale, ("exp", "softplus"))
        _choice(owner, "objective", self.objective, ("cvae", "gsnn", "hybrid"))
        _choice(owner, "precision", self.precision, PRECISIONS)
        _number(owner, "hybrid_alpha", self.hybrid_alpha, 0.0, 1.0)
        _number(owner, "kl_warmup_max_share", self.kl_warmup_max_share, 0.0, 1.0)
        _number(owner, "lr", self.lr, 0.0, math.inf, low_open=True, high_open=True)
        _number(owner, "lr_decay", self.lr_decay, 0.0, 1.0, low_open=True)
        _number(owner, "weight_average", self.weight_average, 0.0, 1.0, high_open=True)
        _number(owner, "min_delta", self.min_delta, 0.0, math.inf, high_open=True)

    def replace(self, **changes) -> "CVAEConfig":
        """A copy with some fields changed; ``baseline`` may be a dict of baseline changes.

        ``config.replace(z_dim=50)`` changes the CVAE alone; ``config.replace(baseline={"lr":
        0.01})`` changes the baseline it is built on (and so the CVAE too).
        """
        if isinstance(changes.get("baseline"), dict):
            changes["baseline"] = self.baseline.replace(**changes["baseline"])
        return super().replace(**changes)

    def warmup_epochs(self, max_epochs: int) -> int:
        """Epochs of KL warm-up in a run of at most ``max_epochs``: ``kl_warmup_epochs``, but no
        more than ``kl_warmup_max_share`` of the run, so that every run ends on the true ELBO
        (a smoke run of one epoch has none)."""
        return min(self.kl_warmup_epochs, int(max_epochs * self.kl_warmup_max_share))


@dataclass(frozen=True)
class ClassifierConfig(_Config):
    """What determines the digit classifier (a judge of completions, not part of the CVAE)."""

    hidden: tuple[int, ...] = (512, 256)  # widths of the hidden layers of the MLP
    dropout: float = 0.2          # dropout after every hidden layer, during training only
    lr: float = 1e-3              # Adam learning rate
    batch_size: int = 128         # images per gradient step
    patience: int = 3             # epochs without validation improvement before stopping
    max_epochs: int = 30          # cap on epochs, below the budget's (which is 100 for "paper")
    max_shift: int = 2            # random translation of training images, in pixels (0: none)
    seed: int = 0                 # seeds weights, shuffling, dropout and shifts

    def __post_init__(self) -> None:
        owner = "ClassifierConfig"
        hidden = tuple(self.hidden) if isinstance(self.hidden, (tuple, list)) else None
        if not hidden or any(isinstance(h, bool) or not isinstance(h, numbers.Integral) or h < 1
                             for h in hidden):
            _fail(owner, "hidden", "a non-empty sequence of positive ints", self.hidden)
        object.__setattr__(self, "hidden", hidden)  # a list given by a caller becomes a tuple
        for name in ("batch_size", "patience", "max_epochs"):
            _int(owner, name, getattr(self, name), 1)
        _int(owner, "seed", self.seed, 0)
        check_int(f"{owner}.max_shift", self.max_shift, 0, 13)
        _number(owner, "dropout", self.dropout, 0.0, 1.0, high_open=True)
        _number(owner, "lr", self.lr, 0.0, math.inf, low_open=True, high_open=True)


def book_config() -> CVAEConfig:
    """The configuration the book trains and reports: ``CVAEConfig()``, by its name.

    Every default of `CVAEConfig` and `BaselineConfig` is the book's choice, each measured at
    the paper budget (`DECISIONS.md` gives the numbers).
    """
    return CVAEConfig()


def tutorial_config() -> CVAEConfig:
    """The configuration of the Pyro tutorial: the reference row of chapter "Variants".

    Its decoder reads z alone; no KL warm-up, sampled KL, minibatches of 128 for both models,
    learning rate 1e-3 without decay, no weight average, patience 3 with every fall counted,
    float32 products.
    """
    baseline = BaselineConfig(batch_size=128, precision="fp32")
    return CVAEConfig(baseline=baseline, decoder_sees_x=False, analytic_kl=False,
                      kl_warmup_epochs=0, lr=1e-3, lr_decay=1.0, batch_size=128,
                      weight_average=0.0, precision="fp32", patience=3, min_delta=0.0)


# ------------------------------------------------------------------------------------------------
# Budgets
# ------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Budget:
    """How much data and how many epochs a run may use."""

    name: str        # "smoke", "quick" or "paper"
    num_train: int   # training images (at most 50,000)
    num_val: int     # validation images for early stopping (at most 10,000)
    num_test: int    # test images for the evaluation table (at most 10,000)
    max_epochs: int  # upper bound on epochs; early stopping usually ends sooner

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            _fail("Budget", "name", "a non-empty str", self.name)
        for name in ("num_train", "num_val", "num_test", "max_epochs"):
            _int("Budget", name, getattr(self, name), 1)

    def to_dict(self) -> dict:
        return asdict(self)


BUDGETS = {
    # seconds: a few hundred images, one epoch; for tests and CI
    "smoke": Budget("smoke", num_train=512, num_val=256, num_test=256, max_epochs=1),
    # minutes on a laptop CPU: a fifth of the data, a handful of epochs
    "quick": Budget("quick", num_train=10_000, num_val=2_000, num_test=2_000, max_epochs=8),
    # the full protocol: all data, up to 100 epochs with early stopping
    "paper": Budget("paper", num_train=50_000, num_val=10_000, num_test=10_000, max_epochs=100),
}

DEFAULT_BUDGET = settings.DEFAULT_BUDGET


def parse_budget(value, source: str = "argument") -> Budget:
    """The `Budget` named by ``value``, by one rule wherever the name comes from.

    The name must be one of `BUDGETS` exactly (lower case, no spaces), whether it comes from an
    argument, ``CVAE_BUDGET`` or the command line; ``source`` names where it came from in the
    error message.
    """
    if isinstance(value, Budget):
        return value
    if not isinstance(value, str) or value not in BUDGETS:
        hint = ""
        if isinstance(value, str) and value.strip().lower() in BUDGETS:
            hint = f" (did you mean {value.strip().lower()!r}? names are lower case, no spaces)"
        raise ValueError(f"unknown budget {value!r} from the {source}{hint}; choose one of "
                         f"{', '.join(BUDGETS)}, e.g. CVAE_BUDGET=smoke")
    return BUDGETS[value]


def get_budget(name: str | Budget | None = None) -> Budget:
    """Return the named budget; with no name, the one in ``CVAE_BUDGET`` (default ``paper``)."""
    if name is None:
        return parse_budget(settings.budget_name(), "environment variable CVAE_BUDGET")
    return parse_budget(name)
