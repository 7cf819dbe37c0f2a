"""A small digit classifier, used to read which digit a completion shows (chapter "Beyond
the table").

The CLL table says how likely the true output pixels are; it does not say whether the CVAE's samples
are different *digits*. To count identities we need a judge: `DigitClassifier`, a 784-512-256-10
MLP with dropout, trained on the full images of the training split with small random translations
(so that it tolerates the slightly shifted, blurrier strokes of generated completions). It reaches
about 98.5 % test accuracy at the ``paper`` budget in about a minute on two CPU cores.

`train_classifier` trains it with a plain early-stopping loop like the baseline's (validation
cross-entropy, best weights kept); `trained_classifier` is the cached version the chapters call,
stored by the same machinery as the baseline and the CVAE (`cvae_utils.cache`: atomic save,
``weights_only`` load, file name from a hash of everything that determines the run).
`classifier_accuracy` and `predict_digits` score it on whole splits in chunks.
"""
from __future__ import annotations

import copy
import os
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .cache import cached_model, checkpoint_path, model_key
from .config import Budget, ClassifierConfig, get_budget
from .data import IMAGE_SIDE, NUM_PIXELS, MNISTData, Split, iterate_minibatches, load_mnist
from .networks import device_of
from .speed import flush_denormals
from .train import EVAL_CHUNK, History, pick_device

__all__ = ["ClassifierConfig", "DigitClassifier", "train_classifier", "trained_classifier",
           "classifier_key", "classifier_path", "classifier_accuracy", "digit_probabilities",
           "predict_digits", "random_shift", "NUM_CLASSES"]

NUM_CLASSES = 10


class DigitClassifier(nn.Module):
    """MLP from an image, (n, 784) or (n, 28, 28) in [0, 1], to the 10 digit logits (n, 10)."""

    def __init__(self, config: ClassifierConfig | None = None):
        super().__init__()
        config = config or ClassifierConfig()
        layers: list[nn.Module] = []
        width = NUM_PIXELS
        for hidden in config.hidden:
            layers += [nn.Linear(width, hidden), nn.ReLU(), nn.Dropout(config.dropout)]
            width = hidden
        layers.append(nn.Linear(width, NUM_CLASSES))
        self.net = nn.Sequential(*layers)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images.reshape(images.shape[0], NUM_PIXELS))  # (n, 10) logits


