"""How fast could the CVAE's training step be? The book's step against the same step with parts
taken away, and what that means for the paper book's CVAE training.

Five variants of one training step on the same real MNIST minibatches (batch and precision of the
book's config, baseline guesses precomputed as `cvae_utils.train.train_cvae` does), timed
interleaved (A B C D E, A B C D E, ...) after an untimed warm-up:

  book          the step of `train_cvae` after its first epoch: Pyro's SVI with
                TraceMeanField_ELBO under the KL weight, `JointAdam`, the weight average
  no Pyro       the same loss written in plain PyTorch (reparameterised z from q, the masked
                Bernoulli likelihood, the closed-form Gaussian KL), the same fused Adam over the
                same tensors and the same weight average: what removing Pyro would leave
  no Pyro, compiled   the same with ``torch.compile`` on the loss (elementwise work fused)
  networks only       the forward and backward passes of the three networks on a plain sum of
                      their outputs: matrix products, activations and casts; no loss, no Adam
  Adam only           the fused Adam update and the weight average, on gradients already there

The first check that "no Pyro" computes what the book computes: on one batch with the same noise
its loss is Pyro's ``TraceMeanField_ELBO`` loss to float32 rounding (printed).

It prints the fp32 and the bf16 matmul peak measured at the start, since a shared machine's speed
changes from hour to hour. The last lines turn each step time into the CVAE training of the paper book: steps per epoch
(50,000 images / batch) x the CVAE epochs of a paper build (``--epochs``, default 215: the
100 + 71 + 44 epochs of the k = 1, 2, 3 CVAEs of the paper builds of 2026-12-01). Those are the
seconds the three CVAEs would train for if every step cost what that variant costs; the rest of the
paper book (baselines, the variants' models, the classifier, evaluation, figures) comes on top.

Example (what DECISIONS.md reports):  python benchmarks/step_floor.py --steps 60 --repeats 4
Smoke test (``--tiny``): 2 timed steps per variant, one repeat, no compilation.
"""
from __future__ import annotations

import argparse
import math

import pyro
import torch
from pyro.infer import TraceMeanField_ELBO

import common
from cvae_utils.config import book_config
from cvae_utils.data import iterate_minibatches
from cvae_utils.networks import CVAE, BaselineNet, fill_missing, masked_bce
from cvae_utils.optim import WeightAverage
from cvae_utils.speed import autocast, flush_denormals, resolve_precision

PAPER_CVAE_EPOCHS = 215  # 100 + 71 + 44: the k = 1, 2, 3 CVAEs of the paper builds of 2026-12-01


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=60, help="timed steps per variant and repeat")
    parser.add_argument("--repeats", type=int, default=4, help="interleaved rounds (default 4)")
    parser.add_argument("--epochs", type=int, default=PAPER_CVAE_EPOCHS,
                        help="CVAE epochs of a paper build, for the last lines (default 215)")
    common.add_common_options(parser)
    args = parser.parse_args(argv)
    if args.tiny:
        args.steps, args.repeats = 2, 1
    return args


def plain_loss(cvae: CVAE, x, y, y_hat):
    """The CVAE's negative ELBO summed over the batch, without Pyro: z = loc + scale * eps from
    q(z|x,y), -log p(y|x,z) on the output pixels, KL(q || p) in closed form."""
    q, p = cvae.posterior(x, y).base_dist, cvae.prior(x, y_hat).base_dist
    z = q.loc + q.scale * torch.randn_like(q.loc)
    nll = masked_bce(cvae.generation_net(z, x), y)
    kl = torch.distributions.kl_divergence(q, p).sum(-1)
    return (nll + kl).sum()


def make_cvae(config):
    torch.manual_seed(config.seed)
    cvae = CVAE(BaselineNet(config.baseline).eval(), config)
    params = [p for p in cvae.parameters() if p.requires_grad]
    return cvae, params


