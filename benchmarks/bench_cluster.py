"""Training on a Dask cluster: what it costs per model, and what more workers would buy.

Run from the repository root: ``python benchmarks/bench_cluster.py`` (about three minutes on two
cores). It measures, in one run on this machine:

1. the makespan of the book's six quick models (the baseline and the CVAE for k = 1, 2, 3) in
   this process, one after another, against a `LocalCluster` of two single-thread workers
   (`cvae_utils.cluster.train_models`), each from an empty cache;
2. the overhead a model pays on a cluster: sending the data (once per run), a task's round trip
   through the scheduler with a checkpoint-sized result (scheduling and result transfer), and
   the client's check and atomic write of that checkpoint;
3. a projection for the paper protocol with three training seeds on 3, 9 and 27 workers: the
   models' dependency graph (a CVAE after its baseline) scheduled longest-first on W workers,
   with the per-model training times of a paper build on a machine like this one
   (``--paper-seconds``) and the overhead measured in 2. Each worker is taken to be such a
   machine (two cores); the data is sent once per worker.

``--tiny``: the smoke budget and two models, to check the code paths in seconds.
"""
from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from pathlib import Path

import common  # noqa: F401  (puts the repository on sys.path)
import torch

from cvae_utils.book_models import book_models
from cvae_utils.cluster import _identity, _store, connect, train_models
from cvae_utils.data import load_mnist
from cvae_utils.variants import VARIANTS

# seconds of each model in the paper build of 2026-12-01 (2-core Sapphire Rapids VM, bf16, two
# threads; benchmarks/README.md): baselines 165 s for three, CVAEs 504 / 330 / 261 s, the
# classifier 34 s; a variant's CVAE is taken to cost the book's CVAE of the same k
PAPER_SECONDS = {"baseline": 55.0, "cvae": {1: 504.0, 2: 330.0, 3: 261.0}, "classifier": 34.0}


def makespans(models, data, workers: int) -> tuple[float, float]:
    times = []
    for cluster in (False, True):
        with tempfile.TemporaryDirectory() as cache:
            start = time.perf_counter()
            train_models(models, data, cache=cache, workers=workers if cluster else None,
                         log=lambda line: None)
            times.append(time.perf_counter() - start)
    return times[0], times[1]


def overheads(models, data, workers: int, repeats: int) -> dict:
    with tempfile.TemporaryDirectory() as cache:
        train_models(models[:2], data, cache=cache, log=lambda line: None)
        model = models[1]
        checkpoint = (Path(cache) / model.path.name).read_bytes()
        with connect(workers=workers) as client:
            client.wait_for_workers(workers)
            start = time.perf_counter()
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*Large object", category=UserWarning)
                shared = client.submit(_identity, data, pure=False)
            client.gather([client.submit(len, shared.result().train, workers=[w], pure=False)
                           for w in client.scheduler_info()["workers"]])
            send = time.perf_counter() - start
            trips = []
            for i in range(repeats):
                start = time.perf_counter()
                client.submit(_identity, checkpoint, pure=False).result()
                trips.append(time.perf_counter() - start)
        stores = []
        for i in range(repeats):
            model.path = Path(cache) / f"store-{i}" / model.path.name
            start = time.perf_counter()
            _store(model, checkpoint)
            stores.append(time.perf_counter() - start)
    return {"send": send, "trip": sorted(trips)[len(trips) // 2],
            "store": sorted(stores)[len(stores) // 2], "bytes": len(checkpoint)}


def paper_graph(seeds: int) -> list[tuple[str, float, str | None]]:
    """(name, seconds, the name it waits for) of every model of the paper protocol."""
    tasks = [("classifier", PAPER_SECONDS["classifier"], None)]
    for seed in range(seeds):
        for k in (1, 2, 3):
            baseline = f"baseline k={k} seed={seed}"
            tasks.append((baseline, PAPER_SECONDS["baseline"], None))
            for variant in VARIANTS:  # "book" is one of them: the book's own CVAE
                tasks.append((f"{variant} k={k} seed={seed}", PAPER_SECONDS["cvae"][k],
                              baseline))
    return tasks


def schedule(tasks, workers: int, overhead: float) -> float:
    """Makespan of ``tasks`` on ``workers``: whenever a worker is free it takes the longest
    task whose dependency has finished (list scheduling, longest first)."""
    finish, free = {}, [0.0] * workers
    waiting = sorted(tasks, key=lambda t: -t[1])
    while waiting:
        worker = min(range(workers), key=free.__getitem__)
        now = free[worker]
        ready = [t for t in waiting if t[2] is None or finish.get(t[2], now + 1) <= now]
        if not ready:  # only CVAEs are left, their baselines still running: wait for one
            free[worker] = min(finish[t[2]] for t in waiting if finish[t[2]] > now)
            continue
        waiting.remove(ready[0])
        finish[ready[0][0]] = free[worker] = now + ready[0][1] + overhead
    return max(finish.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    common.add_common_options(parser, threads=False)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    print(common.describe_machine())
    budget = "smoke" if args.tiny else "quick"
    models = [m for m in book_models(budget, budget) if "book" in m.groups]
    models = models[:2] if args.tiny else models
    data = load_mnist().subset(models[0].budget)
    here, there = makespans(models, data, args.workers)
    print(f"makespan of {len(models)} {budget} models: {here:.1f} s in this process "
          f"({torch.get_num_threads()} threads), {there:.1f} s on a LocalCluster of "
          f"{args.workers} single-thread workers ({here / there:.2f}x)")
    cost = overheads(models, data, args.workers, 3 if args.tiny else args.repeats)
    print(f"overhead: data to {args.workers} workers {cost['send']:.2f} s once; per model "
          f"{cost['trip'] * 1000:.0f} ms scheduling and a {cost['bytes'] / 1e6:.1f} MB result, "
          f"{cost['store'] * 1000:.0f} ms to check and write it")
    per_model = cost["trip"] + cost["store"]
    shortest = min(PAPER_SECONDS["cvae"].values())
    print(f"overhead per paper model: {per_model:.2f} s, {100 * per_model / shortest:.3f} % of "
          f"the shortest paper CVAE ({shortest:.0f} s); goal under 5 %")
    tasks = paper_graph(args.seeds)
    serial = sum(t[1] for t in tasks)
    print(f"projection, paper protocol with {args.seeds} seeds: {len(tasks)} models, "
          f"{serial / 3600:.1f} h one after another")
    for workers in (3, 9, 27):
        span = schedule(tasks, workers, per_model) + cost["send"]
        print(f"  {workers:2d} workers: {span / 3600:.2f} h ({serial / span:.1f}x)")


if __name__ == "__main__":
    main()
