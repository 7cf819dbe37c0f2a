"""Choosing the recipe on the validation split: each decision as a leave-one-out ablation.

The book's recipe (`CVAEConfig()`) is a list of decisions, each a change from the Pyro
tutorial's configuration. `DECISIONS` names them. For each one, the selection run trains the
recipe with that one decision undone (everything else kept) and scores it against the recipe on
the **validation** images, never the test images:

* a decision of the CVAE: the CVAE's importance-sampled negative CLL (S = 100) on the
  validation images, for the quadrant counts asked (k = 1 by default);
* a decision of the baseline: the baseline's own negative CLL on the validation images, for
  k = 1, 2 and 3 (its training is cheap).

Every model is trained with several training seeds (the CVAE of seed s on the baseline of seed
s), so a difference is paired twice: by seed and by validation image. `selection_table` reports
for each decision the mean gain over seeds (ablation minus recipe: positive means the decision
helps), the standard error over validation images, the spread over seeds, the combined
uncertainty of the mean gain (`cvae_utils.seeds.summarize`), and a verdict by the
rule of its kind (`RULES`): a decision added for quality is kept only where its gain exceeds
twice its uncertainty (within noise, the simpler configuration, the tutorial's, is preferred);
one that is the paper's model or an exact form, or one taken for speed, is kept unless it hurts
beyond twice its uncertainty. A decision scored at several quadrant counts gets a row "all" as
well, the gain summed over them image by image (the validation NLL of the tasks together), and
is judged on that row.

``python -m cvae_utils select`` runs it (in this process or on a Dask cluster) and writes the
table as CSV and Markdown; `DECISIONS.md` quotes that output, and chapter "Evaluation" says
how the recipe was chosen.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import torch

from .book_models import BookModel
from .cache import (cache_dir, checkpoint_path, code_digest, key_digest, model_key,
                    trained_baseline, trained_cvae)
from .cluster import train_models
from .config import Budget, CVAEConfig, book_config, get_budget
from .data import MNISTData, load_mnist, make_quadrant_data
from .evaluate import DEFAULT_NUM_SAMPLES, baseline_ncll, cvae_importance_sampling
from .files import write_atomically
from .seeds import NOISE_FACTOR, seeded, summarize, training_seeds, verdict

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["Decision", "DECISIONS", "RULES", "check_decisions", "selection_models",
           "validation_scores", "selection_table", "format_selection", "write_selection"]

# how a decision whose effect is within noise is settled, by the decision's kind
RULES = {
    "quality": "an added device: kept only if it helps beyond noise (else the simpler recipe)",
    "model": "the paper's model or an exact form: kept unless it hurts beyond noise",
    "speed": "taken for speed: kept unless it hurts beyond noise",
}


@dataclass(frozen=True)
class Decision:
    """One decision of the recipe and how to undo it."""

    name: str          # short label, e.g. "KL warm-up"
    model: str         # "cvae" or "baseline": whose config it changes, and who is scored
    undo: dict         # the changes that undo it (for a CVAE decision, the CVAE's fields)
    kind: str = "quality"  # a key of `RULES`: how a result within noise is settled

    def config(self, recipe: CVAEConfig) -> CVAEConfig:
        """The recipe with this decision undone."""
        if self.model == "baseline":
            return recipe.replace(baseline=self.undo)
        return recipe.replace(**self.undo)


# The recipe's decisions, each undone to the tutorial's value (`config.tutorial_config`).
DECISIONS = (
    Decision("the decoder reads x and z", "cvae", {"decoder_sees_x": False}, "model"),
    Decision("KL warm-up", "cvae", {"kl_warmup_epochs": 0}),
    Decision("moving average of the weights", "cvae", {"weight_average": 0.0}),
    Decision("KL in closed form", "cvae", {"analytic_kl": False}, "model"),
    Decision("patience 6", "cvae", {"patience": 3}),
    Decision("baseline: batch 256", "baseline", {"batch_size": 128}, "speed"),
    Decision("baseline: bf16 products", "baseline", {"precision": "fp32"}, "speed"),
    Decision("CVAE: bf16 products", "cvae", {"precision": "fp32"}, "speed"),
)


def check_decisions(names: Sequence[str] | None) -> tuple[Decision, ...]:
    """The decisions named (all of `DECISIONS` for None), in `DECISIONS`' order."""
    if names is None:
        return DECISIONS
    known = {d.name: d for d in DECISIONS}
    unknown = [name for name in names if name not in known]
    if unknown or not names:
        raise ValueError(f"unknown decision(s) {unknown or list(names)}; choose among: "
                         + "; ".join(known))
    return tuple(d for d in DECISIONS if d.name in names)


