"""Every published number the book compares with, each with its source (chapters "Evaluation"
and "Variants of the model").

- `PUBLISHED`: the negative CLL tables of the Pyro tutorial and of the TorchZQ implementation,
  each row with the key of the row of `cvae_utils.tables.cll_table` it is comparable with;
  `published_table` shows them as a DataFrame, `cvae_utils.tables.format_table` sets them beside
  this book's table and `cvae_utils.plot_results.plot_cll_comparison` draws them.
- `TORCHZQ_ABLATION`: TorchZQ's ablation, each row with the variant of ours that makes the same
  change; `cvae_utils.variants.torchzq_ablation` shows it beside the variants table.

Sohn et al. (2015) report a CLL table of their own for this task. Its numbers are not held here:
none of the reference material the project works from reproduces them, so they could not be
checked against a source; add them here, with the table they come from, when they can be.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

from .data import quadrant_label

if TYPE_CHECKING:  # imported where used: pandas is slow to import
    import pandas as pd

__all__ = ["Published", "PUBLISHED", "published_table", "TORCHZQ_ABLATION"]


class Published(NamedTuple):
    """One published row: its label in the source, the key of the row of `cll_table` whose
    estimator it reports (None if none), and its numbers for 1, 2, 3 input quadrants (None
    where the source gives none), negative CLL in nats per image."""

    label: str
    estimator: str | None
    values: tuple[float | None, float | None, float | None]


PUBLISHED: dict[str, dict[str, Published]] = {
    # The Pyro tutorial "Conditional Variational Auto-encoder" (https://pyro.ai/examples/cvae.html)
    # and its upstream repository's README (https://github.com/ucals/cvae), CLL table. Its "CVAE
    # (Monte Carlo)" row is in fact the negative ELBO from the recognition network, measured on the
    # test set that also chose the early-stopping epoch (see /work/shared/seeds/README.md). Its gap
    # is taken against that -ELBO, so it matches no gap of ours.
    "Pyro tutorial": {
        "baseline": Published("NN baseline", "baseline", (100.4, 61.9, 25.4)),
        "neg_elbo": Published('CVAE "Monte Carlo" (in fact -ELBO)', "neg_elbo",
                              (71.8, 51.0, 24.2)),
        "gap": Published("Performance gap (NN - CVAE)", None, (28.6, 10.9, 1.2)),
    },
    # TorchZQ implementation (README; runs at https://wandb.ai/enhuiz/tzq-cvae): importance-sampled
    # NCLL with S = 100 after 20 epochs. The README gives one number per method without naming the
    # quadrant count; their size matches the 1-quadrant setting, where they are placed.
    "TorchZQ": {
        "baseline": Published("Baseline", "baseline", (112.382, None, None)),
        "importance": Published("CVAE IS (S=100)", "importance", (72.255, None, None)),
        "importance_best": Published(
            "CVAE IS (S=100), best variant (baseline trained jointly from scratch)",
            "importance", (67.813, None, None)),
    },
}

# The ablation table of the TorchZQ implementation (README of https://github.com/enhuiz/cvae, runs
# at https://wandb.ai/enhuiz/tzq-cvae): importance-sampled NCLL, S = 100, in nats, one setting
# (one visible quadrant), every model trained for 20 epochs with batch size 32 and learning rate
# 1e-3, without KL warm-up, the decoder reading z alone unless the row says otherwise. Per row:
# their row name, their number, the key of our variant that makes the same change (None if none
# does), and how close the correspondence is ("same", "closest" or None).
TORCHZQ_ABLATION: tuple[tuple[str, float, str | None, str | None], ...] = (
    ("Baseline", 112.382, "baseline", "same"),
    ("CVAE (w/ conditioned decoder, w/o baseline)", 83.745, "no_baseline_prior", "closest"),
    ("CVAE (w/ conditioned decoder)", 79.524, "book", "closest"),
    ("CVAE (w/o conditioned prior)", 76.024, None, None),
    ("CVAE", 72.255, "pyro_tutorial", "closest"),
    ("CVAE (w/o baseline)", 70.868, "no_baseline_prior", "closest"),
    ("CVAE (w/ jointly trained baseline from the pretrained)", 69.352, "joint", "closest"),
    ("CVAE (w/ jointly trained baseline from scratch)", 67.813, None, None),
)


def published_table() -> "pd.DataFrame":
    """`PUBLISHED` as a DataFrame: index (source, method), the row keys of `PUBLISHED`; columns
    "label", "estimator" (the `cll_table` row it is comparable with, missing if none), then "1
    quadrant", "2 quadrants", "3 quadrants" (NaN where a source gives no number)."""
    import pandas as pd

    inputs = [quadrant_label(k) for k in (1, 2, 3)]
    records = {(source, key): {"label": row.label, "estimator": row.estimator,
                               **{label: float("nan") if value is None else value
                                  for label, value in zip(inputs, row.values)}}
               for source, rows in PUBLISHED.items() for key, row in rows.items()}
    frame = pd.DataFrame.from_dict(records, orient="index",
                                   columns=["label", "estimator", *inputs])
    frame.index = pd.MultiIndex.from_tuples(frame.index, names=["source", "method"])
    return frame
