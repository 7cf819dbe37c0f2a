"""Seconds per training epoch of the book's baseline and CVAE, in one precision or both.

Times `cvae_utils.train.train_baseline` and `train_cvae` as the book calls them (the book's
configuration, k input quadrants, default 1), each run ``--epochs`` epochs long (default 2),
``--repeats`` runs of each, interleaved after one untimed warm-up run each. The epoch time is
the training loop's own (``History.seconds``: the minibatch steps and the per-epoch validation
on 256 images) of the epochs after the first; the first epochs are printed apart (the CVAE runs
Pyro's checks in its first epoch only). With ``--num-images N`` each run trains on the first N
training images and the times are scaled to the full 50,000-image epoch (every step costs the
same whatever N is). ``--both-precisions`` times the bf16 and the fp32 paths side by side, which
is how the per-machine-class figures of ``benchmarks/README.md`` were measured.

GFLOP/s count the analytic FLOPs of the steps (``common.flop_counts``) against the fp32 and
bf16 matmul peaks measured in the same run (the fp32 one at the start and at the end, the larger
counts); a bf16 path can pass 100 % of the fp32 peak.

Example (what the README reports):
    python benchmarks/bench_epoch.py --num-images 10000 --repeats 3 --both-precisions
Smoke test (``--tiny``): 256 training images, one run, no warm-up, toy peaks.
"""
from __future__ import annotations

import argparse
import statistics

import torch

import common
from cvae_utils.config import book_config
from cvae_utils.networks import BaselineNet
from cvae_utils.speed import explain_precision, resolve_precision
from cvae_utils.train import train_baseline, train_cvae

VAL_IMAGES = 256  # validation images the training loops score after each epoch here


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=2,
                        help="epochs per timed run (default 2: the epochs after the first count)")
    parser.add_argument("--num-images", type=int, default=common.FULL_EPOCH,
                        help="training images per epoch; fewer than 50000 are scaled to 50000")
    parser.add_argument("--repeats", type=int, default=1, help="timed runs of each (default 1)")
    parser.add_argument("--quadrants", type=int, default=1, choices=(1, 2, 3))
    parser.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                        help="the training precision (default auto: the book's choice here); "
                             "fp32 is the path of a CPU without native bfloat16")
    parser.add_argument("--both-precisions", action="store_true",
                        help="also time the other precision, interleaved, and print the ratio")
    parser.add_argument("--no-warmup", action="store_true", help="skip the untimed warm-up runs")
    common.add_common_options(parser)
    args = parser.parse_args(argv)
    if args.tiny:
        args.num_images, args.repeats, args.no_warmup = 256, 1, True
    return args


def in_precision(config, precision):
    """The config with the CVAE's and its baseline's products in ``precision``."""
    return config.replace(precision=precision, baseline={"precision": precision})


def main(argv=None):
    args = parse_args(argv)
    threads = common.set_threads(args.threads)
    patience = args.epochs + 1  # every run trains all its epochs
    config = book_config().replace(patience=patience, baseline={"patience": patience})
    if args.precision != "auto":
        config = in_precision(config, args.precision)
    precision = resolve_precision(config.precision, "cpu")
    configs = {precision: config}
    if args.both_precisions:
        other = {"bf16": "fp32", "fp32": "bf16"}[precision]
        configs[other] = in_precision(config, other)
    n, epochs, k = args.num_images, args.epochs, args.quadrants
    print(f"# bench_epoch | {common.describe_machine()}")
    print(f"# epochs per run {epochs}, {n} training images (scaled to {common.FULL_EPOCH}), "
          f"k={k}, repeats {args.repeats}, threads {threads}; baseline batch "
          f"{config.baseline.batch_size}, CVAE batch {config.batch_size}")
    print(f"precision path: {explain_precision(config.precision, 'cpu')}"
          + (f"; forced by --precision (the book would choose "
             f"{explain_precision('auto', 'cpu')})" if args.precision != "auto" else ""))
    toy = dict(n=128, reps=1, rounds=1) if args.tiny else {}
    fp32_peak = common.measure_peak_gflops(**toy)
    bf16_peak = common.measure_peak_gflops(dtype=torch.bfloat16, **toy)
    print(f"matmul peaks: fp32 {fp32_peak:.1f}, bf16 {bf16_peak:.1f} GFLOP/s")

    train_q, val_q, _ = common.load_project_data(n, VAL_IMAGES, k)
    epoch_times = {}  # "<model> <precision>" -> seconds of every timed epoch

    def run(model, name, cfg):
        torch.manual_seed(cfg.seed)
        if model == "baseline":
            _, history = train_baseline(train_q, val_q, cfg.baseline, max_epochs=epochs,
                                        device="cpu")
        else:  # an untrained baseline: the timing does not depend on its weights
            baseline = BaselineNet(cfg.baseline).eval()
            _, history = train_cvae(train_q, val_q, baseline, cfg, max_epochs=epochs,
                                    device="cpu")
        epoch_times.setdefault(name, []).extend(history.seconds)

    variants = {f"{model} {p}": (lambda m=model, p=p, c=cfg: run(m, f"{m} {p}", c))
                for model in ("baseline", "cvae") for p, cfg in configs.items()}
    common.round_robin(variants, args.repeats, warmup=not args.no_warmup)
    if not args.no_warmup:  # the warm-up runs' epochs are not timed
        epoch_times = {name: ts[epochs:] for name, ts in epoch_times.items()}
    fp32_peak = max(fp32_peak, common.measure_peak_gflops(**toy))

    flops = common.flop_counts(config)
    scale = common.FULL_EPOCH / n
    print(f"\nTRAINING: seconds per {common.FULL_EPOCH}-image epoch (k={k}, {threads} threads; "
          f"fp32 peak {fp32_peak:.1f} GFLOP/s)")
    print(f"{'run':<16}{'epoch s':>9}{'median':>8}{'GFLOP/s':>9}{'% fp32 peak':>13}"
          f"{'first epoch s':>15}")
    best = {}
    for name, ts in epoch_times.items():
        later = [t for i, t in enumerate(ts) if i % epochs] if epochs > 1 else ts
        best[name] = min(later) * scale
        step_flops = flops["baseline_train" if name.startswith("baseline") else "cvae_train"]
        rate = n * step_flops / min(later) / 1e9
        print(f"{name:<16}{best[name]:>9.2f}{statistics.median(later) * scale:>8.2f}"
              f"{rate:>9.1f}{100 * rate / fp32_peak:>12.1f}%{min(ts[::epochs]) * scale:>15.2f}")
    if args.both_precisions:
        for model in ("baseline", "cvae"):
            print(f"ratio fp32 / bf16, {model:<8}: "
                  f"{best[f'{model} fp32'] / best[f'{model} bf16']:5.2f}x per epoch (best)")


if __name__ == "__main__":
    main()
