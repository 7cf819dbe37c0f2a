"""Shared pieces of the benchmarks: timing, FLOP counts, the fp32 peak, the tutorial's pipeline.

Nothing here is imported by `cvae_utils`; the scripts next to this file import it as ``common``
(run them as ``python benchmarks/<script>.py`` from the repository root).

Two pipelines are compared:

* the project's: MNIST loaded once as whole float tensors, masked with one ``torch.where``,
  minibatches sliced from those tensors (`cvae_utils.train.train_baseline` / `train_cvae`, whose
  CVAE step gets the baseline's guesses precomputed once per run), called as they are;
* a faithful reimplementation of the Pyro tutorial's (``examples/cvae`` in the Pyro repository):
  a torch ``Dataset`` over torchvision's MNIST that returns PIL images, a per-sample transform
  (PIL -> tensor with ``torchvision.transforms.functional.to_tensor``, then masking by index
  assignment on a clone), a ``DataLoader`` (batch 128, shuffle, ``num_workers=0``, default
  collation of per-sample dicts), a sigmoid-output baseline trained with ``F.binary_cross_entropy``
  whose masked entries are zeroed by index assignment, and a CVAE whose Pyro ``model`` runs the
  frozen baseline inside every step, fills missing pixels by boolean-index assignment, gathers the
  output pixels with boolean indexing and scores them with ``Bernoulli(probs)`` under ``SVI`` with
  ``Trace_ELBO``. The code is written for this benchmark (the tutorial's code is not copied); the
  operations are the tutorial's. One deliberate deviation: the tutorial's ``Bernoulli`` gets
  ``validate_args=False``. With Pyro 1.9's default validation the tutorial as published raises on
  grey target pixels (MNIST's values in (0, 1) are not in the Bernoulli's Boolean support); the
  project's Bernoulli has the same switch, so both pipelines validate the same things. And the
  tutorial's baseline loss passes targets of -1 to ``F.binary_cross_entropy``, which torch 2.x
  rejects; they are clamped to 0 first (see `tutorial_masked_bce_sum`).

Every script takes ``--tiny``: the same code paths at toy sizes (a few batches, a small matrix
for the peak), so that ``tests/test_benchmarks.py`` runs each in seconds and they cannot drift
from the package. Its numbers mean nothing.
"""
from __future__ import annotations

import datetime
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro.infer import SVI, Trace_ELBO
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from anywhere without installing the package
    sys.path.insert(0, str(ROOT))

from cvae_utils.config import CVAEConfig  # noqa: E402
from cvae_utils.data import VALIDATION_SEED, NUM_VAL, data_root  # noqa: E402

FULL_EPOCH = 50_000  # training images in one full epoch of the project's split
PIXELS = 784


# --------------------------------------------------------------------------------------------
# environment, timing and memory
# --------------------------------------------------------------------------------------------

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


class Timings(list):
    """Wall-clock seconds of the runs of one variant (a list) with their CPU seconds beside.

    ``cpu`` holds the process CPU time (all threads) of each run. On a machine shared with other
    processes the wall time grows with their load while the CPU time stays close to the work
    done; with one thread, CPU seconds are what the run would take on an idle core.
    """

    def __init__(self):
        super().__init__()
        self.cpu = []


def timed(fn, timings: Timings):
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    timings.cpu.append(time.process_time() - cpu)
    timings.append(time.perf_counter() - wall)
    return result


def round_robin(variants: dict, repeats: int, warmup: bool = True) -> dict:
    """Time each zero-argument callable ``repeats`` times, interleaved (A B C A B C ...).

    Interleaving spreads the noise of a shared machine over all variants alike. Returns
    ``{name: Timings}`` (wall seconds, with ``.cpu`` CPU seconds). With ``warmup`` each variant
    runs once untimed first.
    """
    if warmup:
        for fn in variants.values():
            fn()
    times = {name: Timings() for name in variants}
    for _ in range(repeats):
        for name, fn in variants.items():
            timed(fn, times[name])
    return times


def best(values) -> float:
    return min(values)


def median(values) -> float:
    return statistics.median(values)


# --------------------------------------------------------------------------------------------
# FLOP counts and the measured fp32 peak
# --------------------------------------------------------------------------------------------

