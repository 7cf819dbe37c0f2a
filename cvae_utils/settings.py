"""The package's settings from the environment: every ``CVAE_*`` variable is read here, and only here.

=========================  ===================================================================
``CVAE_BUDGET``            the run length: smoke, quick or paper (default paper); `budget_name`,
                           validated by `cvae_utils.config.get_budget`
``CVAE_SEEDS``             the number of training seeds per model of a table (default: the
                           budget's, 3 at paper); `seeds`, validated by
                           `cvae_utils.seeds.training_seeds`
``CVAE_VARIANTS_BUDGET``   the run length of the chapter "Variants of the model" (default: the
                           book's, capped at quick); `variants_budget_name`, validated by
                           `cvae_utils.variants.variants_budget`
``CVAE_PRECISION``         fp32, bf16 or auto (default): what "auto" stands for;
                           `precision_override`
``CVAE_DATA_DIR``          the MNIST root (default ``~/.cache/cvae_utils/data``); `data_dir`
``CVAE_CACHE_DIR``         the model cache (default ``~/.cache/cvae_utils/models``); `cache_dir`
``CVAE_SCHEDULER``         the address of a Dask scheduler that trains the models (default:
                           none, they train in the process that needs them); `scheduler`
``CVAE_NODE_MODULES``      where ``npm ci`` put onnxruntime-web and MathJax (default the
                           repository's ``node_modules``); `node_modules_dir`
=========================  ===================================================================

Each function reads its variable when called, so a change of the environment (a test's
``monkeypatch``, a build that sets a variable for its kernels) takes effect at once. The book's
build has variables of its own (``CVAE_PROGRESS_FILE``), read on the book's side
(``book/_ext/``). This module imports nothing of the package.
"""
from __future__ import annotations

import os
from pathlib import Path

__all__ = ["BUDGET_ENV", "VARIANTS_BUDGET_ENV", "PRECISION_ENV", "DATA_DIR_ENV", "CACHE_DIR_ENV",
           "NODE_MODULES_ENV", "SCHEDULER_ENV", "SEEDS_ENV", "DEFAULT_BUDGET", "budget_name",
           "variants_budget_name", "seeds", "precision_override", "data_dir", "cache_dir",
           "node_modules_dir", "scheduler"]

BUDGET_ENV = "CVAE_BUDGET"
VARIANTS_BUDGET_ENV = "CVAE_VARIANTS_BUDGET"
SEEDS_ENV = "CVAE_SEEDS"
PRECISION_ENV = "CVAE_PRECISION"  # fp32, bf16, or auto (the default): what "auto" stands for
DATA_DIR_ENV = "CVAE_DATA_DIR"
CACHE_DIR_ENV = "CVAE_CACHE_DIR"
NODE_MODULES_ENV = "CVAE_NODE_MODULES"
SCHEDULER_ENV = "CVAE_SCHEDULER"
DEFAULT_BUDGET = "paper"


def budget_name() -> str:
    """``CVAE_BUDGET`` as it is set (an empty value too), else `DEFAULT_BUDGET`; the name is
    checked by `cvae_utils.config.parse_budget`, one rule for every source of a budget."""
    return os.environ.get(BUDGET_ENV, DEFAULT_BUDGET)


def seeds() -> str | None:
    """``CVAE_SEEDS`` as it is set (checked by `cvae_utils.seeds.training_seeds`), or None when
    it is unset or empty (the budget's own count)."""
    return os.environ.get(SEEDS_ENV, "").strip() or None


def variants_budget_name() -> str:
    """``CVAE_VARIANTS_BUDGET``, or "" when it is unset or empty (follow the book's budget)."""
    return os.environ.get(VARIANTS_BUDGET_ENV, "")


def precision_override() -> str | None:
    """The precision ``CVAE_PRECISION`` sets for every "auto" ("fp32" or "bf16"), or None when
    it is unset or "auto"; any other value is a ValueError that names the choices."""
    value = os.environ.get(PRECISION_ENV, "").strip()
    if value in ("", "auto"):
        return None
    if value not in ("fp32", "bf16"):
        raise ValueError(f"environment variable {PRECISION_ENV}={value!r}: choose fp32, bf16 or "
                         f"auto, or unset it to let the machine decide")
    return value


def data_dir() -> Path:
    """``CVAE_DATA_DIR`` if set and not empty, else ``~/.cache/cvae_utils/data`` (unexpanded)."""
    return Path(os.environ.get(DATA_DIR_ENV) or Path.home() / ".cache" / "cvae_utils" / "data")


def cache_dir() -> Path:
    """``CVAE_CACHE_DIR`` if set and not empty, else ``~/.cache/cvae_utils/models``
    (unexpanded)."""
    return Path(os.environ.get(CACHE_DIR_ENV) or Path.home() / ".cache" / "cvae_utils" / "models")


def node_modules_dir() -> Path:
    """``CVAE_NODE_MODULES`` if set and not empty, else ``node_modules/`` of the repository that
    holds this package."""
    return Path(os.environ.get(NODE_MODULES_ENV)
                or Path(__file__).resolve().parents[1] / "node_modules")


def scheduler() -> str | None:
    """``CVAE_SCHEDULER`` (a Dask scheduler's address, e.g. ``tcp://127.0.0.1:8786``), or None
    when it is unset or empty."""
    return os.environ.get(SCHEDULER_ENV, "").strip() or None
