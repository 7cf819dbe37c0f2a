"""Where the time of one training step goes: torch.profiler over the project's step loops.

Profiles ``--steps`` steps (after 10 untimed ones) of (a) the baseline step of
`cvae_utils.train.train_baseline` and (b) the CVAE step of `train_cvae` (Pyro SVI, Trace_ELBO,
precomputed guesses) on real MNIST batches of ``--batch-size`` images, and prints the operators
with the largest self CPU time and the split into Adam (every operator called inside
``Optimizer.step``), matrix products (addmm, mm, ...) outside it, and the rest (elementwise
forward and backward, losses, distributions),
so the gap between the achieved and the peak GFLOP/s of `bench_epoch.py` can be attributed.

Example:  python benchmarks/profile_step.py --threads 1
          python benchmarks/profile_step.py --book    # the book's CVAE step (batch 256, bf16)
"""
from __future__ import annotations

import argparse
import contextlib
import time

import torch
from torch.profiler import ProfilerActivity, profile

import common
import pyro
from pyro.infer import SVI

from cvae_utils.config import CVAEConfig, book_config
from cvae_utils.data import iterate_minibatches
from cvae_utils.networks import BaselineNet, masked_bce
from cvae_utils.train import AVERAGE_EVERY, JointAdam, _KLWeight, _objective, training_precision

MATMUL_OPS = {"aten::addmm", "aten::mm", "aten::bmm", "aten::matmul", "aten::linear"}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--book", action="store_true",
                        help="profile the CVAE step of book_config() as train_cvae runs it "
                             "after the first epoch: its batch (256), bf16 products where fast, "
                             "its loss, JointAdam with the weight average, no Pyro checks")
    return parser.parse_args(argv)


def summarize(prof, title, flops_per_step, steps, top, step_cpu_ms):
    """``step_cpu_ms``: process CPU time of one step measured without the profiler."""
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)  # microseconds
    groups = {"matrix products": 0.0, "Adam (optimizer)": 0.0, "other": 0.0}
    for e in prof.events():  # every operator call, with its parent chain
        parent, in_adam = e, False
        while parent is not None and not in_adam:
            in_adam = parent.name.startswith("Optimizer.step")
            parent = parent.cpu_parent
        if in_adam:
            groups["Adam (optimizer)"] += e.self_cpu_time_total
        elif e.name in MATMUL_OPS:
            groups["matrix products"] += e.self_cpu_time_total
        else:
            groups["other"] += e.self_cpu_time_total
    print(f"\n== {title}: {total / steps / 1e3:.2f} ms self CPU per step (profiled), "
          f"{flops_per_step / (total / steps / 1e6) / 1e9:.1f} GFLOP/s over the whole step, "
          f"{flops_per_step / (groups['matrix products'] / steps / 1e6) / 1e9:.1f} GFLOP/s "
          f"inside the matrix products")
    for name, value in groups.items():
        print(f"   {name:<18}{value / steps / 1e3:8.2f} ms/step {100 * value / total:5.1f}%")
    print(f"   unprofiled step: {step_cpu_ms:.2f} ms CPU = "
          f"{flops_per_step / (step_cpu_ms / 1e3) / 1e9 / torch.get_num_threads():.1f} GFLOP/s "
          f"per thread; operators' self time above covers "
          f"{100 * total / steps / 1e3 / step_cpu_ms:.0f}% of it (the rest: Python, Pyro's "
          f"tracing, autograd bookkeeping outside operators, and profiler skew)")
    print(f"   top {top} operators by self CPU time:")
    rows = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:top]
    for e in rows:
        print(f"   {e.key:<44}{e.self_cpu_time_total / steps / 1e3:8.3f} ms/step "
              f"{100 * e.self_cpu_time_total / total:5.1f}%  calls/step {e.count / steps:6.1f}")


def main(argv=None):
    args = parse_args(argv)
    threads = common.set_threads(args.threads)
    print(f"# profile_step | {common.describe_machine()}")
    print(f"# {args.steps} profiled steps of batch {args.batch_size}, {threads} threads "
          f"(the profiler adds a little overhead per operator)")
    config = CVAEConfig(batch_size=args.batch_size)
    n = args.batch_size * (args.steps + 10)
    train_q, _, _ = common.load_project_data(n, 1, 1)
    x, y = train_q.x, train_q.y
    flops = common.flop_counts(config)

    # baseline step, as in train_baseline (fused Adam)
    torch.manual_seed(0)
    baseline = BaselineNet(config)
    optimizer = torch.optim.Adam(baseline.parameters(), lr=config.baseline_lr, fused=True)

    def base_step(idx):
        loss = masked_bce(baseline.logits(x[idx]), y[idx]).sum()
        optimizer.zero_grad(set_to_none=True)
        (loss / len(idx)).backward()
        optimizer.step()
        return loss.item()

    batches = list(iterate_minibatches(n, args.batch_size, torch.Generator().manual_seed(0)))
    for idx in batches[:10]:
        base_step(idx)
    cpu = time.process_time()
    for idx in batches[10:10 + args.steps]:
        base_step(idx)
    base_ms = (time.process_time() - cpu) / args.steps * 1e3
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for idx in batches[10:10 + args.steps]:
            base_step(idx)
    summarize(prof, "baseline step (train_baseline)", flops["baseline_train"] * args.batch_size,
              args.steps, args.top, base_ms)

    # CVAE step, as in train_cvae
    torch.manual_seed(0)
    title, batch, precision = "CVAE step (Pyro SVI, pyro.optim.Adam per tensor)", args.batch_size, \
        contextlib.nullcontext()
    if args.book:
        config = book_config()
        batch = config.cvae_batch
        precision = training_precision(config, torch.device("cpu"))
        title = (f"CVAE step of book_config() after the first epoch (Pyro SVI, "
                 f"{'TraceMeanField_ELBO' if config.analytic_kl else 'Trace_ELBO'}, JointAdam "
                 f"with the weight average, no Pyro checks, batch {batch}, {config.precision})")
        n = batch * (args.steps + 10)
        train_q, _, _ = common.load_project_data(n, 1, 1)
        x, y = train_q.x, train_q.y
        batches = list(iterate_minibatches(n, batch, torch.Generator().manual_seed(0)))
    flops = common.flop_counts(config)
    cvae, svi = common.make_project_cvae(BaselineNet(config), config)
    checks = True  # Pyro's validation, on by default
    if args.book:  # as train_cvae runs a step after its first epoch: its loss and optimizer
        kl_weight = _KLWeight()
        guide, loss = _objective(cvae, config, kl_weight)
        svi = SVI(kl_weight(cvae.model), guide, JointAdam(
            config.cvae_lr, config.lr_decay, config.weight_average, AVERAGE_EVERY), loss)
        checks = False
    y_hat = cvae.baseline_guess(x)

    def cvae_step(idx):
        with precision, pyro.validation_enabled(checks):
            svi.step(x[idx], y[idx], y_hat[idx])

    for idx in batches[:10]:
        cvae_step(idx)
    cpu = time.process_time()
    for idx in batches[10:10 + args.steps]:
        cvae_step(idx)
    cvae_ms = (time.process_time() - cpu) / args.steps * 1e3
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for idx in batches[10:10 + args.steps]:
            cvae_step(idx)
    summarize(prof, title, flops["cvae_train"] * batch, args.steps, args.top, cvae_ms)


if __name__ == "__main__":
    main()
