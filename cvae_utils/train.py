"""Training: the baseline with plain PyTorch, the CVAE with Pyro's SVI, both with early stopping.

Chapter "The baseline" explains `train_baseline`, chapter "The CVAE in Pyro" shows `train_cvae`.
Both hand one minibatch step and one validation pass to `fit`, the loop they share: shuffle with
a seeded generator, step through the minibatches, measure the validation loss after every epoch,
stop after ``patience`` epochs without improvement and return the best weights with a `History`.
Losses are in nats per image, averaged over images (a short last batch counts for what it holds).
A progress bar appears when stderr is a terminal; inside the book it stays quiet.

Everything that makes a step cheaper without changing what it computes lives elsewhere: the
optimiser and the weight average in `cvae_utils.optim`, the precision and denormal flushing in
`cvae_utils.speed`.
"""
from __future__ import annotations

import contextlib
import copy
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Sequence

import pyro
import torch
from pyro.infer import SVI, Trace_ELBO, TraceMeanField_ELBO
from pyro.poutine.messenger import Messenger

from .progress import epoch_done
from .config import BaselineConfig, CVAEConfig
from .data import QuadrantData, check_layout, check_quadrant_data, iterate_minibatches
from .networks import CVAE, BaselineNet, masked_bce
from .optim import JointAdam, WeightAverage
from .speed import autocast, flush_denormals

__all__ = ["History", "fit", "train_baseline", "train_cvae", "default_device", "baseline_loss",
           "cvae_loss", "gsnn_loss", "Snapshots", "KLWeight", "EVAL_CHUNK"]

EVAL_CHUNK = 2048  # images per chunk when scoring a whole split without gradients
Callback = Callable[[int, torch.nn.Module, "History"], None]


