"""Variants of the CVAE (chapter "Variants of the model"): what each changes, and its budget.

The first variant is the reference: the Pyro tutorial's configuration, `tutorial_config()`,
trained and scored under the book's protocol. Every other variant is the book's configuration,
`CVAEConfig()`, with one change: the tutorial's decoder that reads z alone, the paper's GSNN
(trained through the prior network alone) and its hybrid objective, a baseline fine-tuned
together with the CVAE, and a prior network that does not read the baseline's guess. `VARIANTS`
describes them, `VARIANT_LABELS` names them for tables and figures, `VARIANT_CHANGES` lists the
fields each changes and `variant_config` builds their configurations.

How much to train them is `variants_budget()`: ``CVAE_VARIANTS_BUDGET`` if set, else the book's
budget capped at ``quick``. How many training seeds is `variants_seeds()`: the book's count (3 at
``paper``, or ``CVAE_SEEDS``), even where the budget is capped, since the chapter reads its rows
against one another. Their table is `variants_table`, built, cached and read with the machinery
of `cvae_utils.tables`; `variant_estimator` says how each variant is scored and `variant_label`
names its row. Its figure is `cvae_utils.plot_results.plot_variants`; `variant_comparison`
compares two of its rows, paired by training seed and test image, and `torchzq_ablation` sets
the ablation published by the TorchZQ implementation (`cvae_utils.published.TORCHZQ_ABLATION`)
beside the variant of ours each row corresponds to.
"""
from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Sequence

from . import settings
from .cache import model_key, trained_baseline, trained_cvae
from .config import BUDGETS, Budget, CVAEConfig, get_budget, parse_budget, tutorial_config
from .data import MNISTData, load_mnist, make_quadrant_data, quadrant_label
from .evaluate import (DEFAULT_NUM_SAMPLES, baseline_ncll, check_num_samples,
                       cvae_importance_sampling, cvae_mc_prior)
from .progress import item_done
from .published import TORCHZQ_ABLATION
from .seeds import resolve_seeds, seeded, training_seeds
from .tables import (TABLE_CODE, Scores, check_quadrant_counts, compare_rows, load_table,
                     make_table, say, seed_note, store_table, table_key, table_paths)
from .train import pick_device

if TYPE_CHECKING:  # imported where used: pandas is slow to import
    import pandas as pd

__all__ = ["VARIANTS", "VARIANT_LABELS", "VARIANT_CHANGES", "check_variant", "variant_config",
           "variants_overview", "variants_budget", "variants_seeds", "VARIANTS_BUDGET_CAP",
           "VARIANT_ESTIMATORS", "VARIANTS_TABLE_CODE", "variant_estimator", "variant_label",
           "variants_table_key", "variants_table", "variant_comparison", "torchzq_ablation"]

# what each variant changes, in the book's words (keys are stable: files and tests use them)
VARIANTS: dict[str, str] = {
    "pyro_tutorial": "the Pyro tutorial's settings throughout: decoder reads z alone, no KL "
                     "warm-up, batch 128, learning rate 1e-3, float32",
    "tutorial": "decoder reads z alone, as in the Pyro tutorial; everything else the book's",
    "book": "decoder reads x and z, as in the paper",
    "gsnn": "trained through the prior network alone (GSNN)",
    "hybrid": "alpha * CVAE + (1 - alpha) * GSNN objective",
    "joint": "baseline fine-tuned with the CVAE, not frozen",
    "no_baseline_prior": "prior network reads x, not the baseline's guess",
}

# the label of each variant in tables and figures
VARIANT_LABELS: dict[str, str] = {
    "pyro_tutorial": "Pyro tutorial's configuration",
    "tutorial": "decoder reads z only",
    "book": "book (decoder reads x and z)",
    "gsnn": "GSNN",
    "hybrid": "hybrid (alpha=0.5)",
    "joint": "joint baseline",
    "no_baseline_prior": "prior without baseline",
}

# the fields of `CVAEConfig` each variant changes in the base configuration. The reference row,
# "pyro_tutorial", is not a change of fields: it is `tutorial_config()` itself, built on the
# base's baseline (the one every row shares), see `variant_config`
VARIANT_CHANGES: dict[str, dict] = {
    "tutorial": {"decoder_sees_x": False},
    "book": {},
    "gsnn": {"objective": "gsnn"},
    "hybrid": {"objective": "hybrid", "hybrid_alpha": 0.5},
    "joint": {"joint_baseline": True},
    "no_baseline_prior": {"prior_uses_baseline": False},
}

