"""Each performance lever of the project's CVAE training and evaluation, measured on its own.

Levers (select with ``--only``, comma-separated; default all):

  batch       CVAE epoch time for batch sizes 128, 256, 512, 1024 (Adam lr 1e-3, and lr scaled by
              sqrt(batch / 128)), with the validation -ELBO (`cvae_loss`, one fixed-noise sample
              per image) after ``--epochs`` epochs on ``--num-images`` training images, and after
              about the same training time as the first row (larger batches then run more whole
              epochs: round(first row's CPU time / own CPU time per epoch)). A short run only
              shows whether quality collapses; comparing final quality needs a full run with
              early stopping.
  precompute  the baseline's guesses inside every step (``y_hat=None``, as the tutorial does) vs
              precomputed (as `train_cvae` does, once per run): with the precomputation counted
              (a one-epoch run) and not counted (each epoch of a long run)
  threads     torch.set_num_threads(1) vs (2) in this process; then, each in a fresh process,
              2 threads with ``OMP_WAIT_POLICY=PASSIVE`` (the variable is read when OpenMP starts)
  eval        validation -ELBO (`cvae_loss`) on ``--val-images`` images under ``torch.no_grad`` (as
              it is) vs ``torch.inference_mode``, and for chunk sizes (`cvae_utils.train.EVAL_CHUNK`)
  pyro        Pyro SVI with Trace_ELBO vs the same -ELBO written in plain PyTorch (same networks,
              torch.optim.Adam), and Pyro with validation off (``pyro.enable_validation(False)``)
  adam        Adam as is vs ``fused=True`` (one C++ kernel per parameter tensor instead of ~8
              elementwise ops, each allocating a temporary), for the baseline's torch.optim.Adam and
              the CVAE's pyro.optim.Adam (which passes its options to one torch Adam per parameter),
              and `cvae_utils.train.JointAdam` (one fused torch Adam for all 22 CVAE tensors, as
              `train_cvae` uses)
  compile     torch.compile of the three CVAE networks inside Pyro SVI (compile time reported
              apart), and of a plain-PyTorch -ELBO step
  recipe      the time of `book_config()`'s switches: a `train_cvae` epoch without the weight
              average and the closed-form KL, with each, with both; and the per-epoch validation
              pass in float32 vs the training precision (bf16 where fast)
  baseline    `train_baseline` epochs for batch 128 and 256, float32 and bfloat16 products
              (``baseline_precision``; the book's: 256 and bf16 where fast), the epochs after
              the first of a two-epoch run
  step        the book's CVAE step (`book_config()`, SVI with TraceMeanField_ELBO and
              `JointAdam`): the weight average updated every step vs every 4th
              (`cvae_utils.train.AVERAGE_EVERY`), and Pyro's validation checks on vs off (as
              `train_cvae` runs every epoch after the first), in ms per step
  sampling    what the estimators and the animation spend outside training: the book's decoder
              on S=100 samples of z for a chunk of 81 images, through the concatenation [z, x]
              for every sample vs its first layer split (x's product once per image); the
              per-image seeded noise of 10,000 images x 100 samples in one thread vs torch's
              threads; the training animation's frames drawn as new figures vs one figure
              updated (`animation.training_frames`)

Epoch times are for ``--num-images`` images (default 10,000) and extrapolated to the 50,000-image
epoch. Variants of one lever run interleaved (A B A B ...), after an untimed warm-up, and the best
of ``--repeats`` runs is reported with the median beside it. All levers except ``threads`` run at
``--threads`` (default: torch's default).

Example (what the README reports):  python benchmarks/bench_levers.py --threads 1
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time

import pyro
import torch

import common
from cvae_utils.config import CVAEConfig
from cvae_utils.networks import CVAE, BaselineNet, masked_bce
from cvae_utils.train import cvae_loss, train_baseline
import cvae_utils.train as cvae_train

LEVERS = ("batch", "precompute", "threads", "eval", "pyro", "adam", "compile", "recipe",
          "baseline", "step", "sampling")
ROWS = []  # (lever, variant, seconds, median, relative, note)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--num-images", type=int, default=10_000,
                        help="training images per timed epoch (default 10000), extrapolated to 50000")
    parser.add_argument("--val-images", type=int, default=10_000,
                        help="validation images for the -ELBO and the eval lever (default 10000)")
    parser.add_argument("--epochs", type=int, default=2, help="epochs of the batch lever (default 2)")
    parser.add_argument("--repeats", type=int, default=2, help="timed runs per variant (default 2)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--only", default=",".join(LEVERS), help=f"levers to run: {','.join(LEVERS)}")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)  # internal: threads lever
    return parser.parse_args(argv)


def add_row(lever, variant, ts, scale=1.0, ref=None, note=""):
    """One printed row: best and median wall seconds, best CPU seconds, both relative to ``ref``
    (the reference row's `common.Timings`); all times multiplied by ``scale``."""
    wall, med, cpu = min(ts) * scale, common.median(ts) * scale, min(ts.cpu) * scale
    ROWS.append((lever, variant, wall, med, cpu, note))
    if ref is not None:
        rel = f"{wall / (min(ref) * scale):6.2f}x {cpu / (min(ref.cpu) * scale):6.2f}x"
    else:
        rel = " " * 15
    print(f"  {lever:<11}{variant:<40}{wall:9.2f}{med:8.2f}{cpu:8.2f} {rel}  {note}", flush=True)


def header(title):
    print(f"\n== {title}", flush=True)
    print(f"  {'lever':<11}{'variant':<40}{'wall s':>9}{'median':>8}{'CPU s':>8} "
          f"{'vs ref':>7} {'(CPU)':>7}  note")


# --------------------------------------------------------------------------------------------
# plain-PyTorch -ELBO step (for the pyro and compile levers)
# --------------------------------------------------------------------------------------------

def neg_elbo_sum(cvae: CVAE, x, y, y_hat):
    """Summed single-sample -ELBO of a batch, the quantity Pyro's Trace_ELBO estimates here."""
    q, p = cvae.posterior(x, y), cvae.prior(x, y_hat)
    z = q.rsample()
    nll = masked_bce(cvae.generation_net(z, x), y)
    return (nll + q.log_prob(z) - p.log_prob(z)).sum()


def make_torch_trainer(cvae: CVAE, lr: float, compiled: bool = False):
    params = [p for name, p in cvae.named_parameters() if not name.startswith("baseline")]
    optimizer = torch.optim.Adam(params, lr=lr)

    def step(x, y, y_hat):
        loss = neg_elbo_sum(cvae, x, y, y_hat)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.detach()

    return torch.compile(step) if compiled else step


def torch_epoch(step, cvae, x, y, batch_size, generator):
    from cvae_utils.data import iterate_minibatches

    y_hat = torch.cat([cvae.baseline_guess(c) for c in x.split(cvae_train.EVAL_CHUNK)])
    total = torch.zeros(())
    for idx in iterate_minibatches(len(x), batch_size, generator):
        total += step(x[idx], y[idx], y_hat[idx])
    return total.item()


# --------------------------------------------------------------------------------------------
# the levers
# --------------------------------------------------------------------------------------------

def eager_torch_epoch(baseline, config, train_q):
    """One epoch of a fresh CVAE trained by the plain-PyTorch step (no Pyro, no compile)."""
    torch.manual_seed(config.seed)
    cvae = CVAE(baseline, config)
    step = make_torch_trainer(cvae, config.cvae_lr)
    torch_epoch(step, cvae, train_q.x, train_q.y, config.batch_size,
                torch.Generator().manual_seed(0))


def lever_batch(args, data, baseline, config):
    train_q, val_q = data
    scale = common.FULL_EPOCH / len(train_q)
    header(f"batch size: CVAE epoch (s per 50k images) and validation -ELBO after {args.epochs} "
           f"epochs on {len(train_q)} images (interleaved runs)")
    settings = [(128, 1e-3), (256, 1e-3), (512, 1e-3), (1024, 1e-3)]
    settings += [(b, round(1e-3 * math.sqrt(b / 128), 6)) for b in (256, 512, 1024)]
    store = pyro.get_param_store()
    runs = []
    for bs, lr in settings:
        cfg = config.replace(batch_size=bs, cvae_lr=lr)
        with store.scope() as state:
            cvae, svi = common.make_project_cvae(baseline, cfg)
        runs.append({"bs": bs, "lr": lr, "cvae": cvae, "svi": svi, "state": state,
                     "times": common.Timings(), "gen": torch.Generator().manual_seed(cfg.seed)})
    x, y = train_q.x, train_q.y
    for _ in range(args.epochs):
        for run in runs:  # one epoch of every setting, then the next epoch: noise spreads evenly
            with store.scope(run["state"]):
                common.timed(lambda: common.project_cvae_epoch(run["cvae"], run["svi"], x, y,
                                                               run["bs"], run["gen"]),
                             run["times"])
    for run in runs:  # quality after the same number of epochs
        run["cvae"].eval()
        run["val"] = cvae_loss(run["cvae"], val_q, seed=config.seed).mean().item()
        run["cvae"].train()
    # quality after about the same training time: larger batches run more epochs, as many as
    # fit (rounded) into the CPU time the first setting took for its epochs
    ref_cpu = sum(runs[0]["times"].cpu)
    for run in runs:
        mean_cpu = sum(run["times"].cpu) / len(run["times"].cpu)
        run["eq_epochs"] = max(args.epochs, round(ref_cpu / mean_cpu))
    for extra in range(max(run["eq_epochs"] for run in runs) - args.epochs):
        for run in runs:
            if args.epochs + extra < run["eq_epochs"]:
                with store.scope(run["state"]):
                    common.timed(lambda: common.project_cvae_epoch(
                        run["cvae"], run["svi"], x, y, run["bs"], run["gen"]), run["times"])
    for run in runs:
        run["cvae"].eval()
        val_eq = cvae_loss(run["cvae"], val_q, seed=config.seed).mean().item()
        add_row("batch", f"batch {run['bs']:>4}, lr {run['lr']:.2e}", run["times"], scale,
                runs[0]["times"], f"val -ELBO {run['val']:6.2f} after {args.epochs} ep "
                f"({args.epochs * math.ceil(len(x) / run['bs'])} steps); {val_eq:6.2f} after "
                f"{run['eq_epochs']} ep (~equal time)")


def lever_precompute(args, data, baseline, config):
    train_q, _ = data
    scale = common.FULL_EPOCH / len(train_q)
    header("baseline guess: inside every step vs precomputed (s per 50k-image epoch)")
    from cvae_utils.data import iterate_minibatches

    x, y = train_q.x, train_q.y
    cvae0 = CVAE(baseline, config)
    y_hat_ready = torch.cat([cvae0.baseline_guess(c) for c in x.split(cvae_train.EVAL_CHUNK)])

    def run(mode):
        def fn():
            cvae, svi = common.make_project_cvae(baseline, config)
            gen = torch.Generator().manual_seed(0)
            if mode == "ready":  # the guesses of a long run: computed before its first epoch
                for idx in iterate_minibatches(len(x), config.batch_size, gen):
                    svi.step(x[idx], y[idx], y_hat_ready[idx])
            else:
                common.project_cvae_epoch(cvae, svi, x, y, config.batch_size, gen,
                                          precompute=(mode == "once"))
        return fn

    variants = {"every step (tutorial's way)": run("step"),
                "precomputed, cost included": run("once"),
                "precomputed, cost excluded": run("ready")}
    times = common.round_robin(variants, args.repeats)
    notes = {"every step (tutorial's way)": "y_hat=None: the model runs the baseline per batch",
             "precomputed, cost included": "= a 1-epoch run of train_cvae (chunks of 2048)",
             "precomputed, cost excluded": "= each epoch of a long run (paid once per run)"}
    for name, ts in times.items():
        add_row("precompute", name, ts, scale, times["every step (tutorial's way)"], notes[name])


def lever_threads(args, data, baseline, config):
    train_q, _ = data
    scale = common.FULL_EPOCH / len(train_q)
    header("threads: CVAE epoch (s per 50k images); in-process set_num_threads, then fresh "
           "processes for OMP_WAIT_POLICY")
    before = torch.get_num_threads()

    def run(threads):
        def fn():
            torch.set_num_threads(threads)
            cvae, svi = common.make_project_cvae(baseline, config)
            common.project_cvae_epoch(cvae, svi, train_q.x, train_q.y, config.batch_size,
                                      torch.Generator().manual_seed(0))
        return fn

    times = common.round_robin({"1 thread": run(1), "2 threads": run(2)}, args.repeats)
    torch.set_num_threads(before)
    for name, ts in times.items():
        add_row("threads", name + " (in process)", ts, scale, times["1 thread"],
                f"load avg now {os.getloadavg()[0]:.1f}")

    # fresh processes: the OpenMP wait policy can only be chosen before OpenMP starts
    variants = {"1 thread (new process)": ("1", None), "2 threads (new process)": ("2", None),
                "2 threads, OMP_WAIT_POLICY=PASSIVE": ("2", "PASSIVE")}
    results = {name: common.Timings() for name in variants}
    for _ in range(args.repeats):
        for name, (threads, policy) in variants.items():
            env = dict(os.environ)
            env.pop("OMP_WAIT_POLICY", None)
            if policy:
                env["OMP_WAIT_POLICY"] = policy
            cmd = [sys.executable, __file__, "--child", "threads", "--threads", threads,
                   "--num-images", str(args.num_images)]
            out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
            try:
                result = json.loads(out.stdout.strip().splitlines()[-1])
                results[name].append(result["seconds"])
                results[name].cpu.append(result["cpu"])
            except (IndexError, ValueError, KeyError):
                print(f"  child failed: {out.stderr[-2000:]}")
    ref = None
    for name, ts in results.items():
        if not ts:
            continue
        ref = ref or ts
        add_row("threads", name, ts, scale, ref, f"load avg now {os.getloadavg()[0]:.1f}")


def child_threads(args):
    """Internal: one warm-up and one timed CVAE epoch in a fresh process; prints JSON."""
    common.set_threads(args.threads)
    train_q, _, _ = common.load_project_data(args.num_images, 1)
    config = CVAEConfig()
    torch.manual_seed(0)
    baseline = BaselineNet(config)
    cvae, svi = common.make_project_cvae(baseline, config)
    warm = train_q.x[:1024], train_q.y[:1024]
    common.project_cvae_epoch(cvae, svi, *warm, config.batch_size, torch.Generator().manual_seed(0))
    start, cpu = time.perf_counter(), time.process_time()
    common.project_cvae_epoch(cvae, svi, train_q.x, train_q.y, config.batch_size,
                              torch.Generator().manual_seed(0))
    print(json.dumps({"seconds": time.perf_counter() - start, "cpu": time.process_time() - cpu}))


def lever_eval(args, data, baseline, config):
    _, val_q = data
    torch.manual_seed(0)
    cvae = CVAE(baseline, config).eval()
    header(f"evaluation: one validation -ELBO pass (cvae_loss) over {len(val_q)} images, seconds")

    def with_mode(mode):
        def fn():
            with mode():
                cvae_loss(cvae, val_q).mean().item()
        return fn

    times = common.round_robin({"torch.no_grad (as is)": with_mode(torch.no_grad),
                                "torch.inference_mode": with_mode(torch.inference_mode)},
                               max(args.repeats, 3))
    for name, ts in times.items():
        add_row("eval", name, ts, 1.0, times["torch.no_grad (as is)"],
                f"chunk {cvae_train.EVAL_CHUNK}")

    original = cvae_train.EVAL_CHUNK

    def with_chunk(chunk):
        def fn():
            cvae_train.EVAL_CHUNK = chunk
            try:
                cvae_loss(cvae, val_q).mean().item()
            finally:
                cvae_train.EVAL_CHUNK = original
        return fn

    chunks = [c for c in (128, 512, 2048, 8192) if c <= len(val_q)] + [len(val_q)]
    chunks = sorted(set(chunks))
    times = common.round_robin({f"EVAL_CHUNK {c}": with_chunk(c) for c in chunks},
                               max(args.repeats, 3))
    ref = times.get(f"EVAL_CHUNK {original}")
    for name, ts in times.items():
        add_row("eval", name, ts, 1.0, ref,
                "(current default)" if name == f"EVAL_CHUNK {original}" else "")


def lever_pyro(args, data, baseline, config):
    train_q, _ = data
    scale = common.FULL_EPOCH / len(train_q)
    header("Pyro: SVI Trace_ELBO vs the same -ELBO in plain PyTorch (s per 50k-image epoch)")

    def pyro_run(validate):
        def fn():
            old = pyro.infer.util.is_validation_enabled()
            pyro.enable_validation(validate)
            try:
                cvae, svi = common.make_project_cvae(baseline, config)
                common.project_cvae_epoch(cvae, svi, train_q.x, train_q.y, config.batch_size,
                                          torch.Generator().manual_seed(0))
            finally:
                pyro.enable_validation(old)
        return fn

    def torch_run():
        eager_torch_epoch(baseline, config, train_q)

    times = common.round_robin({"Pyro SVI (as is, validation on)": pyro_run(True),
                                "Pyro SVI, validation off": pyro_run(False),
                                "plain PyTorch -ELBO + torch.optim.Adam": torch_run},
                               args.repeats)
    for name, ts in times.items():
        add_row("pyro", name, ts, scale, times["Pyro SVI (as is, validation on)"])


def lever_adam(args, data, baseline, config):
    train_q, _ = data
    scale = common.FULL_EPOCH / len(train_q)
    header("Adam: as is, fused=True, one optimizer for all (s per 50k-image epoch)")
    from cvae_utils.data import iterate_minibatches
    from pyro.infer import SVI, Trace_ELBO

    from cvae_utils.train import JointAdam

    x, y = train_q.x, train_q.y

    def baseline_run(**adam_options):
        def fn():  # the step of train_baseline, with the optimizer's options changed
            torch.manual_seed(config.seed)
            net = BaselineNet(config)
            optimizer = torch.optim.Adam(net.parameters(), lr=config.baseline_lr, **adam_options)
            for idx in iterate_minibatches(len(x), config.batch_size,
                                           torch.Generator().manual_seed(0)):
                loss = masked_bce(net.logits(x[idx]), y[idx]).sum()
                optimizer.zero_grad(set_to_none=True)
                (loss / len(idx)).backward()
                optimizer.step()
                loss.item()
        return fn

    def cvae_run(joint=False, **adam_options):
        def fn():
            cvae, _ = common.make_project_cvae(baseline, config)
            optimizer = (JointAdam(config.cvae_lr) if joint else
                         pyro.optim.Adam({"lr": config.cvae_lr, **adam_options}))
            svi = SVI(cvae.model, cvae.guide, optimizer, Trace_ELBO())
            common.project_cvae_epoch(cvae, svi, x, y, config.batch_size,
                                      torch.Generator().manual_seed(0))
        return fn

    times = common.round_robin({"baseline, Adam as is": baseline_run(),
                                "baseline, Adam fused=True": baseline_run(fused=True),
                                "cvae, pyro Adam as is": cvae_run(),
                                "cvae, pyro Adam fused=True": cvae_run(fused=True),
                                "cvae, one fused Adam (JointAdam)": cvae_run(joint=True)},
                               args.repeats)
    for name, ts in times.items():
        ref = times["baseline, Adam as is" if name.startswith("baseline") else
                    "cvae, pyro Adam as is"]
        add_row("adam", name, ts, scale, ref)


def lever_recipe(args, data, baseline, config):
    """The switches of `book_config()` that cost time: a `train_cvae` epoch with each of them,
    and the per-epoch validation pass in float32 against the training precision."""
    from cvae_utils.config import book_config
    from cvae_utils.data import QuadrantData
    from cvae_utils.train import train_cvae, training_precision

    train_q, val_q = data
    scale = common.FULL_EPOCH / len(train_q)
    book = book_config()
    header(f"book recipe: one train_cvae epoch (batch {book.cvae_batch}, {book.precision}, "
           f"256 validation images; s per 50k-image epoch)")
    val_small = QuadrantData(val_q.x[:256], val_q.y[:256], val_q.labels[:256], 1)
    configs = {"no average, sampled KL (ref)": book.replace(weight_average=0.0, analytic_kl=False),
               "weight_average 0.999": book.replace(analytic_kl=False),
               "analytic_kl": book.replace(weight_average=0.0),
               "both (book_config())": book}

    def run(cfg):
        return lambda: train_cvae(train_q, val_small, baseline, cfg, 1, device="cpu",
                                  progress=False)

    times = common.round_robin({name: run(cfg) for name, cfg in configs.items()}, args.repeats)
    for name, ts in times.items():
        add_row("recipe", name, ts, scale, times["no average, sampled KL (ref)"])

    header(f"validation pass of train_cvae (cvae_loss over {len(val_q)} images), seconds")
    torch.manual_seed(0)
    cvae = CVAE(baseline, book).eval()

    def validate(context):
        def fn():
            with context():
                cvae_loss(cvae, val_q).mean().item()
        return fn

    times = common.round_robin(
        {"float32 (ref)": validate(torch.no_grad),
         f"training precision ({book.precision})":
             validate(lambda: training_precision(book, torch.device("cpu")))},
        max(args.repeats, 3))
    for name, ts in times.items():
        add_row("recipe", name, ts, 1.0, times["float32 (ref)"])


def lever_compile(args, data, baseline, config):
    train_q, _ = data
    scale = common.FULL_EPOCH / len(train_q)
    header("torch.compile (inductor, CPU): s per 50k-image epoch; first call compiles")

    def eager():
        cvae, svi = common.make_project_cvae(baseline, config)
        common.project_cvae_epoch(cvae, svi, train_q.x, train_q.y, config.batch_size,
                                  torch.Generator().manual_seed(0))

    # a fresh inductor cache, so that the first call shows the real (cold) compilation time
    import shutil
    import tempfile
    cache = tempfile.mkdtemp(prefix="bench_inductor_")
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache
    # Pyro SVI over compiled networks: one CVAE reused, so compilation happens once
    try:
        torch._dynamo.reset()
        cvae_c, svi_c = common.make_project_cvae(baseline, config)
        for name in ("prior_net", "recognition_net", "generation_net"):
            setattr(cvae_c, name, torch.compile(getattr(cvae_c, name)))
        start = time.perf_counter()
        common.project_cvae_epoch(cvae_c, svi_c, train_q.x[:1024], train_q.y[:1024],
                                  config.batch_size, torch.Generator().manual_seed(0))
        first = time.perf_counter() - start
        state_c = pyro.get_param_store().get_state()

        def compiled_pyro():
            with pyro.get_param_store().scope(state_c):
                common.project_cvae_epoch(cvae_c, svi_c, train_q.x, train_q.y, config.batch_size,
                                          torch.Generator().manual_seed(0))
        compiled_pyro()  # warm: the short last batch may compile again
        pyro_ok = True
    except Exception as error:  # noqa: BLE001 - report whatever inductor raises
        print(f"  torch.compile of the networks inside Pyro FAILED: {type(error).__name__}: "
              f"{str(error)[:500]}")
        pyro_ok = False

    # plain-PyTorch step, eager and compiled as a whole (forward, backward and Adam)
    try:
        torch.manual_seed(config.seed)
        cvae_t = CVAE(baseline, config)
        step_t = make_torch_trainer(cvae_t, config.cvae_lr, compiled=True)
        start = time.perf_counter()
        torch_epoch(step_t, cvae_t, train_q.x[:1024], train_q.y[:1024], config.batch_size,
                    torch.Generator().manual_seed(0))
        first_t = time.perf_counter() - start

        def compiled_torch():
            torch_epoch(step_t, cvae_t, train_q.x, train_q.y, config.batch_size,
                        torch.Generator().manual_seed(0))
        compiled_torch()
        torch_ok = True
    except Exception as error:  # noqa: BLE001
        print(f"  torch.compile of the plain-PyTorch step FAILED: {type(error).__name__}: "
              f"{str(error)[:500]}")
        torch_ok = False

    def eager_torch():
        eager_torch_epoch(baseline, config, train_q)

    variants = {"Pyro SVI, eager (as is)": eager}
    if pyro_ok:
        variants["Pyro SVI, compiled networks"] = compiled_pyro
    variants["plain PyTorch step, eager"] = eager_torch
    if torch_ok:
        variants["plain PyTorch step, compiled"] = compiled_torch
    times = common.round_robin(variants, args.repeats, warmup=False)
    for name, ts in times.items():
        note = ""
        if name == "Pyro SVI, compiled networks":
            note = f"first 1024 images incl. cold compilation: {first:.1f} s"
        if name == "plain PyTorch step, compiled":
            note = f"first 1024 images incl. cold compilation: {first_t:.1f} s"
        add_row("compile", name, ts, scale, times["Pyro SVI, eager (as is)"], note)
    shutil.rmtree(cache, ignore_errors=True)


def lever_baseline(args, data, baseline, config):
    """`train_baseline` epochs at batch 128 and 256, in float32 and in bfloat16 products."""
    from cvae_utils.config import book_config, fast_bfloat16
    from cvae_utils.data import QuadrantData

    train_q, val_q = data
    scale = common.FULL_EPOCH / len(train_q)
    header("baseline: train_baseline epochs (256 validation images; s per 50k-image epoch, "
           "epochs after the first of two-epoch runs)")
    if not fast_bfloat16():
        print("  (no fast bfloat16 here: the bf16 rows emulate it and are slower)")
    val_small = QuadrantData(val_q.x[:256], val_q.y[:256], val_q.labels[:256], 1)
    book = book_config()

    def label(batch, precision):
        notes = {(128, "fp32"): " (ref: tutorial)",
                 (book.batch_size, book.baseline_precision): " (book)"}
        return f"batch {batch}, {precision}{notes.get((batch, precision), '')}"

    configs = {label(batch, precision): CVAEConfig(batch_size=batch, baseline_precision=precision,
                                                   patience=3)
               for batch in (128, 256) for precision in ("fp32", "bf16")}
    epochs = {name: common.Timings() for name in configs}

    def run(name, cfg):
        def fn():
            marks = []  # (wall, CPU) at the end of each epoch, after its validation

            def mark(epoch, module, history):
                marks.append((time.perf_counter(), time.process_time()))

            train_baseline(train_q, val_small, cfg, 2, device="cpu", progress=False,
                           callback=mark)
            epochs[name].append(marks[1][0] - marks[0][0])  # the second epoch
            epochs[name].cpu.append(marks[1][1] - marks[0][1])
        return fn

    common.round_robin({name: run(name, cfg) for name, cfg in configs.items()}, args.repeats)
    ref = next(iter(configs))
    for name in configs:
        del epochs[name][0], epochs[name].cpu[0]  # the warm-up run
        add_row("baseline", name, epochs[name], scale, epochs[ref])


def lever_step(args, data, baseline, config):
    """The book's CVAE step with the weight average every step or every 4th, Pyro's checks on
    or off; the variants take turns in chunks of 30 steps (each keeps its own parameters)."""
    from pyro.infer import SVI, TraceMeanField_ELBO

    from cvae_utils.config import book_config
    from cvae_utils.data import iterate_minibatches
    from cvae_utils.train import AVERAGE_EVERY, JointAdam, training_precision

    train_q, _ = data
    book = book_config()
    x, y = train_q.x, train_q.y
    batches = list(iterate_minibatches(len(x), book.cvae_batch, torch.Generator().manual_seed(0)))
    header(f"book's CVAE step (batch {book.cvae_batch}, {book.precision}), ms per step; "
           f"chunks of 30 steps in turn")

    def make(every, checks):
        torch.manual_seed(0)
        cvae = CVAE(baseline, book)
        optim = JointAdam(book.cvae_lr, book.lr_decay, book.weight_average, every)
        svi = SVI(cvae.model, cvae.guide, optim, TraceMeanField_ELBO())
        y_hat = cvae.baseline_guess(x)
        autocast = training_precision(book, torch.device("cpu"))
        state, position = {}, [0]

        def run():  # 30 steps on this variant's own parameters
            store = pyro.get_param_store()
            if state:
                store.set_state(state["params"])
            else:
                store.clear()
            with pyro.validation_enabled(checks):
                for _ in range(30):
                    idx = batches[position[0] % len(batches)]
                    position[0] += 1
                    with autocast:
                        svi.step(x[idx], y[idx], y_hat[idx])
            state["params"] = store.get_state()
        return run

    variants = {"average every step, Pyro checks (ref: session 3)": make(1, True),
                f"average every {AVERAGE_EVERY}th step": make(AVERAGE_EVERY, True),
                "Pyro checks off": make(1, False),
                "both (train_cvae after its first epoch)": make(AVERAGE_EVERY, False)}
    times = common.round_robin(variants, max(args.repeats, 5))
    ref = times["average every step, Pyro checks (ref: session 3)"]
    for name, ts in times.items():
        add_row("step", name, ts, 1000 / 30, ref)


def lever_sampling(args, data, baseline, config):
    """The decoder over samples of z, the estimators' noise, the animation's frames."""
    from cvae_utils import animation, plotting
    from cvae_utils.config import book_config
    from cvae_utils.evaluate import standard_normal_noise
    from cvae_utils.train import History

    train_q, val_q = data
    book = book_config()
    torch.manual_seed(0)
    decoder = CVAE(baseline, book).generation_net.eval()
    num_samples, n = 100, 81
    x = val_q.x[:n]
    z = torch.randn(num_samples, n, book.z_dim)
    header(f"book's decoder on {num_samples} samples of z for {n} images (float32), ms")

    def through_concatenation():  # every sample as its own row: the training path
        with torch.no_grad():
            decoder(z.reshape(-1, book.z_dim), x.repeat(num_samples, 1))

    def split():  # samples as a leading dimension: x's product once per image
        with torch.no_grad():
            decoder(z, x)

    times = common.round_robin({"[z, x] for every sample (ref)": through_concatenation,
                                "first layer split (Decoder.forward)": split},
                               max(args.repeats, 5))
    for name, ts in times.items():
        add_row("sampling", name, ts, 1000.0, times["[z, x] for every sample (ref)"])

    header("per-image seeded noise, 10,000 images x 100 samples x z_dim, seconds")
    threads = torch.get_num_threads()

    def noise(count):
        def fn():
            torch.set_num_threads(count)
            try:
                standard_normal_noise(num_samples, book.z_dim, 0, 10_000)
            finally:
                torch.set_num_threads(threads)
        return fn

    times = common.round_robin({"one thread (ref)": noise(1), f"{threads} threads": noise(threads)},
                               max(args.repeats, 3))
    for name, ts in times.items():
        add_row("sampling", name, ts, 1.0, times["one thread (ref)"])

    epochs = 20
    header(f"training animation, {epochs} frames of 8 inputs x 8 samples (dpi 80), seconds")
    generator = torch.Generator().manual_seed(0)
    history = History(train_loss=list(range(epochs, 0, -1)), val_loss=list(range(epochs, 0, -1)),
                      seconds=[1.0] * epochs, best_epoch=epochs,
                      snapshots=torch.randint(0, 256, (epochs, 8, 8, 784), dtype=torch.uint8,
                                              generator=generator))
    inputs_x, inputs_y = val_q.x[:8], val_q.y[:8]

    def new_figures():
        for epoch in range(1, epochs + 1):
            plotting.figure_to_array(plotting.plot_training_frame(
                inputs_x, inputs_y, history.snapshots[epoch - 1], history, epoch, 1))

    times = common.round_robin(
        {"a new figure per frame (ref)": new_figures,
         "one figure updated (training_frames)":
             lambda: animation.training_frames(history, inputs_x, inputs_y, 1)},
        max(args.repeats, 3))
    for name, ts in times.items():
        add_row("sampling", name, ts, 1.0, times["a new figure per frame (ref)"])


def main(argv=None):
    args = parse_args(argv)
    if args.child == "threads":
        return child_threads(args)
    threads = common.set_threads(args.threads)
    chosen = [lever.strip() for lever in args.only.split(",") if lever.strip()]
    unknown = set(chosen) - set(LEVERS)
    if unknown:
        raise SystemExit(f"unknown levers {sorted(unknown)}; choose from {LEVERS}")
    print(f"# bench_levers | {common.describe_machine()}")
    print(f"# {args.num_images} training images per timed epoch (extrapolated to "
          f"{common.FULL_EPOCH}), {args.val_images} validation images, repeats {args.repeats}, "
          f"threads {threads}, levers {','.join(chosen)}")
    config = CVAEConfig()
    train_q, val_q, _ = common.load_project_data(args.num_images, args.val_images, 1)
    data = (train_q, val_q)
    # a briefly trained baseline, so that the batch lever's -ELBO values mean something
    start = time.perf_counter()
    baseline, hist = train_baseline(train_q, val_q, config, max_epochs=2, device="cpu",
                                    progress=False)
    print(f"# baseline trained for 2 epochs on {len(train_q)} images in "
          f"{time.perf_counter() - start:.1f} s (val NLL {hist.best_val_loss:.2f} nats)")
    for lever in chosen:
        globals()[f"lever_{lever}"](args, data, baseline, config)
    print("\n# times: best of the runs (wall-clock and process CPU time), extrapolated to 50k "
          "images where 's per 50k' is said; 'vs ref' divides by the lever's reference row "
          "(wall, then CPU)")


if __name__ == "__main__":
    main()
