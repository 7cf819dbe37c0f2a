"""Cache of trained models, so that chapters share them and a rebuild does not retrain.

Models are saved under ``CVAE_CACHE_DIR`` (default ``~/.cache/cvae_utils/models``), one file per
model. Its name holds the model's kind, quadrant count and budget, and a hash of its key: a
dict of everything that determines the trained model, derived, never listed by hand:

- the model's own config (`BaselineConfig` for a baseline; the whole `CVAEConfig`, which holds
  its baseline's, for a CVAE), with ``precision="auto"`` resolved for this machine;
- the budget and the quadrant count;
- a digest of the code that trains it (the modules of `MODEL_CODE`, with docstrings and
  comments left out, so editing prose retrains nothing) and the versions of torch and Pyro.

So a changed CVAE field retrains the CVAEs and not the baselines, and a changed training loop
retrains what it trains. Files are written atomically (`cvae_utils.files`) and read with
``torch.load(..., weights_only=True)``. A file that is unreadable, belongs to another key, or
whose weights do not match the digest stored with them is reported with a warning and the
model is trained again.

`trained_baseline` and `trained_cvae` are what the chapters and the command line call.
"""
from __future__ import annotations

import ast
import ctypes
import functools
import gc
import hashlib
import importlib
import inspect
import json
import os
import warnings
from pathlib import Path

import pyro
import torch

from . import settings
from .config import BaselineConfig, Budget, CVAEConfig, get_budget
from .data import MNISTData, check_num_quadrants, input_mask, load_mnist, make_quadrant_data
from .files import check_writable, write_atomically
from .networks import CVAE, BaselineNet
from .speed import resolve_precision
from .train import History, Snapshots, default_device, train_baseline, train_cvae
from .variant_models import build_cvae

__all__ = ["cache_dir", "model_key", "key_digest", "code_digest", "MODEL_CODE", "resolved",
           "free_memory", "save_checkpoint", "load_checkpoint", "CheckpointError",
           "checkpoint_path", "cached_model", "trained_baseline", "trained_cvae"]

# the modules whose code determines each kind of trained model
MODEL_CODE = {
    "baseline": ("data", "networks", "speed", "train"),
    "cvae": ("data", "networks", "optim", "speed", "train", "variant_models"),
    "classifier": ("classifier", "data", "speed", "train"),
}


class CheckpointError(RuntimeError):
    """A checkpoint file is unreadable, incomplete, damaged or belongs to another run."""


def cache_dir(path: str | os.PathLike | None = None) -> Path:
    """The model cache: the argument, else ``CVAE_CACHE_DIR``, else ``~/.cache/cvae_utils/models``."""
    if path is None:
        path = settings.cache_dir()
    return Path(path).expanduser()


def _strip_docstrings(tree: ast.AST) -> ast.AST:
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (isinstance(body, list) and body and isinstance(body[0], ast.Expr)
                and isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str)):
            node.body = body[1:] or [ast.Pass()]
    return tree