def selection_models(seeds=(0, 1), ks=(1,), budget: Budget | str | None = None,
                     recipe: CVAEConfig | None = None, decisions=DECISIONS,
                     directory=None) -> list[BookModel]:
    """Every model the selection run needs, recipe first, then decision by decision, each at
    every seed; a model two rows share (the recipe's baselines) appears once."""
    budget = get_budget(budget)
    recipe = recipe or book_config()
    models: dict = {}

    def add(label, kind, config, k):
        key = model_key(kind, config, budget, k)
        path = checkpoint_path(key, directory)
        if path not in models:
            models[path] = BookModel(label, kind, config, budget, k, key, path,
                                     budget.max_epochs, {"selection"})

    rows = [("recipe", "cvae", recipe), ("recipe", "baseline", recipe)]
    rows += [(d.name, d.model, d.config(recipe)) for d in decisions]
    for name, model, config in rows:
        for seed in seeds:
            for k in (ks if model == "cvae" else (1, 2, 3)):
                add(f"{name} seed {seed} k={k}", model, seeded(config, seed), k)
    return list(models.values())


# ------------------------------------------------------------------------------------------------
# Scoring on the validation split
# ------------------------------------------------------------------------------------------------

SCORE_CODE = ("evaluate", "selection")  # the modules whose code decides a score


def validation_scores(kind: str, config: CVAEConfig, k: int, budget: Budget, data: MNISTData,
                      num_samples: int = DEFAULT_NUM_SAMPLES, cache=None,
                      device=None) -> torch.Tensor:
    """Per-image negative CLL on the validation split of one trained model, cached.

    ``kind`` "cvae": importance sampling with S = ``num_samples`` (noise seed 0, the same noise
    for every model, so differences are paired by noise too); "baseline": its exact value. The
    model comes from the cache (`trained_cvae`, `trained_baseline`: trained now if missing). The
    scores are stored beside the model, keyed by the model's key and the scoring code.
    """
    key = {"kind": "selection-score", "model": model_key(kind, config, budget, k, device),
           "split": "validation", "num_samples": num_samples, "code": code_digest(*SCORE_CODE)}
    path = cache_dir(cache) / f"score-{kind}-k{k}-{budget.name}-{key_digest(key)[:16]}.pt"
    if path.exists():
        stored = torch.load(path, weights_only=True)
        if stored.get("key") == repr(key):
            return stored["values"]
    val = make_quadrant_data(data.subset(budget).val, k)  # the validation images, never test
    if kind == "cvae":
        model, _ = trained_cvae(k, config, budget, data, cache=cache, device=device)
        values = cvae_importance_sampling(model, val, num_samples, seed=0).values
    else:
        model, _ = trained_baseline(k, config, budget, data, cache=cache, device=device)
        values = baseline_ncll(model, val).values
    del model
    values = values.double()
    if not torch.isfinite(values).all():
        raise ValueError(f"non-finite validation scores for {kind} k={k}; the model is damaged")
    write_atomically(path, lambda tmp: torch.save({"key": repr(key), "values": values}, tmp))
    return values


