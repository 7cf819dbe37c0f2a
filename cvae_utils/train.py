"""Training: the baseline with plain PyTorch, the CVAE with Pyro's SVI, both with early stopping.

Chapter "The baseline" shows `train_baseline`, chapter "The CVAE in Pyro" shows `train_cvae`:
each is one plain loop a student reads top to bottom. Shuffle with a seeded generator, step
through the minibatches, measure the validation loss after every epoch, stop after ``patience``
epochs without improvement and keep the weights of the best epoch, with a `History` of the run.
Losses are in nats per image, averaged over images (a short last batch counts for what it holds).
Each finished epoch is reported to the logger of `cvae_utils.progress`, which the book's build
and the command line listen to.

The speed devices of the recipe are one named line each in the loops, and live elsewhere: the
optimiser and the weight average in `cvae_utils.optim`, the precision and denormal flushing in
`cvae_utils.speed`; the variants' models and objectives in `cvae_utils.variant_models`.
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass, field

import pyro
import torch
from pyro.infer import SVI
from pyro.poutine.messenger import Messenger

from .progress import epoch_done
from .config import BaselineConfig, CVAEConfig
from .data import QuadrantData, check_layout, check_quadrant_data, iterate_minibatches
from .networks import CVAE, BaselineNet, masked_bce
from .optim import JointAdam, WeightAverage
from .speed import autocast, decoder_hidden, flush_denormals
from .variant_models import build_cvae, objective

__all__ = ["History", "train_baseline", "train_cvae", "default_device", "pick_device", "baseline_loss",
           "cvae_loss", "gsnn_loss", "validation_loss", "frozen_guesses", "Snapshots",
           "KLWeight", "EVAL_CHUNK"]

EVAL_CHUNK = 2048  # images per chunk when scoring a whole split without gradients


def default_device() -> torch.device:
    """The GPU when one is present, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def pick_device(device) -> torch.device:
    """``device`` as a torch.device, or `default_device()` when it is None."""
    return torch.device(device) if device is not None else default_device()


@dataclass
class History:
    """Per-epoch record of a training run (epochs counted from 1)."""

    train_loss: list[float] = field(default_factory=list)  # nats per image, training split
    val_loss: list[float] = field(default_factory=list)    # nats per image, validation split
    seconds: list[float] = field(default_factory=list)     # wall time of each epoch
    best_epoch: int = 0                                    # epoch whose weights were kept
    snapshots: torch.Tensor | None = None  # (epochs, inputs, samples, 784) uint8, CVAE only

    def add(self, train_loss: float, val_loss: float, *, since: float) -> bool:
        """Record one epoch that started at ``time.perf_counter()`` ``since``; True when its
        validation loss is the lowest so far."""
        best = val_loss < (self.best_val_loss if self.best_epoch else math.inf)
        self.train_loss.append(train_loss)
        self.val_loss.append(val_loss)
        self.seconds.append(time.perf_counter() - since)
        if best:
            self.best_epoch = len(self.val_loss)
        return best

    def report(self, desc: str, max_epochs: int) -> None:
        """Send the last epoch to the progress logger (`cvae_utils.progress`)."""
        epoch_done(desc, self.num_epochs, max_epochs, self.val_loss[-1], self.seconds,
                   self.best_epoch)

    @property
    def num_epochs(self) -> int:
        return len(self.train_loss)

    @property
    def best_val_loss(self) -> float:
        return self.val_loss[self.best_epoch - 1]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "History":
        return cls(**d)

    def to_frame(self):
        """The history as a pandas DataFrame indexed by epoch."""
        import pandas as pd

        frame = pd.DataFrame({"train_loss": self.train_loss, "val_loss": self.val_loss,
                              "seconds": self.seconds})
        frame.index = pd.RangeIndex(1, len(frame) + 1, name="epoch")
        return frame


def _check_splits(train: QuadrantData, val: QuadrantData,
                  baseline: BaselineNet | None = None) -> torch.Tensor:
    """Training and validation data masked alike (`check_quadrant_data`), and for the layout
    of ``baseline`` if given; their input mask."""
    mask = check_quadrant_data(train.x, train.y, "training data")
    if not torch.equal(check_quadrant_data(val.x, val.y, "validation data"), mask):
        raise ValueError("the training and the validation data are masked differently: mask "
                         "both for the same layout")
    if baseline is not None:
        check_layout(baseline, mask, "the training data")
    return mask


def _best(state: dict | None, desc: str, history: History) -> dict:
    """The weights of the best epoch; an error when no epoch had a finite validation loss."""
    if state is None:
        raise FloatingPointError(
            f"{desc}: the validation loss was never finite ({history.val_loss}); lower the "
            f"learning rate or check the data for NaN")
    return state


# ------------------------------------------------------------------------------------------------
# The baseline
# ------------------------------------------------------------------------------------------------

@torch.no_grad()
def baseline_loss(baseline: BaselineNet, data: QuadrantData) -> torch.Tensor:
    """Per-image masked BCE of the baseline on a whole split, (N,) nats."""
    return torch.cat([masked_bce(baseline.logits(x), y)
                      for x, y in zip(data.x.split(EVAL_CHUNK), data.y.split(EVAL_CHUNK))])


