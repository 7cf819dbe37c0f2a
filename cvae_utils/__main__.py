"""Command line: ``python -m cvae_utils train`` fills the model cache before a build;
``python -m cvae_utils select`` runs the recipe's selection on the validation split.

``--quadrants 1 2 3`` trains the baseline and the CVAE of each quadrant count (the default);
``--book`` trains every model the book needs at the budget (its baselines and CVAEs, the digit
classifier, the variants' models at the variants' budget). Either trains every training seed
of the tables (`cvae_utils.seeds.training_seeds`: ``CVAE_SEEDS``, else 3 at ``paper``). Where
they train is one switch (`cvae_utils.cluster`): in this process by default, ``--workers N`` on a Dask cluster of N
processes on this machine, ``--scheduler ADDRESS`` (or ``CVAE_SCHEDULER``) on an existing Dask
cluster. A line per finished epoch (in this process) and per finished model is printed. A known
error (a bad budget, an unusable cache, an unreachable scheduler) is one line and exit status 1.

``select`` (`cvae_utils.selection`) trains the recipe and each decision undone, at several
training seeds, scores them on the validation images and writes ``selection.csv`` and
``selection.md`` to ``--out``; it trains where ``train`` does (``--workers``, ``--scheduler``).
"""
from __future__ import annotations

import argparse
import sys

import torch

from . import settings
from .book_models import book_models
from .cache import CheckpointError, cache_dir
from .cluster import ClusterError, train_models
from .config import BUDGETS, book_config, get_budget, tutorial_config
from .data import MNISTDataError, data_root, load_mnist
from .files import WriteError
from .progress import show_on, stop_showing
from .selection import (DECISIONS, check_decisions, format_selection, selection_table,
                        write_selection)
from .seeds import seeds_origin, training_seeds
from .speed import explain_precision
from .train import default_device
from .variants import variants_budget


def _add_common(command: argparse.ArgumentParser) -> None:
    """The arguments ``train`` and ``select`` share: the budget, the folders, the device, and
    where the models train."""
    command.add_argument("--budget", choices=list(BUDGETS), default=None,
                         help="run length (default: $CVAE_BUDGET, else paper)")
    command.add_argument("--data-dir", default=None, help="MNIST root (default: $CVAE_DATA_DIR)")
    command.add_argument("--cache-dir", default=None,
                         help="model cache (default: $CVAE_CACHE_DIR)")
    command.add_argument("--device", default=None,
                         help="torch device in this process (default: cuda if present)")
    where = command.add_mutually_exclusive_group()
    where.add_argument("--workers", type=int, default=None, metavar="N",
                       help="train on a Dask LocalCluster of N single-thread processes here")
    where.add_argument("--scheduler", default=None, metavar="ADDRESS",
                       help="train on the Dask cluster of this scheduler, e.g. "
                            "tcp://127.0.0.1:8786 (default: $CVAE_SCHEDULER)")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m cvae_utils",
                                     description="Pre-train the book's models into the cache.")
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser("train", help="train (or load) the models of the book")
    what = train.add_mutually_exclusive_group()
    what.add_argument("--quadrants", type=int, nargs="+", default=None, choices=[1, 2, 3],
                      metavar="K", help="the baseline and CVAE for these input quadrant counts, "
                                        "from 1 2 3 (default all)")
    what.add_argument("--book", action="store_true",
                      help="every model the book needs at the budget: baselines, CVAEs, the "
                           "digit classifier and the variants (at $CVAE_VARIANTS_BUDGET)")
    _add_common(train)
    train.add_argument("--retrain", action="store_true", help="ignore and overwrite the cache")
    train.add_argument("--tutorial", action="store_true",
                       help="the Pyro tutorial's configuration instead of the book's")
    select = commands.add_parser("select", help="score each decision of the recipe on the "
                                                 "validation split (leave-one-out)")
    _add_common(select)
    select.add_argument("--seeds", type=int, default=2, metavar="N",
                        help="training seeds per model, at least 2 (default 2)")
    select.add_argument("--quadrants", type=int, nargs="+", default=[1], choices=[1, 2, 3],
                        metavar="K", help="quadrant counts for the CVAE's decisions (default 1; "
                                          "the baseline's are scored at 1 2 3)")
    select.add_argument("--decision", action="append", default=None, metavar="NAME",
                        help="only this decision (repeatable; default all): "
                             + "; ".join(d.name for d in DECISIONS))
    select.add_argument("--out", default=".", help="folder for selection.csv and selection.md")
    return parser


def _train(args, budget, device, scheduler) -> None:
    config = tutorial_config() if args.tutorial else book_config()
    print(f"budget {budget.name}: {budget.num_train} training / {budget.num_val} "
          f"validation images, up to {budget.max_epochs} epochs", flush=True)
    print(f"data root {data_root(args.data_dir)}; cache {cache_dir(args.cache_dir)}",
          flush=True)
    print(f"precision of the training: {explain_precision(config.precision, device)}",
          flush=True)
    print(f"training seeds: {len(training_seeds(budget))} per model of the tables "
          f"({seeds_origin(budget)})", flush=True)
    models = book_models(budget, variants_budget(book=budget), config, args.cache_dir)
    if not args.book:
        quadrants = set(args.quadrants or (1, 2, 3))
        models = [m for m in models if "book" in m.groups and m.num_quadrants in quadrants]
    data = load_mnist(args.data_dir)
    train_models(models, data, workers=args.workers, scheduler=scheduler, cache=args.cache_dir,
                 retrain=args.retrain, device=device, log=lambda line: print(line, flush=True))


def _select(args, budget, device, scheduler) -> None:
    frame = selection_table(args.decision, args.seeds, args.quadrants, budget,
                            load_mnist(args.data_dir), cache=args.cache_dir, workers=args.workers,
                            scheduler=scheduler, device=device,
                            log=lambda line: print(line, flush=True))
    for path in write_selection(frame, args.out):
        print(f"wrote {path}", flush=True)
    print(format_selection(frame), flush=True)


# what each command says when interrupted
_INTERRUPTED = {
    "train": "the models finished so far are in the cache; run the same command again to "
             "train the rest",
    "select": "the models and scores finished so far are in the cache; run the same command "
              "again to go on",
}


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        budget = get_budget(args.budget)
        device = torch.device(args.device) if args.device else default_device()
        if args.workers is not None and args.workers < 1:
            raise ValueError(f"--workers must be 1 or more, got {args.workers}")
        if args.command == "select":
            check_decisions(args.decision)
            if args.seeds < 2:
                raise ValueError(f"--seeds must be 2 or more, got {args.seeds}")
    except (ValueError, RuntimeError) as error:  # a bad CVAE_BUDGET, or --device cpux
        parser.error(str(error))
    scheduler = args.scheduler or (None if args.workers else settings.scheduler())
    run = _select if args.command == "select" else _train
    try:
        listener = show_on(sys.stderr)  # a line per epoch
        try:
            run(args, budget, device, scheduler)
        finally:
            stop_showing(listener)
    except (ClusterError, CheckpointError, MNISTDataError, WriteError, OSError,
            ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"interrupted: {_INTERRUPTED[args.command]}", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