VARIANTS_BUDGET_CAP = "quick"  # the variants chapter trains at most this much unless told
VARIANT_ESTIMATORS = ("importance", "mc_prior")  # what `variants_table` may score variants with
# the modules whose code decides the numbers of `variants_table`: the estimators, the tables'
# machinery and this module, which scores the variants
VARIANTS_TABLE_CODE = (*TABLE_CODE, "variants")


def check_variant(key) -> str:
    """``key`` if it names a variant, else a ValueError that lists the valid keys."""
    if key not in VARIANTS:
        raise ValueError(f"unknown variant {key!r}; choose one of {', '.join(VARIANTS)}")
    return key


def variant_config(name: str, base: CVAEConfig | None = None) -> CVAEConfig:
    """The configuration of variant ``name`` (a key of `VARIANTS`).

    ``base`` defaults to `CVAEConfig()`, the book's configuration, so
    ``variant_config("book")`` is the book's own configuration and every other variant differs
    from it only in the fields of `VARIANT_CHANGES`, except "pyro_tutorial": `tutorial_config()`,
    built on ``base``'s baseline, so that every row of the table reads the same baseline. An
    unknown name raises a ValueError that lists the valid keys.
    """
    base = base if base is not None else CVAEConfig()
    if check_variant(name) == "pyro_tutorial":
        return tutorial_config().replace(baseline=base.baseline)
    return base.replace(**VARIANT_CHANGES[name])


def variants_overview(base: CVAEConfig | None = None) -> "pd.DataFrame":
    """The variants as a DataFrame indexed by key: "label", "changes" (the fields that differ
    from ``base``, default `CVAEConfig()`, as ``name=value``) and "description"."""
    import pandas as pd

    base = base if base is not None else CVAEConfig()
    changes = []
    for key in VARIANTS:
        diff = variant_config(key, base).differences(base)
        changes.append(", ".join(f"{name}={value!r}" for name, value in diff.items()) or "none")
    return pd.DataFrame({"label": list(VARIANT_LABELS.values()), "changes": changes,
                         "description": list(VARIANTS.values())},
                        index=pd.Index(list(VARIANTS), name="key"))


def variants_budget(name: str | Budget | None = None, *, book: str | Budget | None = None
                    ) -> Budget:
    """The budget of the variants chapter.

    With a name (or a `Budget`), that budget. Otherwise ``CVAE_VARIANTS_BUDGET`` if it is set,
    else the book's budget (``CVAE_BUDGET``, see `get_budget`) capped at `VARIANTS_BUDGET_CAP`:
    ``smoke`` stays ``smoke``, ``quick`` stays ``quick`` and ``paper`` becomes ``quick``. The
    chapter trains seven variants for three quadrant counts, twenty-one CVAEs; at the paper budget
    those beyond the book's own take more than an hour on two CPU cores, so a paper build gets
    them at the quick budget unless ``CVAE_VARIANTS_BUDGET=paper`` asks for the full protocol.
    A value that names no budget raises a ValueError listing the valid ones.
    """
    if name is not None:
        return get_budget(name)
    value = settings.variants_budget_name()
    if value:  # the same rule as CVAE_BUDGET and the command line: a budget's exact name
        try:
            return parse_budget(value, "environment variable CVAE_VARIANTS_BUDGET")
        except ValueError as error:
            raise ValueError(f"{error}; or unset CVAE_VARIANTS_BUDGET to follow CVAE_BUDGET "
                             f"(capped at {VARIANTS_BUDGET_CAP})") from error
    book = get_budget(book)  # the book's budget: given, else CVAE_BUDGET
    order = list(BUDGETS)
    if book.name in order and order.index(book.name) > order.index(VARIANTS_BUDGET_CAP):
        return BUDGETS[VARIANTS_BUDGET_CAP]
    return book