@functools.lru_cache(maxsize=None)
def code_digest(*modules: str) -> str:
    """A hash of the code of the package's ``modules`` (e.g. "train"), without their docstrings
    and comments: it changes when what the code does may change, not when its prose does."""
    parts = []
    for name in sorted(modules):
        source = inspect.getsource(importlib.import_module(f"{__package__}.{name}"))
        parts.append(f"{name}:{ast.dump(_strip_docstrings(ast.parse(source)))}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def resolved(config, device=None):
    """``config`` with ``precision="auto"`` replaced by what this machine uses ("fp32" or
    "bf16"), in the CVAE's and in its baseline's config; other configs unchanged."""
    if isinstance(config, CVAEConfig):
        return config.replace(precision=resolve_precision(config.precision, device),
                              baseline=resolved(config.baseline, device))
    if isinstance(config, BaselineConfig):
        return config.replace(precision=resolve_precision(config.precision, device))
    return config


def model_key(kind: str, config, budget: Budget, num_quadrants: int | None = None,
              device=None) -> dict:
    """Everything that determines a trained model, as a JSON-ready dict.

    ``kind`` is a key of `MODEL_CODE`; ``config`` the model's own config (a `CVAEConfig` given
    for a baseline stands for its ``baseline`` field). ``num_quadrants`` is left out for models
    of whole images (the digit classifier).
    """
    if kind not in MODEL_CODE:
        raise ValueError(f"unknown model kind {kind!r}; choose one of {', '.join(MODEL_CODE)}")
    if kind == "baseline" and isinstance(config, CVAEConfig):
        config = config.baseline
    key = {"kind": kind, "config": resolved(config, device).to_dict(),
           "budget": budget.to_dict(), "code": code_digest(*MODEL_CODE[kind]),
           "versions": {"torch": torch.__version__, "pyro": pyro.__version__}}
    if num_quadrants is not None:
        key["num_quadrants"] = check_num_quadrants(num_quadrants)
    return key


def key_digest(key: dict) -> str:
    """The SHA-256 of a key, as hex."""
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def _label(key: dict) -> str:
    """Readable part of a file name: the kind, the quadrant count if any, the budget."""
    quadrants = f"-k{key['num_quadrants']}" if "num_quadrants" in key else ""
    return f"{key['kind']}{quadrants}-{key['budget']['name']}"


def checkpoint_path(key: dict, directory: str | os.PathLike | None = None) -> Path:
    """Where the model of ``key`` lives in the cache: its label and a hash of the whole key."""
    return cache_dir(directory) / f"{_label(key)}-{key_digest(key)[:16]}.pt"


def _weights_digest(key_text: str, state_dict: dict) -> str:
    """SHA-256 of the key and of every tensor's name, dtype, shape and bytes, in name order."""
    digest = hashlib.sha256(key_text.encode())
    for name in sorted(state_dict):
        tensor = state_dict[name].detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def save_checkpoint(path: str | os.PathLike, key: dict, state_dict: dict,
                    history: History) -> Path:
    """Write a checkpoint atomically, with a digest of its key and weights."""
    key_text = json.dumps(key, sort_keys=True)
    weights = {k: v.detach().cpu() for k, v in state_dict.items()}
    payload = {"key": key_text, "state_dict": weights, "history": history.to_dict(),
               "digest": _weights_digest(key_text, weights)}
    return write_atomically(path, lambda tmp: torch.save(payload, tmp))


def load_checkpoint(path: str | os.PathLike, key: dict, module: torch.nn.Module) -> History:
    """Load weights into ``module`` and return the history; raise CheckpointError if unusable.

    The file must hold this key, weights whose digest matches the one stored with them (a
    changed byte anywhere in them is caught), finite weights, and names and shapes that fit.
    """
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # truncated file, not a torch file, unpicklable content...
        raise CheckpointError(f"{path} is unreadable ({type(error).__name__}: {error})") from error
    if (not isinstance(payload, dict)
            or not {"key", "state_dict", "history", "digest"} <= payload.keys()):
        raise CheckpointError(f"{path} is not a cvae_utils checkpoint of this version "
                              f"(fields missing)")
    key_text = json.dumps(key, sort_keys=True)
    if payload["key"] != key_text:
        raise CheckpointError(f"{path} belongs to another run: stored key {payload['key']} "
                              f"differs from the expected {key_text}")
    state = payload["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path} holds no weights")
    if _weights_digest(key_text, state) != payload["digest"]:
        raise CheckpointError(f"{path} is damaged: its weights do not match the digest saved "
                              f"with them")
    bad = [name for name, v in state.items() if v.is_floating_point() and not v.isfinite().all()]
    if bad:
        raise CheckpointError(f"{path} holds weights that are not finite: {', '.join(bad)}")
    try:
        module.load_state_dict(state, strict=True)
        history = History.from_dict(payload["history"])
    except Exception as error:  # wrong tensor shapes or names, malformed history
        raise CheckpointError(f"{path} does not fit the model ({error})") from error
    if "num_quadrants" in key:  # the CVAE and the baseline inside it know their layout
        for part in module.modules():
            if hasattr(type(part), "input_mask"):
                part.input_mask = input_mask(key["num_quadrants"]).reshape(-1)
    return history


def cached_model(key: dict, directory, module: torch.nn.Module, train_fn, use_cache: bool = True,
                 progress: bool | None = None) -> tuple[torch.nn.Module, History]:
    """``module`` loaded from the cache file of ``key``, or ``train_fn()`` run and saved there.

    ``train_fn`` returns ``(trained_module, history)``. A bad file is reported with a warning and
    replaced by a fresh training run.
    """
    path = checkpoint_path(key, directory)
    if use_cache:  # before any training: a cache that cannot take the result fails now
        check_writable(path.parent, "model cache")
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
    free_memory()  # the training data and steps' buffers are gone: hand their pages back
    return trained, history


def free_memory() -> None:
    """Hand the memory that Python and glibc hold free back to the system.

    A training run allocates and frees many buffers; glibc keeps their pages for later and the
    process's resident memory stays near its peak. A book kernel trains and scores a dozen models
    one after another, so those pages add up (`DECISIONS.md`, "Build time"). ``malloc_trim``
    returns them; it exists in glibc only, and elsewhere (macOS, musl) this does the garbage
    collection alone.
    """
    gc.collect()
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError, TypeError):  # not glibc: nothing more to do
        pass


