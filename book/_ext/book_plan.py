"""What a build of the book will train, and about how long it will take on this machine.

`build_plan` takes every model the chapters ask for from `cvae_utils.book_models` (the
baselines and CVAEs of the book's configuration, the digit classifier, the 21 models of the
chapter "Variants of the model", each for every training seed of the tables, each with its file
in the model cache, the file `trained_cvae` and its kin would load) and estimates the time of
those that are missing.
`BuildPlan.lines` formats it for the terminal; the book's Sphinx extension (``book_build.py``)
prints it before the first chapter runs.

The time of a model is its epochs times its time per epoch. A smoke or quick run always reaches
its budget's cap. Early stopping ends a paper run sooner: the plan expects the median epochs of
the cached paper runs of the same kind, or, with none cached, the fraction of the cap at which
the book's paper runs stopped when measured (`TYPICAL_STOP`), and prints the time of runs that
never stop early as the bound. The time per epoch comes, in this order, from cached runs of the
same kind at the same budget (their recorded ``History.seconds``), from cached runs at another
budget scaled by the number of training images, or from a short measurement now: a few
minibatches of the real training step on random images. Scoring (the CLL table and the variants
table, when not cached) is measured the same way, on a few images with the untrained network.
Each chapter that executes also pays for starting its kernel, importing torch, Pyro, matplotlib
and this package, loading MNIST and drawing its figures. `ChapterStartProbe` measures all but the
figures in a subprocess that does what a kernel does before a chapter's first result; the build
counts twice that per chapter (``book_build.py``).

On a machine shared with other work every one of these measurements moves with the load, so the
estimate is a guide to the order of magnitude (minutes or an hour), not a promise.
"""
from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from cvae_utils import tables
from cvae_utils import variants as variants_module
from cvae_utils.book_models import QUADRANTS, book_models, needs_of
from cvae_utils.cache import cache_dir
from cvae_utils.config import Budget, CVAEConfig, book_config, get_budget
from cvae_utils.data import Split, make_quadrant_data
from cvae_utils.evaluate import cvae_importance_sampling
from cvae_utils.networks import BaselineNet
from cvae_utils.progress import format_duration
from cvae_utils.seeds import seeds_origin, training_seeds
from cvae_utils.speed import explain_precision, resolve_precision
from cvae_utils.train import train_baseline, train_cvae
from cvae_utils.variant_models import build_cvae

__all__ = ["PlannedModel", "BuildPlan", "build_plan", "needs_of", "precision_path", "recorded_runs",
           "ChapterStartProbe",
           "measure_step_seconds", "measure_scoring_seconds"]

MIN_SCALED_IMAGES = 10_000  # cached runs on fewer training images are not scaled to others

# Where early stopping ended the paper runs of the book's recipe, as a fraction of the cap of
# 100 epochs (30 for the classifier): over k = 1, 2, 3 and training seeds 0, 1, 2 (the
# classifier: its one run) of the 3-seed paper build of 61f019d on the 2-core AMX VM
# (DECISIONS.md, "Build time"). A plan with no cached paper run of a kind expects that many
# epochs.
TYPICAL_STOP = {"baseline": 0.29, "cvae": 0.71, "classifier": 0.6}


@dataclass
class PlannedModel:
    """One model the book needs: where its cache file is and what training it would cost."""

    label: str                  # e.g. "cvae k=1", "variant gsnn k=2" or "cvae k=1 seed 2"
    kind: str                   # "baseline", "cvae" or "classifier"
    groups: set                 # who asks for it: "book", "classifier", "variants" (`needs_of`)
    budget: Budget
    path: Path                  # its file in the model cache
    max_epochs: int             # the cap of its run
    cached: bool = False
    epochs: float = 0.0         # epochs expected if trained now
    seconds_per_epoch: float = float("nan")
    source: str = ""            # where seconds_per_epoch comes from
    epochs_source: str = ""     # why that many: "" (the cap), "typical" or "cached" (paper runs)
    needed: bool = True         # asked for by a chapter that will execute
    num_quadrants: int | None = None  # None for the classifier
    seed: int = 0               # its training seed

    @property
    def seconds(self) -> float:
        return 0.0 if self.cached else self.epochs * self.seconds_per_epoch

    @property
    def max_seconds(self) -> float:
        """Its time if early stopping never ends it before the cap."""
        return 0.0 if self.cached else self.max_epochs * self.seconds_per_epoch


