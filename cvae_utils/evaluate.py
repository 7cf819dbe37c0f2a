"""Evaluation: estimators of the negative conditional log-likelihood -log p(y|x).

Chapter "Evaluation" explains and displays everything here. A CVAE does not give -log p(y|x) in
closed form: p(y|x) = E_{z ~ p(z|x)} p(y|x,z) is an integral over z. Three Monte Carlo estimates of
it, per test image and in nats, sit next to the baseline's exact masked BCE:

- `cvae_neg_elbo`: the negative ELBO with z ~ q(z|x,y). An upper bound (in expectation) on
  -log p(y|x); this is what the Pyro tutorial reports as "CVAE (Monte Carlo)".
- `cvae_mc_prior`: -log (1/S) sum_s p(y|x,z_s) with z_s ~ p(z|x), the paper's "MC" estimate.
  Consistent, but by Jensen's inequality it overestimates -log p(y|x) in expectation for finite S.
- `cvae_importance_sampling`: -log (1/S) sum_s p(y|x,z_s) p(z_s|x) / q(z_s|x,y) with z_s ~ q,
  the importance-sampled estimate. Also an overestimate in expectation, but much tighter than the
  other two for the same S, and never above the -ELBO computed from the same samples.

The maths lives in small functions (`neg_elbo`, `neg_log_mc_prior`, `neg_log_importance`) that
take a log-likelihood callable and `torch.distributions` objects, so the tests check them on a toy
model whose p(y|x) is known exactly; `estimate_nll` runs one of them over a data set in chunks, and
the CVAE-facing functions are thin wrappers around it. Noise is drawn per image from a generator
seeded by (seed, image index): a fixed seed gives the same numbers whatever the chunk size, and the
global random state is left alone. The tables built from these estimates, and cached beside the
models, are in `cvae_utils.tables`.
"""
from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F
from torch.distributions import Distribution, Independent, MultivariateNormal, Normal

from .config import check_int
from .data import QuadrantData, check_layout, check_quadrant_data
from .data import NUM_PIXELS
from .networks import CVAE, BaselineNet, device_of, masked_bce
from .speed import decoder_hidden
from .train import baseline_loss

__all__ = [
    "Estimate", "Conditional", "METHODS", "log_mean_exp", "reparameterize", "standard_normal_noise",
    "neg_elbo", "neg_log_mc_prior", "neg_log_importance", "estimate_nll", "cvae_conditional",
    "baseline_ncll", "cvae_neg_elbo", "cvae_mc_prior", "cvae_importance_sampling",
    "check_num_samples", "DEFAULT_NUM_SAMPLES", "DEFAULT_ELBO_SAMPLES", "PAIRS_PER_CHUNK",
]

DEFAULT_NUM_SAMPLES = 100   # S for the MC-prior and importance-sampling estimates (as TorchZQ)
DEFAULT_ELBO_SAMPLES = 10   # S for the -ELBO row: it is a mean, so few samples suffice
# (sample, image) pairs per chunk: the decoder's activations and the masked BCE's temporaries take
# about 8 tensors of 784 floats per pair, so 8192 pairs stay near 200 MiB whatever S is
PAIRS_PER_CHUNK = 8192
NOISE_ROWS_PER_THREAD = 16  # images per thread below which the noise is drawn in one thread

METHODS = ("neg_elbo", "mc_prior", "importance")