def default_device() -> torch.device:
    """The GPU when one is present, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _device(device) -> torch.device:
    return torch.device(device) if device is not None else default_device()


@dataclass
class History:
    """Per-epoch record of a training run (epochs counted from 1)."""

    train_loss: list[float] = field(default_factory=list)  # nats per image, training split
    val_loss: list[float] = field(default_factory=list)    # nats per image, validation split
    seconds: list[float] = field(default_factory=list)     # wall time of each epoch
    best_epoch: int = 0                                    # epoch whose weights were kept
    snapshots: torch.Tensor | None = None  # (epochs, inputs, samples, 784) uint8, CVAE only

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


def _progress_bar(total: int, desc: str, progress: bool | None):
    from tqdm import tqdm  # text bars: they show only in a terminal (stderr a TTY)

    if progress is None:
        progress = sys.stderr.isatty()
    return tqdm(total=total, desc=desc, unit="batch", disable=not progress, leave=True,
                dynamic_ncols=True, file=sys.stderr)


# ------------------------------------------------------------------------------------------------
# The loop every model shares
# ------------------------------------------------------------------------------------------------

def fit(model: torch.nn.Module, *, step: Callable[[torch.Tensor], float],
        validate: Callable[[], float], num_train: int, batch_size: int, max_epochs: int,
        patience: int, seed: int, min_delta: float = 0.0, warmup_epochs: int = 0,
        start_epoch: Callable[[int], None] | None = None,
        validated_weights: Callable[[], contextlib.AbstractContextManager] | None = None,
        callbacks: Sequence[Callback] = (), desc: str = "training",
        progress: bool | None = None) -> History:
    """Train ``model`` epoch by epoch with early stopping; return its `History`.

    ``step(idx)`` trains on the minibatch of training indices ``idx`` and returns its summed
    loss; ``validate()`` returns the validation loss per image. ``start_epoch(epoch)`` runs
    before each epoch (schedules). Each epoch ends inside ``validated_weights()`` (default:
    the weights as trained), which may swap other weights in, e.g. an average: those are the
    weights that are validated, handed to ``callbacks(epoch, model, history)`` and kept.

    Early stopping: an epoch counts as an improvement when its loss is more than ``min_delta``
    below that of the last epoch that counted; after ``patience`` epochs without one training
    stops, except during the first ``warmup_epochs``. The weights of the lowest validation loss
    are loaded into ``model`` at the end.
    """
    if max_epochs < 1:
        raise ValueError(f"max_epochs must be >= 1, got {max_epochs}")
    validated_weights = validated_weights or contextlib.nullcontext
    history = History()
    best_state, best_val, waited = None, math.inf, 0
    reference = math.inf  # the loss of the last epoch that counted as an improvement
    shuffle = torch.Generator().manual_seed(seed)
    with _progress_bar(max_epochs * -(-num_train // batch_size), desc, progress) as bar:
        for epoch in range(1, max_epochs + 1):
            if start_epoch is not None:
                start_epoch(epoch)
            start = time.perf_counter()
            total = 0.0
            for idx in iterate_minibatches(num_train, batch_size, shuffle):
                total += step(idx)
                bar.update(1)
            with validated_weights():
                val = validate()
                history.train_loss.append(total / num_train)
                history.val_loss.append(val)
                history.seconds.append(time.perf_counter() - start)
                if val < best_val:
                    best_val, history.best_epoch = val, epoch
                    best_state = copy.deepcopy(model.state_dict())
                for callback in callbacks:
                    callback(epoch, model, history)
            if val < reference - min_delta:
                reference, waited = val, 0
            elif epoch > warmup_epochs:
                waited += 1
            bar.set_postfix(epoch=epoch, train=f"{total / num_train:.2f}", val=f"{val:.2f}",
                            best=history.best_epoch)
            epoch_done(desc, epoch, max_epochs, val, history.seconds, history.best_epoch)
            if waited >= patience:
                break
    if best_state is None:
        raise FloatingPointError(
            f"{desc}: the validation loss was never finite ({history.val_loss}); lower the "
            f"learning rate or check the data for NaN")
    model.load_state_dict(best_state)
    return history


# ------------------------------------------------------------------------------------------------
# The baseline
# ------------------------------------------------------------------------------------------------

@torch.no_grad()
def baseline_loss(baseline: BaselineNet, data: QuadrantData) -> torch.Tensor:
    """Per-image masked BCE of the baseline on a whole split, (N,) nats."""
    return torch.cat([masked_bce(baseline.logits(x), y)
                      for x, y in zip(data.x.split(EVAL_CHUNK), data.y.split(EVAL_CHUNK))])


def train_baseline(train: QuadrantData, val: QuadrantData, config: BaselineConfig | None = None,
                   *, max_epochs: int = 100, device=None, progress: bool | None = None,
                   callbacks: Sequence[Callback] = ()) -> tuple[BaselineNet, History]:
    """Train the baseline MLP with Adam on the masked BCE; early stopping on ``val``."""
    config = config or BaselineConfig()
    device = _device(device)
    mask = _check_splits(train, val)
    flush_denormals()
    torch.manual_seed(config.seed)
    baseline = BaselineNet(config).to(device)
    optimizer = torch.optim.Adam(baseline.parameters(), lr=config.lr, fused=True)
    x, y, val = train.x.to(device), train.y.to(device), val.to(device)
    precision = autocast(config.precision, device)  # bf16 products if the config asks

    def step(idx):
        with precision:
            loss = masked_bce(baseline.logits(x[idx]), y[idx]).sum()  # float32 logits
        optimizer.zero_grad(set_to_none=True)
        (loss / len(idx)).backward()
        optimizer.step()
        return loss.item()

    def validate():
        baseline.eval()
        with precision:  # the training precision: this pass only ranks the epochs
            value = baseline_loss(baseline, val).mean().item()
        baseline.train()
        return value

    history = fit(baseline, step=step, validate=validate, num_train=len(train),
                  batch_size=config.batch_size, max_epochs=max_epochs,
                  patience=config.patience, seed=config.seed, callbacks=callbacks,
                  desc=f"baseline k={train.num_quadrants}", progress=progress)
    baseline.input_mask = mask.cpu()
    return baseline.eval(), history


def _check_splits(train: QuadrantData, val: QuadrantData) -> torch.Tensor:
    """Training and validation data masked alike (`check_quadrant_data`); their input mask."""
    mask = check_quadrant_data(train.x, train.y, "training data")
    if not torch.equal(check_quadrant_data(val.x, val.y, "validation data"), mask):
        raise ValueError("the training and the validation data are masked differently: mask "
                         "both for the same layout")
    return mask


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


class KLWeight(Messenger):
    """Scales the log-densities of the latent site z in model and guide: the ELBO's KL term."""

    def __init__(self, weight: float = 1.0):
        super().__init__()
        self.weight = weight

    def _process_message(self, msg):
        if msg["type"] == "sample" and msg["name"] == "z":
            msg["scale"] = msg["scale"] * self.weight


def _objective(cvae: CVAE, config: CVAEConfig, kl_weight: KLWeight):
    """The guide and the loss of ``config.objective`` for SVI, the guides under ``kl_weight``.

    The CVAE's loss is the negative ELBO: `Trace_ELBO` estimates its KL term from the sampled z,
    as the tutorial does; with ``analytic_kl`` `TraceMeanField_ELBO` computes it in closed form.
    The GSNN is the ELBO with the prior network as guide; the hybrid objective is alpha * ELBO
    (recognition guide) + (1 - alpha) * ELBO (prior guide).
    """
    elbo = TraceMeanField_ELBO() if config.analytic_kl else Trace_ELBO()
    if config.objective == "cvae":
        return kl_weight(cvae.guide), elbo
    if config.objective == "gsnn":
        return kl_weight(cvae.prior_guide), elbo
    alpha, prior_guide = config.hybrid_alpha, kl_weight(cvae.prior_guide)

    def hybrid_loss(model, guide, *args, **kwargs):
        return (alpha * elbo.differentiable_loss(model, guide, *args, **kwargs)
                + (1 - alpha) * elbo.differentiable_loss(model, prior_guide, *args, **kwargs))

    return kl_weight(cvae.guide), hybrid_loss


