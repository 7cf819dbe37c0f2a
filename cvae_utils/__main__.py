"""Command line: ``python -m cvae_utils train --quadrants 1 2 3 --budget paper``.

Trains the baseline and the CVAE for each quadrant count (or loads them from the cache) so that a
book build afterwards finds every model ready. Progress is shown in the terminal.
"""
from __future__ import annotations

import argparse
import sys
import time

import torch

from .cache import cache_dir, trained_cvae
from .config import BUDGETS, book_config, get_budget, tutorial_config
from .data import data_root, load_mnist
from .progress import show_on
from .speed import explain_precision
from .train import default_device


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cvae_utils",
                                     description="Pre-train the book's models into the cache.")
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser("train", help="train (or load) the baseline and the CVAE")
    train.add_argument("--quadrants", type=int, nargs="+", default=[1, 2, 3], choices=[1, 2, 3],
                       metavar="K", help="input quadrant counts to train, from 1 2 3 (default all)")
    train.add_argument("--budget", choices=list(BUDGETS), default=None,
                       help="run length (default: $CVAE_BUDGET, else paper)")
    train.add_argument("--data-dir", default=None, help="MNIST root (default: $CVAE_DATA_DIR)")
    train.add_argument("--cache-dir", default=None, help="model cache (default: $CVAE_CACHE_DIR)")
    train.add_argument("--device", default=None, help="torch device (default: cuda if present)")
    train.add_argument("--retrain", action="store_true", help="ignore and overwrite the cache")
    train.add_argument("--tutorial", action="store_true",
                       help="train the Pyro tutorial's configuration instead of the book's")
    args = parser.parse_args(argv)

    try:
        budget = get_budget(args.budget)
        device = torch.device(args.device) if args.device else default_device()
    except (ValueError, RuntimeError) as error:  # a bad CVAE_BUDGET, or --device cpux
        parser.error(str(error))
    config = tutorial_config() if args.tutorial else book_config()
    print(f"budget {budget.name}: {budget.num_train} training / {budget.num_val} validation "
          f"images, up to {budget.max_epochs} epochs", flush=True)
    print(f"data root {data_root(args.data_dir)}; cache {cache_dir(args.cache_dir)}", flush=True)
    print(f"precision of the CVAE's training: {explain_precision(config.precision, device)}",
          flush=True)
    data = load_mnist(args.data_dir)
    show_on(sys.stderr)  # a line per epoch
    for k in args.quadrants:
        start = time.perf_counter()
        _, history = trained_cvae(k, config, budget, data, device=device, progress=True,
                                  use_cache=not args.retrain, cache=args.cache_dir)
        print(f"k={k}: CVAE best validation -ELBO {history.best_val_loss:.2f} nats at epoch "
              f"{history.best_epoch} ({time.perf_counter() - start:.1f} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
