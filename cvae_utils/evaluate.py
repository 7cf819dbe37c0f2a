"""Evaluation: estimators of the negative conditional log-likelihood -log p(y|x) and the CLL table.

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
global random state is left alone. `cll_table` builds the book's table from the cached models and
caches the table itself (CSV and JSON next to the models).
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import numbers
import sys
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch.distributions import Distribution, Independent, MultivariateNormal, Normal

from . import terminal
from .cache import cache_dir, run_key, trained_baseline, trained_cvae
from .config import Budget, CVAEConfig, get_budget
from .data import MNISTData, QuadrantData, check_num_quadrants, load_mnist, make_quadrant_data
from .files import write_atomically
from .networks import CVAE, NUM_PIXELS, BaselineNet, masked_bce
from .train import baseline_loss, default_device

__all__ = [
    "Estimate", "Conditional", "METHODS", "log_mean_exp", "reparameterize", "standard_normal_noise",
    "neg_elbo", "neg_log_mc_prior", "neg_log_importance", "estimate_nll", "cvae_conditional",
    "baseline_ncll", "cvae_neg_elbo", "cvae_mc_prior", "cvae_importance_sampling",
    "quadrant_label", "table_rows", "cll_table", "format_table", "published_table", "PUBLISHED",
    "DEFAULT_NUM_SAMPLES", "DEFAULT_ELBO_SAMPLES", "PAIRS_PER_CHUNK",
]

DEFAULT_NUM_SAMPLES = 100   # S for the MC-prior and importance-sampling estimates (as TorchZQ)
DEFAULT_ELBO_SAMPLES = 10   # S for the -ELBO row: it is a mean, so few samples suffice
# (sample, image) pairs per chunk: the decoder's activations and the masked BCE's temporaries take
# about 8 tensors of 784 floats per pair, so 8192 pairs stay near 200 MiB whatever S is
PAIRS_PER_CHUNK = 8192
NOISE_ROWS_PER_THREAD = 16  # images per thread below which the noise is drawn in one thread
TABLE_FORMAT = 1            # bump when the table's content or layout changes (invalidates caches)

METHODS = ("neg_elbo", "mc_prior", "importance")

# Published numbers, negative CLL in nats per image, indexed by (number of input quadrants - 1);
# None where a source gives no number.
PUBLISHED: dict[str, dict[str, tuple[float | None, float | None, float | None]]] = {
    # The Pyro tutorial "Conditional Variational Auto-encoder" (https://pyro.ai/examples/cvae.html)
    # and its upstream repository's README (https://github.com/ucals/cvae), CLL table. Its "CVAE
    # (Monte Carlo)" row is in fact the negative ELBO from the recognition network, measured on the
    # test set that also chose the early-stopping epoch (see /work/shared/seeds/README.md).
    "Pyro tutorial": {
        "NN baseline": (100.4, 61.9, 25.4),
        'CVAE "Monte Carlo" (in fact -ELBO)': (71.8, 51.0, 24.2),
        "Performance gap (NN - CVAE)": (28.6, 10.9, 1.2),
    },
    # TorchZQ implementation (README; runs at https://wandb.ai/enhuiz/tzq-cvae): importance-sampled
    # NCLL with S = 100 after 20 epochs. The README gives one number per method without naming the
    # quadrant count; their size matches the 1-quadrant setting, where they are placed.
    "TorchZQ": {
        "Baseline": (112.382, None, None),
        "CVAE IS (S=100)": (72.255, None, None),
        "CVAE IS (S=100), best variant (baseline trained jointly from scratch)":
            (67.813, None, None),
    },
}


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

def _check_num_samples(num_samples, name: str = "num_samples") -> int:
    if (isinstance(num_samples, bool) or not isinstance(num_samples, numbers.Integral)
            or num_samples < 1):
        raise ValueError(f"{name} must be an int >= 1 (samples of z per image), got "
                         f"{num_samples!r}; pass e.g. {name}=100")
    return int(num_samples)


def _check_xy(x: torch.Tensor, y: torch.Tensor) -> None:
    if x.dim() < 1 or y.dim() < 1 or x.shape[0] != y.shape[0]:
        raise ValueError(f"x {tuple(x.shape)} and y {tuple(y.shape)} must hold the same number of "
                         f"images along their first dimension")
    if x.shape[0] == 0:
        raise ValueError("the data hold no images (N = 0); pass at least one test image")


def _check_quadrant_data(data: QuadrantData) -> float:
    """Validate (N, 784) x and y; return the number of output pixels per image (y >= 0)."""
    x, y = data.x, data.y
    if x.dim() != 2 or x.shape[1] != NUM_PIXELS or x.shape != y.shape:
        raise ValueError(f"data.x {tuple(x.shape)} and data.y {tuple(y.shape)} must both be "
                         f"(N, {NUM_PIXELS}): flattened images with -1 where a pixel is absent; "
                         f"build them with cvae_utils.make_quadrant_data")
    _check_xy(x, y)
    num_output = (y >= 0).sum().item() / y.shape[0]
    if num_output == 0:
        raise ValueError("data.y has no output pixels (every entry is -1): nothing to score; "
                         "y must hold the pixels to predict and -1 elsewhere")
    return num_output


def _chunk_size(num_samples: int, chunk_size: int | None) -> int:
    if chunk_size is None:
        return max(1, PAIRS_PER_CHUNK // num_samples)
    if (isinstance(chunk_size, bool) or not isinstance(chunk_size, numbers.Integral)
            or chunk_size < 1):
        raise ValueError(f"chunk_size must be an int >= 1 (images per chunk) or None, got "
                         f"{chunk_size!r}")
    return int(chunk_size)


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
    num_samples = _check_num_samples(num_samples)
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise ValueError(f"seed must be an int, got {seed!r}")
    _check_xy(x, y)
    chunk = _chunk_size(num_samples, chunk_size)
    estimator = _ESTIMATORS[method]
    values = []
    for start in range(0, x.shape[0], chunk):
        stop = min(start + chunk, x.shape[0])
        conditional = condition(x[start:stop], y[start:stop])
        loc = conditional.prior.mean                                     # (n, z_dim)
        eps = standard_normal_noise(num_samples, loc.shape[-1], start, stop, seed, loc.dtype)
        values.append(estimator(conditional, eps.to(loc.device)).cpu())  # (n,)
    if num_output_pixels is None:
        num_output_pixels = float(y[0].numel())
    return Estimate.from_values(name or method, torch.cat(values), num_samples, num_output_pixels)


def _device_of(module: torch.nn.Module) -> torch.device:
    return next(module.parameters()).device


def cvae_conditional(cvae: CVAE) -> Callable[[torch.Tensor, torch.Tensor], Conditional]:
    """The CVAE as a `Conditional` per chunk: its prior, recognition network and decoder.

    The baseline's guess is computed once per chunk and passed to the prior network; chunks are
    moved to the CVAE's device. When every image of a chunk has the same output pixels (a fixed
    quadrant split, as in every table of the book), the decoder's output layer computes the
    logits of those pixels only: the same likelihood, without the work on pixels that the
    mask would drop (half of the output layer with two input quadrants).
    """
    device = _device_of(cvae)
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
                logits = F.linear(decoder.features(z, x), weight, bias)  # (S, n, P)
                return -masked_bce(logits.float(), target)              # (S, n)
        else:
            def log_lik(z: torch.Tensor) -> torch.Tensor:               # (S, n, z_dim)
                return -masked_bce(decoder(z, x), y)                     # (S, n)

        return Conditional(cvae.prior(x, y_hat), cvae.posterior(x, y), log_lik)

    return condition


def _cvae_estimate(method: str, label: str, cvae: CVAE, data: QuadrantData, num_samples,
                   seed: int, chunk_size: int | None) -> Estimate:
    num_output = _check_quadrant_data(data)
    num_samples = _check_num_samples(num_samples)
    return estimate_nll(method, cvae_conditional(cvae), data.x, data.y, num_samples, seed=seed,
                        chunk_size=chunk_size, num_output_pixels=num_output,
                        name=f"{label} (S={num_samples})")


def baseline_ncll(baseline: BaselineNet, data: QuadrantData) -> Estimate:
    """The baseline's -log p(y|x): its masked BCE summed over the output pixels, per image."""
    num_output = _check_quadrant_data(data)
    device = _device_of(baseline)
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


