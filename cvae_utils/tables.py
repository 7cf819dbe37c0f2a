"""The book's cached table of negative CLL, `cll_table`, and the machinery every table shares.

Chapter "Evaluation" explains and shows `cll_table`; chapter "Variants of the model" shows
`cvae_utils.variants.variants_table`, built with the machinery here. Both score trained models on
the test split with the estimators of `cvae_utils.evaluate`, and both are built, stored and read
by the same few functions here:

- Every model is trained with several training seeds (`cvae_utils.seeds`): the CVAE of seed s on
  the baseline of seed s. A cell holds, for its row and quadrant count, one value per training
  seed and per test image, a tensor of shape (n_seeds, n_images) kept in ``attrs["values"]``
  (`CellValues`), and shows its summary (`cvae_utils.seeds.summarize`).
- Rows are indexed by stable keys, never by their labels: `CLL_ROWS` ("baseline", "neg_elbo",
  "mc_prior", "importance", "gap") for the CLL table; "baseline" and then the variants' keys
  (those of `cvae_utils.variants.VARIANTS`) for the variants table. ``table.loc["importance"]``
  is a row whatever its label says. The labels readers see ("CVAE IS (S=100)") are kept in
  ``attrs["labels"]`` (key -> label), and the estimator of each row in ``attrs["estimators"]``.
  `format_table` shows the labels.
- Columns are a MultiIndex (inputs, statistic): "1 quadrant", "2 quadrants", "3 quadrants" (those
  asked for) and the four `STATISTICS`, in nats per image: "mean" (over seeds and images),
  "seed_sd" (the spread over training seeds), "test_se" (the standard error over test images)
  and "uncertainty" (both combined; NaN with one seed). `make_table` builds this shape.
- Two rows compare by their paired difference, seed by seed and image by image
  (`row_difference`, `compare_rows`): the difficulty of an image and the luck of a seed that both
  rows share cancel.
- A table is cached beside the models it scores, as ``<kind>-<budget>-<hash>.json`` (what is read
  back, per-image values included) and ``.csv`` (one line per row and quadrant count, for other
  tools), both written atomically. The hash is of the table's key, derived, never bumped by hand:
  the keys of the models of every seed (`cvae_utils.cache.model_key`, which carry their configs,
  budget and training code), a digest of the evaluation code (`TABLE_CODE`, docstrings and
  comments left out), the rows and their estimators, the budget, the quadrant counts, the
  training seeds, S and the noise seed. A stored table whose key differs or that cannot be read
  is reported with a warning and computed again.

`format_table` shows a table as strings ("71.2 ± 0.4", or all four statistics), optionally
beside the published numbers of `cvae_utils.published`.
"""
from __future__ import annotations

import base64
import csv
import io
import json
import math
import numbers
import os
import sys
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch

from .progress import item_done
from .cache import (cache_dir, code_digest, free_memory, key_digest, model_key,
                    trained_baseline, trained_cvae)
from .config import Budget, CVAEConfig, get_budget
from .data import (NUM_PIXELS, MNISTData, check_num_quadrants, load_mnist, make_quadrant_data,
                   quadrant_label)
from .evaluate import (DEFAULT_ELBO_SAMPLES, DEFAULT_NUM_SAMPLES, baseline_ncll,
                       check_num_samples, cvae_importance_sampling, cvae_mc_prior, cvae_neg_elbo)
from .files import write_atomically
from .published import published_table
from .seeds import Summary, resolve_seeds, seeded, summarize, verdict
from .train import pick_device

if TYPE_CHECKING:  # imported where used: pandas is slow to import
    import pandas as pd

__all__ = [
    "CLL_ROWS", "CLL_LABELS", "CLL_ESTIMATORS", "TABLE_CODE", "STATISTICS", "STATISTIC_LABELS",
    "cll_labels", "cll_table_key", "cll_table", "format_table", "error_bar", "error_name",
    "row_difference", "compare_rows",
    # the machinery every table shares (`cvae_utils.variants.variants_table` uses it too)
    "CellValues", "table_key", "table_paths", "make_table", "Scores", "store_table",
    "load_table", "say", "check_quadrant_counts", "seed_note",
]