def linear_macs(layers) -> int:
    return sum(fan_in * fan_out for fan_in, fan_out in layers)


def flop_counts(config: CVAEConfig) -> dict:
    """Analytic FLOPs per image of each training step and evaluation pass.

    Convention: a Linear layer (in -> out) costs 2*in*out FLOPs per image forward (one multiply
    and one add per weight); biases, activations, the loss, sampling and the optimizer are
    left out (they are O(in + out), under 1 % here). Backward costs 2x forward (the weight
    gradient and the input gradient, each a matmul as large as the forward one) minus the input
    gradient of every first layer whose input needs no gradient (the pixels). In the CVAE the
    decoder's first layer *does* need its input gradient (z depends on the recognition net
    through the reparameterisation), the two encoders' first layers do not. The frozen
    baseline runs forward only, with no gradient.
    """
    h1, h2, zd = config.hidden_1, config.hidden_2, config.z_dim
    dec_in = zd + (PIXELS if config.decoder_sees_x else 0)
    b1, b2 = config.baseline.hidden_1, config.baseline.hidden_2
    mlp = [(PIXELS, b1), (b1, b2), (b2, PIXELS)]                 # baseline
    encoder = [(PIXELS, h1), (h1, h2), (h2, zd), (h2, zd)]       # loc and scale heads
    decoder = [(dec_in, h1), (h1, h2), (h2, PIXELS)]
    base_fwd = 2 * linear_macs(mlp)
    enc_fwd = 2 * linear_macs(encoder)
    dec_fwd = 2 * linear_macs(decoder)
    base_bwd = 2 * base_fwd - 2 * PIXELS * b1
    cvae_fwd = 2 * enc_fwd + dec_fwd                              # recognition + prior + decoder
    # pixels feed the encoders' first layers (no input grad); with decoder_sees_x the decoder's
    # first layer needs only the input grad of its z columns
    dec_first_no_grad = 2 * PIXELS * h1 if config.decoder_sees_x else 0
    cvae_bwd = 2 * cvae_fwd - 2 * (2 * PIXELS * h1) - dec_first_no_grad
    return {
        "baseline_train": base_fwd + base_bwd,                  # one training step, per image
        "baseline_eval": base_fwd,                              # forward only
        "cvae_train": cvae_fwd + cvae_bwd,                      # project: guess precomputed
        "cvae_train_with_baseline": cvae_fwd + cvae_bwd + base_fwd,  # tutorial: guess per step
        "cvae_guess_precompute": base_fwd,                      # project: once per run
        "cvae_eval": cvae_fwd,                                  # -ELBO on a split, 1 sample
        "cvae_eval_with_baseline": cvae_fwd + base_fwd,         # project's cvae_loss recomputes
        "encoder_fwd": enc_fwd,                                 # one encoder, forward
        "decoder_fwd": dec_fwd,                                 # the decoder, forward, per z
        # with decoder_sees_x, the x columns of its first layer: over samples of z the decoder
        # computes them once per image (and block of samples), not once per sample
        "decoder_x_part": 2 * PIXELS * h1 if config.decoder_sees_x else 0,
    }


def measure_peak_gflops(n: int = 2048, reps: int = 5, rounds: int = 5,
                        cpu_time: bool = False, dtype: torch.dtype = torch.float32) -> float:
    """Matmul peak (float32 unless ``dtype``) of this process with its thread count, in GFLOP/s.

    ``rounds`` times: ``reps`` products of two n x n float32 matrices (2 n^3 FLOPs each) into a
    preallocated output; the best round counts (the least disturbed by other processes). With
    ``cpu_time`` the rate is per CPU second times the thread count, i.e. the rate the threads
    reach while they are on a core (see `cpu_rate`).
    """
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=gen).to(dtype)
    b = torch.randn(n, n, generator=gen).to(dtype)
    out = torch.empty(n, n, dtype=dtype)
    torch.mm(a, b, out=out)  # warm-up: thread pool, MKL dispatch
    best_rate = 0.0
    clock = time.process_time if cpu_time else time.perf_counter
    scale = torch.get_num_threads() if cpu_time else 1
    for _ in range(rounds):
        start = clock()
        for _ in range(reps):
            torch.mm(a, b, out=out)
        elapsed = (clock() - start) / scale
        best_rate = max(best_rate, 2.0 * n ** 3 * reps / elapsed / 1e9)
    return best_rate