# ------------------------------------------------------------------------------------------------
# The table
# ------------------------------------------------------------------------------------------------

def quadrant_label(num_quadrants: int) -> str:
    """Column label: "1 quadrant", "2 quadrants", "3 quadrants"."""
    k = check_num_quadrants(num_quadrants)
    return f"{k} quadrant" + ("s" if k > 1 else "")


def table_rows(num_samples: int = DEFAULT_NUM_SAMPLES,
               elbo_samples: int = DEFAULT_ELBO_SAMPLES) -> list[str]:
    """The row labels of `cll_table`, in order."""
    return ["NN baseline", f"CVAE -ELBO (S={elbo_samples})", f"CVAE MC prior (S={num_samples})",
            f"CVAE IS (S={num_samples})", "Performance gap (NN - CVAE IS)"]


def _write_atomic(path: Path, text: str) -> None:
    """Write ``text`` atomically (see `cvae_utils.files.write_atomically`)."""
    write_atomically(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def _table_key(config: CVAEConfig, budget: Budget, ks: list[int], num_samples: int,
               elbo_samples: int, seed: int) -> dict:
    """Everything the table depends on; the models' own run keys carry the cache's format."""
    models = {str(k): {kind: run_key(kind, config, budget, k) for kind in ("baseline", "cvae")}
              for k in ks}
    return {"format": TABLE_FORMAT, "kind": "cll-table", "config": config.to_dict(),
            "budget": budget.to_dict(), "num_quadrants": ks, "num_samples": num_samples,
            "elbo_samples": elbo_samples, "seed": seed, "models": models}


def _table_paths(key: dict, cache) -> tuple[Path, Path]:
    """The CSV and JSON files of a cached table: ``<kind>-<budget>-<hash of key>`` in the cache."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    stem = cache_dir(cache) / f"{key['kind']}-{key['budget']['name']}-{digest}"
    return stem.with_suffix(".csv"), stem.with_suffix(".json")


def _frame(rows: list[str], ks: list[int], means: dict, stderrs: dict, attrs: dict,
           index_name: str = "method"):
    """The wide table: index ``index_name``, columns (inputs, statistic), statistic mean/stderr."""
    import pandas as pd

    columns = pd.MultiIndex.from_product([[quadrant_label(k) for k in ks], ["mean", "stderr"]],
                                         names=["inputs", "statistic"])
    frame = pd.DataFrame(index=pd.Index(rows, name=index_name), columns=columns, dtype=float)
    for row in rows:
        for k in ks:
            frame.loc[row, (quadrant_label(k), "mean")] = means[row][str(k)]
            stderr = stderrs[row][str(k)]
            frame.loc[row, (quadrant_label(k), "stderr")] = (float("nan") if stderr is None
                                                             else stderr)
    frame.attrs.update(attrs)
    return frame


def _long_csv(frame, ks: list[int]) -> str:
    """One line per (method, quadrant count): method,num_quadrants,inputs,mean,stderr,per_pixel."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["method", "num_quadrants", "inputs", "mean", "stderr", "per_pixel"])
    for row in frame.index:
        for k in ks:
            label = quadrant_label(k)
            mean = float(frame.loc[row, (label, "mean")])
            stderr = float(frame.loc[row, (label, "stderr")])
            writer.writerow([row, k, label, repr(mean), repr(stderr), repr(mean / (196 * (4 - k)))])
    return buffer.getvalue()


def _cached_table(json_path: Path, key: dict, ks: list[int], attrs: dict, what: str,
                  progress: bool | None, index_name: str = "method"):
    """The table stored in ``json_path`` for ``key`` as a frame, or None when there is none.

    A file that cannot be read or belongs to another key is reported with a warning (naming the
    ``what``, e.g. "CLL table") and None is returned, so that the caller computes it again.
    """
    if not json_path.exists():
        return None
    try:
        stored = json.loads(json_path.read_text(encoding="utf-8"))
        if stored.get("key") != key:
            raise ValueError(f"stored key {stored.get('key')} differs from {key}")
        _say(progress, f"loaded the {what} from {json_path}")
        return _frame(stored["rows"], ks, stored["mean"], stored["stderr"],
                      {**attrs, "num_test": stored["num_test"]}, index_name=index_name)
    except (OSError, ValueError, KeyError, TypeError) as error:
        warnings.warn(f"ignoring a bad cached {what} {json_path} and computing it again: "
                      f"{error}", stacklevel=3)
    return None


def _record(means: dict, stderrs: dict, row: str, k: int, estimate: "Estimate") -> None:
    """Enter one estimate in a table's mean and standard-error columns (NaN stored as None)."""
    means[row][str(k)] = estimate.mean
    stderrs[row][str(k)] = None if math.isnan(estimate.stderr) else estimate.stderr


def _store_table(csv_path: Path, json_path: Path, key: dict, csv_text: str, num_test: int,
                 rows: list[str], means: dict, stderrs: dict) -> None:
    """Write a computed table to the cache: the long CSV, and the JSON `_cached_table` reads."""
    _write_atomic(csv_path, csv_text)
    _write_atomic(json_path, json.dumps({"key": key, "num_test": num_test, "rows": rows,
                                         "mean": means, "stderr": stderrs},
                                        indent=1, sort_keys=True))


def _say(progress: bool | None, message: str) -> None:
    if progress or (progress is None and sys.stderr.isatty()):
        print(message, file=sys.stderr, flush=True)


def cll_table(num_quadrants: Sequence[int] = (1, 2, 3), config: CVAEConfig | None = None,
              budget: Budget | str | None = None, data: MNISTData | None = None,
              num_samples: int = DEFAULT_NUM_SAMPLES, device=None, cache=None,
              progress: bool | None = None, elbo_samples: int = DEFAULT_ELBO_SAMPLES,
              seed: int = 0, use_cache: bool = True):
    """The negative CLL table on the test split, from the cached models; cached itself.

    For each k in ``num_quadrants`` the CVAE and the frozen baseline inside it come from
    `trained_cvae` (which gets the baseline from `trained_baseline`; both are trained now if not
    cached) and are scored on the first ``budget.num_test`` MNIST test images, and only on those.
    Returns a pandas DataFrame:

    - index "method": `table_rows(num_samples, elbo_samples)`, i.e. "NN baseline",
      "CVAE -ELBO (S=10)", "CVAE MC prior (S=100)", "CVAE IS (S=100)",
      "Performance gap (NN - CVAE IS)";
    - columns: a MultiIndex (inputs, statistic), inputs "1 quadrant", "2 quadrants",
      "3 quadrants" (those asked for), statistic "mean" or "stderr", in nats per image; the gap's
      stderr is that of the per-image difference (paired, same images);
    - ``attrs``: budget, num_test, num_samples, elbo_samples, seed, csv and json paths.

    ``df.xs("mean", axis=1, level="statistic")`` gives the plain numbers, `format_table` the
    "71.2 ± 0.4" strings. The table is written atomically to ``cache_dir(cache)`` as
    ``cll-table-<budget>-<hash>.csv`` (long format) and ``.json``; the hash covers the config, the
    budget, the quadrant counts, S, the -ELBO's S, the seed and the models' run keys (so a new
    cache format retrains and re-evaluates). It does not cover a custom ``data`` nor a model file
    replaced by hand: pass ``use_cache=False`` (or delete the two files) to recompute. A later call
    with the same key loads the table without loading data or models.
    """
    ks = [check_num_quadrants(k) for k in num_quadrants]
    if not ks or len(set(ks)) != len(ks):
        raise ValueError(f"num_quadrants must list distinct quadrant counts among 1, 2, 3, got "
                         f"{tuple(num_quadrants)!r}")
    num_samples = _check_num_samples(num_samples)
    elbo_samples = _check_num_samples(elbo_samples, "elbo_samples")
    config = config or CVAEConfig()
    budget = get_budget(budget)
    key = _table_key(config, budget, ks, num_samples, elbo_samples, seed)
    csv_path, json_path = _table_paths(key, cache)
    attrs = {"budget": budget.name, "num_test": budget.num_test, "num_samples": num_samples,
             "elbo_samples": elbo_samples, "seed": seed, "csv": str(csv_path),
             "json": str(json_path)}
    if use_cache:
        cached = _cached_table(json_path, key, ks, attrs, "CLL table", progress)
        if cached is not None:
            return cached

    device = torch.device(device) if device is not None else default_device()
    data = data if data is not None else load_mnist()
    test_split = data.subset(budget).test
    rows = table_rows(num_samples, elbo_samples)
    means = {row: {} for row in rows}
    stderrs = {row: {} for row in rows}
    for k in ks:
        start = time.perf_counter()
        # trained_cvae fetches (or trains) the baseline through trained_baseline first; the NN row
        # scores the copy inside the CVAE, the very network whose guesses its prior reads, except
        # when that copy was fine-tuned with the CVAE: then it is a feature of the prior, no longer
        # a prediction of y, and the NN row scores the baseline as trained on its own
        cvae, _ = trained_cvae(k, config, budget, data, device, progress, use_cache, cache)
        test = make_quadrant_data(test_split, k)                         # (num_test, 784) each
        baseline = (trained_baseline(k, config, budget, data, device, progress, use_cache,
                                     cache)[0] if config.joint_baseline else cvae.baseline)
        nn = baseline_ncll(baseline, test)
        estimates = [nn, cvae_neg_elbo(cvae, test, elbo_samples, seed),
                     cvae_mc_prior(cvae, test, num_samples, seed),
                     cvae_importance_sampling(cvae, test, num_samples, seed)]
        gap = Estimate.from_values(rows[-1], nn.values - estimates[-1].values, num_samples,
                                   nn.num_output_pixels)
        for row, estimate in zip(rows, estimates + [gap]):
            _record(means, stderrs, row, k, estimate)
        _say(progress, f"k={k}: " + ", ".join(f"{row} {means[row][str(k)]:.2f}" for row in rows)
             + f" ({time.perf_counter() - start:.1f} s, N={len(test)})")
        terminal.item_done("CLL table", ks.index(k) + 1, len(ks), f"k={k}, N={len(test)}: NN "
                           f"{nn.mean:.2f}, CVAE IS {estimates[-1].mean:.2f}",
                           time.perf_counter() - start)
    attrs["num_test"] = len(test_split)
    frame = _frame(rows, ks, means, stderrs, attrs)
    if use_cache:
        _store_table(csv_path, json_path, key, _long_csv(frame, ks), len(test_split), rows,
                     means, stderrs)
    return frame


def published_table():
    """`PUBLISHED` as a DataFrame: index (source, method), columns "1 quadrant".."3 quadrants"."""
    import pandas as pd

    records = {(source, method): [float("nan") if v is None else v for v in values]
               for source, methods in PUBLISHED.items() for method, values in methods.items()}
    frame = pd.DataFrame.from_dict(records, orient="index",
                                   columns=[quadrant_label(k) for k in (1, 2, 3)])
    frame.index = pd.MultiIndex.from_tuples(frame.index, names=["source", "method"])
    return frame


def format_table(frame, digits: int = 1, published: bool = False):
    """The table as strings "71.2 ± 0.4" (mean ± standard error), one column per quadrant count.

    With ``published=True`` the rows get a second index level, "source": this book's rows come
    first ("this book"), then the published numbers of `PUBLISHED` for the same columns ("—" where
    a source has none).
    """
    import pandas as pd

    labels = list(dict.fromkeys(frame.columns.get_level_values("inputs")))

    def cell(mean: float, stderr: float) -> str:
        if math.isnan(stderr):
            return f"{mean:.{digits}f}"
        return f"{mean:.{digits}f} ± {stderr:.{digits}f}"

    strings = pd.DataFrame({label: [cell(frame.loc[row, (label, "mean")],
                                         frame.loc[row, (label, "stderr")])
                                    for row in frame.index] for label in labels},
                           index=frame.index)
    if not published:
        return strings
    ours = strings.copy()
    ours.index = pd.MultiIndex.from_tuples([("this book", row) for row in strings.index],
                                           names=["source", "method"])
    theirs = published_table()[labels].map(
        lambda v: "—" if pd.isna(v) else f"{v:.{digits}f}")
    return pd.concat([ours, theirs])