# the rows of `cll_table`, in order, with their labels (`cll_labels` adds the sample counts) and
# what each row is: the baseline's exact value, an estimator of `cvae_utils.evaluate`, or the
# per-image difference of two rows
CLL_ROWS = ("baseline", "neg_elbo", "mc_prior", "importance", "gap")
CLL_LABELS = {"baseline": "NN baseline", "neg_elbo": "CVAE -ELBO", "mc_prior": "CVAE MC prior",
              "importance": "CVAE IS", "gap": "Performance gap (NN - CVAE IS)"}
CLL_ESTIMATORS = {"baseline": "exact", "neg_elbo": "neg_elbo", "mc_prior": "mc_prior",
                  "importance": "importance", "gap": "baseline - importance"}
# the modules whose code decides a table's numbers (`seeds`: how a cell is summarised)
TABLE_CODE = ("evaluate", "seeds", "tables")

# the statistics of every cell (see `cvae_utils.seeds.summarize`), and their names for readers
STATISTICS = ("mean", "seed_sd", "test_se", "uncertainty")
STATISTIC_LABELS = {"mean": "mean", "seed_sd": "spread over seeds",
                    "test_se": "test standard error", "uncertainty": "uncertainty"}


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
# The machinery both tables share: values, keys, files, frames
# ------------------------------------------------------------------------------------------------

class CellValues(Mapping):
    """The numbers behind a table's cells: ``values[row][k]``, a tensor of shape (n_seeds,
    n_images), one value per training seed and test image, nats per image.

    It is kept in ``attrs["values"]`` of a table. It is read-only: copies of a frame (pandas
    copies ``attrs`` with most operations) share it, and two are equal only if they are the
    same object (pandas compares ``attrs`` when it concatenates frames).
    """

    def __init__(self, values: Mapping[str, Mapping]):
        self._values = {}
        for row, by_k in values.items():
            self._values[row] = {}
            for k, cell in by_k.items():
                cell = torch.as_tensor(cell).detach().cpu()
                cell = cell[None] if cell.ndim == 1 else cell           # one seed: (1, n_images)
                if cell.ndim != 2 or not cell.is_floating_point():
                    raise ValueError(f"the values of row {row!r}, k={k} must be floats of shape "
                                     f"(n_seeds, n_images), got {tuple(cell.shape)}")
                self._values[row][int(k)] = cell

    def __getitem__(self, row: str) -> dict[int, torch.Tensor]:
        return self._values[row]

    def __iter__(self):
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __eq__(self, other) -> bool:
        return self is other

    __hash__ = object.__hash__

    def __copy__(self) -> "CellValues":
        return self

    def __deepcopy__(self, memo) -> "CellValues":
        return self

    def __repr__(self) -> str:
        shapes = {row: {k: tuple(v.shape) for k, v in by_k.items()}
                  for row, by_k in self._values.items()}
        return f"CellValues({shapes})"


def table_key(kind: str, models: dict, budget: Budget, num_quadrants: Sequence[int],
              code: Sequence[str] = TABLE_CODE, **settings) -> dict:
    """Everything a table's numbers depend on, as a JSON-ready dict.

    ``kind`` names the table ("cll-table"); ``models`` holds the `model_key` of every model it
    scores; ``settings`` the rest (rows, estimators, training seeds, S, noise seed). The digest of
    the modules named by ``code`` (default `TABLE_CODE`; a table built elsewhere adds its own
    module) is added, so a changed estimator or table builder gives another key.
    """
    return {"kind": kind, "code": code_digest(*code), "budget": budget.to_dict(),
            "num_quadrants": list(num_quadrants), **settings, "models": models}


def table_paths(key: dict, cache: str | os.PathLike | None = None) -> tuple[Path, Path]:
    """The CSV and JSON files of a table: ``<kind>-<budget>-<hash of key>`` in the cache."""
    stem = cache_dir(cache) / f"{key['kind']}-{key['budget']['name']}-{key_digest(key)[:16]}"
    return stem.with_suffix(".csv"), stem.with_suffix(".json")


