"""Time the importance-sampling column of the CLL table.

Times one call of `cvae_utils.evaluate.cvae_importance_sampling` with S=100 samples per image on
the 10,000 test images for one setting (k=1 input quadrant, the book's config unless ``--config
tutorial``, the evaluate module's default chunk size), and prints seconds, ms per image and the
achieved GFLOP/s against an fp32 matmul peak measured in the same run. The CVAE is freshly
initialised (not trained): the cost does not depend on the weights.

FLOPs per image: the prior and the recognition networks once, the baseline's guess once, the
decoder S times: 2 * encoder + baseline + S * decoder forward FLOPs (see ``common.flop_counts``);
with the book's decoder, which reads x, the x columns of its first layer count once per image
(the decoder computes them once for all samples of a block, and a block holds all S=100), and
its output layer counts for the output pixels only (the estimators compute no others).

Example (what the README reports):  python benchmarks/bench_is.py --threads 1
Smoke test (``--tiny``): 20 test images, S=4, a toy peak.
"""
from __future__ import annotations

import argparse
import time

import torch

import common
from cvae_utils.config import book_config, tutorial_config
from cvae_utils.data import QuadrantData
from cvae_utils.evaluate import cvae_importance_sampling, standard_normal_noise
from cvae_utils.networks import BaselineNet
from cvae_utils.variant_models import build_cvae


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--num-samples", type=int, default=100, help="S (default 100)")
    parser.add_argument("--num-images", type=int, default=10_000,
                        help="test images (default 10000: all of them)")
    parser.add_argument("--chunk-size", type=int, default=None,
                        help="images per chunk (default: the evaluate module's)")
    parser.add_argument("--quadrants", type=int, default=1, choices=(1, 2, 3))
    parser.add_argument("--config", choices=("book", "tutorial"), default="book",
                        help="the book's configuration (decoder reads x and z; default) or the "
                             "tutorial's (decoder reads z)")
    common.add_common_options(parser)
    args = parser.parse_args(argv)
    if args.tiny:
        args.num_images, args.num_samples = 20, 4
    return args


def main(argv=None):
    args = parse_args(argv)
    threads = common.set_threads(args.threads)
    print(f"# bench_is | {common.describe_machine()}")
    config = book_config() if args.config == "book" else tutorial_config()
    _, _, test_q = common.load_project_data(1, 1, args.quadrants)
    n = min(args.num_images, len(test_q))
    test_q = QuadrantData(test_q.x[:n], test_q.y[:n], test_q.labels[:n], args.quadrants)
    torch.manual_seed(0)
    cvae = build_cvae(BaselineNet(config.baseline).eval(), config).eval()
    kwargs = {"num_samples": args.num_samples}
    if args.chunk_size is not None:
        kwargs["chunk_size"] = args.chunk_size

    peak, cpu_peak = common.measure_peaks(args.tiny)
    start, cpu = time.perf_counter(), time.process_time()
    estimate = cvae_importance_sampling(cvae, test_q, **kwargs)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu
    flops = common.flop_counts(config)
    # the decoder's output layer computes the output pixels only (196 per output quadrant)
    skipped = 2 * config.hidden_2 * (784 - 196 * (4 - args.quadrants))
    per_image = (2 * flops["encoder_fwd"] + flops["baseline_eval"] + flops["decoder_x_part"]
                 + args.num_samples * (flops["decoder_fwd"] - flops["decoder_x_part"] - skipped))
    rate = per_image * n / seconds / 1e9
    crate = common.cpu_rate(per_image * n, cpu_seconds)
    print(f"importance sampling ({args.config} config), S={args.num_samples}, {n} test images, k={args.quadrants}, "
          f"chunk {args.chunk_size or 'default'}, {threads} threads: {seconds:.1f} s wall, "
          f"{cpu_seconds:.1f} s CPU ({1e3 * seconds / n:.2f} ms per image)")
    print(f"  {per_image / 1e6:.1f} MFLOP per image -> {rate:.1f} GFLOP/s = "
          f"{100 * rate / peak:.0f}% of the fp32 matmul peak {peak:.1f} GFLOP/s (wall-clock); "
          f"{crate:.1f} GFLOP/s = {100 * crate / cpu_peak:.0f}% of {cpu_peak:.1f} (CPU time)")
    print(f"  (untrained CVAE, so the value itself is meaningless: {estimate})")
    # where the time goes: the per-image seeded noise alone
    start = time.perf_counter()
    standard_normal_noise(args.num_samples, config.z_dim, 0, n)
    print(f"  of which drawing the per-image seeded noise alone: "
          f"{time.perf_counter() - start:.2f} s")
    return seconds


if __name__ == "__main__":
    main()
