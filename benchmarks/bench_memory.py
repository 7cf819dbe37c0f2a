"""Peak resident memory (``ru_maxrss``) of a training epoch and of an evaluation pass.

Every case runs in a fresh Python process (``ru_maxrss`` only ever grows, so one process per case
keeps the cases apart). Each child prints, in MiB:

  after setup   ``ru_maxrss`` once imports, data and models are ready (loading MNIST as float
                tensors has a transient peak of its own)
  rss before    the total resident set just before the measured phase
  phase peak    the peak total resident set *during* the phase: the kernel's watermark is reset
                at the start of the phase (``/proc/self/clear_refs``), so ``ru_maxrss`` after the
                phase is the phase's own peak. Where the reset is not allowed this column equals
                the whole-process peak and says so
  process peak  ``max(after setup, phase peak)``: what ``ru_maxrss`` of the whole process reports
  anonymous before / peak / extra
                the anonymous resident memory (heap and tensors, without the pages of shared
                libraries) before the phase, its peak during the phase (sampled every 2 ms by a
                thread) and the difference: what the phase itself allocates (activations,
                optimizer state, precomputed guesses, evaluation chunks). The total RSS also
                holds file pages of the shared libraries, which the kernel drops and reloads at
                will (this machine runs DAMON "pageout"), so differences of total RSS can be off
                by hundreds of MiB; the anonymous columns are the ones to compare.

Cases: imports only (torch, torchvision, pyro, cvae_utils: the floor), the project's baseline and CVAE training epochs (`train_baseline`, `train_cvae`, which
hold the whole split as float tensors and, for the CVAE, the precomputed baseline guesses), the
tutorial's per-sample DataLoader pipelines, the project's validation passes (`baseline_loss`,
`cvae_loss` at the default chunk of 2048 images and at one chunk of 10,000), the tutorial's
validation phase, and the importance-sampling estimate (S=100) when `cvae_utils.evaluate` has it.

Example (what the README reports):  python benchmarks/bench_memory.py --threads 1
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

CASES = ("imports_only", "project_baseline_train", "project_cvae_train", "tutorial_baseline_train",
         "tutorial_cvae_train", "project_baseline_eval", "project_cvae_eval_chunk2048",
         "project_cvae_eval_chunk10000", "tutorial_cvae_eval", "importance_sampling_S100")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--num-images", type=int, default=50_000,
                        help="training images of the epoch (default 50000: the full epoch)")
    parser.add_argument("--val-images", type=int, default=10_000,
                        help="images of the evaluation passes (default 10000)")
    parser.add_argument("--is-images", type=int, default=2_000,
                        help="test images of the importance-sampling pass (default 2000; its "
                             "peak depends on the chunk, not on the number of images)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--only", default=",".join(CASES))
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def run_child(args):
    import torch

    import common
    from cvae_utils.config import CVAEConfig
    from cvae_utils.data import QuadrantData
    from cvae_utils.networks import CVAE, BaselineNet

    common.set_threads(args.threads)
    config = CVAEConfig(patience=2)
    case = args.child
    torch.manual_seed(0)
    phase = None  # the zero-argument callable whose memory is measured

    if case == "imports_only":  # the floor: torch, torchvision, pyro and cvae_utils imported
        import torchvision  # noqa: F401
        phase = lambda: None
    elif case.startswith("project_"):
        import cvae_utils.train as T

        train_q, val_q, test_q = common.load_project_data(args.num_images, args.val_images, 1)
        val_small = QuadrantData(val_q.x[:256], val_q.y[:256], val_q.labels[:256], 1)
        if case == "project_baseline_train":
            phase = lambda: T.train_baseline(train_q, val_small, config, 1, device="cpu",
                                             progress=False)
        elif case == "project_cvae_train":
            phase = lambda: T.train_cvae(train_q, val_small, BaselineNet(config), config, 1,
                                         device="cpu", progress=False)
        elif case == "project_baseline_eval":
            baseline = BaselineNet(config).eval()
            phase = lambda: T.baseline_loss(baseline, val_q).mean().item()
        else:
            T.EVAL_CHUNK = int(case.rsplit("chunk", 1)[1])
            cvae = CVAE(BaselineNet(config), config).eval()
            phase = lambda: T.cvae_loss(cvae, val_q).mean().item()
    elif case.startswith("tutorial_"):
        if case.endswith("_train"):
            dataset = common.tutorial_dataset(1, train=True, num_images=args.num_images)
            loader = common.tutorial_loader(dataset, config.batch_size, shuffle=True)
            if case == "tutorial_baseline_train":
                model = common.TutorialBaseline()
                optimizer = torch.optim.Adam(model.parameters(), lr=config.baseline_lr)
                phase = lambda: common.tutorial_baseline_epoch(model, optimizer, loader)
            else:
                _, svi = common.make_tutorial_cvae(config)
                phase = lambda: common.tutorial_cvae_epoch(svi, loader)
        else:
            dataset = common.tutorial_dataset(1, train=False, num_images=args.val_images)
            loader = common.tutorial_loader(dataset, config.batch_size, shuffle=False)
            _, svi = common.make_tutorial_cvae(config)
            phase = lambda: common.tutorial_cvae_val(svi, loader)
    elif case == "importance_sampling_S100":
        try:
            from cvae_utils.evaluate import cvae_importance_sampling
        except ImportError:
            print(json.dumps({"skipped": "evaluate module not available"}))
            return
        _, _, test_q = common.load_project_data(1, 1, 1)
        n = args.is_images
        test_q = QuadrantData(test_q.x[:n], test_q.y[:n], test_q.labels[:n], 1)
        cvae = CVAE(BaselineNet(config), config).eval()
        phase = lambda: cvae_importance_sampling(cvae, test_q, num_samples=100)
    else:
        raise SystemExit(f"unknown case {case}")

    import gc
    gc.collect()  # import-time garbage (torchvision leaves ~200 MiB) must not be freed mid-phase
    after_setup = common.maxrss_mib()
    before, anon_before = common.current_rss_mib(), common.anon_rss_mib()
    reset = common.reset_peak_rss()
    start = time.perf_counter()
    with common.AnonPeakSampler() as anon:
        phase()
    seconds = time.perf_counter() - start
    peak = common.maxrss_mib()
    print(json.dumps({"after_setup": after_setup, "before": before, "peak": peak,
                      "reset": reset, "seconds": seconds, "anon_before": anon_before,
                      "anon_peak": anon.peak}))


def main(argv=None):
    args = parse_args(argv)
    if args.child:
        return run_child(args)
    import common

    common.set_threads(args.threads)  # only so that the header shows the children's setting
    print(f"# bench_memory | {common.describe_machine()}")
    print(f"# training epoch of {args.num_images} images (batch 128, k=1), evaluation passes over "
          f"{args.val_images} images, importance sampling over {args.is_images}; one fresh "
          f"process per case; MiB")
    print(f"{'':<32}{'---------- ru_maxrss / total RSS ----------':>48}"
          f"{'---- anonymous RSS ----':>25}")
    print(f"{'case':<32}{'after setup':>12}{'rss before':>11}{'phase peak':>12}"
          f"{'process peak':>13}{'before':>8}{'peak':>8}{'extra':>8}{'seconds':>9}")
    for case in [c.strip() for c in args.only.split(",") if c.strip()]:
        cmd = [sys.executable, os.path.abspath(__file__), "--child", case,
               "--num-images", str(args.num_images), "--val-images", str(args.val_images),
               "--is-images", str(args.is_images)]
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        out = subprocess.run(cmd, capture_output=True, text=True, check=False)
        try:
            result = json.loads(out.stdout.strip().splitlines()[-1])
        except (IndexError, ValueError):
            print(f"{case:<32} FAILED: {out.stderr.strip()[-1500:]}")
            continue
        if "skipped" in result:
            print(f"{case:<32} skipped: {result['skipped']}")
            continue
        peak_label = "" if result["reset"] else " (no watermark reset: whole-process peak)"
        process_peak = max(result["after_setup"], result["peak"])
        print(f"{case:<32}{result['after_setup']:>12.0f}{result['before']:>11.0f}"
              f"{result['peak']:>12.0f}{process_peak:>13.0f}{result['anon_before']:>8.0f}"
              f"{result['anon_peak']:>8.0f}{result['anon_peak'] - result['anon_before']:>8.0f}"
              f"{result['seconds']:>9.1f}{peak_label}", flush=True)


if __name__ == "__main__":
    main()