def train_baseline(train, val, config=None, *, max_epochs=100,
                   device=None):
    """Train the baseline MLP with Adam on the masked BCE."""
    config, device = config or BaselineConfig(), pick_device(device)
    name = f"baseline k={train.num_quadrants}"
    mask = _check_splits(train, val)
    flush_denormals()                        # speed: denormals count as 0
    torch.manual_seed(config.seed)
    baseline = BaselineNet(config).to(device)
    optimizer = torch.optim.Adam(baseline.parameters(), lr=config.lr,
                                 fused=True)
    ctx = autocast(config.precision, device, baseline)  # speed: bf16
    x, y, val = train.x.to(device), train.y.to(device), val.to(device)
    rng = torch.Generator().manual_seed(config.seed)  # shuffles epochs
    history, best, waited = History(), None, 0
    for epoch in range(1, max_epochs + 1):
        start, total = time.perf_counter(), 0.0
        for idx in iterate_minibatches(len(x), config.batch_size, rng):
            with ctx:
                loss = masked_bce(baseline.logits(x[idx]), y[idx]).sum()
            optimizer.zero_grad(set_to_none=True)
            (loss / len(idx)).backward()     # mean over the minibatch
            optimizer.step()
            total += loss.item()
        with ctx:
            val_loss = baseline_loss(baseline, val).mean().item()
        if history.add(total / len(x), val_loss, since=start):
            best, waited = copy.deepcopy(baseline.state_dict()), 0
        else:
            waited += 1
        history.report(name, max_epochs)
        if waited >= config.patience:        # early stopping
            break
    baseline.load_state_dict(_best(best, name, history))
    baseline.input_mask = mask.cpu()
    return baseline.eval(), history


# ------------------------------------------------------------------------------------------------
# The CVAE
# ------------------------------------------------------------------------------------------------

@torch.no_grad()
def _single_sample_loss(cvae: CVAE, data: QuadrantData, seed: int, gsnn: bool,
                        y_hat: torch.Tensor | None = None) -> torch.Tensor:
    """One reparameterised draw of z per image, with noise fixed by ``seed``; (N,) nats.

    The CVAE draws z from q(z|x,y) and adds log q - log p (its single-sample -ELBO); the GSNN
    draws z from p(z|x) and scores -log p(y|x,z) alone. ``y_hat``: the baseline's guesses for
    ``data.x`` when they are known (computed here otherwise).
    """
    generator = torch.Generator(device=data.x.device).manual_seed(seed)
    losses = []
    xs, ys = data.x.split(EVAL_CHUNK), data.y.split(EVAL_CHUNK)
    guesses = [None] * len(xs) if y_hat is None else y_hat.split(EVAL_CHUNK)
    for x, y, guess in zip(xs, ys, guesses):
        p = cvae.prior(x, guess)
        q = p if gsnn else cvae.posterior(x, y)
        eps = torch.randn(q.base_dist.loc.shape, generator=generator, device=x.device)
        z = q.base_dist.loc + q.base_dist.scale * eps
        nll = masked_bce(cvae.generation_net(z, x), y)
        losses.append(nll if gsnn else nll + q.log_prob(z) - p.log_prob(z))
    return torch.cat(losses)


def cvae_loss(cvae: CVAE, data: QuadrantData, seed: int = 0,
              y_hat: torch.Tensor | None = None) -> torch.Tensor:
    """Per-image single-sample negative ELBO on a whole split, (N,) nats; fixed noise by ``seed``.

    Draws z from q(z|x,y) with the reparameterisation, so that the result matches Pyro's
    Trace_ELBO with one particle; used for early stopping on the validation split. ``y_hat``
    may pass the baseline's guesses for ``data.x`` (N, 784), computed beforehand.
    """
    return _single_sample_loss(cvae, data, seed, gsnn=False, y_hat=y_hat)


def gsnn_loss(cvae: CVAE, data: QuadrantData, seed: int = 0,
              y_hat: torch.Tensor | None = None) -> torch.Tensor:
    """Per-image single-sample GSNN loss, -log p(y|x,z) with z ~ p(z|x), (N,) nats; fixed noise."""
    return _single_sample_loss(cvae, data, seed, gsnn=True, y_hat=y_hat)


def validation_loss(cvae: CVAE, val: QuadrantData, y_hat: torch.Tensor | None = None) -> float:
    """The loss that ranks the epochs: the single-sample -ELBO with fixed noise and the full KL
    weight (the GSNN's own loss for the GSNN), nats per validation image."""
    loss = gsnn_loss if cvae.config.objective == "gsnn" else cvae_loss
    return loss(cvae, val, seed=cvae.config.seed, y_hat=y_hat).mean().item()


class KLWeight(Messenger):
    """Scales the log-densities of the latent site z in model and guide: the ELBO's KL term."""

    def __init__(self, weight: float = 1.0):
        super().__init__()
        self.weight = weight

    def _process_message(self, msg):
        if msg["type"] == "sample" and msg["name"] == "z":
            msg["scale"] = msg["scale"] * self.weight