# ------------------------------------------------------------------------------------------------
# Results
# ------------------------------------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class Estimate:
    """Per-image estimates of -log p(y|x) in nats, with their summary over images.

    ``values``: (N,) on the CPU. ``mean`` and ``stderr`` (standard deviation over images with
    ddof=1, divided by sqrt(N); NaN when N = 1) are in nats per image; ``per_pixel`` is ``mean``
    divided by ``num_output_pixels`` (196 * (4 - k) for k input quadrants). ``num_samples`` is S,
    the samples of z per image, or None for the deterministic baseline.
    """

    name: str
    values: torch.Tensor = field(repr=False)
    num_samples: int | None
    num_output_pixels: float
    mean: float
    stderr: float
    per_pixel: float

    @classmethod
    def from_values(cls, name: str, values: torch.Tensor, num_samples: int | None,
                    num_output_pixels: float) -> "Estimate":
        values = values.detach().cpu()                      # (N,)
        as_double = values.double()
        n = as_double.numel()
        mean = as_double.mean().item()
        stderr = as_double.std(correction=1).item() / math.sqrt(n) if n > 1 else float("nan")
        return cls(name, values, num_samples, float(num_output_pixels), mean, stderr,
                   mean / float(num_output_pixels))

    def __str__(self) -> str:
        return (f"{self.name}: {self.mean:.2f} ± {self.stderr:.2f} nats per image "
                f"({self.per_pixel:.4f} per output pixel, N={self.values.numel()})")


class Conditional(NamedTuple):
    """What the estimators need about one chunk of n images.

    ``prior``: p(z|x) and ``proposal``: q(z|x,y), distributions with batch shape (n,) and event
    shape (z_dim,) (diagonal or full Gaussians); ``log_lik``: maps z of shape (S, n, z_dim) to
    log p(y|x,z) of shape (S, n).
    """

    prior: Distribution
    proposal: Distribution | None
    log_lik: Callable[[torch.Tensor], torch.Tensor]


# ------------------------------------------------------------------------------------------------
# The maths, on one chunk
# ------------------------------------------------------------------------------------------------