@dataclass
class BuildPlan:
    """The models of a build, the scoring to do, and the estimate for the chapters to run."""

    budget: Budget
    variants_budget: Budget
    precision: str
    seeds: tuple = (0,)          # the training seeds of every table's models
    seeds_origin: str = ""       # where their count comes from (`cvae_utils.seeds.seeds_origin`)
    models: list[PlannedModel] = field(default_factory=list)
    scoring: list[tuple[str, float]] = field(default_factory=list)  # (what, seconds), uncached
    chapters: list[str] = field(default_factory=list)   # chapters that will execute
    cached_chapters: list[str] = field(default_factory=list)  # taken from the execution cache
    seconds_per_chapter: float = 0.0  # kernel start and imports, per chapter that executes

    @property
    def to_train(self) -> list[PlannedModel]:
        return [model for model in self.models if model.needed and not model.cached]

    @property
    def seconds(self) -> float:
        """Estimated time of the chapters that will execute (0 when none will)."""
        return self._total(lambda model: model.seconds)

    @property
    def max_seconds(self) -> float:
        """That time if no run stops early: the bound."""
        return self._total(lambda model: model.max_seconds)

    def _total(self, model_seconds) -> float:
        if not self.chapters:
            return 0.0
        return (sum(model_seconds(model) for model in self.to_train)
                + sum(seconds for _, seconds in self.scoring)
                + self.seconds_per_chapter * len(self.chapters))

    def lines(self) -> list[str]:
        """The plan as terminal lines (no colours)."""
        budget, variants = self.budget, self.variants_budget
        out = [f"budget {budget.name}: {budget.num_train:,} training, {budget.num_val:,} "
               f"validation, {budget.num_test:,} test images, at most {budget.max_epochs} "
               f"epoch{'s' * (budget.max_epochs != 1)} (CVAE_BUDGET); chapter \"Variants\": "
               f"{variants.name} (CVAE_VARIANTS_BUDGET)",
               f"training seeds: {len(self.seeds)} per model of the tables "
               f"({self.seeds_origin})",
               f"precision: {self.precision}"]
        cached = [model for model in self.models if model.cached]
        out.append(f"models of the book: {len(cached)} of {len(self.models)} in the model "
                   f"cache ({cache_dir()})")
        groups: dict[tuple, list[PlannedModel]] = {}
        for model in self.to_train:
            name = ("variant CVAEs" if model.label.startswith("variant ")
                    else model.label.split(" k=")[0])
            groups.setdefault((name, model.budget.name, model.source), []).append(model)
        for (name, budget_name, source), models in groups.items():
            first = models[0]
            epochs = f"{first.epochs:.0f} epoch{'s' * (first.epochs != 1)}"
            if first.epochs_source:
                why = {"typical": "typical of paper runs",
                       "cached": "median of the cached paper runs"}[first.epochs_source]
                epochs = f"about {epochs} ({why}; at most {first.max_epochs})"
            quadrants = sorted({m.num_quadrants for m in models if m.num_quadrants is not None})
            seeds = sorted({m.seed for m in models})
            which = (f" k={','.join(map(str, quadrants))}" if quadrants
                     and name != "variant CVAEs" else "")
            which += f" seeds {','.join(map(str, seeds))}" if len(seeds) > 1 else ""
            count = f"{len(models)} " if len(models) > 1 else ""
            out.append(f"  to train ({budget_name}): {count}{name}{which}, {epochs} x "
                       f"{first.seconds_per_epoch:.2f} s each ({source}): "
                       f"{format_duration(sum(m.seconds for m in models))}")
        missing = [m for m in self.models if not m.cached and not m.needed]
        if missing:
            out.append(f"  not in the cache but not needed by the chapters that execute: "
                       f"{len(missing)}")
        for what, seconds in self.scoring:
            out.append(f"  to score: {what}, about {format_duration(seconds)}")
        if self.chapters:
            out.append(f"chapters to execute: {len(self.chapters)} ({', '.join(self.chapters)})"
                       + (f"; from the execution cache: {', '.join(self.cached_chapters)}"
                          if self.cached_chapters else "")
                       + f"; about {format_duration(self.seconds_per_chapter)} each for its "
                         f"kernel, imports, data and figures")
            bound = (f" (at most {format_duration(self.max_seconds)} if no run stops early)"
                     if self.max_seconds > self.seconds else "")
            out.append(f"estimated time on this machine: {format_duration(self.seconds)}"
                       f"{bound}")
        else:
            out.append("chapters to execute: none (unchanged since the last build, or in the "
                       "execution cache of these budgets)")
        if budget.name != "smoke" and self.seconds > 120:
            faster = "smoke" if budget.name == "quick" else "quick"
            out.append(f"for a faster build: CVAE_BUDGET={faster} jupyter-book build book/ "
                       f"(or train beforehand: python -m cvae_utils train --book --budget "
                       f"{budget.name})")
        return out


