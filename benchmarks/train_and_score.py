"""Train one setting of a configuration and score it on the test set: one row of a recipe table.

    python benchmarks/train_and_score.py NAME --quadrants 1 --changes '{"cvae_lr": 0.002}'
    python benchmarks/train_and_score.py B1 --quadrants 1 2 3 --baseline-only \
        --changes '{"batch_size": 256, "baseline_precision": "bf16"}'

The configuration is `book_config()` with ``--changes`` (a JSON object of `CVAEConfig` fields)
applied. For each quadrant count the baseline and, unless ``--baseline-only``, the CVAE come
from the model cache (``CVAE_CACHE_DIR``; trained now if missing) at ``--budget`` (default
paper). It prints each model's epochs and validation losses, then the test-set table: the
baseline's exact negative CLL, and the CVAE's -ELBO, Monte Carlo and importance-sampling
estimates (`cvae_utils.evaluate.cll_table`), in nats per image with standard errors. Every row of
the recipe tables in `benchmarks/README.md` is one such run (the earlier sessions used a copy
of this script outside the repository). Nothing is written outside the model cache.
"""
from __future__ import annotations

import argparse
import json
import time

from cvae_utils import load_mnist
from cvae_utils.cache import trained_baseline, trained_cvae
from cvae_utils.config import CVAEConfig, book_config, get_budget
from cvae_utils.data import make_quadrant_data
from cvae_utils.evaluate import baseline_ncll, cll_table, format_table


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("name", help="a label printed on every line")
    parser.add_argument("--quadrants", type=int, nargs="+", default=[1], choices=(1, 2, 3))
    parser.add_argument("--changes", default="{}",
                        help="JSON object of CVAEConfig fields changed in book_config()")
    parser.add_argument("--budget", default="paper", choices=("smoke", "quick", "paper"))
    parser.add_argument("--baseline-only", action="store_true",
                        help="train and score the baselines only")
    return parser.parse_args(argv)


def config_from(changes: str) -> CVAEConfig:
    try:
        fields = json.loads(changes)
    except json.JSONDecodeError as error:
        raise SystemExit(f"--changes is not valid JSON ({error}): {changes!r}") from None
    if not isinstance(fields, dict):
        raise SystemExit(f"--changes must be a JSON object of CVAEConfig fields, got {changes!r}")
    try:
        return book_config().replace(**fields)
    except TypeError as error:  # an unknown field
        raise SystemExit(f"--changes: {error}") from None


def summary(name: str, what: str, history, seconds: float) -> str:
    return (f"{name} {what}: epochs {history.num_epochs} (best {history.best_epoch}), best "
            f"validation loss {history.best_val_loss:.3f}, {seconds:.0f} s "
            f"({sum(history.seconds) / history.num_epochs:.2f} s per epoch)")


def main(argv=None):
    args = parse_args(argv)
    config, budget = config_from(args.changes), get_budget(args.budget)
    print(f"# {args.name}: book_config() with {args.changes} at the {budget.name} budget\n"
          f"# {config}", flush=True)
    data = load_mnist()
    for k in args.quadrants:
        start = time.perf_counter()
        baseline, history = trained_baseline(k, config, budget, data, progress=False)
        print(summary(args.name, f"baseline k={k}", history, time.perf_counter() - start),
              flush=True)
        if args.baseline_only:
            test = make_quadrant_data(data.subset(budget).test, k)
            estimate = baseline_ncll(baseline, test)
            print(f"{args.name} baseline k={k}: test NN {estimate.mean:.2f} ± "
                  f"{estimate.stderr:.2f} nats", flush=True)
            continue
        start = time.perf_counter()
        _, history = trained_cvae(k, config, budget, data, progress=False)
        print(summary(args.name, f"cvae k={k}", history, time.perf_counter() - start),
              flush=True)
    if not args.baseline_only:
        start = time.perf_counter()
        table = cll_table(tuple(args.quadrants), config, budget, data, progress=False)
        print(f"{args.name}: test-set table in {time.perf_counter() - start:.0f} s")
        print(format_table(table).to_string(), flush=True)


if __name__ == "__main__":
    main()