def measure_peaks(tiny: bool = False) -> tuple[float, float]:
    """(wall-clock peak, CPU-time peak) in GFLOP/s, both measured now (``tiny``: a 128 x 128
    product, one round: a smoke test's number, not a peak)."""
    size = dict(n=128, reps=1, rounds=1) if tiny else {}
    return measure_peak_gflops(**size), measure_peak_gflops(cpu_time=True, **size)


def cpu_rate(flops: float, cpu_seconds: float) -> float:
    """GFLOP/s per CPU second, times the thread count: the rate while the threads run.

    It is robust to other processes taking the cores (a thread that is not scheduled uses no
    CPU time) but counts OpenMP spin-waiting as work done, so it flatters multi-threaded runs
    on a busy machine.
    """
    return flops / (cpu_seconds / torch.get_num_threads()) / 1e9


# --------------------------------------------------------------------------------------------
# the tutorial's pipeline, reimplemented (per-sample Dataset, transforms, DataLoader)
# --------------------------------------------------------------------------------------------

class TutorialMNIST(torch.utils.data.Dataset):
    """Per-sample dataset: torchvision's MNIST item (a PIL image and an int) as a dict."""

    def __init__(self, root, train: bool = True, transform=None):
        from torchvision.datasets import MNIST

        self.mnist = MNIST(str(root), train=train, download=False)
        self.transform = transform

    def __len__(self):
        return len(self.mnist)

    def __getitem__(self, index):
        pil_image, label = self.mnist[index]  # torchvision builds a PIL image per item
        sample = {"original": pil_image, "digit": label}
        return self.transform(sample) if self.transform is not None else sample


class PILToTensor:
    """Per-sample PIL -> (1, 28, 28) float tensor in [0, 1]; the digit -> int64 tensor."""

    def __call__(self, sample):
        from torchvision.transforms import functional as TF

        sample["original"] = TF.to_tensor(sample["original"])
        sample["digit"] = torch.as_tensor(np.asarray(sample["digit"]), dtype=torch.int64)
        return sample


