"""The book's cached table of negative CLL, `cll_table`, and the machinery every table shares.

Chapter "Evaluation" explains and shows `cll_table`; chapter "Variants of the model" shows
`cvae_utils.variants.variants_table`, built with the machinery here. Both score trained models on
the test split with the estimators of `cvae_utils.evaluate`, and both are built, stored and read
by the same few functions here:

- Rows are indexed by stable keys, never by their labels: `CLL_ROWS` ("baseline", "neg_elbo",
  "mc_prior", "importance", "gap") for the CLL table; "baseline" and then the variants' keys
  (those of `cvae_utils.variants.VARIANTS`) for the variants table. ``table.loc["importance"]``
  is a row whatever its label says. The labels readers see ("CVAE IS (S=100)") are kept in
  ``attrs["labels"]`` (key -> label), and the estimator of each row in ``attrs["estimators"]``.
  `format_table` shows the labels.
- Columns are a MultiIndex (inputs, statistic): "1 quadrant", "2 quadrants", "3 quadrants" (those
  asked for) and "mean" or "stderr", in nats per image. `make_table` builds this shape.
- A table is cached beside the models it scores, as ``<kind>-<budget>-<hash>.json`` (what is read
  back) and ``.csv`` (one line per row and quadrant count, for other tools), both written
  atomically. The hash is of the table's key, derived, never bumped by hand: the keys of the
  models (`cvae_utils.cache.model_key`, which carry their configs, budget and training code), a
  digest of the evaluation code (`TABLE_CODE`, docstrings and comments left out), the rows and
  their estimators, the budget, the quadrant counts, S and the seed. A stored table whose key
  differs or that cannot be read is reported with a warning and computed again.

`format_table` shows a table as strings, optionally beside the published numbers of
`cvae_utils.published`.
"""
from __future__ import annotations

import csv
import io
import json
import math
import numbers
import os
import sys
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Mapping, Sequence

import torch

from .progress import item_done
from .cache import cache_dir, code_digest, key_digest, model_key, trained_baseline, trained_cvae
from .config import Budget, CVAEConfig, get_budget
from .data import (NUM_PIXELS, MNISTData, check_num_quadrants, load_mnist, make_quadrant_data,
                   quadrant_label)
from .evaluate import (DEFAULT_ELBO_SAMPLES, DEFAULT_NUM_SAMPLES, Estimate, baseline_ncll,
                       check_num_samples, cvae_importance_sampling, cvae_mc_prior, cvae_neg_elbo)
from .files import write_atomically
from .published import published_table
from .train import pick_device

if TYPE_CHECKING:  # imported where used: pandas is slow to import
    import pandas as pd

__all__ = [
    "CLL_ROWS", "CLL_LABELS", "CLL_ESTIMATORS", "TABLE_CODE", "cll_labels", "cll_table_key",
    "cll_table", "format_table",
    # the machinery every table shares (`cvae_utils.variants.variants_table` uses it too)
    "table_key", "table_paths", "make_table", "Scores", "store_table", "load_table", "say",
    "check_quadrant_counts",
]

# the rows of `cll_table`, in order, with their labels (`cll_labels` adds the sample counts) and
# what each row is: the baseline's exact value, an estimator of `cvae_utils.evaluate`, or the
# per-image difference of two rows
CLL_ROWS = ("baseline", "neg_elbo", "mc_prior", "importance", "gap")
CLL_LABELS = {"baseline": "NN baseline", "neg_elbo": "CVAE -ELBO", "mc_prior": "CVAE MC prior",
              "importance": "CVAE IS", "gap": "Performance gap (NN - CVAE IS)"}
CLL_ESTIMATORS = {"baseline": "exact", "neg_elbo": "neg_elbo", "mc_prior": "mc_prior",
                  "importance": "importance", "gap": "baseline - importance"}
TABLE_CODE = ("evaluate", "tables")  # the modules whose code decides a table's numbers