@torch.no_grad()
def _baseline_guesses(cvae: CVAE, x: torch.Tensor) -> torch.Tensor | None:
    """The frozen baseline's guesses for ``x`` (N, 784), chunk by chunk; None when the prior
    does not read them, or reads a baseline that trains with the CVAE."""
    if not cvae.config.prior_uses_baseline or cvae.config.joint_baseline:
        return None
    y_hat = torch.empty_like(x)
    for chunk, out in zip(x.split(EVAL_CHUNK), y_hat.split(EVAL_CHUNK)):
        out.copy_(cvae.baseline_guess(chunk))
    return y_hat


def _check_finite(loss: float, what: str, epoch: int, config: CVAEConfig) -> float:
    if not math.isfinite(loss):
        raise FloatingPointError(
            f"{what}: the training loss became {loss} in epoch {epoch}; lower the learning "
            f"rate (CVAEConfig.lr={config.lr}) or check the data for NaN")
    return loss


def train_cvae(train: QuadrantData, val: QuadrantData, baseline: BaselineNet,
               config: CVAEConfig | None = None, *, max_epochs: int = 100, device=None,
               progress: bool | None = None,
               callbacks: Sequence[Callback] = ()) -> tuple[CVAE, History]:
    """Train the CVAE on top of a trained baseline with Pyro's SVI; early stopping on ``val``.

    ``config.objective`` picks the loss (CVAE, GSNN or hybrid), ``kl_warmup_epochs`` and
    ``lr_decay`` the schedules, ``weight_average`` the average that is validated and kept. The
    validation loss is the single-sample -ELBO (the GSNN's own loss for the GSNN) with fixed
    noise and the full KL weight. ``callbacks(epoch, cvae, history)`` run after every epoch
    (`Snapshots` records completions for the training animation).
    """
    config = config or CVAEConfig()
    device, what = _device(device), f"cvae k={train.num_quadrants}"
    mask = _check_splits(train, val)
    check_layout(baseline, mask, "the training data")
    flush_denormals()
    torch.manual_seed(config.seed)
    if config.joint_baseline:
        baseline = copy.deepcopy(baseline)  # fine-tuned here: leave the caller's one untouched
    cvae = CVAE(baseline.to(device), config).to(device)
    pyro.clear_param_store()
    pyro.set_rng_seed(config.seed)

    kl_weight = KLWeight()
    guide, loss = _objective(cvae, config, kl_weight)
    optimizer = JointAdam(config.lr, gamma=config.lr_decay)
    svi = SVI(kl_weight(cvae.model), guide, optimizer, loss)
    average = WeightAverage([p for p in cvae.parameters() if p.requires_grad],
                            config.weight_average, config.average_every)

    x, y, val = train.x.to(device), train.y.to(device), val.to(device)
    y_hat, val_y_hat = _baseline_guesses(cvae, x), _baseline_guesses(cvae, val.x)
    precision = autocast(config.precision, device)  # bf16 products if the config asks
    warmup = config.warmup_epochs(max_epochs)
    checks = pyro.distributions.is_validation_enabled()  # the caller's setting
    epoch = 0

    def start_epoch(new_epoch):
        nonlocal epoch
        epoch = new_epoch
        if epoch > 1:
            optimizer.decay_lr()
        kl_weight.weight = min(1.0, epoch / (warmup + 1))

    def step(idx):
        # Pyro's checks (site shapes, model against guide, parameters in their support) cost
        # 5 % of a step and nothing they check changes after the first epoch; after it a
        # loss that is not finite stops the run instead
        with precision, pyro.validation_enabled(checks and epoch == 1):
            loss = svi.step(x[idx], y[idx], None if y_hat is None else y_hat[idx])
        average.update()
        return _check_finite(loss, what, epoch, config)

    def validate():
        metric = gsnn_loss if config.objective == "gsnn" else cvae_loss
        cvae.eval()
        with precision:  # the training precision: this pass only ranks the epochs
            value = metric(cvae, val, seed=config.seed, y_hat=val_y_hat).mean().item()
        cvae.train()
        return value

    history = fit(cvae, step=step, validate=validate, num_train=len(train),
                  batch_size=config.batch_size, max_epochs=max_epochs,
                  patience=config.patience, min_delta=config.min_delta,
                  warmup_epochs=warmup, seed=config.seed, start_epoch=start_epoch,
                  validated_weights=average.swapped_in, callbacks=callbacks, desc=what,
                  progress=progress)
    cvae.input_mask = mask.cpu()
    return cvae.eval(), history


class Snapshots:
    """A callback of `train_cvae` that records completions of a few inputs after every epoch.

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
        probs = torch.sigmoid(cvae.generation_net(z, x))                    # (S, n, 784)
        frame = (probs.transpose(0, 1) * 255).round().to(torch.uint8).cpu()[None]
        history.snapshots = (frame if history.snapshots is None
                             else torch.cat([history.snapshots, frame]))