def precision_path(device: torch.device | None = None) -> str:
    """The arithmetic the book's models will train in here, in words."""
    precision = book_config().precision
    why = explain_precision(precision, device)
    kind = {"bf16": "bfloat16", "fp32": "float32"}[resolve_precision(precision, device)]
    if torch.cuda.is_available():
        return f"{kind} matrix products on the GPU ({torch.cuda.get_device_name(0)}): {why}"
    return f"{kind} matrix products on the CPU, {torch.get_num_threads()} threads: {why}"


def recorded_runs(directory=None) -> list[dict]:
    """Kind, budget name, training images, epochs and seconds per epoch of every cached model."""
    runs = []
    for path in sorted(cache_dir(directory).glob("*.pt")):
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            key = json.loads(payload["key"])
            seconds = list(payload["history"]["seconds"])
        except Exception:  # not ours, or unreadable: the cache reports it when it is used
            continue
        if seconds:
            runs.append({"kind": key.get("kind"), "budget": key["budget"]["name"],
                         "num_train": key["budget"]["num_train"],
                         "num_quadrants": key.get("num_quadrants"), "epochs": len(seconds),
                         "seconds_per_epoch": statistics.median(seconds), "path": path})
    return runs


class ChapterStartProbe:
    """Measures, in a subprocess, what a chapter costs before its own work: start Python, import
    ipykernel, matplotlib, pandas and cvae_utils, load MNIST. `start` returns at once; `seconds`
    waits for the result (None if the probe failed or ran past ``timeout``)."""

    CODE = ("import ipykernel.kernelapp, matplotlib.pyplot, pandas, cvae_utils; "
            "cvae_utils.load_mnist()")

    def __init__(self):
        self._process: subprocess.Popen | None = None
        self._began = 0.0

    def start(self) -> "ChapterStartProbe":
        self._began = time.perf_counter()
        self._process = subprocess.Popen([sys.executable, "-c", self.CODE],
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return self

    def seconds(self, timeout: float = 120.0) -> float | None:
        if self._process is None:
            return None
        try:
            code = self._process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            return None
        return time.perf_counter() - self._began if code == 0 else None

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait()


def _random_quadrant_data(n: int, k: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    images = (torch.rand(n, 28, 28, generator=g) > 0.7).float()
    return make_quadrant_data(Split(images, torch.randint(0, 10, (n,), generator=g)), k)


def measure_step_seconds(kind: str, config: CVAEConfig, num_batches: int = 8
                         ) -> tuple[float, float]:
    """Seconds per training minibatch of ``kind`` ("baseline" or "cvae"), measured now, and
    the extra seconds of a run's first epoch.

    Trains three epochs of ``num_batches`` minibatches on random images. The fastest of the last
    two gives the time per minibatch (each epoch ends with a validation pass on one minibatch,
    about a third of a training one); the first is slower by what every run pays once (Pyro's
    checks in the CVAE's first epoch, memory first touched), which dominates a smoke run.
    """
    batch = config.baseline.batch_size if kind == "baseline" else config.batch_size
    train = _random_quadrant_data(batch * num_batches, 1)
    val = _random_quadrant_data(batch, 1, seed=1)
    # no early stop on random images
    patient = config.replace(patience=10, baseline={"patience": 10})
    if kind == "baseline":
        _, history = train_baseline(train, val, patient.baseline, max_epochs=3)
    else:
        _, history = train_cvae(train, val, BaselineNet(config.baseline), patient, max_epochs=3)
    fastest = min(history.seconds[1:])
    return fastest / (num_batches + 1 / 3), max(0.0, history.seconds[0] - fastest)


def measure_scoring_seconds(config: CVAEConfig, num_samples: int = 100, n: int = 32) -> float:
    """Seconds per test image of importance sampling with ``num_samples`` (untrained CVAE)."""
    cvae = build_cvae(BaselineNet(config.baseline), config).eval()
    data = _random_quadrant_data(n, 1)
    cvae_importance_sampling(cvae, data, num_samples)  # warm up
    start = time.perf_counter()
    cvae_importance_sampling(cvae, data, num_samples)
    return (time.perf_counter() - start) / n


def _models(budget: Budget, variants: Budget, config: CVAEConfig, directory) -> list[PlannedModel]:
    return [PlannedModel(model.label, model.kind, set(model.groups), model.budget, model.path,
                         model.max_epochs, cached=model.cached,
                         num_quadrants=model.num_quadrants, seed=model.seed)
            for model in book_models(budget, variants, config, directory)]


def _estimate_epochs(models: list[PlannedModel], runs: list[dict], config: CVAEConfig) -> None:
    """Fill in epochs and seconds per epoch of the models to train."""
    measured: dict[str, tuple[float, float]] = {}
    for model in models:
        if model.cached or not model.needed:
            continue
        kind = "baseline" if model.kind == "classifier" else model.kind  # a smaller MLP
        same = [r for r in runs if r["kind"] == model.kind and r["budget"] == model.budget.name]
        model.epochs = model.max_epochs
        if model.budget.name == "paper":  # early stopping ends it sooner
            model.epochs_source = "cached" if same else "typical"
            model.epochs = (statistics.median(r["epochs"] for r in same) if same
                            else round(TYPICAL_STOP[model.kind] * model.max_epochs))
        similar = same or [r for r in runs
                           if r["kind"] == kind and r["budget"] == model.budget.name]
        if similar:
            model.seconds_per_epoch = statistics.median(r["seconds_per_epoch"] for r in similar)
            model.source = (f"median of {len(similar)} cached {model.budget.name} runs"
                            if len(similar) > 1 else f"a cached {model.budget.name} run")
            if not same:
                model.source += f" of the {kind}"
            continue
        # a smoke run's one epoch is mostly fixed costs (validation, first-epoch checks): only
        # runs on many images scale with the number of images
        other = [r for r in runs if r["kind"] == kind and r["num_train"] >= MIN_SCALED_IMAGES]
        if other:
            model.seconds_per_epoch = statistics.median(
                r["seconds_per_epoch"] * model.budget.num_train / r["num_train"] for r in other)
            model.source = (f"{len(other)} cached run{'s' * (len(other) > 1)} at other "
                            f"budgets, scaled")
            continue
        if kind not in measured:
            measured[kind] = measure_step_seconds(kind, config)
        step, first_extra = measured[kind]
        batch = config.baseline.batch_size if kind == "baseline" else config.batch_size
        steps = -(-model.budget.num_train // batch)
        # the first epoch's extra cost, spread over the epochs so that epochs x seconds adds up
        model.seconds_per_epoch = (step * (steps + model.budget.num_val / batch / 3)
                                   + first_extra / model.epochs)
        model.source = "measured now"


def _scoring(budget: Budget, variants: Budget, config: CVAEConfig, directory, needs: set,
             per_image: float) -> list[tuple[str, float]]:
    out = []
    seeds = training_seeds(budget)
    key = tables.cll_table_key(QUADRANTS, config, budget, seeds=seeds)
    if "cll_table" in needs and not tables.table_paths(key, directory)[1].exists():
        # importance sampling, the MC prior (as costly) and the -ELBO with S=10 for each k
        models = 3 * len(seeds)
        out.append((f"CLL table, {models} x {budget.num_test:,} test images",
                    2.1 * models * budget.num_test * per_image))
    keys = list(variants_module.VARIANTS)
    seeds = variants_module.variants_seeds(book=budget)
    key = variants_module.variants_table_key(keys, QUADRANTS, config, variants, seeds=seeds)
    if "variants_table" in needs and not tables.table_paths(key, directory)[1].exists():
        models = 3 * len(keys) * len(seeds)
        out.append((f"variants table, {models} x {variants.num_test:,} test images",
                    models * variants.num_test * per_image))
    return out


def build_plan(budget: Budget | str | None = None, variants_budget: Budget | str | None = None,
               chapters: list[str] | None = None, cached_chapters: list[str] | None = None,
               needs: set[str] | None = None, seconds_per_chapter: float = 0.0,
               directory=None, config: CVAEConfig | None = None) -> BuildPlan:
    """The plan of a build at ``budget`` (default ``CVAE_BUDGET``) whose ``chapters`` execute.

    ``needs``: what those chapters ask for (`needs_of` their code; None: everything), so that
    only the models they would train count. ``variants_budget`` defaults to
    `cvae_utils.variants.variants_budget()`; ``directory`` to the model cache;
    ``seconds_per_chapter`` is the fixed cost of a chapter that executes.
    """
    budget = get_budget(budget)
    variants = variants_module.variants_budget(variants_budget)
    config = config or book_config()
    plan = BuildPlan(budget, variants, precision_path(), seeds=training_seeds(budget),
                     seeds_origin=seeds_origin(budget), chapters=list(chapters or []),
                     cached_chapters=list(cached_chapters or []),
                     seconds_per_chapter=seconds_per_chapter)
    plan.models = _models(budget, variants, config, directory)
    if needs is None:
        needs = {"book", "classifier", "variants", "cll_table", "variants_table"}
    if not plan.chapters:
        needs = set()
    for model in plan.models:
        model.needed = bool(model.groups & needs)
    if plan.to_train:
        _estimate_epochs(plan.models, recorded_runs(directory), config)
    if _scoring(budget, variants, config, directory, needs, 0.0):
        per_image = measure_scoring_seconds(config)
        plan.scoring = _scoring(budget, variants, config, directory, needs, per_image)
    return plan

