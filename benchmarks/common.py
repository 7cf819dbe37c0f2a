"""Shared pieces of the benchmarks: options, timing, FLOP counts, the matmul peak, the data.

Nothing here is imported by `cvae_utils`; the scripts next to this file import it as ``common``
(run them as ``python benchmarks/<script>.py`` from the repository root). Every script takes
``--tiny``: the same code paths at toy sizes, so that ``tests/test_benchmarks.py`` runs each in
seconds and none drifts from the package unnoticed; its numbers mean nothing.

`book_cvae_step` is the one place that reaches into `cvae_utils.train`'s internals.
"""
from __future__ import annotations

import datetime
import os
import platform
import sys
import time
from pathlib import Path

import pyro
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from anywhere without installing the package
    sys.path.insert(0, str(ROOT))

from cvae_utils.config import CVAEConfig  # noqa: E402

FULL_EPOCH = 50_000  # training images in one full epoch of the project's split
PIXELS = 784


def add_common_options(parser, threads: bool = True) -> None:
    """``--tiny`` (toy sizes, for the smoke tests) and, with ``threads``, ``--threads N``."""
    parser.add_argument("--tiny", action="store_true",
                        help="run every code path at toy sizes, in seconds (the smoke test); "
                             "the numbers mean nothing")
    if threads:
        parser.add_argument("--threads", type=int, default=None,
                            help="torch intra-op threads (default: torch's)")


def set_threads(threads: int | None) -> int:
    """Use ``threads`` intra-op threads (None: leave torch's default) and return the count."""
    if threads:
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def describe_machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{datetime.datetime.now().isoformat(timespec='seconds')} | {platform.node()} | "
            f"{cpu} | {os.cpu_count()} logical CPUs | python {platform.python_version()} | "
            f"torch {torch.__version__} | pyro {pyro.__version__} | "
            f"torch threads {torch.get_num_threads()} | load avg "
            f"{' '.join(f'{v:.2f}' for v in os.getloadavg())}")


def round_robin(variants: dict, repeats: int, warmup: bool = True) -> None:
    """Run each zero-argument callable ``repeats`` times, interleaved (A B C A B C ...), after
    one untimed run each unless ``warmup`` is false: a burst of load hits all variants alike.
    The callables record their own times."""
    for _ in range(repeats + warmup):
        for fn in variants.values():
            fn()


def flop_counts(config: CVAEConfig) -> dict:
    """Analytic FLOPs per image of the training steps and the forward passes.

    A Linear layer (in -> out) costs 2*in*out FLOPs per image forward; backward twice that,
    minus the input gradient of every first layer whose input needs none (the pixels; with
    ``decoder_sees_x`` the decoder's x columns too). Biases, activations, the loss, sampling and
    the optimizer are left out (under 1 % here), so rates computed from these are upper bounds.
    The CVAE step excludes the baseline's guesses, which training computes once per run.
    """
    h1, h2, zd = config.hidden_1, config.hidden_2, config.z_dim
    b1, b2 = config.baseline.hidden_1, config.baseline.hidden_2
    dec_in = zd + (PIXELS if config.decoder_sees_x else 0)

    def forward(layers):
        return 2 * sum(fan_in * fan_out for fan_in, fan_out in layers)

    base_fwd = forward([(PIXELS, b1), (b1, b2), (b2, PIXELS)])
    enc_fwd = forward([(PIXELS, h1), (h1, h2), (h2, zd), (h2, zd)])  # loc and scale heads
    dec_fwd = forward([(dec_in, h1), (h1, h2), (h2, PIXELS)])
    x_part = 2 * PIXELS * h1 if config.decoder_sees_x else 0
    cvae_fwd = 2 * enc_fwd + dec_fwd                                 # recognition, prior, decoder
    return {
        "baseline_train": 3 * base_fwd - 2 * PIXELS * b1,
        "baseline_eval": base_fwd,
        "cvae_train": 3 * cvae_fwd - 2 * (2 * PIXELS * h1) - x_part,
        "encoder_fwd": enc_fwd,
        "decoder_fwd": dec_fwd,
        "decoder_x_part": x_part,  # computed once per image over all samples of z
    }