class QuadrantMask:
    """Per-sample masking: ``input`` keeps the k input quadrants, ``output`` the others; -1 marks
    the pixels each does not hold (the tutorial's scheme: clone, assign -1 by slices, then build
    the input as the complement by boolean-index assignment)."""

    def __init__(self, num_quadrants: int, fill: float = -1.0):
        if num_quadrants not in (1, 2, 3):
            raise ValueError("num_quadrants must be 1, 2 or 3")
        self.k, self.fill = num_quadrants, fill

    def __call__(self, sample):
        image = sample["original"].squeeze()
        rows, cols = image.shape
        target = image.detach().clone()
        target[rows // 2:, :cols // 2] = self.fill          # bottom-left is always an input
        if self.k == 2:
            target[:, :cols // 2] = self.fill               # the whole left half
        if self.k == 3:
            target[:rows // 2, :] = self.fill               # and the top half
        source = image.clone()
        source[target != -1] = self.fill
        sample["input"], sample["output"] = source, target
        return sample


class ComposeTransforms:
    def __init__(self, *steps):
        self.steps = steps

    def __call__(self, sample):
        for step in self.steps:
            sample = step(sample)
        return sample


def tutorial_dataset(num_quadrants: int = 1, train: bool = True, num_images: int | None = None):
    """The tutorial's per-sample dataset; with ``train`` the project's 50k training indices.

    The tutorial trains on all 60,000 official training images; for an epoch of the same length
    as the project's, this takes the project's 50,000 training indices (the same seeded split
    as `cvae_utils.data.load_mnist`), the first ``num_images`` of them for a partial epoch.
    Without ``train``: the 10,000 official test images (the tutorial's "val" phase).
    """
    transform = ComposeTransforms(PILToTensor(), QuadrantMask(num_quadrants))
    dataset = TutorialMNIST(data_root(), train=train, transform=transform)
    if train:
        order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(VALIDATION_SEED))
        indices = order[:-NUM_VAL]
    else:
        indices = torch.arange(len(dataset))
    if num_images is not None:
        indices = indices[:num_images]
    return torch.utils.data.Subset(dataset, indices.tolist())


def tutorial_loader(dataset, batch_size: int = 128, shuffle: bool = True, seed: int = 0):
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=shuffle,
                                       num_workers=0,
                                       generator=torch.Generator().manual_seed(seed))


class TutorialBaseline(nn.Module):
    """784-h1-h2-784 MLP ending in a sigmoid (probabilities, not logits)."""

    def __init__(self, h1: int = 500, h2: int = 500):
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(PIXELS, h1), nn.Linear(h1, h2), nn.Linear(h2, PIXELS)

    def forward(self, x):
        h = F.relu(self.fc1(x.view(-1, PIXELS)))
        h = F.relu(self.fc2(h))
        return torch.sigmoid(self.fc3(h))


def tutorial_masked_bce_sum(probs, target):
    """BCE on probabilities, entries whose target is -1 zeroed by index assignment, summed.

    The tutorial passes the -1 targets to ``F.binary_cross_entropy`` as they are; torch 2.x
    rejects targets outside [0, 1], so they are clamped to 0 first (one extra elementwise op;
    those entries are zeroed afterwards anyway, so the loss is unchanged).
    """
    target = target.view(probs.shape)
    loss = F.binary_cross_entropy(probs, target.clamp(min=0), reduction="none")
    loss[target == -1] = 0
    return loss.sum()


class TutorialEncoder(nn.Module):
    def __init__(self, z_dim=200, h1=500, h2=500):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(PIXELS, h1), nn.Linear(h1, h2)
        self.loc_head, self.scale_head = nn.Linear(h2, z_dim), nn.Linear(h2, z_dim)

    def forward(self, x, y):
        combined = x.clone()
        missing = x == -1
        combined[missing] = y[missing]          # complete x with y where x is missing
        h = F.relu(self.fc1(combined.view(-1, PIXELS)))
        h = F.relu(self.fc2(h))
        return self.loc_head(h), torch.exp(self.scale_head(h))


class TutorialDecoder(nn.Module):
    def __init__(self, z_dim=200, h1=500, h2=500):
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(z_dim, h1), nn.Linear(h1, h2), nn.Linear(h2, PIXELS)

    def forward(self, z):
        h = F.relu(self.fc1(z))
        h = F.relu(self.fc2(h))
        return torch.sigmoid(self.fc3(h))


class TutorialCVAE(nn.Module):
    """The tutorial's CVAE: the whole module (baseline included) is registered with Pyro under
    one name, the baseline runs in every model call, the output pixels are gathered by boolean
    indexing and scored with a probability-parameterised Bernoulli."""

    def __init__(self, baseline: TutorialBaseline, z_dim=200, h1=500, h2=500):
        super().__init__()
        self.baseline_net = baseline
        self.prior_net = TutorialEncoder(z_dim, h1, h2)
        self.generation_net = TutorialDecoder(z_dim, h1, h2)
        self.recognition_net = TutorialEncoder(z_dim, h1, h2)

    def model(self, xs, ys=None):
        pyro.module("generation_net", self)
        n = xs.shape[0]
        with pyro.plate("data"):
            with torch.no_grad():
                y_hat = self.baseline_net(xs).view(xs.shape)
            loc, scale = self.prior_net(xs, y_hat)
            zs = pyro.sample("z", dist.Normal(loc, scale).to_event(1))
            probs = self.generation_net(zs)
            if ys is not None:
                missing = (xs == -1).view(-1, PIXELS)
                observed_probs = probs[missing].view(n, -1)
                observed_ys = ys[xs == -1].view(n, -1)
                pyro.sample("y", dist.Bernoulli(observed_probs, validate_args=False).to_event(1),
                            obs=observed_ys)
            else:
                pyro.deterministic("y", probs.detach())
            return probs

    def guide(self, xs, ys=None):
        with pyro.plate("data"):
            if ys is None:
                y_hat = self.baseline_net(xs).view(xs.shape)
                loc, scale = self.prior_net(xs, y_hat)
            else:
                loc, scale = self.recognition_net(xs, ys)
            pyro.sample("z", dist.Normal(loc, scale).to_event(1))


def tutorial_baseline_epoch(model, optimizer, loader) -> float:
    """One training pass of the tutorial's baseline loop; returns the summed per-batch loss."""
    model.train()
    running = 0.0
    for batch in loader:
        inputs, outputs = batch["input"], batch["output"]
        optimizer.zero_grad()
        loss = tutorial_masked_bce_sum(model(inputs), outputs) / inputs.size(0)
        loss.backward()
        optimizer.step()
        running += loss.item()
    return running


def tutorial_cvae_epoch(svi, loader) -> float:
    """One training pass of the tutorial's CVAE loop (``svi.step`` per DataLoader batch)."""
    running = 0.0
    for batch in loader:
        inputs, outputs = batch["input"], batch["output"]
        running += svi.step(inputs, outputs) / inputs.size(0)
    return running


def tutorial_cvae_val(svi, loader) -> float:
    """The tutorial's validation phase: ``svi.evaluate_loss`` per DataLoader batch."""
    running = 0.0
    for batch in loader:
        inputs, outputs = batch["input"], batch["output"]
        running += svi.evaluate_loss(inputs, outputs) / inputs.size(0)
    return running


def make_tutorial_cvae(config: CVAEConfig):
    """A fresh tutorial CVAE on an untrained (random) baseline, its SVI, Pyro store cleared.

    Timing does not depend on whether the baseline was trained, so none is trained here.
    """
    torch.manual_seed(config.seed)
    baseline = TutorialBaseline(config.baseline.hidden_1, config.baseline.hidden_2).eval()
    cvae = TutorialCVAE(baseline, config.z_dim, config.hidden_1, config.hidden_2)
    pyro.clear_param_store()
    pyro.set_rng_seed(config.seed)
    svi = SVI(cvae.model, cvae.guide, pyro.optim.Adam({"lr": config.lr}), Trace_ELBO())
    return cvae, svi


# --------------------------------------------------------------------------------------------
# the project's data
# --------------------------------------------------------------------------------------------

def load_project_data(num_train: int, num_val: int, num_quadrants: int = 1):
    """The project's masked splits (`QuadrantData`), train and val cut to the given sizes."""
    from cvae_utils.data import load_mnist, make_quadrant_data

    data = load_mnist(download=False)
    return (make_quadrant_data(data.train.head(num_train), num_quadrants),
            make_quadrant_data(data.val.head(num_val), num_quadrants),
            make_quadrant_data(data.test, num_quadrants))





def book_cvae_step(cvae, config: CVAEConfig, x: torch.Tensor, y: torch.Tensor,
                   device: torch.device):
    """The CVAE's minibatch step as `cvae_utils.train.train_cvae` runs it after its first epoch:
    Pyro's SVI with the config's objective under the KL weight, `JointAdam`, the weight average,
    the config's precision, the baseline's guesses precomputed, no Pyro checks. Returns
    ``(step, y_hat)``: ``step(idx)`` trains ``cvae`` on the rows ``idx`` of ``x`` and ``y``;
    ``y_hat`` holds the guesses for ``x`` (None when the prior does not read them)."""
    from cvae_utils.optim import JointAdam, WeightAverage
    from cvae_utils.speed import autocast
    from cvae_utils.train import KLWeight, _baseline_guesses, _objective

    pyro.clear_param_store()
    pyro.set_rng_seed(config.seed)
    kl_weight = KLWeight()
    guide, loss = _objective(cvae, config, kl_weight)
    svi = SVI(kl_weight(cvae.model), guide, JointAdam(config.lr, gamma=config.lr_decay), loss)
    average = WeightAverage([p for p in cvae.parameters() if p.requires_grad],
                            config.weight_average, config.average_every)
    precision = autocast(config.precision, device)
    y_hat = _baseline_guesses(cvae, x)

    def step(idx):
        with precision, pyro.validation_enabled(False):
            svi.step(x[idx], y[idx], None if y_hat is None else y_hat[idx])
        average.update()

    return step, y_hat
