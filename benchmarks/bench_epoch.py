"""Seconds per training epoch: the project's pipeline against the Pyro tutorial's, side by side.

Four training pipelines on the same machine, in one process, with the same thread count, for k
input quadrants (default 1):

  baseline / project   `cvae_utils.train.train_baseline` (whole-tensor slices, masked BCE on logits)
  baseline / tutorial  per-sample Dataset + DataLoader, sigmoid + BCE, index-assignment masking
  cvae / project       `cvae_utils.train.train_cvae` (baseline guesses precomputed once per run)
  cvae / tutorial      per-sample DataLoader, the tutorial's model (baseline inside every step)

plus, unless ``--val-images 0``, one validation pass of each (project: `baseline_loss` /
`cvae_loss` on the validation split in chunks of 2048; tutorial: its "val" phase over the test
set's DataLoader, ``svi.evaluate_loss`` per batch of 128).

Timings are interleaved (all four pipelines once, then again, ``--repeats`` times, after one
untimed warm-up run of each). Two times are printed for each pipeline, best and median:

* the **epoch**: the wall time of one epoch inside a run, of the epochs after the first
  (``--epochs``, default 2). The project's training loops time their own epochs
  (``History.seconds``: the minibatch steps and the per-epoch validation); the tutorial's epoch
  loop is timed around the loop (DataLoader iteration included). This is what every epoch of a
  long training run costs, and what the ratios compare. The first epochs are printed apart:
  the project's CVAE runs Pyro's validation checks in its first epoch only.
* the **run**: the whole timed call divided by its epochs, with what happens once per run:
  building the models and the optimizer, the project's precomputed baseline guesses (one
  baseline forward pass over the training images), the tutorial's DataLoader. Beside it the
  run's process CPU time (on a machine shared with other processes, wall time grows with their
  load, CPU time much less; with one thread CPU seconds are what the run would take on an idle
  core).

With ``--num-images N`` each run trains on the first N training images and the times are
extrapolated linearly to the full 50,000-image epoch (x 50,000 / N). Every step costs the same
whatever N is, so this is exact for the epoch; the run's once-per-run setup is multiplied too, so
the run column overstates it for N < 50,000 (by about 0.1 s x 50,000 / N / epochs for the CVAE).

The project's train_* functions also score a validation split after every epoch; they are given
256 validation images here so that this costs < 1 % of the epoch (the validation pass is timed
on its own below). GFLOP/s count the analytic FLOPs (see ``common.flop_counts`` and the README)
of what each pipeline executes, against an fp32 matmul peak measured in the same run (at the
start and at the end, the larger counts), once per wall-clock second and once per CPU second.
A last line per model puts the project's epoch against the issue's own arithmetic limit: the
work of an epoch as the issue counts it (the tutorial's step, with the baseline's forward pass in
every step; for the CVAE with the project's networks) at the same peak. The project skips that
per-step baseline pass, so by this accounting the work it does not do counts as speed, while the
% peak column above counts only the FLOPs it executes.

Example (what the README reports):  python benchmarks/bench_epoch.py --num-images 10000 --repeats 3
Smoke test (``--tiny``): 256 training and 64 validation images, no warm-up, a toy peak.
"""
from __future__ import annotations

import argparse
import functools
import time

import torch

import common
from cvae_utils.config import book_config, tutorial_config
from cvae_utils.data import QuadrantData
from cvae_utils.networks import CVAE, BaselineNet
from cvae_utils.speed import explain_precision, resolve_precision
from cvae_utils.train import baseline_loss, cvae_loss, train_baseline, train_cvae