# ------------------------------------------------------------------------------------------------
# Labels
# ------------------------------------------------------------------------------------------------

def cll_labels(num_samples: int = DEFAULT_NUM_SAMPLES,
               elbo_samples: int = DEFAULT_ELBO_SAMPLES) -> dict[str, str]:
    """The labels of the rows of `cll_table`, by key, e.g. {"importance": "CVAE IS (S=100)"}."""
    counts = {"neg_elbo": elbo_samples, "mc_prior": num_samples, "importance": num_samples}
    return {key: f"{label} (S={counts[key]})" if key in counts else label
            for key, label in CLL_LABELS.items()}


# ------------------------------------------------------------------------------------------------
# The machinery both tables share: keys, files, frames
# ------------------------------------------------------------------------------------------------

def table_key(kind: str, models: dict, budget: Budget, num_quadrants: Sequence[int],
              code: Sequence[str] = TABLE_CODE, **settings) -> dict:
    """Everything a table's numbers depend on, as a JSON-ready dict.

    ``kind`` names the table ("cll-table"); ``models`` holds the `model_key` of every model it
    scores; ``settings`` the rest (rows, estimators, S, seed). The digest of the modules named
    by ``code`` (default `TABLE_CODE`; a table built elsewhere adds its own module) is added, so
    a changed estimator or table builder gives another key.
    """
    return {"kind": kind, "code": code_digest(*code), "budget": budget.to_dict(),
            "num_quadrants": list(num_quadrants), **settings, "models": models}


def table_paths(key: dict, cache: str | os.PathLike | None = None) -> tuple[Path, Path]:
    """The CSV and JSON files of a table: ``<kind>-<budget>-<hash of key>`` in the cache."""
    stem = cache_dir(cache) / f"{key['kind']}-{key['budget']['name']}-{key_digest(key)[:16]}"
    return stem.with_suffix(".csv"), stem.with_suffix(".json")


def make_table(means: Mapping[str, Mapping], stderrs: Mapping[str, Mapping] | None = None, *,
               index_name: str = "method", labels: Mapping[str, str] | None = None,
               estimators: Mapping[str, str] | None = None, **attrs) -> "pd.DataFrame":
    """A table in the book's shape from {row key: {quadrant count: value}}.

    The index, named ``index_name``, holds the row keys of ``means`` in order; the columns are
    (inputs, statistic) for the quadrant counts of its first row, in their order, statistic
    "mean" and "stderr" (NaN where ``stderrs`` is missing or None). Quadrant counts may be ints
    or their strings (as in JSON). ``attrs`` gets ``labels`` (key -> label, the key itself by
    default), ``estimators`` (key -> estimator) and the other keyword arguments.
    """
    import pandas as pd

    rows = list(means)
    if not rows:
        raise ValueError("a table needs at least one row")
    ks = [int(k) for k in means[rows[0]]]
    columns = pd.MultiIndex.from_product([[quadrant_label(k) for k in ks], ["mean", "stderr"]],
                                         names=["inputs", "statistic"])
    frame = pd.DataFrame(index=pd.Index(rows, name=index_name), columns=columns, dtype=float)
    for row in rows:
        row_means = {int(k): value for k, value in means[row].items()}
        row_stderrs = {int(k): value for k, value in (stderrs or {}).get(row, {}).items()}
        for k in ks:
            frame.loc[row, (quadrant_label(k), "mean")] = row_means[k]
            stderr = row_stderrs.get(k)
            frame.loc[row, (quadrant_label(k), "stderr")] = (float("nan") if stderr is None
                                                             else stderr)
    frame.attrs.update(attrs)
    frame.attrs["labels"] = {row: (labels or {}).get(row, row) for row in rows}
    if estimators is not None:
        frame.attrs["estimators"] = {row: estimators[row] for row in rows}
    return frame