def selection_table(decisions: Sequence[str] | None = None, seeds: int | None = 2,
                    ks: Sequence[int] = (1,), budget: Budget | str | None = None,
                    data: MNISTData | None = None, *, recipe: CVAEConfig | None = None,
                    num_samples: int = DEFAULT_NUM_SAMPLES, cache=None, workers=None,
                    scheduler=None, device=None,
                    log: Callable[[str], None] = print) -> "pd.DataFrame":
    """The leave-one-out selection table on the validation split (see the module).

    Trains what is missing (in this process, or on a Dask cluster with ``workers`` or
    ``scheduler``, as `cvae_utils.cluster.train_models`), scores every model on the validation
    images, and returns one row per (decision, k), plus a row k = "all" for a decision scored
    at several k (the one its action follows): the gain of the decision (the undone recipe's
    negative CLL minus the recipe's, nats per image: positive means the decision helps), its
    ``seed_sd``, ``val_se``, ``uncertainty``, the ``effect`` ("helps", "hurts", "within noise")
    and the ``action`` that the decision's rule (`RULES`) takes.
    """
    import pandas as pd

    chosen = check_decisions(decisions)
    budget = get_budget(budget)
    seed_list = training_seeds(budget, seeds)
    if len(seed_list) < 2:
        raise ValueError("the selection needs at least 2 training seeds to tell a decision's "
                         "effect from the spread of training runs; pass seeds=2 or more")
    recipe = recipe or book_config()
    ks = tuple(ks)
    models = selection_models(seed_list, ks, budget, recipe, chosen, cache)
    data = data if data is not None else load_mnist()
    trained = train_models(models, data, workers=workers, scheduler=scheduler, cache=cache,
                           device=device, log=log)
    log(f"selection: {trained} models trained, {len(models)} in all; scoring on the "
        f"{budget.num_val:,} validation images")

    def scores(kind, config, k):
        return torch.stack([validation_scores(kind, seeded(config, s), k, budget, data,
                                              num_samples, cache, device) for s in seed_list])

    rows = []

    def add_row(decision, k, kept, undone):
        gain = summarize(undone - kept)  # > 0: the recipe is lower, the decision helps
        effect = {"higher": "helps", "lower": "hurts"}.get(verdict(gain), "within noise")
        keep = (effect == "helps" if decision.kind == "quality" else effect != "hurts")
        rows.append({"decision": decision.name, "kind": decision.kind, "k": k,
                     "recipe": kept.mean().item(), "undone": undone.mean().item(),
                     "gain": gain.mean, "seed_sd": gain.seed_sd, "val_se": gain.test_se,
                     "uncertainty": gain.uncertainty, "effect": effect,
                     "action": "keep" if keep else "undo"})
        log(f"{decision.name} k={k}: gain {gain.mean:+.3f} ± {gain.uncertainty:.3f} "
            f"({effect}; {rows[-1]['action']})")

    for decision in chosen:
        decision_ks = ks if decision.model == "cvae" else (1, 2, 3)
        undone = {k: scores(decision.model, decision.config(recipe), k) for k in decision_ks}
        kept = {k: scores(decision.model, recipe, k) for k in decision_ks}
        for k in decision_ks:
            add_row(decision, k, kept[k], undone[k])
        if len(decision_ks) > 1:  # judged on the three tasks together: per image, summed
            add_row(decision, "all", sum(kept.values()), sum(undone.values()))
    frame = pd.DataFrame(rows)
    frame.attrs.update({"budget": budget.name, "seeds": list(seed_list), "split": "validation",
                        "num_images": budget.num_val, "num_samples": num_samples,
                        "noise_factor": NOISE_FACTOR})
    return frame


def format_selection(frame: "pd.DataFrame") -> str:
    """The selection table as Markdown, with a line saying how it was made."""
    lines = [f"Validation split ({frame.attrs['num_images']:,} images), budget "
             f"`{frame.attrs['budget']}`, training seeds {frame.attrs['seeds']}, CVAE scored by "
             f"importance sampling (S = {frame.attrs['num_samples']}), the baseline exactly. Gain: "
             f"negative CLL with the decision undone minus the recipe's (nats per image; > 0: "
             f"the decision helps); an effect counts beyond {frame.attrs['noise_factor']:g} "
             f"uncertainties.", "",
             "| decision | k | gain | seed sd | val. se | uncertainty | effect | rule | action |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in frame.itertuples():
        lines.append(f"| {row.decision} | {row.k} | {row.gain:+.3f} | {row.seed_sd:.3f} | "
                     f"{row.val_se:.3f} | {row.uncertainty:.3f} | {row.effect} | {row.kind} | "
                     f"{row.action} |")
    return "\n".join(lines) + "\n"


def write_selection(frame: "pd.DataFrame", out: str | os.PathLike) -> list[Path]:
    """Write the table as ``selection.csv`` and ``selection.md`` in ``out`` (atomically)."""
    out = Path(out)
    csv_path, md_path = out / "selection.csv", out / "selection.md"
    write_atomically(csv_path, lambda tmp: frame.to_csv(tmp, index=False))
    write_atomically(md_path, lambda tmp: tmp.write_text(format_selection(frame),
                                                         encoding="utf-8"))
    return [csv_path, md_path]