def make_table(values: Mapping[str, Mapping], *, index_name: str = "method",
               labels: Mapping[str, str] | None = None,
               estimators: Mapping[str, str] | None = None, **attrs) -> "pd.DataFrame":
    """A table in the book's shape from {row key: {quadrant count: values}}.

    ``values[row][k]`` holds one value per training seed and test image, shape (n_seeds,
    n_images) (a 1-D tensor is one seed), the same seeds and images in every cell. The index,
    named ``index_name``, holds the row keys in order; the columns are (inputs, statistic) for
    the quadrant counts of the first row, in their order, and the four `STATISTICS` of
    `cvae_utils.seeds.summarize`. Quadrant counts may be ints or their strings (as in JSON).
    ``attrs`` gets ``values`` (a `CellValues`), ``num_seeds``, ``labels`` (key -> label, the key
    itself by default), ``estimators`` (key -> estimator) and the other keyword arguments
    (``seeds``, the training seeds, among them).
    """
    import pandas as pd

    cells = CellValues(values)
    rows = list(cells)
    if not rows:
        raise ValueError("a table needs at least one row")
    ks = list(cells[rows[0]])
    shapes = {tuple(cells[row][k].shape) for row in rows for k in ks}
    if len(shapes) != 1:
        raise ValueError(f"every cell needs the same seeds and images, got shapes "
                         f"{sorted(shapes)}")
    num_seeds = shapes.pop()[0]
    if "seeds" in attrs and len(attrs["seeds"]) != num_seeds:
        raise ValueError(f"{len(attrs['seeds'])} seeds {tuple(attrs['seeds'])} for values of "
                         f"{num_seeds} seeds")
    columns = pd.MultiIndex.from_product([[quadrant_label(k) for k in ks], list(STATISTICS)],
                                         names=["inputs", "statistic"])
    frame = pd.DataFrame(index=pd.Index(rows, name=index_name), columns=columns, dtype=float)
    for row in rows:
        for k in ks:
            summary = summarize(cells[row][k])
            for statistic in STATISTICS:
                frame.loc[row, (quadrant_label(k), statistic)] = getattr(summary, statistic)
    frame.attrs.update(attrs)
    frame.attrs["values"] = cells
    frame.attrs["num_seeds"] = num_seeds
    frame.attrs["labels"] = {row: (labels or {}).get(row, row) for row in rows}
    if estimators is not None:
        frame.attrs["estimators"] = {row: estimators[row] for row in rows}
    return frame


class Scores:
    """The values of a table being computed: per row key and quadrant count, one (n_images,)
    tensor per training seed, in the order of the seeds (`record`); `values` stacks them."""

    def __init__(self, rows: Sequence[str]):
        self._values = {row: {} for row in rows}

    def record(self, row: str, k: int, values) -> None:
        """Add the next seed's values of ``row`` for ``k``: a tensor, or an `Estimate`."""
        if not isinstance(values, torch.Tensor):
            values = values.values                                   # an Estimate's (N,)
        self._values[row].setdefault(int(k), []).append(values.detach().cpu())

    def last_mean(self, row: str, k: int) -> float:
        """The mean over images of the last seed recorded (for progress lines)."""
        return self._values[row][int(k)][-1].double().mean().item()

    def values(self) -> dict[str, dict[int, torch.Tensor]]:
        """{row: {k: tensor of shape (n_seeds, n_images)}}."""
        return {row: {k: torch.stack(cells) for k, cells in by_k.items()}
                for row, by_k in self._values.items()}


