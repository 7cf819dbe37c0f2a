"""Training loops for the baseline (plain PyTorch) and the CVAE (Pyro SVI), with early stopping.

Chapters "The baseline" and "Training and its animation" use these. Both loops shuffle with a
seeded generator, slice minibatches from whole tensors, measure the validation loss after every
epoch, stop after ``config.patience`` epochs without improvement and return the best weights with a
`History`. Losses are in nats per image, averaged over images (not over batches, so a short last
batch counts for what it holds). A progress bar appears when stderr is a terminal; inside the book
they stay quiet.
"""
from __future__ import annotations

import contextlib
import copy
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import pyro
import torch
from pyro.infer import SVI, Trace_ELBO, TraceMeanField_ELBO
from pyro.poutine.messenger import Messenger

from . import terminal
from .config import CVAEConfig
from .data import QuadrantData, iterate_minibatches
from .networks import CVAE, BaselineNet, masked_bce

__all__ = ["History", "train_baseline", "train_cvae", "default_device", "baseline_loss",
           "training_precision", "warmup_epochs", "flush_denormals",
           "cvae_loss", "gsnn_loss", "early_stopping_loop", "EVAL_CHUNK", "AVERAGE_EVERY",
           "JointAdam"]

EVAL_CHUNK = 2048  # images per chunk when scoring a whole split without gradients
AVERAGE_EVERY = 4  # steps between updates of the CVAE's weight average (see JointAdam)


