"""Cache of trained models, so that chapters share them and a rebuild does not retrain.

Models are saved under ``CVAE_CACHE_DIR`` (default ``~/.cache/cvae_utils/models``), one file per
run, named by the model, the budget, the quadrant count and a hash of everything that determines the
run: the relevant config fields, the budget and the quadrant count (and, for the CVAE, the baseline
it was built on). Files are written atomically (a temporary file renamed into place) and read with
``torch.load(..., weights_only=True)``. A file that is corrupt, or whose stored key does not match,
is reported with a warning and the model is trained again.

`trained_baseline` and `trained_cvae` are what the chapters and the command line call.
"""
from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path

import torch

from .config import Budget, CVAEConfig, get_budget
from .data import MNISTData, check_num_quadrants, load_mnist, make_quadrant_data
from .files import write_atomically
from .networks import CVAE, BaselineNet
from .train import History, default_device, train_baseline, train_cvae

__all__ = ["cache_dir", "run_key", "save_checkpoint", "load_checkpoint", "CheckpointError",
           "trained_baseline", "trained_cvae", "checkpoint_path", "cached_model", "NUM_SNAPSHOT_INPUTS"]

FORMAT_VERSION = 3  # 2: fused Adam (results differ from version 1 in the last digits);
# 3: the CVAE's weight average every 4 steps, Pyro's checks in its first epoch only
NUM_SNAPSHOT_INPUTS = 8   # test inputs whose completions are recorded every epoch (animation)
# the config fields that change a trained baseline (the CVAE-only fields do not)
BASELINE_FIELDS = ("hidden_1", "hidden_2", "baseline_lr", "batch_size", "patience", "seed",
                   "baseline_precision")


class CheckpointError(RuntimeError):
    """A checkpoint file is unreadable, incomplete or belongs to another run."""


def cache_dir(path: str | os.PathLike | None = None) -> Path:
    """The model cache: the argument, else ``CVAE_CACHE_DIR``, else ``~/.cache/cvae_utils/models``."""
    if path is None:
        path = os.environ.get("CVAE_CACHE_DIR") or Path.home() / ".cache" / "cvae_utils" / "models"
    return Path(path).expanduser()


def run_key(kind: str, config, budget: Budget, num_quadrants: int | None = None,
            **extra) -> dict:
    """Everything that determines a trained model, as a JSON-ready dict.

    ``config`` is any config with ``to_dict()``; ``num_quadrants`` is left out for models of whole
    images (the digit classifier).
    """
    fields = config.to_dict()
    if kind == "baseline":
        fields = {name: fields[name] for name in BASELINE_FIELDS}
    key = {"format": FORMAT_VERSION, "kind": kind, "config": fields, "budget": budget.to_dict()}
    if num_quadrants is not None:
        key["num_quadrants"] = check_num_quadrants(num_quadrants)
    return {**key, **extra}


def _digest(key: dict) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def _label(key: dict) -> str:
    """Readable part of a file name: the kind, the quadrant count if any, the budget."""
    quadrants = f"-k{key['num_quadrants']}" if "num_quadrants" in key else ""
    return f"{key['kind']}{quadrants}-{key['budget']['name']}"


def checkpoint_path(key: dict, directory: str | os.PathLike | None = None) -> Path:
    """Where the model of ``key`` lives in the cache: its label and a hash of the whole key."""
    return cache_dir(directory) / f"{_label(key)}-{_digest(key)[:16]}.pt"


def save_checkpoint(path: str | os.PathLike, key: dict, state_dict: dict,
                    history: History) -> Path:
    """Write a checkpoint atomically: a temporary file in the same directory, then a rename."""
    payload = {"key": json.dumps(key, sort_keys=True),
               "state_dict": {k: v.detach().cpu() for k, v in state_dict.items()},
               "history": history.to_dict()}
    return write_atomically(path, lambda tmp: torch.save(payload, tmp))


