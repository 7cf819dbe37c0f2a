"""Wall time and peak memory of a whole book build, or of training every model, from scratch.

Two measurements (``--what``):

  book   ``jupyter-book build book/`` into a temporary output folder with an empty model cache:
         every chapter executes, every model is trained, every table and figure computed;
  train  ``python -m cvae_utils train --quadrants 1 2 3`` with an empty model cache: the
         baselines and CVAEs of the three settings only (the book's configuration; ``--quadrants``
         picks fewer).

The budget is ``--budget`` (default ``paper``). The model cache is a fresh temporary folder
unless ``--cache DIR`` is given (then models already there are reused: that times a rebuild).
The peak memory is the largest resident set of any process of the run (the build and the
Jupyter kernels it starts), from ``getrusage(RUSAGE_CHILDREN).ru_maxrss``. Per-chapter times
come from the Jupyter cache of the build (in the order the chapters ran).

Example (what the README reports):  python benchmarks/bench_book.py --what book --budget paper
Smoke test (``--tiny``): ``--what train --budget smoke --quadrants 1``, a fresh cache.
"""
from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import common

ROOT = Path(__file__).resolve().parents[1]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--what", choices=("book", "train"), default="book")
    parser.add_argument("--budget", choices=("smoke", "quick", "paper"), default="paper")
    parser.add_argument("--cache", default=None,
                        help="model cache to use (default: a fresh temporary folder)")
    parser.add_argument("--log", default=None, help="write the run's output to this file")
    parser.add_argument("--keep", default=None,
                        help="copy the built HTML and the model cache (with its tables) here")
    parser.add_argument("--quadrants", type=int, nargs="+", default=[1, 2, 3], choices=(1, 2, 3),
                        help="with --what train: the quadrant counts to train (default 1 2 3)")
    common.add_common_options(parser, threads=False)
    args = parser.parse_args(argv)
    if args.tiny:
        args.what, args.budget, args.quadrants = "train", "smoke", [1]
    return args


def jupyter_book() -> str:
    """The jupyter-book of this interpreter's environment (activated or not), else of PATH."""
    beside = Path(sys.executable).parent / "jupyter-book"
    found = str(beside) if beside.exists() else shutil.which("jupyter-book")
    if found is None:
        raise SystemExit("jupyter-book not found next to this Python or on PATH: "
                         "pip install -r requirements.txt")
    return found


def print_chapter_times(jupyter_cache: Path) -> None:
    """Each chapter's execution time, from the Jupyter cache the build wrote (MyST-NB records
    it as ``execution_seconds``)."""
    try:
        from jupyter_cache import get_cache

        records = get_cache(str(jupyter_cache)).list_cache_records()
    except Exception as error:  # no cache (a failed build) or another jupyter-cache
        print(f"per-chapter times unavailable: {error}")
        return
    print("chapter execution times (s):")
    rows = sorted((r.created, Path(r.uri).stem, r.data.get("execution_seconds")) for r in records)
    for _, name, seconds in rows:
        print(f"  {name:<14} {seconds:8.1f}" if seconds is not None else f"  {name:<14}       ?")


def main(argv=None):
    args = parse_args(argv)
    print(f"# bench_book | {common.describe_machine()}")
    with tempfile.TemporaryDirectory(prefix="cvae-bench-book-") as tmp:
        env = dict(os.environ, CVAE_BUDGET=args.budget, MPLBACKEND="Agg",
                   CVAE_CACHE_DIR=args.cache or str(Path(tmp) / "models"))
        if args.what == "book":
            command = [jupyter_book(), "build", str(ROOT / "book"), "--path-output",
                       str(Path(tmp) / "build")]
        else:
            command = [sys.executable, "-m", "cvae_utils", "train", "--quadrants",
                       *map(str, args.quadrants), "--budget", args.budget]
        print(f"# {' '.join(command)}  (CVAE_BUDGET={args.budget}, cache "
              f"{'given' if args.cache else 'fresh'})", flush=True)
        log = open(args.log, "w") if args.log else subprocess.DEVNULL
        start = time.perf_counter()
        result = subprocess.run(command, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        seconds = time.perf_counter() - start
        if args.log:
            log.close()
        peak_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024.0
        if args.what == "book":
            # one execution cache per pair of budgets (book/_ext/book_build.py); a fresh build has one
            caches = sorted((Path(tmp) / "build" / "_build" / ".jupyter_cache").glob("budget-*"))
            print_chapter_times(caches[0] if caches else Path(tmp) / "build" / "_build")
        built = Path(tmp) / "build" / "_build" / "html"
        pages = sorted(p.name for p in built.glob("*.html")) if built.exists() else []
        if args.keep:
            keep = Path(args.keep)
            if built.exists():
                shutil.copytree(built, keep / "html", dirs_exist_ok=True)
            models = Path(env["CVAE_CACHE_DIR"])
            if models.exists() and not args.cache:
                shutil.copytree(models, keep / "models", dirs_exist_ok=True)
            print(f"kept the HTML and the models in {keep}")
    print(f"exit status {result.returncode}")
    print(f"wall time {seconds:.0f} s ({seconds / 60:.1f} min)")
    print(f"peak resident memory of any process {peak_mib:.0f} MiB ({peak_mib / 1024:.2f} GiB)")
    if args.what == "book":
        print(f"HTML pages: {len(pages)}")
    return result.returncode


if __name__ == "__main__":
    sys.exit(main())