def variants_seeds(count: int | str | None = None, *, book: str | Budget | None = None
                   ) -> tuple[int, ...]:
    """The training seeds of the variants chapter: those of the book's budget (``book``, else
    ``CVAE_BUDGET``), `cvae_utils.seeds.training_seeds`, whatever the variants' own budget.

    The chapter compares its rows with one another, so a paper build gives every variant the
    paper protocol's seeds (3), although `variants_budget` trains them at ``quick``.
    ``CVAE_SEEDS`` (or ``count``) overrides the count, as for every table.
    """
    return training_seeds(get_budget(book), count)


# ------------------------------------------------------------------------------------------------
# Scoring and labels: the variants table
# ------------------------------------------------------------------------------------------------

def variant_estimator(config: CVAEConfig, estimator: str = "importance") -> str:
    """The estimator that scores a CVAE of ``config`` in `variants_table` when ``estimator`` is
    asked for: "mc_prior" for a GSNN (objective "gsnn"), whose recognition network is never
    trained and so would be a poor proposal; ``estimator`` for every other CVAE."""
    return "mc_prior" if config.objective == "gsnn" else estimator


def variant_label(key: str, estimator: str = "importance",
                  num_samples: int = DEFAULT_NUM_SAMPLES, base: CVAEConfig | None = None) -> str:
    """The label of a variant's row, naming the estimator that scored it: e.g. "GSNN [MC prior,
    S=100]" (``estimator`` is what the table asked for; see `variant_estimator`)."""
    used = variant_estimator(variant_config(check_variant(key), base), estimator)
    kind = {"importance": "IS", "mc_prior": "MC prior"}[used]
    return f"{VARIANT_LABELS[key]} [{kind}, S={num_samples}]"


def variants_table_key(keys: Sequence[str], ks: Sequence[int], base: CVAEConfig, budget: Budget,
                       *, seeds=None, num_samples: int = DEFAULT_NUM_SAMPLES,
                       estimator: str = "importance", seed: int = 0, device=None) -> dict:
    """The key of `variants_table` for these settings (its file: ``table_paths(key)``);
    ``seeds`` as `variants_table` takes them (None: `variants_seeds()`)."""
    seeds = variants_seeds() if seeds is None else resolve_seeds(seeds, budget)
    configs = {name: variant_config(name, base) for name in keys}
    estimators = {"baseline": "exact",
                  **{name: variant_estimator(configs[name], estimator) for name in keys}}
    models = {"baseline": {str(k): {str(s): model_key("baseline", seeded(base, s), budget, k,
                                                      device) for s in seeds} for k in ks},
              **{name: {str(k): {str(s): model_key("cvae", seeded(configs[name], s), budget, k,
                                                   device) for s in seeds} for k in ks}
                 for name in keys}}
    return table_key("variants-table", models, budget, list(ks), VARIANTS_TABLE_CODE,
                     rows=["baseline", *keys], estimators=estimators, seeds=list(seeds),
                     num_samples=num_samples, seed=seed)