def measure_peak_gflops(n: int = 2048, reps: int = 5, rounds: int = 5, cpu_time: bool = False,
                        dtype: torch.dtype = torch.float32) -> float:
    """Matmul peak of this process with its thread count, in GFLOP/s: the best of ``rounds``
    rounds of ``reps`` products of two n x n matrices. With ``cpu_time`` the rate is per CPU
    second times the thread count (see `cpu_rate`)."""
    gen = torch.Generator().manual_seed(0)
    a, b = (torch.randn(n, n, generator=gen).to(dtype) for _ in range(2))
    out = torch.empty(n, n, dtype=dtype)
    torch.mm(a, b, out=out)  # warm-up: thread pool, kernel dispatch
    clock = time.process_time if cpu_time else time.perf_counter
    scale = torch.get_num_threads() if cpu_time else 1
    best = 0.0
    for _ in range(rounds):
        start = clock()
        for _ in range(reps):
            torch.mm(a, b, out=out)
        best = max(best, 2.0 * n ** 3 * reps / ((clock() - start) / scale) / 1e9)
    return best


def measure_peaks(tiny: bool = False) -> tuple[float, float]:
    """(wall-clock, CPU-time) fp32 peaks in GFLOP/s (``tiny``: one 128 x 128 product)."""
    size = dict(n=128, reps=1, rounds=1) if tiny else {}
    return measure_peak_gflops(**size), measure_peak_gflops(cpu_time=True, **size)


def cpu_rate(flops: float, cpu_seconds: float) -> float:
    """GFLOP/s per CPU second times the thread count: the rate while the threads run (robust to
    other processes taking the cores, but it counts OpenMP spin-waiting as work)."""
    return flops / (cpu_seconds / torch.get_num_threads()) / 1e9


def load_project_data(num_train: int, num_val: int, num_quadrants: int = 1):
    """The project's masked splits (`QuadrantData`), train and val cut to the given sizes."""
    from cvae_utils.data import load_mnist, make_quadrant_data

    data = load_mnist(download=False)
    return (make_quadrant_data(data.train.head(num_train), num_quadrants),
            make_quadrant_data(data.val.head(num_val), num_quadrants),
            make_quadrant_data(data.test, num_quadrants))


def book_cvae_step(cvae, config: CVAEConfig, x: torch.Tensor, y: torch.Tensor,
                   device: torch.device):
    """The CVAE's minibatch step as `train_cvae` runs it after its first epoch; returns
    ``step(idx)``, which trains ``cvae`` on the rows ``idx`` of ``x`` and ``y``.

    The only code of the benchmarks that repeats the wiring of `train_cvae` (`KLWeight`,
    `objective`, `JointAdam`, `WeightAverage`, `autocast`, `frozen_guesses`, Pyro's checks off):
    adapt it here when that changes.
    """
    from pyro.infer import SVI

    from cvae_utils.optim import JointAdam, WeightAverage
    from cvae_utils.speed import autocast
    from cvae_utils.train import KLWeight, frozen_guesses
    from cvae_utils.variant_models import objective

    pyro.clear_param_store()
    pyro.set_rng_seed(config.seed)
    kl_weight = KLWeight()
    guide, loss = objective(cvae, config, kl_weight)
    svi = SVI(kl_weight(cvae.model), guide, JointAdam(config.lr, gamma=config.lr_decay), loss)
    average = WeightAverage(cvae.parameters(), config.weight_average, config.average_every)
    precision = autocast(config.precision, device, cvae)
    y_hat = frozen_guesses(cvae, x)

    def step(idx):
        with precision, pyro.validation_enabled(False):
            svi.step(x[idx], y[idx], None if y_hat is None else y_hat[idx])
        average.update()

    return step