def _long_csv(frame: "pd.DataFrame", ks: Sequence[int]) -> str:
    """One line per (row, quadrant count): key, label, estimator, num_quadrants, inputs,
    num_seeds, the four statistics, and per_pixel (the mean over the 196 * (4 - k) output
    pixels)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["key", "label", "estimator", "num_quadrants", "inputs", "num_seeds",
                     *STATISTICS, "per_pixel"])
    for row in frame.index:
        for k in ks:
            label = quadrant_label(k)
            stats = [float(frame.loc[row, (label, statistic)]) for statistic in STATISTICS]
            output_pixels = NUM_PIXELS // 4 * (4 - k)                   # 196 per output quadrant
            writer.writerow([row, frame.attrs["labels"][row], frame.attrs["estimators"][row], k,
                             label, frame.attrs["num_seeds"], *map(repr, stats),
                             repr(stats[0] / output_pixels)])
    return buffer.getvalue()


_DTYPES = {"float32": (torch.float32, "<f4"), "float64": (torch.float64, "<f8")}


def _encode(tensor: torch.Tensor) -> dict:
    """A float tensor as JSON: dtype, shape and its little-endian bytes in base64 (exact)."""
    name = str(tensor.dtype).removeprefix("torch.")
    if name not in _DTYPES:
        tensor, name = tensor.double(), "float64"
    array = tensor.detach().cpu().contiguous().numpy().astype(_DTYPES[name][1])
    return {"dtype": name, "shape": list(tensor.shape),
            "data": base64.b64encode(array.tobytes()).decode("ascii")}


def _decode(stored: dict) -> torch.Tensor:
    dtype, numpy_dtype = _DTYPES[stored["dtype"]]
    raw = base64.b64decode(stored["data"], validate=True)
    array = np.frombuffer(raw, dtype=numpy_dtype).reshape(stored["shape"])
    return torch.from_numpy(array.astype(array.dtype.newbyteorder("="))).to(dtype)  # a copy


def _json_number(value: float) -> float | None:
    return None if math.isnan(value) else value


def store_table(paths: tuple[Path, Path], key: dict, frame: "pd.DataFrame") -> None:
    """Write a computed table: the long CSV, then the JSON that `load_table` reads (its
    summaries, for people and other tools, and the per-seed, per-image values it is rebuilt
    from)."""
    csv_path, json_path = paths
    cells = frame.attrs["values"]
    ks = key["num_quadrants"]
    summary = {row: {str(k): {statistic: _json_number(float(
        frame.loc[row, (quadrant_label(k), statistic)])) for statistic in STATISTICS}
        for k in ks} for row in frame.index}
    text = json.dumps({"key": key, "num_test": frame.attrs["num_test"],
                       "rows": list(frame.index), "labels": frame.attrs["labels"],
                       "estimators": frame.attrs["estimators"], "seeds": list(key["seeds"]),
                       "summary": summary,
                       "values": {row: {str(k): _encode(cells[row][k]) for k in ks}
                                  for row in frame.index}},
                      indent=1, sort_keys=True)
    for path, content in ((csv_path, _long_csv(frame, ks)), (json_path, text)):
        write_atomically(path, lambda tmp, content=content: tmp.write_text(content,
                                                                           encoding="utf-8"))


def load_table(json_path: Path, key: dict, index_name: str, what: str, progress: bool | None,
               **attrs) -> "pd.DataFrame | None":
    """The table stored in ``json_path`` for ``key``, or None when there is none.

    A file that cannot be read, belongs to another key, or whose values do not have the shape
    of its seeds and test images is reported with a warning naming ``what`` (e.g. "CLL table"),
    and None is returned, so that the caller computes it again. The table is rebuilt from the
    stored values. The labels and other ``attrs`` are today's, not the file's: they are not
    part of the key.
    """
    if not json_path.exists():
        return None
    try:
        stored = json.loads(json_path.read_text(encoding="utf-8"))
        if stored.get("key") != key:
            raise ValueError(f"stored key {stored.get('key')} differs from {key}")
        shape = [len(key["seeds"]), stored["num_test"]]
        values = {}
        for row in key["rows"]:
            values[row] = {}
            for k in key["num_quadrants"]:
                cell = _decode(stored["values"][row][str(k)])
                if list(cell.shape) != shape:
                    raise ValueError(f"the values of row {row!r}, k={k} have shape "
                                     f"{list(cell.shape)}, not {shape} (seeds, test images)")
                values[row][k] = cell
        frame = make_table(values, index_name=index_name,
                           **{**attrs, "num_test": stored["num_test"]})
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        warnings.warn(f"ignoring a bad cached {what} {json_path} and computing it again: "
                      f"{error}", stacklevel=3)
        return None
    say(progress, f"loaded the {what} from {json_path}")
    return frame


def say(progress: bool | None, message: str) -> None:
    """Print ``message`` to stderr if ``progress`` is true, or is None and stderr is a terminal."""
    if progress or (progress is None and sys.stderr.isatty()):
        print(message, file=sys.stderr, flush=True)


def seed_note(k: int, seed: int, seeds: Sequence[int]) -> str:
    """How a progress line names a model: "k=2", and "k=2 seed 1" when a table has several
    seeds."""
    return f"k={k}" + (f" seed {seed}" if len(seeds) > 1 else "")


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
# Reading a table: error bars and paired differences
# ------------------------------------------------------------------------------------------------

def error_bar(frame: "pd.DataFrame", row: str, inputs: str) -> float:
    """The uncertainty of a cell's mean: "uncertainty" (seeds and images), or with one seed,
    where it is unknown, "test_se" (the images alone; `error_name` says which)."""
    uncertainty = float(frame.loc[row, (inputs, "uncertainty")])
    return uncertainty if math.isfinite(uncertainty) else float(frame.loc[row, (inputs,
                                                                                "test_se")])


def error_name(frame: "pd.DataFrame") -> str:
    """What `error_bar` (the "±" of `format_table`) is for this table, in words."""
    if frame.attrs.get("num_seeds", 1) > 1:
        return (f"the uncertainty of the mean over {frame.attrs['num_seeds']} training seeds and "
                f"the test images")
    return ("the standard error over test images alone: with one training seed the spread "
            "over seeds is unknown")


def row_difference(frame: "pd.DataFrame", key_a: str, key_b: str) -> dict[str, Summary]:
    """Row ``key_a`` minus row ``key_b``, paired by training seed and test image, summarised
    per quadrant count: {inputs label: `cvae_utils.seeds.Summary`}.

    Both rows are scored on the same images by models of the same seeds, so the per-seed,
    per-image difference cancels what they share (a hard image, a lucky seed), and its
    uncertainty is that of the difference itself. Rows are picked by key, not by label.
    """
    cells = frame.attrs.get("values")
    if not isinstance(cells, CellValues):
        raise ValueError("the table has no per-seed, per-image values (attrs['values']): use "
                         "one made by cll_table, variants_table or make_table")
    for key in (key_a, key_b):
        if key not in frame.index:
            raise ValueError(f"the table has no row {key!r}; its rows are "
                             f"{', '.join(map(str, frame.index))}")
    by_label = {quadrant_label(k): k for k in cells[key_a]}
    return {label: summarize(cells[key_a][by_label[label]].double()
                             - cells[key_b][by_label[label]].double())
            for label in dict.fromkeys(frame.columns.get_level_values("inputs"))}


def compare_rows(frame: "pd.DataFrame", key_a: str, key_b: str) -> dict[str, str]:
    """How row ``key_a`` compares with row ``key_b``, per quadrant count: {inputs label:
    "lower", "higher" or "within noise"} by `cvae_utils.seeds.verdict` of their paired
    difference (`row_difference`): lower or higher only where the difference exceeds twice its
    uncertainty (with one seed: twice its standard error over test images)."""
    return {label: verdict(summary)
            for label, summary in row_difference(frame, key_a, key_b).items()}


# ------------------------------------------------------------------------------------------------
# The CLL table (chapter "Evaluation")
# ------------------------------------------------------------------------------------------------

def cll_table_key(ks: Sequence[int], config: CVAEConfig, budget: Budget, *,
                  seeds=None, num_samples: int = DEFAULT_NUM_SAMPLES,
                  elbo_samples: int = DEFAULT_ELBO_SAMPLES, seed: int = 0, device=None) -> dict:
    """The key of `cll_table` for these settings (its file: ``table_paths(key)``); ``seeds``
    as `cll_table` takes them (None: the run's)."""
    seeds = resolve_seeds(seeds, budget)
    models = {str(k): {str(s): {kind: model_key(kind, seeded(config, s), budget, k, device)
                                for kind in ("baseline", "cvae")} for s in seeds} for k in ks}
    return table_key("cll-table", models, budget, list(ks), rows=list(CLL_ROWS),
                     estimators=CLL_ESTIMATORS, seeds=list(seeds), num_samples=num_samples,
                     elbo_samples=elbo_samples, seed=seed)


def cll_table(num_quadrants: Sequence[int] = (1, 2, 3), config: CVAEConfig | None = None,
              budget: Budget | str | None = None, data: MNISTData | None = None, *,
              seeds=None, num_samples: int = DEFAULT_NUM_SAMPLES,
              elbo_samples: int = DEFAULT_ELBO_SAMPLES, seed: int = 0, device=None,
              progress: bool | None = None, use_cache: bool = True,
              cache: str | os.PathLike | None = None) -> "pd.DataFrame":
    """The negative CLL table on the test split, from the cached models of every training seed;
    cached itself.

    ``seeds``: the training seeds (`cvae_utils.seeds.resolve_seeds`): None for the run's
    (``CVAE_SEEDS``, else the budget's count: 3 at ``paper``), a count n for seeds 0 to n-1, or
    the seeds themselves, e.g. ``(1,)``. For each k in ``num_quadrants`` and each seed s, the
    CVAE of ``seeded(config, s)`` (``config`` defaults to `CVAEConfig()`, the book's) and the
    frozen baseline of seed s inside it come from `trained_cvae` (trained now if not cached) and
    are scored on the first ``budget.num_test`` MNIST test images, and only on those; ``seed``
    seeds the estimators' noise, the same for every training seed. Returns a pandas DataFrame:

    - index "method", the keys of `CLL_ROWS`: "baseline" (the exact masked BCE), "neg_elbo"
      (S = ``elbo_samples``), "mc_prior" and "importance" (S = ``num_samples``), and "gap", the
      per-seed, per-image difference baseline - importance (so its uncertainties are those of
      the paired difference);
    - columns (inputs, statistic), statistic one of `STATISTICS` ("mean", "seed_sd", "test_se",
      "uncertainty"), in nats per image (see `make_table` and `cvae_utils.seeds.summarize`);
    - ``attrs``: values (`CellValues`: per row and k, a tensor of shape (n_seeds, n_images)),
      seeds, num_seeds, labels (`cll_labels`), estimators (`CLL_ESTIMATORS`), budget,
      num_test, num_samples, elbo_samples, seed, and the csv and json paths.

    When ``config.joint_baseline`` fine-tunes the CVAE's copy of the baseline, that copy is a
    feature of the prior, no longer a prediction of y, and the "baseline" row scores the baseline
    as trained on its own (`trained_baseline`). ``df.xs("mean", axis=1, level="statistic")``
    gives the plain numbers, `format_table` the "71.2 ± 0.4" strings, `compare_rows` the paired
    comparison of two rows. Each model is released once scored; only the values are kept. The
    key (see `table_key`) does not cover a custom ``data`` nor a model file replaced by hand:
    pass ``use_cache=False`` to recompute. A later call with the same key loads the table
    without loading data or models.
    """
    ks = check_quadrant_counts(num_quadrants)
    num_samples = check_num_samples(num_samples)
    elbo_samples = check_num_samples(elbo_samples, "elbo_samples")
    config = config if config is not None else CVAEConfig()
    budget = get_budget(budget)
    seeds = resolve_seeds(seeds, budget)
    device = pick_device(device)
    key = cll_table_key(ks, config, budget, seeds=seeds, num_samples=num_samples,
                        elbo_samples=elbo_samples, seed=seed, device=device)
    paths = table_paths(key, cache)
    attrs = {"labels": cll_labels(num_samples, elbo_samples), "estimators": CLL_ESTIMATORS,
             "budget": budget.name, "seeds": seeds, "num_samples": num_samples,
             "elbo_samples": elbo_samples, "seed": seed, "csv": str(paths[0]),
             "json": str(paths[1])}
    if use_cache:
        cached = load_table(paths[1], key, "method", "CLL table", progress, **attrs)
        if cached is not None:
            return cached

    data = data if data is not None else load_mnist()
    test_split = data.subset(budget).test
    scores = Scores(CLL_ROWS)
    done, total = 0, len(ks) * len(seeds)
    for k in ks:
        for training_seed in seeds:
            start = time.perf_counter()
            model_config = seeded(config, training_seed)
            cvae, _ = trained_cvae(k, model_config, budget, data, device=device,
                                   progress=progress, use_cache=use_cache, cache=cache)
            baseline = (trained_baseline(k, model_config, budget, data, device=device,
                                         progress=progress, use_cache=use_cache, cache=cache)[0]
                        if config.joint_baseline else cvae.baseline)
            test = make_quadrant_data(test_split, k)  # (num_test, 784) each; after training
            nn = baseline_ncll(baseline, test)
            importance = cvae_importance_sampling(cvae, test, num_samples, seed)
            scores.record("baseline", k, nn)
            scores.record("neg_elbo", k, cvae_neg_elbo(cvae, test, elbo_samples, seed))
            scores.record("mc_prior", k, cvae_mc_prior(cvae, test, num_samples, seed))
            scores.record("importance", k, importance)
            scores.record("gap", k, nn.values.double() - importance.values.double())  # (N,)
            del cvae, baseline, test                # one model in memory at a time
            free_memory()
            done += 1
            name = seed_note(k, training_seed, seeds)
            say(progress, f"{name}: " + ", ".join(f"{row} {scores.last_mean(row, k):.2f}"
                                                  for row in CLL_ROWS)
                + f" ({time.perf_counter() - start:.1f} s, N={len(test_split)})")
            item_done("CLL table", done, total, f"{name}, N={len(test_split)}: NN {nn.mean:.2f}, "
                      f"CVAE IS {importance.mean:.2f}", time.perf_counter() - start)
    frame = make_table(scores.values(), index_name="method",
                       **{**attrs, "num_test": len(test_split)})
    if use_cache:
        store_table(paths, key, frame)
    return frame


# ------------------------------------------------------------------------------------------------
# Formatting, beside the published numbers
# ------------------------------------------------------------------------------------------------

def format_table(frame: "pd.DataFrame", digits: int = 1, published: bool = False,
                 full: bool = False) -> "pd.DataFrame":
    """A table as strings, indexed by the rows' labels (``attrs["labels"]``; a row without one
    shows its key).

    By default one column per quadrant count, "71.2 ± 0.4": the mean ± its uncertainty over
    training seeds and test images, or, with one seed, where that is unknown, ± the standard
    error over test images (`error_bar`). ``attrs["error"]`` of the result says which
    (`error_name`), for a caption. With ``full=True`` the table is tidy: one line per row and
    quadrant count (index: the row's label, then "inputs"), one column per statistic, the four
    named apart by `STATISTIC_LABELS` ("—" where one is undefined, such as the spread of a
    single seed).

    With ``published=True`` the rows get a first index level, "source": this book's rows first
    ("this book"), then the published numbers of `PUBLISHED` for the same quadrant counts ("—"
    where a source has none, and, in the full table, for every statistic but the mean).
    """
    import pandas as pd

    inputs = list(dict.fromkeys(frame.columns.get_level_values("inputs")))
    labels = frame.attrs.get("labels", {})
    index = pd.Index([labels.get(row, row) for row in frame.index], name=frame.index.name)

    def number(value: float) -> str:
        return "—" if math.isnan(value) else f"{value:.{digits}f}"

    def cell(row, label: str) -> str:
        mean, error = float(frame.loc[row, (label, "mean")]), error_bar(frame, row, label)
        return number(mean) if math.isnan(error) else f"{mean:.{digits}f} ± {error:.{digits}f}"

    columns = pd.Index([STATISTIC_LABELS[statistic] for statistic in STATISTICS],
                       name="statistic")
    if full:
        strings = pd.DataFrame(
            [[number(float(frame.loc[row, (label, statistic)])) for statistic in STATISTICS]
             for row in frame.index for label in inputs],
            index=pd.MultiIndex.from_tuples([(name, label) for name in index for label in inputs],
                                            names=[index.name, "inputs"]), columns=columns)
    else:
        strings = pd.DataFrame({label: [cell(row, label) for row in frame.index]
                                for label in inputs}, index=index)
    if published:
        name = frame.index.name or "method"
        strings.index = pd.MultiIndex.from_tuples(
            [("this book", *(row if full else (row,))) for row in strings.index],
            names=["source", name] + (["inputs"] if full else []))
        theirs = published_table()
        theirs.index = pd.MultiIndex.from_tuples(
            [(source, label) for (source, _), label in zip(theirs.index, theirs["label"])],
            names=["source", name])
        theirs = theirs[inputs].map(lambda v: "—" if pd.isna(v) else f"{v:.{digits}f}")
        if full:
            theirs = pd.DataFrame(
                [[theirs.loc[row, label] if statistic == "mean" else "—"
                  for statistic in STATISTICS] for row in theirs.index for label in inputs],
                index=pd.MultiIndex.from_tuples([(*row, label) for row in theirs.index
                                                 for label in inputs],
                                                names=strings.index.names),
                columns=columns)
        strings = pd.concat([strings, theirs])
    strings.attrs["error"] = error_name(frame)
    return strings
