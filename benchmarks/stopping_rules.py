"""Where other early-stopping rules would have stopped the CVAE runs of a model cache.

    python benchmarks/stopping_rules.py DIR [--budget paper] [--patience 6 5 4 3]
                                            [--min-delta 0.05 0.1]

For every CVAE checkpoint of the model cache DIR at ``--budget`` (``cvae-k*-<budget>-*.pt``,
read with ``weights_only=True``) it replays `cvae_utils.train.fit`, the loop `train_cvae` runs,
over the validation losses the run recorded, once for each pair of ``--patience`` and
``--min-delta`` (with the book's KL warm-up), and prints: the epochs the run would have trained,
the epoch it would keep, and how much worse that epoch's validation loss is than the best of the
recorded run; then the epochs of all runs together and their share of the recorded ones.

Training is deterministic for a seed and a thread count, so a run under another rule trains the
epochs of the recorded run up to the one where it stops: the replay is that run, as long as the
rule stops no later than the recorded one (a replay that needs more epochs says so). The cost of
stopping earlier is measured in validation loss; the CLL of the kept epoch is not (its weights
were not kept), and at k = 1 the CLL table has about half a nat of room under its target.

Smoke test (``--tiny``): a made-up run of 30 epochs instead of a cache.
"""
from __future__ import annotations

import argparse
import dataclasses
import itertools
import math
import re
import sys
from pathlib import Path

import torch

import common
from cvae_utils.config import BUDGETS, book_config
from cvae_utils.train import fit


class BeyondRecord(Exception):
    """The replay asked for an epoch the recorded run did not train."""


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("cache", type=Path, nargs="?", help="a model cache folder (CVAE_CACHE_DIR)")
    parser.add_argument("--budget", default="paper", choices=list(BUDGETS))
    parser.add_argument("--patience", type=int, nargs="+", default=[6, 5, 4, 3])
    parser.add_argument("--min-delta", type=float, nargs="+", default=[0.05, 0.1])
    common.add_common_options(parser, threads=False)
    args = parser.parse_args(argv)
    if args.cache is None and not args.tiny:
        parser.error("name the model cache folder, e.g. ~/.cache/cvae_utils/models")
    return args


def replay(val_loss: list[float], patience: int, min_delta: float, warmup: int,
           max_epochs: int) -> tuple[int, int]:
    """(epochs trained, epoch kept) of `fit` under this rule and cap, over recorded validation
    losses; `BeyondRecord` if the rule trains longer than the record."""
    record = iter(val_loss)

    def validate():
        try:
            return next(record)
        except StopIteration:
            raise BeyondRecord from None

    history = fit(torch.nn.Linear(1, 1), step=lambda idx: 0.0, validate=validate, num_train=1,
                  batch_size=1, max_epochs=max_epochs, patience=patience, seed=0,
                  min_delta=min_delta, warmup_epochs=warmup, progress=False)
    return history.num_epochs, history.best_epoch


def recorded_runs(cache: Path, budget: str) -> dict[str, list[float]]:
    runs = {}
    for path in sorted(cache.glob(f"cvae-k*-{budget}-*.pt")):
        payload = torch.load(path, map_location="cpu", weights_only=True)
        runs[re.match(r"cvae-(k\d)-", path.name).group(1) + f" ({path.name[-19:-3]})"] = \
            list(payload["history"]["val_loss"])
    return runs


def main(argv=None) -> int:
    args = parse_args(argv)
    config = book_config()
    budget = BUDGETS[args.budget]
    warmup = config.warmup_epochs(budget.max_epochs)
    if args.tiny:
        runs = {"k1 (made up)": [60 + 40 * math.exp(-e / 3) for e in range(30)]}
        budget = dataclasses.replace(budget, max_epochs=30)
    else:
        runs = recorded_runs(args.cache, args.budget)
        if not runs:
            print(f"no CVAE checkpoints of budget {args.budget} in {args.cache} "
                  f"(cvae-k*-{args.budget}-*.pt)", file=sys.stderr)
            return 1
    recorded = sum(len(v) for v in runs.values())
    print(f"# stopping_rules | {common.describe_machine()}")
    print(f"# {len(runs)} recorded runs, {recorded} epochs; the book's rule: patience "
          f"{config.patience}, min_delta {config.min_delta}, KL warm-up {warmup} epochs")
    for name, losses in runs.items():
        print(f"  {name}: {len(losses)} epochs, best validation loss {min(losses):.3f} at epoch "
              f"{losses.index(min(losses)) + 1}")
    print(f"{'patience':>8} {'min_delta':>9}  " + "  ".join(f"{n[:2]:>22}" for n in runs)
          + f"  {'all epochs':>14}")
    for patience, min_delta in itertools.product(args.patience, args.min_delta):
        cells, total = [], 0
        for losses in runs.values():
            try:
                epochs, kept = replay(losses, patience, min_delta, warmup, budget.max_epochs)
            except BeyondRecord:
                cells.append(f"{'beyond the record':>22}")
                total = math.nan
                continue
            total += epochs
            cells.append(f"{epochs:>4} ep, kept {kept:>3} +{losses[kept - 1] - min(losses):.3f}")
        share = "-" if math.isnan(total) else f"{total:>5.0f} ({100 * total / recorded:3.0f} %)"
        print(f"{patience:>8} {min_delta:>9}  " + "  ".join(cells) + f"  {share:>14}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
