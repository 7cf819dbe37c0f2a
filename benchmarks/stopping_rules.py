"""Where early stopping with a minimum improvement would stop the CVAE runs of a model cache.

    python benchmarks/stopping_rules.py DIR [--budget paper] [--min-delta 0 0.02 0.05 0.1]

For every CVAE checkpoint in the model cache DIR at ``--budget`` (``cvae-k*-<budget>-*.pt``) it
replays `cvae_utils.train.early_stopping_loop`, the loop `train_cvae` runs, over the validation
losses the run recorded, once for each ``--min-delta`` (`CVAEConfig.cvae_min_delta`, nats per
image), with the run's own patience and KL warm-up. It prints, per threshold: the epochs the run
would have trained, the epoch whose weights it would keep, and that epoch's validation loss
against the best of the whole recorded run; and the epochs of all runs together.

Training is deterministic for a given seed and thread count, so a run with a threshold trains
exactly the epochs of the recorded run up to the one where it stops: the replay is the run. A
run with a threshold never trains longer than the same run without one (an epoch more than
``d`` below the last epoch that reset the patience is below every loss since, so it also resets
the patience without a threshold), so a run recorded without a threshold can be replayed with
any. Between two thresholds above 0 there is no such order: losses of 10, 9.94, 9.89, 9.895,
9.895 with patience 2 stop after epoch 4 with 0.05 and after epoch 5 with 0.1. A replay that
would need epochs beyond the recorded ones says so. Nothing is trained and nothing is written;
the checkpoints are read with ``weights_only=True``.

Example (what benchmarks/README.md reports, on the cache of a paper build made with
``bench_book.py --keep DIR`` before the book set ``cvae_min_delta``):
    python benchmarks/stopping_rules.py /tmp/paperbook6/models
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from cvae_utils.config import CVAEConfig
from cvae_utils.train import early_stopping_loop, warmup_epochs


class _BeyondRecord(Exception):
    """The replay asked for an epoch that the recorded run did not train."""


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("cache", type=Path, help="a model cache folder (CVAE_CACHE_DIR)")
    parser.add_argument("--budget", default="paper", choices=("smoke", "quick", "paper"))
    parser.add_argument("--min-delta", type=float, nargs="+", default=[0.0, 0.02, 0.05, 0.1])
    return parser.parse_args(argv)


def replay(losses: list[float], config: CVAEConfig, max_epochs: int,
           min_delta: float) -> tuple[int, int, float] | None:
    """(epochs trained, best epoch, its loss) of the loop over ``losses``; None if it would
    need more epochs than were recorded."""
    module = torch.nn.Linear(1, 1, bias=False)
    epoch = {"now": 0}

    def start_epoch(e):
        if e > len(losses):
            raise _BeyondRecord
        epoch["now"] = e

    try:
        history = early_stopping_loop(
            module, config, max_epochs, num_train=1, train_epoch=lambda idx: 0.0,
            val_loss_fn=lambda: losses[epoch["now"] - 1], desc="replay", progress=False,
            callback=None, start_epoch=start_epoch,
            warmup_epochs=warmup_epochs(config, max_epochs), batch_size=1,
            patience=config.cvae_patience_epochs, min_delta=min_delta)
    except _BeyondRecord:
        return None
    return history.num_epochs, history.best_epoch, history.best_val_loss


def main(argv=None):
    args = parse_args(argv)
    if any(d < 0 for d in args.min_delta):
        sys.exit(f"--min-delta values must be >= 0, got {args.min_delta}")
    paths = sorted(args.cache.glob(f"cvae-k*-{args.budget}-*.pt"))
    if not paths:
        sys.exit(f"no CVAE checkpoints at the {args.budget} budget in {args.cache} "
                 f"(expected files named cvae-k<k>-{args.budget}-<hash>.pt)")
    totals = {d: 0 for d in args.min_delta}
    complete = {d: True for d in args.min_delta}
    for path in paths:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        key = json.loads(checkpoint["key"])
        config = CVAEConfig(**key["config"])
        max_epochs = key["budget"]["max_epochs"]
        losses = checkpoint["history"]["val_loss"]
        best = min(losses)
        print(f"{path.name}: k={key['num_quadrants']}, {len(losses)} epochs recorded "
              f"(best {losses.index(best) + 1}: {best:.3f}), patience "
              f"{config.cvae_patience_epochs}, its own cvae_min_delta "
              f"{key['config'].get('cvae_min_delta', 0.0)}")
        for d in args.min_delta:
            result = replay(losses, config, max_epochs, d)
            if result is None:
                complete[d] = False
                print(f"  min_delta {d:<5g}: would train beyond the {len(losses)} recorded epochs")
                continue
            epochs, best_epoch, value = result
            totals[d] += epochs
            print(f"  min_delta {d:<5g}: stops after {epochs:3d} epochs, keeps epoch "
                  f"{best_epoch:3d}: {value:.3f} ({value - best:+.3f} against the whole run)")
    print("epochs of all runs together: " + ", ".join(
        f"min_delta {d:g}: {totals[d]}" + ("" if complete[d] else " + unrecorded")
        for d in args.min_delta))


if __name__ == "__main__":
    main()