def default_device() -> torch.device:
    """The GPU when one is present, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def flush_denormals() -> bool:
    """Treat denormal floats (below about 1e-38) as zero in CPU arithmetic; True if it worked.

    Adam keeps running averages of the gradients; for a weight whose gradient stays zero (a
    unit that never fires) the average decays by a factor 0.9 per step into the denormal range
    after about 800 steps, and CPU arithmetic on denormals is many times slower. Measured on the
    book's CVAE (batch 256, k=1): from the fifth epoch on, 5.8 s per epoch instead of 3.5, with
    the same validation losses to the printed digits when they are flushed.

    The switch is per thread, and the threads of torch's pool copy it from the main thread when
    they start. So this module calls it once on import, before torch has started its pool in
    the usual order of a script or notebook (``import cvae_utils`` first): the training threads
    then inherit it. Called after the pool exists, it switches only the calling thread.
    """
    return torch.set_flush_denormal(True)


FLUSHING_DENORMALS = flush_denormals()  # see flush_denormals: on import, for every thread


def training_precision(config: CVAEConfig, device: torch.device, model: str = "cvae"):
    """The context the training steps of ``model`` ("cvae" or "baseline") run in: bfloat16
    autocast if ``config.precision`` (``config.baseline_precision``) asks.

    Only the matrix products of the training steps and of the per-epoch validation pass (which
    only ranks the epochs for early stopping) run in bfloat16; weights, optimizer state, losses
    and every evaluation reported in the book stay in float32.
    """
    if model not in ("cvae", "baseline"):
        raise ValueError(f"model must be 'cvae' or 'baseline', got {model!r}")
    precision = config.precision if model == "cvae" else config.baseline_precision
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def warmup_epochs(config: CVAEConfig, max_epochs: int) -> int:
    """Epochs of KL warm-up in a run of at most ``max_epochs``: ``config.kl_warmup_epochs``, but
    no more than half the run, so that the KL weight reaches 1 in every run (a smoke run of one
    epoch has none)."""
    return min(config.kl_warmup_epochs, max_epochs // 2)


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


def early_stopping_loop(module, config, max_epochs: int, num_train: int,
                         train_epoch: Callable, val_loss_fn: Callable, desc: str,
                         progress: bool | None, callback: Callable | None,
                         start_epoch: Callable | None = None, warmup_epochs: int = 0,
                         batch_size: int | None = None, patience: int | None = None,
                         state_fn: Callable | None = None, min_delta: float = 0.0) -> History:
    """The loop shared by every model: epochs, validation, patience, best weights kept.

    ``config`` is any config with ``seed``, ``batch_size`` and ``patience`` (the arguments
    ``batch_size`` and ``patience`` override the config's). ``train_epoch(idx)``
    takes one minibatch's indices and returns its summed loss; ``val_loss_fn()`` returns the
    validation loss per image.

    ``start_epoch(epoch)`` runs before each epoch (learning-rate and KL schedules). During the
    first ``warmup_epochs`` the validation loss is recorded but patience does not run out.
    ``state_fn()`` returns the weights to keep when an epoch is the best so far (default: a copy
    of ``module.state_dict()``); they are loaded into ``module`` at the end.

    ``min_delta`` (in the units of the validation loss): an epoch resets the patience only if
    its loss is more than ``min_delta`` below the last epoch that did, so a run whose loss
    still creeps down by less than that over ``patience`` epochs stops. The weights kept are
    always those of the lowest validation loss.
    """
    if max_epochs < 1:
        raise ValueError(f"max_epochs must be >= 1, got {max_epochs}")
    history = History()
    best_state, best_val, waited = None, float("inf"), 0
    reference = float("inf")  # the loss of the last epoch that reset the patience
    shuffle = torch.Generator().manual_seed(config.seed)
    batch_size = batch_size or config.batch_size
    patience = patience or config.patience
    batches_per_epoch = -(-num_train // batch_size)
    with _progress_bar(max_epochs * batches_per_epoch, desc, progress) as bar:
        for epoch in range(1, max_epochs + 1):
            if start_epoch is not None:
                start_epoch(epoch)
            start = time.perf_counter()
            total = 0.0
            for idx in iterate_minibatches(num_train, batch_size, shuffle):
                total += train_epoch(idx)  # summed loss of the batch
                bar.update(1)
            val = val_loss_fn()
            history.train_loss.append(total / num_train)
            history.val_loss.append(val)
            history.seconds.append(time.perf_counter() - start)
            if val < best_val:
                best_val, history.best_epoch = val, epoch
                best_state = (state_fn() if state_fn is not None
                              else copy.deepcopy(module.state_dict()))
            if val < reference - min_delta:
                reference, waited = val, 0
            elif epoch > warmup_epochs:
                waited += 1
            bar.set_postfix(epoch=epoch, train=f"{total / num_train:.2f}", val=f"{val:.2f}",
                            best=history.best_epoch)
            terminal.epoch_done(desc, epoch, max_epochs, val, history.seconds, history.best_epoch)
            if callback is not None:
                callback(epoch, module, history)
            if waited >= patience:
                break
    if best_state is None:
        raise FloatingPointError(
            f"{desc}: the validation loss was never finite ({history.val_loss}); lower the "
            f"learning rate or check the data for NaN")
    module.load_state_dict(best_state)
    return history


@torch.no_grad()
def baseline_loss(baseline: BaselineNet, data: QuadrantData) -> torch.Tensor:
    """Per-image masked BCE of the baseline on a whole split, (N,) nats."""
    return torch.cat([masked_bce(baseline.logits(x), y)
                      for x, y in zip(data.x.split(EVAL_CHUNK), data.y.split(EVAL_CHUNK))])


def train_baseline(train: QuadrantData, val: QuadrantData, config: CVAEConfig | None = None,
                   max_epochs: int = 100, device=None, progress: bool | None = None,
                   callback: Callable | None = None) -> tuple[BaselineNet, History]:
    """Train the baseline MLP with Adam on the masked BCE; early stopping on ``val``.

    The products run in bfloat16 if ``config.baseline_precision`` asks (`training_precision`).
    """
    config = config or CVAEConfig()
    device = torch.device(device) if device is not None else default_device()
    torch.manual_seed(config.seed)
    baseline = BaselineNet(config).to(device)
    # fused Adam: one kernel for all parameters (Adam was 40% of a step; benchmarks/README.md)
    optimizer = torch.optim.Adam(baseline.parameters(), lr=config.baseline_lr, fused=True)
    x, y = train.x.to(device), train.y.to(device)
    val = QuadrantData(val.x.to(device), val.y.to(device), val.labels, val.num_quadrants)
    autocast = training_precision(config, device, "baseline")

    def step(idx):
        with autocast:  # logits come back in float32, so the loss is float32
            loss = masked_bce(baseline.logits(x[idx]), y[idx]).sum()
        optimizer.zero_grad(set_to_none=True)
        (loss / len(idx)).backward()
        optimizer.step()
        return loss.item()

    def val_loss():
        baseline.eval()
        with autocast:  # the training precision: the pass only ranks the epochs
            value = baseline_loss(baseline, val).mean().item()
        baseline.train()
        return value

    history = early_stopping_loop(baseline, config, max_epochs, len(train), step, val_loss,
                                   f"baseline k={train.num_quadrants}", progress, callback)
    return baseline.eval(), history


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


class _KLWeight(Messenger):
    """Scales the log-densities of the latent site z in model and guide: the ELBO's KL term."""

    def __init__(self, weight: float = 1.0):
        super().__init__()
        self.weight = weight

    def _process_message(self, msg):
        if msg["type"] == "sample" and msg["name"] == "z":
            msg["scale"] = msg["scale"] * self.weight


class JointAdam(pyro.optim.PyroOptim):
    """Adam over all of SVI's parameters at once, with the learning rate decaying per epoch.

    Pyro's own optimizers (``pyro.optim.Adam``, ``pyro.optim.ExponentialLR``) keep one torch
    optimizer per parameter tensor: 22 for the CVAE, each with its own Python step and kernel
    call. This one gives all tensors to a single ``torch.optim.Adam`` (``fused=True``: one
    kernel for all of them), whose per-element update is the same, so the numbers are the same.
    It also drops the gradients after the step instead of letting SVI fill them with zeros:
    the next backward pass writes fresh ones. ``step()`` multiplies the learning rate by
    ``gamma`` (once per epoch in `train_cvae`). Measured in `benchmarks/README.md`.

    With ``average`` in (0, 1) it also keeps an exponential moving average of the parameters
    (Polyak averaging), updated every ``average_every`` steps: after step t, when t is a
    multiple of ``average_every``, ``avg += (1 - d) * (param - avg)`` with
    ``d = min(average, t / (9 + t)) ** average_every``, so the average starts from the first
    weights and soon spans about ``1 / (1 - average)`` steps. Updating it every step reads and
    writes every weight once more per step, as much memory traffic as a third of Adam's; every
    fourth step (`AVERAGE_EVERY`, what `train_cvae` uses) gives the same window for a quarter
    of that. Inside ``with optim.averaged():`` the parameters hold the averages (for
    validation, and for keeping the best weights).
    """

    def __init__(self, lr: float, gamma: float = 1.0, average: float = 0.0,
                 average_every: int = 1):
        super().__init__(torch.optim.Adam, {"lr": lr, "fused": True})
        if not 0.0 <= average < 1.0:
            raise ValueError(f"average must lie in [0, 1), got {average}")
        if isinstance(average_every, bool) or not isinstance(average_every, int) \
                or average_every < 1:
            raise ValueError(f"average_every must be an int >= 1, got {average_every!r}")
        self.gamma = gamma
        self.average = average
        self.average_every = average_every
        self.optimizer: torch.optim.Adam | None = None
        self._seen: set = set()
        self._params: list[torch.Tensor] = []
        self._averages: list[torch.Tensor] = []
        self._steps = 0

    def __call__(self, params, *args, **kwargs) -> None:
        new = [p for p in params if p not in self._seen]
        if new:  # the first step, or a parameter that appeared later: a group of its own
            store = pyro.get_param_store()
            new.sort(key=store.param_name)  # a fixed order, whatever the set's order was
            self._seen.update(new)
            if self.optimizer is None:
                self.optimizer = torch.optim.Adam(new, **self.pt_optim_args)
            else:
                lr = self.optimizer.param_groups[0]["lr"]  # decayed as far as the others
                self.optimizer.add_param_group({"params": new, "lr": lr})
            if self.average:
                self._params += new
                self._averages += [p.detach().clone() for p in new]
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.average:
            self._steps += 1
            if self._steps % self.average_every == 0:
                decay = min(self.average, self._steps / (self._steps + 9)) ** self.average_every
                with torch.no_grad():
                    torch._foreach_lerp_(self._averages, self._params, 1.0 - decay)

    @contextlib.contextmanager
    def averaged(self):
        """Within the block the parameters hold their averages (no-op without averaging)."""
        if not self._averages:
            yield
            return
        with torch.no_grad():
            current = [p.detach().clone() for p in self._params]
            torch._foreach_copy_(self._params, self._averages)
        try:
            yield
        finally:
            with torch.no_grad():
                torch._foreach_copy_(self._params, current)

    def step(self) -> None:
        """Decay the learning rate by ``gamma`` (the scheduler's step, once per epoch)."""
        if self.optimizer is not None:
            for group in self.optimizer.param_groups:
                group["lr"] *= self.gamma

    def get_state(self) -> dict:
        return {} if self.optimizer is None else {"adam": self.optimizer.state_dict()}


def _objective(cvae: CVAE, config: CVAEConfig, wrap: Callable):
    """The guide and SVI loss of the configured objective (Trace_ELBO for the plain CVAE, or
    TraceMeanField_ELBO with ``config.analytic_kl``).

    The GSNN is the ELBO with the prior as guide; the hybrid objective is
    alpha * ELBO(recognition guide) + (1 - alpha) * ELBO(prior guide). ``wrap`` applies the KL
    weight to every guide.
    """
    # Trace_ELBO estimates KL(q || p) with the sampled z, as the tutorial does;
    # TraceMeanField_ELBO computes it in closed form (both are Gaussians): the same objective
    # with a less noisy gradient
    make_elbo = TraceMeanField_ELBO if config.analytic_kl else Trace_ELBO
    if config.objective == "cvae":
        return wrap(cvae.guide), make_elbo()
    if config.objective == "gsnn":
        return wrap(cvae.prior_guide), make_elbo()
    elbo, alpha, prior_guide = make_elbo(), config.hybrid_alpha, wrap(cvae.prior_guide)

    def hybrid_loss(model, guide, *args, **kwargs):
        return (alpha * elbo.differentiable_loss(model, guide, *args, **kwargs)
                + (1 - alpha) * elbo.differentiable_loss(model, prior_guide, *args, **kwargs))

    return wrap(cvae.guide), hybrid_loss


def train_cvae(train: QuadrantData, val: QuadrantData, baseline: BaselineNet,
               config: CVAEConfig | None = None, max_epochs: int = 100, device=None,
               progress: bool | None = None, callback: Callable | None = None,
               snapshot_x: torch.Tensor | None = None,
               num_snapshot_samples: int = 8) -> tuple[CVAE, History]:
    """Train the CVAE with Pyro SVI (Trace_ELBO, Adam) on top of a frozen baseline.

    The baseline's guesses for the training images are computed once, not at every step. With
    ``snapshot_x`` (a few inputs, (n, 784)), each epoch records ``num_snapshot_samples``
    completions drawn with the same fixed noise, for the training animation
    (``history.snapshots``). ``callback(epoch, cvae, history)`` runs after every epoch.

    ``config.objective`` picks the loss (CVAE, GSNN or hybrid), ``config.kl_warmup_epochs`` and
    ``config.lr_decay`` the schedules. The warm-up lasts at most half of ``max_epochs``
    (`warmup_epochs`), so that a short run also ends on the true ELBO. The validation loss is the
    single-sample -ELBO (the GSNN's own loss for the GSNN), always with the full KL weight.
    """
    config = config or CVAEConfig()
    device = torch.device(device) if device is not None else default_device()
    torch.manual_seed(config.seed)
    if config.joint_baseline:
        baseline = copy.deepcopy(baseline)  # fine-tuned here: leave the caller's one untouched
    cvae = CVAE(baseline.to(device), config).to(device)
    pyro.clear_param_store()
    pyro.set_rng_seed(config.seed)
    kl_weight = _KLWeight()
    guide, loss = _objective(cvae, config, kl_weight)
    optimizer = JointAdam(config.cvae_lr, config.lr_decay, config.weight_average, AVERAGE_EVERY)
    svi = SVI(kl_weight(cvae.model), guide, optimizer, loss)
    x, y = train.x.to(device), train.y.to(device)
    val = QuadrantData(val.x.to(device), val.y.to(device), val.labels, val.num_quadrants)
    y_hat = val_y_hat = None  # a frozen baseline's guesses: computed once, not at every step
    if config.prior_uses_baseline and not config.joint_baseline:
        y_hat, val_y_hat = torch.empty_like(x), torch.empty_like(val.x)  # (N, 784) each
        for inputs, guesses in ((x, y_hat), (val.x, val_y_hat)):
            for chunk, out in zip(inputs.split(EVAL_CHUNK), guesses.split(EVAL_CHUNK)):
                out.copy_(cvae.baseline_guess(chunk))  # chunk by chunk: no second copy
    val_metric = gsnn_loss if config.objective == "gsnn" else cvae_loss
    autocast = training_precision(config, device)
    warmup = warmup_epochs(config, max_epochs)

    frames = []
    if snapshot_x is not None:
        snapshot_x = snapshot_x.reshape(len(snapshot_x), -1).to(device)
        noise = torch.randn(num_snapshot_samples, len(snapshot_x), config.z_dim,
                            generator=torch.Generator().manual_seed(config.seed)).to(device)

    # Pyro checks every step while validation is on (pyro.enable_validation, on by default):
    # shapes of the sample sites, model against guide, distribution parameters in their
    # support. Those checks cost 5 % of a step; nothing they check changes after the first
    # epoch, so the later epochs run without them, and a loss that is not finite stops the
    # run at once instead (it is what a bad parameter would show)
    checks = pyro.distributions.is_validation_enabled()  # the user's setting
    current = {"epoch": 0}

    def step(idx):
        with autocast, pyro.validation_enabled(checks and current["epoch"] == 1):
            loss = svi.step(x[idx], y[idx], None if y_hat is None else y_hat[idx])  # summed
        if not math.isfinite(loss):
            raise FloatingPointError(
                f"cvae k={train.num_quadrants}: the training loss became {loss} in epoch "
                f"{current['epoch']}; lower the learning rate (cvae_lr={config.cvae_lr}) or "
                f"check the data for NaN")
        return loss

    def start_epoch(epoch):
        current["epoch"] = epoch
        if epoch > 1:
            optimizer.step()  # the learning-rate schedule: one decay per epoch
        kl_weight.weight = min(1.0, epoch / (warmup + 1))

    def val_loss():
        cvae.eval()
        with optimizer.averaged():  # the averaged weights if config.weight_average
            with autocast:  # the training precision: the pass only ranks the epochs
                value = val_metric(cvae, val, seed=config.seed, y_hat=val_y_hat).mean().item()
            if snapshot_x is not None:
                with torch.no_grad():
                    prior = cvae.prior(snapshot_x).base_dist
                    z = prior.loc + prior.scale * noise                    # (S, n, z_dim)
                    probs = torch.sigmoid(cvae.generation_net(z, snapshot_x))
                frames.append((probs.transpose(0, 1) * 255).round().to(torch.uint8).cpu())
        cvae.train()
        return value

    def kept_state():  # the weights that were validated
        with optimizer.averaged():
            return copy.deepcopy(cvae.state_dict())

    history = early_stopping_loop(cvae, config, max_epochs, len(train), step, val_loss,
                                   f"cvae k={train.num_quadrants}", progress, callback,
                                   start_epoch, warmup, config.cvae_batch,
                                   config.cvae_patience_epochs, kept_state,
                                   config.cvae_min_delta)
    if frames:
        history.snapshots = torch.stack(frames)  # (epochs, n, S, 784)
    return cvae.eval(), history