@torch.no_grad()
def frozen_guesses(cvae: CVAE, x: torch.Tensor) -> torch.Tensor:
    """The frozen baseline's guesses for ``x`` (N, 784), computed once, chunk by chunk: they
    never change during training. (A variant whose baseline trains computes its own and
    ignores these.)"""
    y_hat = torch.empty_like(x)
    for chunk, out in zip(x.split(EVAL_CHUNK), y_hat.split(EVAL_CHUNK)):
        out.copy_(cvae.baseline_guess(chunk))
    return y_hat


def train_cvae(train, val, baseline, config=None, *, max_epochs=100,
               device=None, on_epoch=None):
    """Train the CVAE on a trained baseline with Pyro's SVI."""
    config, device = config or CVAEConfig(), pick_device(device)
    name = f"cvae k={train.num_quadrants}"
    mask = _check_splits(train, val, baseline)  # the layout of the data
    flush_denormals()                        # speed: denormals count as 0
    torch.manual_seed(config.seed)
    cvae = build_cvae(baseline.to(device), config).to(device)
    pyro.clear_param_store()
    pyro.set_rng_seed(config.seed)
    kl = KLWeight()                          # KL term's weight: warm-up
    guide, loss = objective(cvae, config, kl)  # -ELBO, closed-form KL
    optimizer = JointAdam(config.lr, config.lr_decay)  # speed: one Adam
    svi = SVI(kl(cvae.model), guide, optimizer, loss)
    average = WeightAverage(cvae.parameters(), config.weight_average,
                            config.average_every)
    ctx = autocast(config.precision, device, cvae)     # speed: bfloat16
    x, y, val = train.x.to(device), train.y.to(device), val.to(device)
    y_hat = frozen_guesses(cvae, x)          # speed: baseline's guesses
    val_y_hat = frozen_guesses(cvae, val.x)
    rng = torch.Generator().manual_seed(config.seed)  # shuffles epochs
    warmup = config.warmup_epochs(max_epochs)
    checks = pyro.distributions.is_validation_enabled()
    history, best, reference, waited = History(), None, math.inf, 0
    for epoch in range(1, max_epochs + 1):
        kl.weight = min(1.0, epoch / (warmup + 1))
        start, total = time.perf_counter(), 0.0
        for idx in iterate_minibatches(len(x), config.batch_size, rng):
            # speed: Pyro checks shapes and supports in epoch 1 only
            with ctx, pyro.validation_enabled(checks and epoch == 1):
                total += svi.step(x[idx], y[idx], y_hat[idx])
            average.update()
        _check_finite(total, name, epoch, config)
        with average.swapped_in():           # validate averaged weights
            with ctx:
                val_loss = validation_loss(cvae, val, val_y_hat)
            if history.add(total / len(x), val_loss, since=start):
                best = copy.deepcopy(cvae.state_dict())
            if on_epoch is not None:         # e.g. `Snapshots`
                on_epoch(epoch, cvae, history)
        if val_loss < reference - config.min_delta:  # early stopping
            reference, waited = val_loss, 0
        elif epoch > warmup:
            waited += 1
        history.report(name, max_epochs)
        if waited >= config.patience:
            break
        optimizer.decay_lr()                 # learning rate's schedule
    cvae.load_state_dict(_best(best, name, history))
    cvae.input_mask = mask.cpu()
    return cvae.eval(), history


def _check_finite(loss: float, what: str, epoch: int, config: CVAEConfig) -> None:
    if not math.isfinite(loss):
        raise FloatingPointError(
            f"{what}: the training loss became {loss} in epoch {epoch}; lower the learning "
            f"rate (CVAEConfig.lr={config.lr}) or check the data for NaN")


class Snapshots:
    """Records completions of a few inputs after every epoch of `train_cvae` (its ``on_epoch``).

    ``x``: (n, 784) inputs. After each epoch it draws ``num_samples`` completions of each from
    the prior with the same fixed noise (seeded by ``seed``), with the weights that were
    validated, and appends them to ``history.snapshots``: (epochs, n, samples, 784) uint8
    pixel probabilities times 255. The training animation plays them.
    """

    def __init__(self, x: torch.Tensor, num_samples: int, z_dim: int, seed: int = 0):
        self.x = x.reshape(len(x), -1)
        self.noise = torch.randn(num_samples, len(x), z_dim,
                                 generator=torch.Generator().manual_seed(seed))  # (S, n, z_dim)

    @torch.no_grad()
    def __call__(self, epoch: int, cvae: CVAE, history: History) -> None:
        device = next(cvae.parameters()).device
        x = self.x.to(device)
        prior = cvae.prior(x).base_dist
        z = prior.loc + prior.scale * self.noise.to(device)                  # (S, n, z_dim)
        decoder = cvae.generation_net  # speed: x's part of the first layer once per image
        probs = torch.sigmoid(decoder.net[-1](decoder_hidden(decoder, z, x)))  # (S, n, 784)
        frame = (probs.transpose(0, 1) * 255).round().to(torch.uint8).cpu()[None]
        history.snapshots = (frame if history.snapshots is None
                             else torch.cat([history.snapshots, frame]))