class Scores:
    """The means and standard errors of a table being computed, by row key and quadrant count."""

    def __init__(self, rows: Sequence[str]):
        self.means = {row: {} for row in rows}
        self.stderrs = {row: {} for row in rows}

    def record(self, row: str, k: int, estimate: Estimate) -> None:
        self.means[row][str(k)] = estimate.mean
        self.stderrs[row][str(k)] = None if math.isnan(estimate.stderr) else estimate.stderr


def _long_csv(frame: "pd.DataFrame", ks: Sequence[int]) -> str:
    """One line per (row, quadrant count): key, label, estimator, num_quadrants, inputs, mean,
    stderr, per_pixel (the mean over the 196 * (4 - k) output pixels)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["key", "label", "estimator", "num_quadrants", "inputs", "mean", "stderr",
                     "per_pixel"])
    for row in frame.index:
        for k in ks:
            label = quadrant_label(k)
            mean = float(frame.loc[row, (label, "mean")])
            stderr = float(frame.loc[row, (label, "stderr")])
            output_pixels = NUM_PIXELS // 4 * (4 - k)                   # 196 per output quadrant
            writer.writerow([row, frame.attrs["labels"][row], frame.attrs["estimators"][row], k,
                             label, repr(mean), repr(stderr), repr(mean / output_pixels)])
    return buffer.getvalue()


def store_table(paths: tuple[Path, Path], key: dict, scores: Scores,
                frame: "pd.DataFrame") -> None:
    """Write a computed table: the long CSV, then the JSON that `load_table` reads."""
    csv_path, json_path = paths
    text = json.dumps({"key": key, "num_test": frame.attrs["num_test"],
                       "rows": list(frame.index), "labels": frame.attrs["labels"],
                       "estimators": frame.attrs["estimators"], "mean": scores.means,
                       "stderr": scores.stderrs}, indent=1, sort_keys=True)
    for path, content in ((csv_path, _long_csv(frame, key["num_quadrants"])), (json_path, text)):
        write_atomically(path, lambda tmp, content=content: tmp.write_text(content,
                                                                           encoding="utf-8"))


def load_table(json_path: Path, key: dict, index_name: str, what: str, progress: bool | None,
          **attrs) -> "pd.DataFrame | None":
    """The table stored in ``json_path`` for ``key``, or None when there is none.

    A file that cannot be read or belongs to another key is reported with a warning naming
    ``what`` (e.g. "CLL table"), and None is returned, so that the caller computes it again. The
    labels and other ``attrs`` are today's, not the file's: they are not part of the key.
    """
    if not json_path.exists():
        return None
    try:
        stored = json.loads(json_path.read_text(encoding="utf-8"))
        if stored.get("key") != key:
            raise ValueError(f"stored key {stored.get('key')} differs from {key}")
        rows = key["rows"]
        means = {row: {str(k): stored["mean"][row][str(k)] for k in key["num_quadrants"]}
                 for row in rows}
        stderrs = {row: {str(k): stored["stderr"][row][str(k)] for k in key["num_quadrants"]}
                   for row in rows}
        frame = make_table(means, stderrs, index_name=index_name,
                           **{**attrs, "num_test": stored["num_test"]})
    except (OSError, ValueError, KeyError, TypeError) as error:
        warnings.warn(f"ignoring a bad cached {what} {json_path} and computing it again: "
                      f"{error}", stacklevel=3)
        return None
    say(progress, f"loaded the {what} from {json_path}")
    return frame


def say(progress: bool | None, message: str) -> None:
    """Print ``message`` to stderr if ``progress`` is true, or is None and stderr is a terminal."""
    if progress or (progress is None and sys.stderr.isatty()):
        print(message, file=sys.stderr, flush=True)


def check_quadrant_counts(num_quadrants: Sequence[int] | int) -> list[int]:
    """The quadrant counts as a list; one count alone (``cll_table(1)``) stands for ``(1,)``."""
    if isinstance(num_quadrants, numbers.Integral) and not isinstance(num_quadrants, bool):
        num_quadrants = (num_quadrants,)
    if isinstance(num_quadrants, (str, bytes)) or not hasattr(num_quadrants, "__iter__"):
        raise ValueError(f"num_quadrants must be quadrant counts among 1, 2, 3, e.g. (1, 2, 3) "
                         f"or 1, got {num_quadrants!r}")
    ks = [check_num_quadrants(k) for k in num_quadrants]
    if not ks or len(set(ks)) != len(ks):
        raise ValueError(f"num_quadrants must list distinct quadrant counts among 1, 2, 3, got "
                         f"{tuple(num_quadrants)!r}")
    return ks


# ------------------------------------------------------------------------------------------------
# The CLL table (chapter "Evaluation")
# ------------------------------------------------------------------------------------------------

def cll_table_key(ks: Sequence[int], config: CVAEConfig, budget: Budget, *,
                  num_samples: int = DEFAULT_NUM_SAMPLES,
                  elbo_samples: int = DEFAULT_ELBO_SAMPLES, seed: int = 0, device=None) -> dict:
    """The key of `cll_table` for these settings (its file: ``table_paths(key)``)."""
    models = {str(k): {kind: model_key(kind, config, budget, k, device)
                       for kind in ("baseline", "cvae")} for k in ks}
    return table_key("cll-table", models, budget, list(ks), rows=list(CLL_ROWS),
                     estimators=CLL_ESTIMATORS, num_samples=num_samples,
                     elbo_samples=elbo_samples, seed=seed)


def cll_table(num_quadrants: Sequence[int] = (1, 2, 3), config: CVAEConfig | None = None,
              budget: Budget | str | None = None, data: MNISTData | None = None, *,
              num_samples: int = DEFAULT_NUM_SAMPLES, elbo_samples: int = DEFAULT_ELBO_SAMPLES,
              seed: int = 0, device=None, progress: bool | None = None, use_cache: bool = True,
              cache: str | os.PathLike | None = None) -> "pd.DataFrame":
    """The negative CLL table on the test split, from the cached models; cached itself.

    For each k in ``num_quadrants`` the CVAE of ``config`` (default `CVAEConfig()`, the book's)
    and the frozen baseline inside it come from `trained_cvae` (trained now if not cached) and
    are scored on the first ``budget.num_test`` MNIST test images, and only on those. Returns a
    pandas DataFrame:

    - index "method", the keys of `CLL_ROWS`: "baseline" (the exact masked BCE), "neg_elbo"
      (S = ``elbo_samples``), "mc_prior" and "importance" (S = ``num_samples``), and "gap", the
      per-image difference baseline - importance (its stderr is that of the paired difference);
    - columns (inputs, statistic), in nats per image (see `make_table`);
    - ``attrs``: labels (`cll_labels`), estimators (`CLL_ESTIMATORS`), budget, num_test,
      num_samples, elbo_samples, seed, and the csv and json paths.

    When ``config.joint_baseline`` fine-tunes the CVAE's copy of the baseline, that copy is a
    feature of the prior, no longer a prediction of y, and the "baseline" row scores the baseline
    as trained on its own (`trained_baseline`). ``df.xs("mean", axis=1, level="statistic")``
    gives the plain numbers, `format_table` the "71.2 ± 0.4" strings. The key (see `table_key`)
    does not cover a custom ``data`` nor a model file replaced by hand: pass ``use_cache=False``
    to recompute. A later call with the same key loads the table without loading data or models.
    """
    ks = check_quadrant_counts(num_quadrants)
    num_samples = check_num_samples(num_samples)
    elbo_samples = check_num_samples(elbo_samples, "elbo_samples")
    config = config if config is not None else CVAEConfig()
    budget = get_budget(budget)
    device = pick_device(device)
    key = cll_table_key(ks, config, budget, num_samples=num_samples, elbo_samples=elbo_samples,
                        seed=seed, device=device)
    paths = table_paths(key, cache)
    attrs = {"labels": cll_labels(num_samples, elbo_samples), "estimators": CLL_ESTIMATORS,
             "budget": budget.name, "num_samples": num_samples, "elbo_samples": elbo_samples,
             "seed": seed, "csv": str(paths[0]), "json": str(paths[1])}
    if use_cache:
        cached = load_table(paths[1], key, "method", "CLL table", progress, **attrs)
        if cached is not None:
            return cached

    data = data if data is not None else load_mnist()
    test_split = data.subset(budget).test
    scores = Scores(CLL_ROWS)
    for k in ks:
        start = time.perf_counter()
        cvae, _ = trained_cvae(k, config, budget, data, device=device, progress=progress,
                               use_cache=use_cache, cache=cache)
        test = make_quadrant_data(test_split, k)                         # (num_test, 784) each
        baseline = (trained_baseline(k, config, budget, data, device=device, progress=progress,
                                     use_cache=use_cache, cache=cache)[0]
                    if config.joint_baseline else cvae.baseline)
        nn = baseline_ncll(baseline, test)
        importance = cvae_importance_sampling(cvae, test, num_samples, seed)
        estimates = {"baseline": nn, "neg_elbo": cvae_neg_elbo(cvae, test, elbo_samples, seed),
                     "mc_prior": cvae_mc_prior(cvae, test, num_samples, seed),
                     "importance": importance,
                     "gap": Estimate.from_values(CLL_LABELS["gap"], nn.values - importance.values,
                                                 num_samples, nn.num_output_pixels)}
        for row in CLL_ROWS:
            scores.record(row, k, estimates[row])
        say(progress, f"k={k}: " + ", ".join(f"{row} {scores.means[row][str(k)]:.2f}"
                                              for row in CLL_ROWS)
             + f" ({time.perf_counter() - start:.1f} s, N={len(test)})")
        item_done("CLL table", ks.index(k) + 1, len(ks), f"k={k}, N={len(test)}: NN "
                  f"{nn.mean:.2f}, CVAE IS {importance.mean:.2f}", time.perf_counter() - start)
    frame = make_table(scores.means, scores.stderrs, index_name="method",
                       **{**attrs, "num_test": len(test_split)})
    if use_cache:
        store_table(paths, key, scores, frame)
    return frame


# ------------------------------------------------------------------------------------------------
# Formatting, beside the published numbers
# ------------------------------------------------------------------------------------------------

def format_table(frame: "pd.DataFrame", digits: int = 1, published: bool = False
                 ) -> "pd.DataFrame":
    """A table as strings "71.2 ± 0.4" (mean ± standard error), one column per quadrant count,
    indexed by the rows' labels (``attrs["labels"]``; a row without one shows its key).

    With ``published=True`` the rows get a first index level, "source": this book's rows first
    ("this book"), then the published numbers of `PUBLISHED` for the same columns ("—" where a
    source has none).
    """
    import pandas as pd

    inputs = list(dict.fromkeys(frame.columns.get_level_values("inputs")))
    labels = frame.attrs.get("labels", {})

    def cell(mean: float, stderr: float) -> str:
        if math.isnan(stderr):
            return f"{mean:.{digits}f}"
        return f"{mean:.{digits}f} ± {stderr:.{digits}f}"

    strings = pd.DataFrame({label: [cell(frame.loc[row, (label, "mean")],
                                         frame.loc[row, (label, "stderr")])
                                    for row in frame.index] for label in inputs},
                           index=pd.Index([labels.get(row, row) for row in frame.index],
                                          name=frame.index.name))
    if not published:
        return strings
    name = frame.index.name or "method"
    ours = strings.copy()
    ours.index = pd.MultiIndex.from_tuples([("this book", row) for row in strings.index],
                                           names=["source", name])
    theirs = published_table()
    theirs.index = pd.MultiIndex.from_tuples(
        [(source, label) for (source, _), label in zip(theirs.index, theirs["label"])],
        names=["source", name])
    theirs = theirs[inputs].map(lambda v: "—" if pd.isna(v) else f"{v:.{digits}f}")
    return pd.concat([ours, theirs])