def variants_table(keys: Sequence[str] = tuple(VARIANTS), num_quadrants: Sequence[int] = (1, 2, 3),
                   budget: Budget | str | None = None, data: MNISTData | None = None, *,
                   base: CVAEConfig | None = None, seeds=None,
                   num_samples: int = DEFAULT_NUM_SAMPLES, estimator: str = "importance",
                   seed: int = 0, device=None,
                   progress: bool | None = None, use_cache: bool = True,
                   cache: str | os.PathLike | None = None) -> "pd.DataFrame":
    """The negative CLL of every variant on the test split, beside the baseline; cached.

    ``keys``: variants (keys of `VARIANTS`), in the order of the rows. ``budget`` defaults to
    `variants_budget()`; ``base`` to `CVAEConfig()`, the book's (see `variant_config`);
    ``seeds``, the training seeds, to `variants_seeds()` (the book's count; otherwise a count or
    the seeds themselves, as for `cvae_utils.tables.cll_table`). For each k and each seed s,
    each variant's CVAE of seed s, on the baseline of seed s, comes from `trained_cvae` (trained
    now if not cached) and is scored on the first ``budget.num_test`` test images with
    ``estimator``: "importance" (`cvae_importance_sampling`, the default) or "mc_prior"
    (`cvae_mc_prior`), S = ``num_samples`` samples per image, noise seeded by ``seed``; the GSNN
    is always scored from the prior (`variant_estimator`). Returns a pandas DataFrame:

    - index "variant": "baseline" (the baseline of `trained_baseline` that every variant reads,
      exact), then ``keys``;
    - columns (inputs, statistic) as in `cll_table` (mean, seed_sd, test_se, uncertainty), in
      nats per image;
    - ``attrs``: values (per row and k, the (n_seeds, n_images) values that
      `variant_comparison` pairs), seeds, num_seeds, labels (`variant_label`, e.g. "GSNN [MC
      prior, S=100]"; "NN baseline [exact]"), estimators ("exact", "importance" or
      "mc_prior"), budget, num_test, num_samples, estimator, seed, and the csv and json paths.

    Cached like `cll_table`, as ``variants-table-<budget>-<hash>``; a bad file is reported and
    the table recomputed from the cached models.
    """
    if isinstance(keys, str):
        keys = [keys]
    keys = [check_variant(key) for key in keys]
    if not keys or len(set(keys)) != len(keys):
        raise ValueError(f"keys must list distinct variants among {', '.join(VARIANTS)}, got "
                         f"{tuple(keys)!r}")
    ks = check_quadrant_counts(num_quadrants)
    num_samples = check_num_samples(num_samples)
    if estimator not in VARIANT_ESTIMATORS:
        raise ValueError(f"unknown estimator {estimator!r}; choose one of "
                         f"{', '.join(VARIANT_ESTIMATORS)}")
    base = base if base is not None else CVAEConfig()
    budget = variants_budget(budget)
    seeds = variants_seeds() if seeds is None else resolve_seeds(seeds, budget)
    device = pick_device(device)
    key = variants_table_key(keys, ks, base, budget, seeds=seeds, num_samples=num_samples,
                             estimator=estimator, seed=seed, device=device)
    rows, estimators = key["rows"], key["estimators"]  # decided once, by the key
    configs = {name: variant_config(name, base) for name in keys}
    paths = table_paths(key, cache)
    labels = {"baseline": "NN baseline [exact]",
              **{name: variant_label(name, estimator, num_samples, base) for name in keys}}
    attrs = {"labels": labels, "estimators": estimators, "budget": budget.name, "seeds": seeds,
             "num_samples": num_samples, "estimator": estimator, "seed": seed,
             "csv": str(paths[0]), "json": str(paths[1])}
    if use_cache:
        cached = load_table(paths[1], key, "variant", "variants table", progress, **attrs)
        if cached is not None:
            return cached

    data = data if data is not None else load_mnist()
    test_split = data.subset(budget).test
    scores = Scores(rows)
    estimate_fns = {"importance": cvae_importance_sampling, "mc_prior": cvae_mc_prior}
    done, total = 0, len(ks) * len(seeds) * len(keys)
    for k in ks:
        test = make_quadrant_data(test_split, k)                         # (num_test, 784) each
        for training_seed in seeds:
            # every variant of this seed reads this baseline (none changes a baseline field);
            # the joint variant fine-tunes a copy of it, a feature of its prior, not a prediction
            baseline, _ = trained_baseline(k, seeded(base, training_seed), budget, data,
                                           device=device, progress=progress,
                                           use_cache=use_cache, cache=cache)
            scores.record("baseline", k, baseline_ncll(baseline, test))
            del baseline
            for name in keys:
                start = time.perf_counter()
                cvae, _ = trained_cvae(k, seeded(configs[name], training_seed), budget, data,
                                       device=device, progress=progress, use_cache=use_cache,
                                       cache=cache)
                scores.record(name, k,
                              estimate_fns[estimators[name]](cvae, test, num_samples, seed))
                del cvae                            # one model in memory at a time
                done += 1
                where, mean = seed_note(k, training_seed, seeds), scores.last_mean(name, k)
                say(progress, f"{where} {labels[name]}: {mean:.2f} "
                              f"({time.perf_counter() - start:.1f} s, N={len(test)})")
                item_done("variants", done, total, f"{where} {name}: {mean:.2f}",
                          time.perf_counter() - start)
    frame = make_table(scores.values(), index_name="variant",
                       **{**attrs, "num_test": len(test_split)})
    if use_cache:
        store_table(paths, key, frame)
    return frame


