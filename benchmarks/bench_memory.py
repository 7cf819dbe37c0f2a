"""Peak resident memory of the book's heaviest steps, each in a fresh process.

Two measurements, both printed as MiB of resident memory (``ru_maxrss``, what ``/usr/bin/time -v``
calls "Maximum resident set size"; a build's figure is that of its largest chapter kernel):

* **The estimators** (default): each estimator of the CLL table (`cvae_utils.evaluate`: -ELBO with
  S = 10, MC prior and importance sampling with S = 100) on the 10,000 test images, one setting,
  a freshly initialised CVAE of the book's configuration (the memory does not depend on the
  weights), each in a subprocess of its own: the resident memory before the call (torch, the
  data, the model), the peak during the call (Linux's ``VmHWM``, reset when the call starts)
  and its growth above the memory before, the memory after, the seconds and the mean.
  ``--compare`` also runs each with the chunk loop of commit c73f2d1 (chunk results in a list,
  joined at the end), kept here for the comparison: the same means, and that loop's peak, up to
  ``--cap-mib`` (6 GiB; it stops there: on the VM that loop reached 15.5 GiB).
* **Chapters** (``--chapter NAME``, repeatable): a chapter of ``book/`` executed as the build
  executes it (a fresh IPython kernel, cwd ``book/``, ``CVAE_BUDGET`` as set), with a probe after
  every code cell: per cell its seconds, the resident memory after it and the peak so far, the
  cells that raised the peak marked. It trains nothing: a model the cache (``CVAE_CACHE_DIR``)
  lacks stops the chapter with an error, so fill the cache first (``python -m cvae_utils train
  --book``); with ``--train`` it trains what the cache lacks, as the build does (the
  evaluation chapter trains the table's seeds after the first: its kernel holds the build's
  peak). Needs jupytext and nbclient (installed with jupyter-book).

Examples:  python benchmarks/bench_memory.py --compare
           CVAE_BUDGET=paper python benchmarks/bench_memory.py --chapter evaluation
           CVAE_BUDGET=paper python benchmarks/bench_memory.py --chapter evaluation --train
Smoke test (``--tiny``): 200 test images, S = 4 (the chapter mode runs as asked).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import time

import common

ESTIMATORS = {"neg_elbo": 10, "mc_prior": 100, "importance": 100}  # the CLL table's S


def _status(field: str) -> float:
    """A memory field of ``/proc/self/status`` (VmRSS, VmHWM), MiB; NaN where there is none."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def rss_mib() -> float:
    """The resident memory of this process now, MiB."""
    return _status("VmRSS")