def random_shift(images: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Translate each image by its own random offset in [-max_shift, max_shift]^2, zero-padded.

    ``images``: (n, 28, 28). One gather on a padded copy, no loop over images. The offsets are
    drawn on the CPU from ``generator`` (so the result does not depend on the device).
    """
    if max_shift == 0:
        return images
    n = images.shape[0]
    padded = F.pad(images, (max_shift,) * 4)                       # (n, 28 + 2s, 28 + 2s)
    offsets = torch.randint(0, 2 * max_shift + 1, (2, n), generator=generator).to(images.device)
    grid = torch.arange(IMAGE_SIDE, device=images.device)
    rows = (offsets[0, :, None] + grid)[:, :, None]                 # (n, 28, 1)
    cols = (offsets[1, :, None] + grid)[:, None, :]                 # (n, 1, 28)
    batch = torch.arange(n, device=images.device)[:, None, None]    # (n, 1, 1)
    return padded[batch, rows, cols]                                # (n, 28, 28)


@torch.no_grad()
def _split_loss(model: DigitClassifier, split: Split) -> float:
    """Mean cross-entropy (nats per image) of ``model`` on a whole split, in chunks."""
    total = sum(F.cross_entropy(model(images), labels, reduction="sum").item()
                for images, labels in zip(split.images.split(EVAL_CHUNK),
                                          split.labels.split(EVAL_CHUNK)))
    return total / len(split)


def train_classifier(data: MNISTData, config: ClassifierConfig | None = None,
                     budget: Budget | str | None = None, *,
                     device=None) -> tuple[DigitClassifier, History]:
    """Train the digit classifier on ``data.train`` with early stopping on ``data.val``.

    The budget (default: ``CVAE_BUDGET``, else ``paper``) limits the images used and the epochs,
    which are also capped by ``config.max_epochs``. The losses in the history are cross-entropies
    in nats per image. Training is seeded by ``config.seed`` inside `torch.random.fork_rng`, so the
    caller's global random state is left as it was. Returns the best epoch's model in eval mode.
    """
    config = config or ClassifierConfig()
    budget = get_budget(budget)
    device = pick_device(device)
    data = data.subset(budget)
    if len(data.train) == 0 or len(data.val) == 0:
        raise ValueError("train_classifier needs at least one training and one validation image")
    flush_denormals()
    train, val = data.train.to(device), data.val.to(device)
    images = train.images.reshape(len(train), IMAGE_SIDE, IMAGE_SIDE)   # (N, 28, 28)
    fork_devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=fork_devices):
        torch.manual_seed(config.seed)  # weights and dropout
        model = DigitClassifier(config).to(device)
        optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, fused=True)  # one kernel
        shifts = torch.Generator().manual_seed(config.seed + 1)

        max_epochs = min(budget.max_epochs, config.max_epochs)
        shuffle = torch.Generator().manual_seed(config.seed)
        history, best_state, waited = History(), None, 0
        for epoch in range(1, max_epochs + 1):
            model.train()
            start, total = time.perf_counter(), 0.0
            for idx in iterate_minibatches(len(train), config.batch_size, shuffle):
                batch = random_shift(images[idx], config.max_shift, shifts)  # (B, 28, 28)
                loss = F.cross_entropy(model(batch), train.labels[idx], reduction="sum")
                optimizer.zero_grad(set_to_none=True)
                (loss / len(idx)).backward()
                optimizer.step()
                total += loss.item()
            model.eval()
            val_loss = _split_loss(model, val)
            if history.add(total / len(train), val_loss, since=start):
                best_state, waited = copy.deepcopy(model.state_dict()), 0
            else:
                waited += 1
            history.report("digit classifier", max_epochs)
            if waited >= config.patience:
                break
        if best_state is None:
            raise FloatingPointError(f"digit classifier: the validation loss was never finite "
                                     f"({history.val_loss}); check the data for NaN")
        model.load_state_dict(best_state)
    return model.eval(), history


def classifier_key(config: ClassifierConfig, budget: Budget) -> dict:
    """Everything that determines a trained classifier, as a JSON-ready dict for the cache.

    It has no quadrant count: the classifier reads whole images (``classifier-<budget>-...``).
    """
    return model_key("classifier", config, budget)


def trained_classifier(budget: Budget | str | None = None, data: MNISTData | None = None,
                       config: ClassifierConfig | None = None, *, device=None,
                       progress: bool | None = None, use_cache: bool = True,
                       cache: str | os.PathLike | None = None) -> tuple[DigitClassifier, History]:
    """The digit classifier for a budget, from the model cache or trained (and cached) now.

    ``data`` defaults to `load_mnist()`; ``cache`` to ``CVAE_CACHE_DIR``. A corrupt or mismatched
    cache file is reported with a warning and the classifier is trained again.
    """
    config = config or ClassifierConfig()
    budget = get_budget(budget)
    device = pick_device(device)
    data = (data if data is not None else load_mnist()).subset(budget)
    key = classifier_key(config, budget)
    model, history = cached_model(key, cache, DigitClassifier(config),
                             lambda: train_classifier(data, config, budget, device=device),
                             use_cache, progress)
    return model.to(device).eval(), history


def classifier_path(config: ClassifierConfig | None = None, budget: Budget | str | None = None,
                    cache: str | os.PathLike | None = None) -> Path:
    """Where `trained_classifier` keeps the classifier for this config and budget."""
    return checkpoint_path(classifier_key(config or ClassifierConfig(), get_budget(budget)), cache)


@torch.no_grad()
def digit_probabilities(model: nn.Module, images: torch.Tensor,
                        chunk_size: int = EVAL_CHUNK) -> torch.Tensor:
    """The softmax of the classifier's logits for each image: (n, 10) float32 on the CPU.

    ``images``: (n, 784) or (n, 28, 28), any device; they are moved to the model's device chunk
    by chunk. ``model`` maps (n, 784) images to (n, 10) logits (any module, e.g. a test double)
    and is run in eval mode (its mode is restored afterwards).
    """
    images = torch.as_tensor(images)
    if images.dim() not in (2, 3) or images.shape[1:] not in ((NUM_PIXELS,),
                                                              (IMAGE_SIDE, IMAGE_SIDE)):
        raise ValueError(f"images must be (n, 784) or (n, 28, 28), got {tuple(images.shape)}")
    if len(images) == 0:
        return torch.empty(0, NUM_CLASSES)
    device = device_of(model)
    was_training = model.training
    model.eval()
    try:
        return torch.cat([model(chunk.reshape(len(chunk), NUM_PIXELS).to(device).float())
                          .softmax(-1).float().cpu()
                          for chunk in images.split(chunk_size)])  # (n, 10)
    finally:
        model.train(was_training)


def predict_digits(model: nn.Module, images: torch.Tensor,
                   chunk_size: int = EVAL_CHUNK) -> torch.Tensor:
    """The predicted digit of each image, (n,) int64 on the CPU (see `digit_probabilities`)."""
    return digit_probabilities(model, images, chunk_size).argmax(-1)


def classifier_accuracy(model: nn.Module, split: Split) -> float:
    """Share of the images of ``split`` whose predicted digit is the label (a plain float)."""
    if len(split) == 0:
        raise ValueError("classifier_accuracy needs a split with at least one image")
    predicted = predict_digits(model, split.images)
    return (predicted == split.labels.cpu()).double().mean().item()
