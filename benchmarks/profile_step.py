"""Where the time of one training step goes: torch.profiler over the project's two steps.

Profiles ``--steps`` steps (after 10 untimed ones) of (a) the baseline step as
`cvae_utils.train.train_baseline` runs it (fused Adam, the baseline's precision) and (b) the CVAE
step as `train_cvae` runs it after its first epoch (Pyro SVI with the config's ELBO, `JointAdam`,
the weight average every ``average_every`` steps, the config's precision, precomputed guesses, no
Pyro checks), on real MNIST batches of each config's batch size (or ``--batch-size``). It prints
the operators with the largest self CPU time and the split into Adam (every operator called
inside ``Optimizer.step``), matrix products (addmm, mm, ...) outside it, and the rest
(elementwise forward and backward, casts, losses, distributions), so the gap between the
achieved and the peak GFLOP/s of `bench_epoch.py` can be attributed.

Example (what the README reports):  python benchmarks/profile_step.py --steps 40
          python benchmarks/profile_step.py --config tutorial   # batch 128, fp32, decoder reads z
Smoke test (``--tiny``): 2 profiled steps after 1 untimed one.
"""
from __future__ import annotations

import argparse
import time

import torch
from torch.profiler import ProfilerActivity, profile

import common
from cvae_utils.config import book_config, tutorial_config
from cvae_utils.data import iterate_minibatches
from cvae_utils.networks import BaselineNet, masked_bce
from cvae_utils.variant_models import build_cvae
from cvae_utils.speed import autocast, resolve_precision

MATMUL_OPS = {"aten::addmm", "aten::mm", "aten::bmm", "aten::matmul", "aten::linear"}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=None,
                        help="images per step (default: each config's own)")
    parser.add_argument("--config", choices=("book", "tutorial"), default="book")
    parser.add_argument("--top", type=int, default=15)
    common.add_common_options(parser)
    args = parser.parse_args(argv)
    if args.tiny:
        args.steps, args.top = 2, 5
    return args


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


def time_and_profile(step, batches, warmup: int, steps: int):
    """CPU ms per step without the profiler, then the profiler over the same steps."""
    for idx in batches[:warmup]:
        step(idx)
    cpu = time.process_time()
    for idx in batches[warmup:warmup + steps]:
        step(idx)
    step_ms = (time.process_time() - cpu) / steps * 1e3
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for idx in batches[warmup:warmup + steps]:
            step(idx)
    return prof, step_ms


def main(argv=None):
    args = parse_args(argv)
    threads = common.set_threads(args.threads)
    warmup = 1 if args.tiny else 10
    config = book_config() if args.config == "book" else tutorial_config()
    if args.batch_size:
        config = config.replace(batch_size=args.batch_size, baseline={"batch_size": args.batch_size})
    print(f"# profile_step | {common.describe_machine()}")
    print(f"# {args.steps} profiled steps, {threads} threads, the {args.config} config (the "
          f"profiler adds a little overhead per operator)")
    device = torch.device("cpu")
    flops = common.flop_counts(config)
    largest = max(config.batch_size, config.baseline.batch_size)
    n = largest * (args.steps + warmup)
    train_q, _, _ = common.load_project_data(n, 1, 1)
    x, y = train_q.x, train_q.y

    # (a) the baseline step, as in train_baseline
    base_config = config.baseline
    torch.manual_seed(base_config.seed)
    baseline = BaselineNet(base_config)
    optimizer = torch.optim.Adam(baseline.parameters(), lr=base_config.lr, fused=True)
    base_precision = autocast(base_config.precision, device, baseline)

    def base_step(idx):
        with base_precision:
            loss = masked_bce(baseline.logits(x[idx]), y[idx]).sum()
        optimizer.zero_grad(set_to_none=True)
        (loss / len(idx)).backward()
        optimizer.step()
        return loss.item()

    batch = base_config.batch_size
    batches = list(iterate_minibatches(n, batch, torch.Generator().manual_seed(0)))
    prof, step_ms = time_and_profile(base_step, batches, warmup, args.steps)
    summarize(prof, f"baseline step (train_baseline: batch {batch}, "
                    f"{resolve_precision(base_config.precision, device)})",
              flops["baseline_train"] * batch, args.steps, args.top, step_ms)

    # (b) the CVAE step, as in train_cvae after its first epoch
    torch.manual_seed(config.seed)
    cvae = build_cvae(BaselineNet(base_config).eval(), config)
    cvae_step = common.book_cvae_step(cvae, config, x, y, device)

    batch = config.batch_size
    batches = list(iterate_minibatches(n, batch, torch.Generator().manual_seed(0)))
    prof, step_ms = time_and_profile(cvae_step, batches, warmup, args.steps)
    summarize(prof, f"CVAE step (train_cvae after its first epoch: batch {batch}, "
                    f"{resolve_precision(config.precision, device)}, "
                    f"{'TraceMeanField_ELBO' if config.analytic_kl else 'Trace_ELBO'}, JointAdam, "
                    f"weight average {config.weight_average} every {config.average_every} steps)",
              flops["cvae_train"] * batch, args.steps, args.top, step_ms)


if __name__ == "__main__":
    main()
