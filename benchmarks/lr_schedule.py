"""Fewer epochs by another learning-rate schedule? One CVAE trained with a cosine schedule, scored.

    python benchmarks/lr_schedule.py --quadrants 1 --epochs 50 --lr 1.5e-3 [--cache DIR]

Trains the book's CVAE (`book_config()`, every other field as the book has it) for k input
quadrants on the paper split for exactly ``--epochs`` epochs, with the learning rate annealed from
``--lr`` to 0 along a half cosine over those epochs instead of the book's fixed decay per epoch
(``lr_decay``): the usual way to spend a short, fixed budget of epochs. Early stopping is off (its
patience is larger than the run), so the run trains every epoch; the weight average and the KL
warm-up are the book's. Then it prints the validation loss of the last epoch, the training time
and the test CLL by importance sampling (S = 100) and the -ELBO (S = 10), the estimators of the
book's table, to set against the book's run (100 epochs at k = 1: validation 66.92, IS 64.47).

How the schedule gets in: `cvae_utils.train.train_cvae` calls its optimiser's ``decay_lr()``
before every epoch after the first; this script hands it a `JointAdam` whose ``decay_lr`` sets the
cosine's value instead. Nothing else of the training changes.

The baseline comes from the model cache (``--cache``, default ``CVAE_CACHE_DIR``), trained into it
if it is not there. Smoke test (``--tiny``): the smoke budget, 2 epochs, S = 2.
"""
from __future__ import annotations

import argparse
import math
import time

import common
import cvae_utils.train as training
from cvae_utils.cache import trained_baseline
from cvae_utils.config import book_config, get_budget
from cvae_utils.data import load_mnist, make_quadrant_data
from cvae_utils.evaluate import cvae_importance_sampling, cvae_neg_elbo
from cvae_utils.optim import JointAdam


def cosine_lr(lr: float, epoch: int, epochs: int) -> float:
    """The learning rate of ``epoch`` (1 to ``epochs``): ``lr`` at the first, falling along a
    half cosine towards 0 (reached one epoch after the last)."""
    return lr * 0.5 * (1 + math.cos(math.pi * (epoch - 1) / epochs))


class CosineAdam(JointAdam):
    """`JointAdam` whose ``decay_lr``, called before epochs 2, 3, ..., sets the cosine's rate."""

    def __init__(self, lr: float, gamma: float = 1.0, *, epochs: int):
        super().__init__(lr, gamma)
        self.base_lr, self.epochs, self.epoch = lr, epochs, 1

    def decay_lr(self) -> None:
        self.epoch += 1
        if self.optimizer is not None:
            for group in self.optimizer.param_groups:
                group["lr"] = cosine_lr(self.base_lr, self.epoch, self.epochs)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quadrants", type=int, default=1, choices=(1, 2, 3))
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--lr", type=float, default=1.5e-3, help="the rate of the first epoch")
    parser.add_argument("--cache", default=None, help="model cache for the baseline")
    common.add_common_options(parser)
    args = parser.parse_args(argv)
    if args.epochs < 1 or not args.lr > 0:
        parser.error("--epochs must be >= 1 and --lr > 0")
    return args


def main(argv=None):
    args = parse_args(argv)
    threads = common.set_threads(args.threads)
    budget = get_budget("smoke" if args.tiny else "paper")
    epochs, samples = (2, 2) if args.tiny else (args.epochs, 100)
    config = book_config().replace(lr=args.lr, patience=epochs + 1)
    print(f"# lr_schedule | {common.describe_machine()}")
    print(f"# k = {args.quadrants}, {budget.name} budget, {epochs} epochs, cosine from lr "
          f"{args.lr:g} to 0, {threads} threads")
    data = load_mnist(download=False).subset(budget)
    k = args.quadrants
    baseline, _ = trained_baseline(k, config, budget, data, cache=args.cache)
    train, val, test = (make_quadrant_data(split, k) for split in (data.train, data.val, data.test))
    optimizers = []

    def make_optimizer(lr, gamma=1.0):
        optimizers.append(CosineAdam(lr, gamma, epochs=epochs))
        return optimizers[-1]

    training.JointAdam = make_optimizer  # what train_cvae builds its optimiser with
    try:
        start = time.perf_counter()
        cvae, history = training.train_cvae(train, val, baseline, config, max_epochs=epochs,
                                            progress=False)
        seconds = time.perf_counter() - start
    finally:
        training.JointAdam = JointAdam
    (optimizer,) = optimizers
    assert optimizer.epoch == history.num_epochs == epochs, "the schedule did not run every epoch"
    print(f"trained {history.num_epochs} epochs in {seconds:.0f} s ({seconds / epochs:.2f} s per "
          f"epoch); the last epoch's lr {optimizer.optimizer.param_groups[0]['lr']:.2e}")
    print(f"validation loss: epoch {epochs} {history.val_loss[-1]:.2f}, best "
          f"{history.best_val_loss:.2f} (epoch {history.best_epoch})")
    print(cvae_importance_sampling(cvae, test, samples))
    print(cvae_neg_elbo(cvae, test, min(samples, 10)))


if __name__ == "__main__":
    main()