def main(argv=None):
    args = parse_args(argv)
    threads = common.set_threads(args.threads)
    flush_denormals()
    config = book_config()
    device = torch.device("cpu")
    precision_name = resolve_precision(config.precision, device)
    print(f"# step_floor | {common.describe_machine()}")
    print(f"# {args.steps} timed steps per variant, {args.repeats} interleaved repeats, "
          f"{threads} threads, batch {config.batch_size}, {precision_name} products")
    size = dict(n=128, reps=1, rounds=1) if args.tiny else {}
    peaks = [common.measure_peak_gflops(dtype=dtype, **size)
             for dtype in (torch.float32, torch.bfloat16)]
    print(f"matmul peak now (2048 x 2048 products, best of 5 rounds): fp32 {peaks[0]:.1f}, bf16 "
          f"{peaks[1]:.1f} GFLOP/s")
    batch = config.batch_size
    warmup = 1 if args.tiny else 5
    n = batch * (args.steps + warmup)
    train_q, _, _ = common.load_project_data(n, 1, 1)
    x, y = train_q.x, train_q.y
    batches = list(iterate_minibatches(n, batch, torch.Generator().manual_seed(0)))
    precision = autocast(config.precision, device)

    # the book's step (train_cvae after its first epoch)
    cvae, _ = make_cvae(config)
    book_step, y_hat = common.book_cvae_step(cvae, config, x, y, device)

    # the same computation without Pyro: check the loss first, same weights, same noise
    idx = batches[0]
    with torch.no_grad(), precision:
        pyro.set_rng_seed(1)
        pyro_value = TraceMeanField_ELBO().loss(cvae.model, cvae.guide, x[idx], y[idx], y_hat[idx])
        torch.manual_seed(1)
        plain_value = plain_loss(cvae, x[idx], y[idx], y_hat[idx]).item()
    print(f"loss on one batch, same weights and noise: Pyro {pyro_value:.4f}, no Pyro "
          f"{plain_value:.4f} (relative difference {abs(pyro_value - plain_value) / abs(pyro_value):.1e})")

    def plain_variant(compiled: bool):
        model, model_params = make_cvae(config)
        optimizer = torch.optim.Adam(model_params, lr=config.lr, fused=True)
        model_average = WeightAverage(model_params, config.weight_average, config.average_every)
        loss_fn = torch.compile(plain_loss) if compiled else plain_loss

        def step(idx):
            with precision:
                value = loss_fn(model, x[idx], y[idx], y_hat[idx])
            (value / len(idx)).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            model_average.update()
        return step

    net_model, net_params = make_cvae(config)

    def networks_step(idx):
        with precision:
            xb, yb = x[idx], y[idx]
            q_loc, q_scale = net_model.recognition_net(fill_missing(xb, yb))
            p_loc, p_scale = net_model.prior_net(fill_missing(xb, y_hat[idx]))
            logits = net_model.generation_net(q_loc, xb)
            total = q_loc.sum() + q_scale.sum() + p_loc.sum() + p_scale.sum() + logits.sum()
        total.backward()
        for p in net_params:
            p.grad = None

    _, adam_params = make_cvae(config)
    for p in adam_params:
        p.grad = torch.randn_like(p) * 1e-3
    adam = torch.optim.Adam(adam_params, lr=config.lr, fused=True)
    adam_average = WeightAverage(adam_params, config.weight_average, config.average_every)

    def adam_step(idx):
        adam.step()
        adam_average.update()

    variants = {"book": book_step, "no Pyro": plain_variant(False)}
    if not args.tiny:  # compilation takes tens of seconds
        variants["no Pyro, compiled"] = plain_variant(True)
    variants["networks only"] = networks_step
    variants["Adam only"] = adam_step

    def run(step):
        return lambda: [step(i) for i in batches[warmup:warmup + args.steps]]

    for step in variants.values():  # warm-up (and compilation) outside the timings
        for i in batches[:warmup]:
            step(i)
    times = common.round_robin({name: run(step) for name, step in variants.items()},
                               args.repeats, warmup=False)
    book_best = common.best(times["book"]) / args.steps
    steps_per_epoch = math.ceil(common.FULL_EPOCH / batch)
    print(f"\nms per step (best, median of {args.repeats}), ratio of the best to the book's:")
    for name, values in times.items():
        best, med = common.best(values) / args.steps, common.median(values) / args.steps
        print(f"  {name:<20} {best * 1e3:8.2f} {med * 1e3:8.2f}   {best / book_best:5.2f}x")
    print(f"\nthe paper book's CVAE training at that step time ({steps_per_epoch} steps x "
          f"{args.epochs} epochs), best step:")
    for name, values in times.items():
        seconds = common.best(values) / args.steps * steps_per_epoch * args.epochs
        print(f"  {name:<20} {seconds:8.0f} s")


if __name__ == "__main__":
    main()