# ------------------------------------------------------------------------------------------------
# Reading the table
# ------------------------------------------------------------------------------------------------

def variant_comparison(table: "pd.DataFrame", key_a: str, key_b: str) -> dict[str, str]:
    """How row ``key_a`` of a `variants_table` compares with row ``key_b``, per setting.

    Returns {inputs label: "lower", "higher" or "within noise"}: `cvae_utils.tables.compare_rows`,
    the verdict on the difference ``key_a`` - ``key_b`` paired by training seed and test image.
    The mean of ``key_a`` is lower (better) or higher only where that difference exceeds twice its
    uncertainty (seeds and images combined; with one seed, its standard error over test images,
    a verdict on that one training run). Pairing cancels what the rows share, the difficulty of
    each image and the luck of each seed's shared baseline, so it detects differences that the
    two rows' own error bars would hide. Rows are picked by key ("baseline" names the baseline),
    not by label.
    """
    return compare_rows(table, key_a, key_b)


# ------------------------------------------------------------------------------------------------
# TorchZQ's published ablation (its numbers: `cvae_utils.published.TORCHZQ_ABLATION`)
# ------------------------------------------------------------------------------------------------

# why a correspondence is not exact, in this book's words (the numbers from the configs)
_BOOK, _TUTORIAL = CVAEConfig(), tutorial_config()
_RECIPE = (f"ours adds KL warm-up, batch {_BOOK.batch_size}"
           + (", a decaying lr" if _BOOK.lr_decay < 1 else "")
           + f", patience {_BOOK.patience}")  # the book's recipe
_TORCHZQ_NOTES = {
    "CVAE (w/ conditioned decoder, w/o baseline)": _RECIPE,
    "CVAE (w/ conditioned decoder)": _RECIPE,
    "CVAE (w/o conditioned prior)": "their prior is N(0, I); no variant of ours",
    "CVAE": f"ours: batch {_TUTORIAL.batch_size}, early stopping; theirs: 32, 20 epochs",
    "CVAE (w/o baseline)": f"ours also feeds x to the decoder; {_RECIPE[5:]}",
    "CVAE (w/ jointly trained baseline from the pretrained)":
        f"ours also feeds x to the decoder; {_RECIPE[5:]}",
    "CVAE (w/ jointly trained baseline from scratch)": "ours starts from the trained baseline",
}


def torchzq_ablation(table: "pd.DataFrame | None" = None) -> "pd.DataFrame":
    """`cvae_utils.published.TORCHZQ_ABLATION` as a DataFrame indexed by their row names ("method").

    Columns: "NCLL (IS, S=100)" (their number, nats), "ours" (the label of our corresponding
    variant, "NN baseline" for the baseline, "—" if none), "key" (its key or None), "match"
    ("same", "closest" or "—") and "note" (what differs when the match is not exact). With
    ``table`` (from `variants_table`, with a "1 quadrant" column) a last
    column "this book, 1 quadrant" holds our mean for the row of the corresponding key, NaN where
    there is none.
    """
    import pandas as pd

    if table is not None:
        inputs = set(table.columns.get_level_values("inputs"))
        if quadrant_label(1) not in inputs:
            raise ValueError("table must come from variants_table with num_quadrants including 1 "
                             "(TorchZQ's numbers are for one visible quadrant)")
        ours = dict(zip(table.index, table[(quadrant_label(1), "mean")].tolist()))
        frame = torchzq_ablation()
        frame["this book, 1 quadrant"] = [ours.get(key, float("nan")) if key is not None
                                          else float("nan") for key in frame["key"]]
        return frame
    names = [name for name, _, _, _ in TORCHZQ_ABLATION]
    keys = [key for _, _, key, _ in TORCHZQ_ABLATION]
    return pd.DataFrame(
        {"NCLL (IS, S=100)": [value for _, value, _, _ in TORCHZQ_ABLATION],
         "ours": ["—" if key is None else "NN baseline" if key == "baseline"
                  else VARIANT_LABELS[key] for key in keys],
         "key": pd.Series(keys, dtype=object, index=names),   # None where no variant matches
         "match": [match or "—" for _, _, _, match in TORCHZQ_ABLATION],
         "note": [_TORCHZQ_NOTES.get(name, "") for name in names]},
        index=pd.Index(names, name="method"))