def reset_peak() -> bool:
    """Make the peak (VmHWM) start again from the resident memory now; False where Linux's
    ``clear_refs`` is not there (the peak then counts everything since the process started)."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as clear:
            clear.write("5")
        return True
    except OSError:
        return False


def peak_mib() -> float:
    """The peak resident memory since `reset_peak` (else since the start), MiB."""
    peak = _status("VmHWM")
    return peak if peak == peak else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class OverCap(Exception):
    """The loop of c73f2d1 went over ``--cap-mib``: stopped there, so the machine is spared."""


def listed_estimate_nll(method, condition, x, y, num_samples, *, seed=0, chunk_size=None,
                        num_output_pixels=None, name=None, cap_mib=float("inf")):
    """`cvae_utils.evaluate.estimate_nll` as of commit c73f2d1: the chunk results in a list,
    joined at the end (the same numbers); raises `OverCap` once the resident memory passes
    ``cap_mib``."""
    import torch
    from cvae_utils import evaluate as ev

    chunk = ev._chunk_size(num_samples, chunk_size)
    values = []
    for start in range(0, x.shape[0], chunk):
        stop = min(start + chunk, x.shape[0])
        conditional = condition(x[start:stop], y[start:stop])
        loc = conditional.prior.mean
        eps = ev.standard_normal_noise(num_samples, loc.shape[-1], start, stop, seed, loc.dtype)
        values.append(ev._ESTIMATORS[method](conditional, eps.to(loc.device)).cpu())
        if rss_mib() > cap_mib:
            raise OverCap(f"{stop} of {x.shape[0]} images")
    if num_output_pixels is None:
        num_output_pixels = float(y[0].numel())
    return ev.Estimate.from_values(name or method, torch.cat(values), num_samples,
                                   num_output_pixels)


def one_estimator(method: str, loop: str, quadrants: int, num_images: int,
                  num_samples: int, cap_mib: float) -> dict:
    """Run one estimator in this process (a fresh one) and return what it measured."""
    import functools

    import torch
    from cvae_utils import evaluate
    from cvae_utils.config import book_config
    from cvae_utils.data import QuadrantData, input_mask
    from cvae_utils.networks import BaselineNet
    from cvae_utils.variant_models import build_cvae

    if loop == "list":
        evaluate.estimate_nll = functools.partial(listed_estimate_nll, cap_mib=cap_mib)
    _, _, test = common.load_project_data(1, 1, quadrants)
    test = QuadrantData(test.x[:num_images], test.y[:num_images], test.labels[:num_images],
                        quadrants)
    config = book_config()
    torch.manual_seed(0)
    cvae = build_cvae(BaselineNet(config.baseline).eval(), config).eval()
    cvae.input_mask = input_mask(quadrants).reshape(-1)
    function = {"neg_elbo": evaluate.cvae_neg_elbo, "mc_prior": evaluate.cvae_mc_prior,
                "importance": evaluate.cvae_importance_sampling}[method]
    before = rss_mib()
    reset_peak()  # the peak of the call, not of loading the data
    start = time.perf_counter()
    try:
        mean, stopped = function(cvae, test, num_samples, 0).mean, ""
    except OverCap as error:
        mean, stopped = float("nan"), f"stopped over {cap_mib:.0f} MiB after {error}"
    return {"seconds": time.perf_counter() - start, "before": before, "peak": peak_mib(),
            "after": rss_mib(), "mean": mean, "n": len(test), "stopped": stopped}


def run_estimators(args) -> list[dict]:
    loops = ["array", "list"] if args.compare else ["array"]
    rows = []
    print(f"estimators of the CLL table, k={args.quadrants}, {args.num_images} test images, "
          f"untrained book CVAE, each in a fresh process (MiB of resident memory)")
    print(f"{'estimator':<11} {'S':>4} {'loop':<6} {'before':>7} {'peak':>7} {'growth':>7} "
          f"{'after':>7} {'seconds':>8}  mean")
    for method, num_samples in ESTIMATORS.items():
        num_samples = args.num_samples or num_samples
        for loop in loops:
            command = [sys.executable, __file__, "--child", json.dumps(
                [method, loop, args.quadrants, args.num_images, num_samples, args.cap_mib])]
            if args.threads:
                command += ["--threads", str(args.threads)]
            out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
            row = json.loads(out.strip().splitlines()[-1])
            row.update(method=method, loop=loop, num_samples=num_samples)
            rows.append(row)
            print(f"{method:<11} {num_samples:>4} {loop:<6} {row['before']:7.0f} "
                  f"{row['peak']:7.0f} {row['peak'] - row['before']:7.0f} {row['after']:7.0f} "
                  f"{row['seconds']:8.1f}  {row['stopped'] or format(row['mean'], '.6f')}",
                  flush=True)
    if args.compare:
        for method in ESTIMATORS:
            array, listed = (next(r for r in rows if r["method"] == method and r["loop"] == loop)
                             for loop in ("array", "list"))
            same = ("the same mean" if array["mean"] == listed["mean"]
                    else "stopped early" if listed["stopped"] else "DIFFERENT means")
            print(f"{method}: peak {array['peak']:.0f} MiB (one array) against "
                  f"{'over ' if listed['stopped'] else ''}{listed['peak']:.0f} MiB (list of "
                  f"chunks), {same}")
    return rows


# ------------------------------------------------------------------------------------------------
# Chapters
# ------------------------------------------------------------------------------------------------

GUARD = '''
import cvae_utils.cache as _cache, cvae_utils.classifier as _classifier
_cached_model = _cache.cached_model
def _no_training(key, directory, module, train_fn, use_cache=True, progress=None):
    path = _cache.checkpoint_path(key, directory)
    if not path.exists():
        raise RuntimeError(f"bench_memory trains nothing: {path} is not in the model cache")
    return _cached_model(key, directory, module, train_fn, use_cache, progress)
_cache.cached_model = _classifier.cached_model = _no_training
'''

PROBE = '''
def _bench_memory_probe(tag):
    import resource, time
    with open("/proc/self/status", encoding="ascii") as status:
        rss = next(int(l.split()[1]) for l in status if l.startswith("VmRSS:")) / 1024
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"__bench_memory__ {tag} {time.perf_counter():.3f} {rss:.0f} {peak:.0f}")
_bench_memory_probe("start")
'''


def run_chapter(name: str, timeout: int, train: bool = False) -> float:
    """Execute ``book/<name>.md`` with a probe after every code cell; print them; the peak.
    ``train``: train the models the cache lacks (else a missing model stops the chapter)."""
    import jupytext
    import nbformat
    from nbclient import NotebookClient

    book = common.ROOT / "book"
    notebook = jupytext.read(book / f"{name}.md")
    cells, first_lines = [nbformat.v4.new_code_cell(PROBE if train else GUARD + PROBE)], {}
    for index, cell in enumerate(notebook.cells):
        cells.append(cell)
        if cell.cell_type == "code":
            tag = f"cell{index}"
            cells.append(nbformat.v4.new_code_cell(f'_bench_memory_probe("{tag}")'))
            code = [line for line in cell.source.splitlines()
                    if line.strip() and not line.startswith((":", "---", "#", " ", "tags:"))]
            first_lines[tag] = code[0] if code else ""
    notebook.cells = cells
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                       "language": "python"}
    client = NotebookClient(notebook, timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(book)}})
    start = time.perf_counter()
    error = None
    try:
        client.execute()
    except Exception as exc:  # a failing cell: report what ran up to it
        last = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip().splitlines()[-1]
        error = f"{type(exc).__name__}: {last}"
    print(f"chapter {name} (budget {os.environ.get('CVAE_BUDGET', 'default')}): MiB of resident "
          f"memory after each code cell, the peak so far; <== marks a cell that raised the peak")
    last_time, last_peak = None, 0.0
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            for line in output.get("text", "").splitlines():
                if not line.startswith("__bench_memory__"):
                    continue
                _, tag, moment, rss, peak = line.split()
                moment, rss, peak = float(moment), float(rss), float(peak)
                seconds = 0.0 if last_time is None else moment - last_time
                mark = "<==" if peak > last_peak + 32 else "   "
                print(f"  {tag:<7} {seconds:7.1f} s  rss {rss:6.0f}  peak {peak:6.0f} {mark} "
                      f"{first_lines.get(tag, '')[:60]}")
                last_time, last_peak = moment, peak
    print(f"chapter {name}: peak {last_peak:.0f} MiB, {time.perf_counter() - start:.0f} s"
          + (f"; STOPPED: {error}" if error else ""))
    return last_peak


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quadrants", type=int, default=1, choices=(1, 2, 3))
    parser.add_argument("--num-images", type=int, default=10_000,
                        help="test images (default 10000: all of them)")
    parser.add_argument("--num-samples", type=int, default=None,
                        help="S for every estimator (default: the table's, 10 and 100)")
    parser.add_argument("--compare", action="store_true",
                        help="also run each estimator with the chunk loop of c73f2d1")
    parser.add_argument("--cap-mib", type=float, default=6144,
                        help="stop c73f2d1's loop once the process holds this many MiB "
                             "(default 6144; it reached 15,885 on the VM)")
    parser.add_argument("--chapter", action="append", default=[],
                        help="execute this chapter of book/ instead (repeatable)")
    parser.add_argument("--train", action="store_true",
                        help="chapters: train the models the cache lacks, as the build does")
    parser.add_argument("--timeout", type=int, default=3600, help="seconds per cell (chapters)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    common.add_common_options(parser)
    args = parser.parse_args(argv)
    if args.tiny:
        args.num_images, args.num_samples = 200, 4
    return args


def main(argv=None):
    args = parse_args(argv)
    common.set_threads(args.threads)
    if args.child:
        print(json.dumps(one_estimator(*json.loads(args.child))))
        return None
    print(f"# bench_memory | {common.describe_machine()}")
    if args.chapter:
        return {name: run_chapter(name, args.timeout, args.train) for name in args.chapter}
    return run_estimators(args)


if __name__ == "__main__":
    main()