def log_mean_exp(log_w: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """log of the mean of exp(log_w) along ``dim``, without underflow (via torch.logsumexp)."""
    return torch.logsumexp(log_w, dim=dim) - math.log(log_w.shape[dim])


def reparameterize(distribution: Distribution, eps: torch.Tensor) -> torch.Tensor:
    """Samples of a Gaussian from standard normal noise: loc + scale * eps.

    ``distribution``: batch shape (n,), event shape (z_dim,): a `Normal` made into an event with
    `Independent` (what ``CVAE.prior`` and ``CVAE.posterior`` return), or a `MultivariateNormal`.
    ``eps``: (S, n, z_dim). Returns z of shape (S, n, z_dim).
    """
    if len(distribution.event_shape) != 1:
        raise ValueError(f"the distribution over z must have one event dimension (z_dim,), got "
                         f"event shape {tuple(distribution.event_shape)}; use .to_event(1)")
    if isinstance(distribution, MultivariateNormal):
        return distribution.loc + (distribution.scale_tril @ eps.unsqueeze(-1)).squeeze(-1)
    base = distribution.base_dist if isinstance(distribution, Independent) else None
    if isinstance(base, Normal):
        return base.loc + base.scale * eps
    raise TypeError(f"cannot reparameterize {type(distribution).__name__}: the estimators draw z "
                    f"as loc + scale * eps and support Independent(Normal) or MultivariateNormal")


def _image_seed(seed: int, index: int) -> int:
    """A 32-bit seed for image ``index``: distinct images of one run never share a stream.

    torch's CPU generator (mt19937) only uses the low 32 bits of its seed, so ``seed`` is mixed
    into an offset (splitmix64) and the image index added modulo 2**32.
    """
    mixed = (seed + 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
    mixed = ((mixed ^ (mixed >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    mixed = ((mixed ^ (mixed >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    mixed ^= mixed >> 31
    return (mixed + index) % 2**32


def standard_normal_noise(num_samples: int, z_dim: int, start: int, stop: int, seed: int = 0,
                          dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Standard normal noise for images ``start`` to ``stop - 1``: (S, stop - start, z_dim).

    Each image's noise comes from its own generator, seeded by (seed, index), on the CPU: the noise
    of an image does not depend on the chunk it falls in, nor on the device, and the global random
    state is untouched.
    """
    noise = torch.empty(stop - start, num_samples, z_dim, dtype=dtype)  # (n, S, z_dim)

    def fill(rows: range) -> None:
        generator = torch.Generator()
        for row in rows:
            generator.manual_seed(_image_seed(seed, start + row))
            torch.randn(num_samples, z_dim, generator=generator, dtype=dtype, out=noise[row])

    # one generator draws one image's noise on one core; with several torch threads the images
    # are shared out between threads (torch releases the GIL while it draws), each row still
    # from its own seed, so the noise is the same whatever the thread count
    workers = min(torch.get_num_threads(), (stop - start) // NOISE_ROWS_PER_THREAD)
    if workers <= 1:
        fill(range(stop - start))
    else:
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(fill, [range(w, stop - start, workers) for w in range(workers)]))
    return noise.transpose(0, 1)  # (S, n, z_dim)


def _by_sample_blocks(fn: Callable[[torch.Tensor], torch.Tensor],
                      eps: torch.Tensor) -> torch.Tensor:
    """``fn`` applied to blocks of samples of ``eps`` (S, n, z_dim), concatenated: (S, n).

    Blocks hold at most `PAIRS_PER_CHUNK` (sample, image) pairs, so the decoder's activations stay
    bounded even when S alone exceeds it; only the (S, n) log-weights are kept whole.
    """
    block = max(1, PAIRS_PER_CHUNK // max(1, eps.shape[1]))
    return torch.cat([fn(part) for part in eps.split(block, dim=0)], dim=0)


def _log_weights(conditional: Conditional, eps: torch.Tensor) -> torch.Tensor:
    """log p(y|x,z_s) + log p(z_s|x) - log q(z_s|x,y) with z_s = proposal sample, (S, n)."""
    if conditional.proposal is None:
        raise ValueError("this estimator samples from q(z|x,y): the Conditional needs a proposal")

    def log_w(part: torch.Tensor) -> torch.Tensor:
        z = reparameterize(conditional.proposal, part)                   # (s, n, z_dim)
        return (conditional.log_lik(z) + conditional.prior.log_prob(z)
                - conditional.proposal.log_prob(z))                      # (s, n)

    return _by_sample_blocks(log_w, eps)                                 # (S, n)


def neg_elbo(conditional: Conditional, eps: torch.Tensor) -> torch.Tensor:
    """Negative ELBO: mean over s of -log [p(y|x,z_s) p(z_s|x) / q(z_s|x,y)], z_s ~ q. (n,)

    ``eps``: (S, n, z_dim) standard normal noise, turned into z_s by `reparameterize`.
    """
    return -_log_weights(conditional, eps).mean(dim=0)


def neg_log_importance(conditional: Conditional, eps: torch.Tensor) -> torch.Tensor:
    """Importance sampling: -log (1/S) sum_s p(y|x,z_s) p(z_s|x) / q(z_s|x,y), z_s ~ q. (n,)"""
    return -log_mean_exp(_log_weights(conditional, eps), dim=0)


def neg_log_mc_prior(conditional: Conditional, eps: torch.Tensor) -> torch.Tensor:
    """Plain Monte Carlo from the prior: -log (1/S) sum_s p(y|x,z_s), z_s ~ p(z|x). (n,)"""
    log_lik = _by_sample_blocks(
        lambda part: conditional.log_lik(reparameterize(conditional.prior, part)), eps)  # (S, n)
    return -log_mean_exp(log_lik, dim=0)


_ESTIMATORS = {"neg_elbo": neg_elbo, "mc_prior": neg_log_mc_prior,
               "importance": neg_log_importance}


# ------------------------------------------------------------------------------------------------
# Over a data set, in chunks
# ------------------------------------------------------------------------------------------------

def check_num_samples(num_samples, name: str = "num_samples") -> int:
    """``num_samples`` as an int, or a ValueError naming ``name`` if it is not an int >= 1."""
    return check_int(name, num_samples, 1, rule="an int >= 1 (samples of z per image)",
                     hint=f"; pass e.g. {name}=100")


def _check_xy(x: torch.Tensor, y: torch.Tensor) -> None:
    if x.dim() < 1 or y.dim() < 1 or x.shape[0] != y.shape[0]:
        raise ValueError(f"x {tuple(x.shape)} and y {tuple(y.shape)} must hold the same number of "
                         f"images along their first dimension")
    if x.shape[0] == 0:
        raise ValueError("the data hold no images (N = 0); pass at least one test image")


def _check_quadrant_data(data: QuadrantData, model: torch.nn.Module) -> float:
    """Check that ``data`` is masked data (finite float32 pixels in [0, 1], -1 where absent,
    one layout) of the layout ``model`` was trained for; return the output pixels per image."""
    if not isinstance(data, QuadrantData):
        raise TypeError(f"data must be a QuadrantData (x and y masked for k input quadrants), "
                        f"got {type(data).__name__}; build it with "
                        f"cvae_utils.make_quadrant_data(split, k)")
    mask = check_quadrant_data(data.x, data.y, "the data to score")
    check_layout(model, mask)
    return int((~mask).sum())


def _chunk_size(num_samples: int, chunk_size: int | None) -> int:
    if chunk_size is None:
        return max(1, PAIRS_PER_CHUNK // num_samples)
    return check_int("chunk_size", chunk_size, 1, rule="an int >= 1 (images per chunk) or None")


@torch.no_grad()
def estimate_nll(method: str, condition: Callable[[torch.Tensor, torch.Tensor], Conditional],
                 x: torch.Tensor, y: torch.Tensor, num_samples: int = DEFAULT_NUM_SAMPLES, *,
                 seed: int = 0, chunk_size: int | None = None,
                 num_output_pixels: float | None = None, name: str | None = None) -> Estimate:
    """Estimate -log p(y|x) for every image with ``method`` ("neg_elbo", "mc_prior", "importance").

    ``condition(x_chunk, y_chunk)`` returns the `Conditional` of a chunk of images (x and y are
    sliced along their first dimension, N images). The images are processed ``chunk_size`` at a
    time (default: `PAIRS_PER_CHUNK` // S), so memory stays bounded. ``num_output_pixels``
    defaults to y's trailing size. The result does not depend on ``chunk_size``.
    """
    if method not in _ESTIMATORS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    num_samples = check_num_samples(num_samples)
    check_int("seed", seed)
    _check_xy(x, y)
    chunk = _chunk_size(num_samples, chunk_size)
    estimator = _ESTIMATORS[method]
    # memory: the per-image values go into one tensor allocated once, not into a list of chunk
    # results joined at the end. Each small chunk result kept alive sat in glibc's heap above
    # the chunk's freed (S, n, ...) temporaries, so the heap could neither reuse nor trim them
    # and grew with every chunk (12 to 120 MiB, as the allocator's state had it): one estimator
    # on the 10,000 test images at S = 100 peaked 1.6 to 15 GiB above its start, 0.25 now
    # (benchmarks/bench_memory.py). The same numbers either way.
    values = None
    for start in range(0, x.shape[0], chunk):
        stop = min(start + chunk, x.shape[0])
        conditional = condition(x[start:stop], y[start:stop])
        loc = conditional.prior.mean                                     # (n, z_dim)
        eps = standard_normal_noise(num_samples, loc.shape[-1], start, stop, seed, loc.dtype)
        part = estimator(conditional, eps.to(loc.device))                # (n,)
        if values is None:
            values = torch.empty(x.shape[0], dtype=part.dtype)           # (N,) on the CPU
        values[start:stop].copy_(part)                                   # from any device
        del conditional, eps, part
    if num_output_pixels is None:
        num_output_pixels = float(y[0].numel())
    return Estimate.from_values(name or method, values, num_samples, num_output_pixels)



def cvae_conditional(cvae: CVAE) -> Callable[[torch.Tensor, torch.Tensor], Conditional]:
    """The CVAE as a `Conditional` per chunk: its prior, recognition network and decoder.

    The baseline's guess is computed once per chunk and passed to the prior network; chunks are
    moved to the CVAE's device. When every image of a chunk has the same output pixels (a fixed
    quadrant split, as in every table of the book), the decoder's output layer computes the
    logits of those pixels only: the same likelihood, without the work on pixels that the
    mask would drop (half of the output layer with two input quadrants).
    """
    device = device_of(cvae)
    decoder = cvae.generation_net

    def condition(x: torch.Tensor, y: torch.Tensor) -> Conditional:
        x, y = x.to(device), y.to(device)                                # (n, 784) each
        y_hat = cvae.baseline_guess(x)                                   # (n, 784)
        is_output = y >= 0
        if bool((is_output == is_output[:1]).all()):  # one split for the chunk
            pixels = is_output[0].nonzero().squeeze(1)                   # (P,)
            output_layer = decoder.net[-1]
            weight, bias = output_layer.weight[pixels], output_layer.bias[pixels]
            target = y[:, pixels]

            def log_lik(z: torch.Tensor) -> torch.Tensor:               # (S, n, z_dim)
                logits = F.linear(decoder_hidden(decoder, z, x), weight, bias)  # (S, n, P)
                return -masked_bce(logits.float(), target)              # (S, n)
        else:
            def log_lik(z: torch.Tensor) -> torch.Tensor:               # (S, n, z_dim)
                return -masked_bce(decoder.net[-1](decoder_hidden(decoder, z, x)), y)  # (S, n)

        return Conditional(cvae.prior(x, y_hat), cvae.posterior(x, y), log_lik)

    return condition


def _cvae_estimate(method: str, label: str, cvae: CVAE, data: QuadrantData, num_samples,
                   seed: int, chunk_size: int | None) -> Estimate:
    num_output = _check_quadrant_data(data, cvae)
    num_samples = check_num_samples(num_samples)
    return estimate_nll(method, cvae_conditional(cvae), data.x, data.y, num_samples, seed=seed,
                        chunk_size=chunk_size, num_output_pixels=num_output,
                        name=f"{label} (S={num_samples})")


def baseline_ncll(baseline: BaselineNet, data: QuadrantData) -> Estimate:
    """The baseline's -log p(y|x): its masked BCE summed over the output pixels, per image."""
    num_output = _check_quadrant_data(data, baseline)
    device = device_of(baseline)
    values = baseline_loss(baseline, QuadrantData(data.x.to(device), data.y.to(device),
                                                  data.labels, data.num_quadrants))  # (N,)
    return Estimate.from_values("NN baseline", values, None, num_output)


def cvae_neg_elbo(cvae: CVAE, data: QuadrantData, num_samples: int = DEFAULT_ELBO_SAMPLES,
                  seed: int = 0, chunk_size: int | None = None) -> Estimate:
    """Negative ELBO with S samples from q(z|x,y): the tutorial's number, an upper bound."""
    return _cvae_estimate("neg_elbo", "CVAE -ELBO", cvae, data, num_samples, seed, chunk_size)


def cvae_mc_prior(cvae: CVAE, data: QuadrantData, num_samples: int = DEFAULT_NUM_SAMPLES,
                  seed: int = 0, chunk_size: int | None = None) -> Estimate:
    """-log (1/S) sum_s p(y|x,z_s) with z_s ~ p(z|x): the paper's "MC" estimate."""
    return _cvae_estimate("mc_prior", "CVAE MC prior", cvae, data, num_samples, seed, chunk_size)


def cvae_importance_sampling(cvae: CVAE, data: QuadrantData,
                             num_samples: int = DEFAULT_NUM_SAMPLES, seed: int = 0,
                             chunk_size: int | None = None) -> Estimate:
    """Importance-sampled -log p(y|x) with q(z|x,y) as the proposal, S samples."""
    return _cvae_estimate("importance", "CVAE IS", cvae, data, num_samples, seed, chunk_size)