def _resolve(config, budget, data, device):
    config = config if config is not None else CVAEConfig()
    if not isinstance(config, (CVAEConfig, BaselineConfig)):
        raise TypeError(f"config must be a CVAEConfig (or a BaselineConfig for a baseline), got "
                        f"{type(config).__name__}; e.g. CVAEConfig() or tutorial_config()")
    budget = get_budget(budget)
    if data is not None and not isinstance(data, MNISTData):
        raise TypeError(f"data must be the MNISTData of load_mnist(), got "
                        f"{type(data).__name__}")
    try:
        device = torch.device(device) if device is not None else default_device()
    except (RuntimeError, TypeError) as error:
        raise ValueError(f"unknown device {device!r}: use 'cpu', 'cuda' or 'cuda:0' "
                         f"({error})") from None
    data = (data if data is not None else load_mnist()).subset(budget)
    return config, budget, data, device


def trained_baseline(num_quadrants: int, config: CVAEConfig | BaselineConfig | None = None,
                     budget: Budget | str | None = None, data: MNISTData | None = None, *,
                     device=None, progress: bool | None = None, use_cache: bool = True,
                     cache: str | os.PathLike | None = None) -> tuple[BaselineNet, History]:
    """The baseline for k input quadrants, from the cache or trained (and cached) now.

    ``config`` is a `BaselineConfig`, or a `CVAEConfig` whose baseline is meant (default: the
    book's). ``budget`` defaults to ``CVAE_BUDGET``, ``data`` to `load_mnist()`.
    """
    check_num_quadrants(num_quadrants)  # every argument is checked before any work
    config, budget, data, device = _resolve(config, budget, data, device)
    if isinstance(config, CVAEConfig):
        config = config.baseline
    config = resolved(config, device)
    key = model_key("baseline", config, budget, num_quadrants, device)

    def train():
        return train_baseline(make_quadrant_data(data.train, num_quadrants),
                              make_quadrant_data(data.val, num_quadrants), config,
                              max_epochs=budget.max_epochs, device=device)

    model, history = cached_model(key, cache, BaselineNet(config), train, use_cache, progress)
    return model.to(device).eval(), history


def trained_cvae(num_quadrants: int, config: CVAEConfig | None = None,
                 budget: Budget | str | None = None, data: MNISTData | None = None, *,
                 device=None, progress: bool | None = None, use_cache: bool = True,
                 cache: str | os.PathLike | None = None) -> tuple[CVAE, History]:
    """The CVAE for k input quadrants (with its baseline), from the cache or trained now.

    Its history carries ``snapshots``: completions of the first ``config.snapshot_inputs`` test
    inputs recorded after every epoch with fixed noise (`Snapshots`; inputs only, they play no
    part in training).
    """
    check_num_quadrants(num_quadrants)  # every argument is checked before any work
    config, budget, data, device = _resolve(config, budget, data, device)
    config = resolved(config, device)
    baseline, _ = trained_baseline(num_quadrants, config.baseline, budget, data, device=device,
                                   progress=progress, use_cache=use_cache, cache=cache)
    key = model_key("cvae", config, budget, num_quadrants, device)

    def train():
        inputs = make_quadrant_data(data.test.head(config.snapshot_inputs), num_quadrants).x
        snapshots = Snapshots(inputs, config.snapshot_samples, config.z_dim, seed=config.seed)
        return train_cvae(make_quadrant_data(data.train, num_quadrants),
                          make_quadrant_data(data.val, num_quadrants), baseline, config,
                          max_epochs=budget.max_epochs, device=device, on_epoch=snapshots)

    model, history = cached_model(key, cache, build_cvae(BaselineNet(config.baseline), config), train,
                                  use_cache, progress)
    return model.to(device).eval(), history