def load_checkpoint(path: str | os.PathLike, key: dict, module: torch.nn.Module) -> History:
    """Load weights into ``module`` and return the history; raise CheckpointError if unusable."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # truncated file, not a torch file, unpicklable content...
        raise CheckpointError(f"{path} is unreadable ({type(error).__name__}: {error})") from error
    if not isinstance(payload, dict) or not {"key", "state_dict", "history"} <= payload.keys():
        raise CheckpointError(f"{path} is not a cvae_utils checkpoint (fields missing)")
    if payload["key"] != json.dumps(key, sort_keys=True):
        raise CheckpointError(f"{path} belongs to another run: stored key {payload['key']} "
                              f"differs from the expected {json.dumps(key, sort_keys=True)}")
    try:
        module.load_state_dict(payload["state_dict"], strict=True)
        return History.from_dict(payload["history"])
    except Exception as error:  # wrong tensor shapes or names, malformed history
        raise CheckpointError(f"{path} does not fit the model ({error})") from error


def cached_model(key: dict, directory, module: torch.nn.Module, train_fn, use_cache: bool = True,
                 progress: bool | None = None) -> tuple[torch.nn.Module, History]:
    """``module`` loaded from the cache file of ``key``, or ``train_fn()`` run and saved there.

    ``train_fn`` returns ``(trained_module, history)``. A bad file is reported with a warning and
    replaced by a fresh training run.
    """
    path = checkpoint_path(key, directory)
    if use_cache and path.exists():
        try:
            history = load_checkpoint(path, key, module)
            if progress:
                quadrants = f" k={key['num_quadrants']}" if "num_quadrants" in key else ""
                print(f"loaded {key['kind']}{quadrants} ({key['budget']['name']}) from {path}",
                      flush=True)
            return module, history
        except CheckpointError as error:
            warnings.warn(f"ignoring a bad cached model and training again: {error}",
                          stacklevel=3)
    trained, history = train_fn()
    if use_cache:
        save_checkpoint(path, key, trained.state_dict(), history)
    return trained, history


def _resolve(config, budget, data):
    config = config or CVAEConfig()
    budget = get_budget(budget)
    data = (data if data is not None else load_mnist()).subset(budget)
    return config, budget, data


def trained_baseline(num_quadrants: int, config: CVAEConfig | None = None,
                     budget: Budget | str | None = None, data: MNISTData | None = None,
                     device=None, progress: bool | None = None, use_cache: bool = True,
                     cache: str | os.PathLike | None = None) -> tuple[BaselineNet, History]:
    """The baseline for k input quadrants, from the cache or trained (and cached) now."""
    config, budget, data = _resolve(config, budget, data)
    key = run_key("baseline", config, budget, num_quadrants)
    device = torch.device(device) if device is not None else default_device()

    def train():
        return train_baseline(make_quadrant_data(data.train, num_quadrants),
                              make_quadrant_data(data.val, num_quadrants), config,
                              budget.max_epochs, device, progress)

    model, history = cached_model(key, cache, BaselineNet(config), train, use_cache, progress)
    return model.to(device).eval(), history


def trained_cvae(num_quadrants: int, config: CVAEConfig | None = None,
                 budget: Budget | str | None = None, data: MNISTData | None = None,
                 device=None, progress: bool | None = None, use_cache: bool = True,
                 cache: str | os.PathLike | None = None) -> tuple[CVAE, History]:
    """The CVAE for k input quadrants (with its baseline), from the cache or trained now.

    Its history carries ``snapshots``: completions of the first `NUM_SNAPSHOT_INPUTS` test inputs
    recorded after every epoch with fixed noise (inputs only; they play no part in training).
    """
    config, budget, data = _resolve(config, budget, data)
    baseline, _ = trained_baseline(num_quadrants, config, budget, data, device, progress,
                                   use_cache, cache)
    baseline_key = run_key("baseline", config, budget, num_quadrants)
    key = run_key("cvae", config, budget, num_quadrants, baseline=_digest(baseline_key))
    device = torch.device(device) if device is not None else default_device()

    def train():
        snapshot_x = make_quadrant_data(data.test.head(NUM_SNAPSHOT_INPUTS), num_quadrants).x
        return train_cvae(make_quadrant_data(data.train, num_quadrants),
                          make_quadrant_data(data.val, num_quadrants), baseline, config,
                          budget.max_epochs, device, progress, snapshot_x=snapshot_x)

    model, history = cached_model(key, cache, CVAE(BaselineNet(config), config), train, use_cache,
                             progress)
    return model.to(device).eval(), history