# issue 16's targets for the epoch ratio tutorial / project, on every machine class
RATIO_TARGETS = {"baseline": 8.0, "cvae": 5.0}
PROJECT_VAL_IMAGES = 256  # validation images the project's train_* score after each epoch here


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=2,
                        help="epochs per timed run (default 2: the epoch column times the "
                             "epochs after the first)")
    parser.add_argument("--batch-size", type=int, default=128,
                        help="images per step of the tutorial's pipeline (default 128, its own)")
    parser.add_argument("--config", choices=("book", "tutorial"), default="book",
                        help="the project's configuration: the book's (default; its batch sizes "
                             "and training precision) or the tutorial's (same batch and "
                             "precision as the tutorial pipeline)")
    parser.add_argument("--num-images", type=int, default=common.FULL_EPOCH,
                        help="training images per epoch; < 50000 times a partial epoch and "
                             "extrapolates to 50000 (default 50000)")
    parser.add_argument("--repeats", type=int, default=1, help="timed runs of each (default 1)")
    parser.add_argument("--val-images", type=int, default=10_000,
                        help="images of the timed validation pass; 0 skips it (default 10000)")
    parser.add_argument("--quadrants", type=int, default=1, choices=(1, 2, 3))
    parser.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                        help="the project's training precision (default auto: what the book "
                             "chooses on this machine); fp32 forces the path of a CPU without "
                             "native bfloat16")
    parser.add_argument("--both-precisions", action="store_true",
                        help="also time the project's pipelines in the other precision, "
                             "interleaved with the rest, and print the ratio of the two paths")
    parser.add_argument("--no-warmup", action="store_true", help="skip the untimed warm-up runs")
    common.add_common_options(parser)
    args = parser.parse_args(argv)
    if args.tiny:
        args.num_images, args.val_images, args.repeats, args.no_warmup = 256, 64, 1, True
    return args


def main(argv=None):
    args = parse_args(argv)
    threads = common.set_threads(args.threads)
    # the tutorial's pipeline: its configuration at --batch-size, float32 throughout
    # (a patience longer than the run: every run trains all its epochs)
    patience = args.epochs + 1
    config = tutorial_config().replace(
        batch_size=args.batch_size, patience=patience,
        baseline={"batch_size": args.batch_size, "patience": patience})
    # the project's: the book's configuration (or the tutorial's, for a like-for-like row)
    project = (book_config() if args.config == "book" else config).replace(
        patience=patience, baseline={"patience": patience})
    def in_precision(cfg, precision):  # the CVAE's and its baseline's products alike
        return cfg.replace(precision=precision, baseline={"precision": precision})

    if args.precision != "auto":
        project = in_precision(project, args.precision)
    precision = resolve_precision(project.precision, "cpu")
    path = explain_precision(project.precision, "cpu")
    other_precision = {"bf16": "fp32", "fp32": "bf16"}[precision] if args.both_precisions else None
    other = in_precision(project, other_precision) if other_precision else None
    n, epochs, k = args.num_images, args.epochs, args.quadrants
    print(f"# bench_epoch | {common.describe_machine()}")
    print(f"# epochs per run {epochs}, {n} training images (extrapolated to {common.FULL_EPOCH}), "
          f"k={k}, repeats {args.repeats}, threads {threads}")
    print(f"# tutorial pipeline: batch {config.batch_size}, float32; project ({args.config} "
          f"config): baseline batch {project.baseline.batch_size}, CVAE batch "
          f"{project.batch_size}, decoder reads x: {project.decoder_sees_x}")
    print(f"precision path of the project: {path}"
          + (f"; forced by --precision (the book would choose "
             f"{explain_precision('auto', 'cpu')})" if args.precision != "auto" else ""))

    peak_before, cpu_peak_before = common.measure_peaks(args.tiny)
    print(f"fp32 matmul peak (2048^3 torch.mm, best of 5 rounds of 5): {peak_before:.1f} GFLOP/s "
          f"wall-clock, {cpu_peak_before:.1f} GFLOP/s per CPU-second x threads")
    # both peaks, whichever path runs: their ratio is what bfloat16 can buy on this machine
    bf16_peak = common.measure_peak_gflops(
        dtype=torch.bfloat16, **(dict(n=128, reps=1, rounds=1) if args.tiny else {}))
    print(f"bf16 matmul peak (same test): {bf16_peak:.1f} GFLOP/s wall-clock, "
          f"{bf16_peak / peak_before:.2f}x the fp32 peak; the % columns below stay relative to "
          f"the fp32 peak (the arithmetic limit of the issue), so a bf16 pipeline can pass 100 %")

    # ---- data: the project's whole tensors; the tutorial's per-sample datasets ----------------
    start = time.perf_counter()
    train_q, val_q, _ = common.load_project_data(n, max(args.val_images, PROJECT_VAL_IMAGES), k)
    val_small = QuadrantData(val_q.x[:PROJECT_VAL_IMAGES], val_q.y[:PROJECT_VAL_IMAGES],
                             val_q.labels[:PROJECT_VAL_IMAGES], k)
    print(f"project data loaded and masked in {time.perf_counter() - start:.2f} s "
          f"(once per process, not in the epoch times)")
    tut_train = common.tutorial_dataset(k, train=True, num_images=n)
    tut_val = common.tutorial_dataset(k, train=False, num_images=args.val_images or 1)

    # ---- the four training pipelines ------------------------------------------------------------
    # each run also records the wall time of each of its epochs: the project's training loops
    # time their own epochs (History.seconds: the minibatch steps and the per-epoch validation),
    # the tutorial's epoch loops are timed around the loop; model construction, the CVAE's
    # precomputed guesses and the DataLoader's construction are once-per-run costs outside them
    names = ["baseline / project", "baseline / tutorial", "cvae / project", "cvae / tutorial"]
    if other is not None:  # the other precision's rows, for the ratio of the two paths
        names += [f"baseline / project {other_precision}", f"cvae / project {other_precision}"]
    epoch_times = {name: [] for name in names}

    def project_baseline(cfg=project, name="baseline / project"):
        _, history = train_baseline(train_q, val_small, cfg.baseline, max_epochs=epochs,
                                    device="cpu", progress=False)
        epoch_times[name] += history.seconds

    def tutorial_baseline():
        torch.manual_seed(config.seed)
        model = common.TutorialBaseline(config.baseline.hidden_1, config.baseline.hidden_2)
        optimizer = torch.optim.Adam(model.parameters(), lr=config.baseline.lr)
        loader = common.tutorial_loader(tut_train, args.batch_size, shuffle=True, seed=config.seed)
        for _ in range(epochs):
            start = time.perf_counter()
            common.tutorial_baseline_epoch(model, optimizer, loader)
            epoch_times["baseline / tutorial"].append(time.perf_counter() - start)

    def project_cvae(cfg=project, name="cvae / project"):
        torch.manual_seed(cfg.seed)
        # an untrained baseline: the timing does not depend on its weights
        baseline = BaselineNet(cfg.baseline).eval()
        _, history = train_cvae(train_q, val_small, baseline, cfg, max_epochs=epochs,
                                device="cpu", progress=False)
        epoch_times[name] += history.seconds

    def tutorial_cvae():
        _, svi = common.make_tutorial_cvae(config)
        loader = common.tutorial_loader(tut_train, args.batch_size, shuffle=True, seed=config.seed)
        for _ in range(epochs):
            start = time.perf_counter()
            common.tutorial_cvae_epoch(svi, loader)
            epoch_times["cvae / tutorial"].append(time.perf_counter() - start)

    variants = {"baseline / project": project_baseline, "baseline / tutorial": tutorial_baseline,
                "cvae / project": project_cvae, "cvae / tutorial": tutorial_cvae}
    if other is not None:
        variants[f"baseline / project {other_precision}"] = functools.partial(
            project_baseline, other, f"baseline / project {other_precision}")
        variants[f"cvae / project {other_precision}"] = functools.partial(
            project_cvae, other, f"cvae / project {other_precision}")
    times = common.round_robin(variants, args.repeats, warmup=not args.no_warmup)
    if not args.no_warmup:  # the warm-up runs' epochs are not timed
        for name in epoch_times:
            del epoch_times[name][:epochs]
    # the epoch column: the epochs after the first of each run (all of them in one-epoch runs).
    # The project's CVAE runs Pyro's checks in its first epoch only (train_cvae), as any long
    # run does; the first epochs are printed apart
    first_epochs = {name: ts[::epochs] for name, ts in epoch_times.items()}
    if epochs > 1:
        epoch_times = {name: [t for i, t in enumerate(ts) if i % epochs]
                       for name, ts in epoch_times.items()}

    flops, pflops = common.flop_counts(config), common.flop_counts(project)
    epoch_flops = {  # executed FLOPs of one epoch: the steps and the per-epoch validation
        "baseline / project": n * pflops["baseline_train"]
        + PROJECT_VAL_IMAGES * pflops["baseline_eval"],
        "baseline / tutorial": n * flops["baseline_train"],
        # train_cvae computes the validation images' guesses once per run, like the training's
        "cvae / project": n * pflops["cvae_train"] + PROJECT_VAL_IMAGES * pflops["cvae_eval"],
        "cvae / tutorial": n * flops["cvae_train_with_baseline"],
    }
    if other is not None:  # the same arithmetic in the other precision
        for model in ("baseline", "cvae"):
            epoch_flops[f"{model} / project {other_precision}"] = epoch_flops[f"{model} / project"]
    run_flops = {name: epochs * f for name, f in epoch_flops.items()}  # whole timed runs
    for name in run_flops:
        if name.startswith("cvae / project"):
            run_flops[name] += ((n + PROJECT_VAL_IMAGES)
                                * pflops["cvae_guess_precompute"])  # once per run

    # ---- validation passes --------------------------------------------------------------------
    val_times = {}
    if args.val_images:
        torch.manual_seed(config.seed)
        baseline = BaselineNet(project.baseline).eval()
        cvae = CVAE(BaselineNet(project.baseline).eval(), project).eval()
        tut_base = common.TutorialBaseline(config.baseline.hidden_1,
                                           config.baseline.hidden_2).eval()
        _, tut_svi = common.make_tutorial_cvae(config)
        val_loader = common.tutorial_loader(tut_val, args.batch_size, shuffle=False)

        def tut_base_val():
            with torch.no_grad():
                for batch in val_loader:
                    common.tutorial_masked_bce_sum(tut_base(batch["input"]), batch["output"]).item()

        val_variants = {
            "baseline val / project": lambda: baseline_loss(baseline, val_q).mean().item(),
            "baseline val / tutorial": tut_base_val,
            "cvae val / project": lambda: cvae_loss(cvae, val_q).mean().item(),
            "cvae val / tutorial": lambda: common.tutorial_cvae_val(tut_svi, val_loader),
        }
        val_times = common.round_robin(val_variants, 1 if args.tiny else max(args.repeats, 3))
        nv = args.val_images
        val_flops = {"baseline val / project": nv * pflops["baseline_eval"],
                     "baseline val / tutorial": nv * flops["baseline_eval"],
                     "cvae val / project": nv * pflops["cvae_eval_with_baseline"],
                     "cvae val / tutorial": nv * flops["cvae_eval_with_baseline"]}

    peak_after, cpu_peak_after = common.measure_peaks(args.tiny)
    peak, cpu_peak = max(peak_before, peak_after), max(cpu_peak_before, cpu_peak_after)
    print(f"fp32 matmul peak measured again at the end: {peak_after:.1f} wall / {cpu_peak_after:.1f}"
          f" CPU; using the larger: {peak:.1f} GFLOP/s wall, {cpu_peak:.1f} GFLOP/s CPU")

    # ---- report -------------------------------------------------------------------------------
    scale = common.FULL_EPOCH / n  # one timed epoch of n images -> a 50k-image epoch
    print()
    print(f"TRAINING: seconds per {common.FULL_EPOCH}-image epoch (k={k}, {threads} threads)")
    print("  epoch: the time of one epoch inside a run (steps and per-epoch validation), as a "
          "long training run spends it;\n  run: the whole timed run divided by its epochs, "
          "with the once-per-run setup (models, the CVAE's precomputed guesses, the loader)")
    header = (f"{'pipeline':<27}{'epoch s':>9}{'median':>8}{'GFLOP/s':>9}{'% peak':>8}"
              f"{'run s/epoch':>12}{'median':>8}{'CPU s/epoch':>12}{'CPU GFLOP/s':>12}"
              f"{'% CPU peak':>11}")
    print(header)
    print("-" * len(header))
    best_epoch, best_run, best_cpu = {}, {}, {}
    for name, ts in times.items():
        best_epoch[name] = common.best(epoch_times[name]) * scale
        rate = epoch_flops[name] / common.best(epoch_times[name]) / 1e9
        best_run[name] = common.best(ts) * scale / epochs
        best_cpu[name] = min(ts.cpu) * scale / epochs
        crate = common.cpu_rate(run_flops[name], min(ts.cpu))
        print(f"{name:<27}{best_epoch[name]:>9.2f}{common.median(epoch_times[name]) * scale:>8.2f}"
              f"{rate:>9.1f}{100 * rate / peak:>7.1f}%{best_run[name]:>12.2f}"
              f"{common.median(ts) * scale / epochs:>8.2f}{best_cpu[name]:>12.2f}{crate:>12.1f}"
              f"{100 * crate / cpu_peak:>10.1f}%")
    print(f"first epoch of each run (best): " + ", ".join(
        f"{name} {common.best(ts) * scale:.2f}" for name, ts in first_epochs.items()))
    print()
    for model in ("baseline", "cvae"):
        tut, pro = f"{model} / tutorial", f"{model} / project"
        print(f"ratio tutorial / project, {model:<8}: {best_epoch[tut] / best_epoch[pro]:5.2f}x per "
              f"epoch, {best_run[tut] / best_run[pro]:5.2f}x per run with setup, "
              f"{best_cpu[tut] / best_cpu[pro]:5.2f}x CPU time of the runs  (best vs best; "
              f"target {RATIO_TARGETS[model]:.0f}x per epoch: "
              f"{'met' if best_epoch[tut] / best_epoch[pro] >= RATIO_TARGETS[model] else 'not met'})")
    if other is not None:
        for model in ("baseline", "cvae"):
            fp32, bf16 = ((f"{model} / project", f"{model} / project {other_precision}")
                          if precision == "fp32" else
                          (f"{model} / project {other_precision}", f"{model} / project"))
            print(f"ratio fp32 / bf16 paths, {model:<8}: {best_epoch[fp32] / best_epoch[bf16]:5.2f}x "
                  f"per epoch (best vs best), "
                  f"{common.median(epoch_times[fp32]) / common.median(epoch_times[bf16]):5.2f}x "
                  f"median vs median; the tutorial / project ratio of the fp32 path: "
                  f"{best_epoch[f'{model} / tutorial'] / best_epoch[fp32]:5.2f}x")
    print(f"FLOPs per image per training step: baseline {flops['baseline_train'] / 1e6:.3f} M, "
          f"cvae {flops['cvae_train'] / 1e6:.3f} M tutorial / {pflops['cvae_train'] / 1e6:.3f} M "
          f"project (+{flops['cvae_guess_precompute'] / 1e6:.3f} M baseline forward: once per run "
          f"in the project, every step in the tutorial)")
    # the accounting: an epoch costs what the tutorial's step computes, the baseline's
    # forward pass in every step included, and the arithmetic limit is that work at the fp32
    # peak ("about 1.0 TFLOP ... limit about 7 s"). The project skips the per-step baseline
    # pass, which counts as speed here and as work not done in the % peak column above
    for model, work in (("baseline", pflops["baseline_train"]),
                        ("cvae", pflops["cvae_train_with_baseline"])):
        limit, epoch = common.FULL_EPOCH * work / (peak * 1e9), best_epoch[f"{model} / project"]
        print(f"the issue's arithmetic limit, {model:<8}: {limit:5.2f} s per epoch "
              f"({work / 1e6:.3f} MFLOP per image at {peak:.1f} GFLOP/s); the project's epoch "
              f"takes {epoch:.2f} s: {100 * limit / epoch:.1f} % of the limit")

    if val_times:
        print()
        print(f"VALIDATION: seconds per pass over {args.val_images} images")
        header = (f"{'pipeline':<26}{'wall s':>9}{'median':>8}{'CPU s':>8}{'GFLOP/s':>9}"
                  f"{'% peak':>8}{'CPU GFLOP/s':>12}{'% CPU peak':>11}")
        print(header)
        print("-" * len(header))
        for name, ts in val_times.items():
            rate = val_flops[name] / common.best(ts) / 1e9
            crate = common.cpu_rate(val_flops[name], min(ts.cpu))
            print(f"{name:<26}{common.best(ts):>9.3f}{common.median(ts):>8.3f}{min(ts.cpu):>8.3f}"
                  f"{rate:>9.1f}{100 * rate / peak:>7.1f}%{crate:>12.1f}{100 * crate / cpu_peak:>10.1f}%")
        for model in ("baseline", "cvae"):
            tut, pro = val_times[f"{model} val / tutorial"], val_times[f"{model} val / project"]
            print(f"ratio tutorial / project, {model} validation: {min(tut) / min(pro):5.2f}x "
                  f"wall-clock, {min(tut.cpu) / min(pro.cpu):5.2f}x CPU time")


if __name__ == "__main__":
    main()
