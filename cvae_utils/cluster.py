"""Training every model a run needs: here, one after another, or on a Dask cluster.

`train_models` takes a list of `cvae_utils.book_models.BookModel` (what the book needs at a
budget, or any part of it) and makes sure each is in the model cache. Where they train is one
switch:

- by default in this process, one after another, through `trained_baseline`, `trained_cvae` and
  `trained_classifier`, as a chapter would;
- ``workers=N``: a Dask `LocalCluster` of N single-thread worker processes on this machine;
- ``scheduler="tcp://host:8786"`` (or ``CVAE_SCHEDULER``): an existing Dask cluster, started by
  hand (``dask scheduler``, ``dask worker``), by dask-jobqueue on Slurm, on Kubernetes or in a
  cloud.

On a cluster each model is one task. The task graph orders them: a CVAE's task takes its
baseline's result as an argument, so it starts when that baseline is trained. The data is
sent to the cluster once; a worker needs the package and nothing else (no shared file
system): it trains into a temporary folder of its own and returns the checkpoint's bytes. The
client checks those bytes as it checks any cache file (key, digest, finite weights, shapes) and
writes them into its own cache atomically, model by model as they finish, so an interrupted run
keeps what finished and a rerun trains only the rest. A worker that dies mid-training loses its
task, which the scheduler gives to another worker; nothing of it reaches the cache. A worker
whose Python, torch, Pyro or package code differs from the client's is refused, naming both.

Every config is resolved on the client before it is sent (``precision="auto"`` becomes what this
machine would use), so a model trained anywhere has the key, and the file name, that this
machine's book build looks for. The device is the worker's: its GPU when it has one.
"""
from __future__ import annotations

import dataclasses
import platform
import tempfile
import time
import warnings
from pathlib import Path
from typing import Callable

import pyro
import torch

from .book_models import BookModel
from .cache import (MODEL_CODE, cache_dir, checkpoint_path, code_digest, load_checkpoint,
                    model_key, resolved, trained_baseline, trained_cvae)
from .classifier import DigitClassifier, classifier_key, trained_classifier
from .config import CVAEConfig, check_int
from .data import MNISTData, load_mnist
from .files import check_writable, write_atomically
from .networks import BaselineNet
from .progress import format_duration
from .variant_models import build_cvae

__all__ = ["ClusterError", "train_models", "versions", "connect", "SCHEDULER_TIMEOUT"]

SCHEDULER_TIMEOUT = 10  # seconds to reach a scheduler, and (times 6) to wait for a worker


class ClusterError(RuntimeError):
    """A cluster that cannot be used: unreachable, without workers, or with other versions."""


def versions() -> dict:
    """What a trained model depends on besides its key: Python, torch, Pyro and the package's
    code (a digest of the modules that train models). Client and workers must agree."""
    code = sorted({name for names in MODEL_CODE.values() for name in names})
    return {"python": platform.python_version(), "torch": torch.__version__,
            "pyro": pyro.__version__, "cvae_utils code": code_digest(*code)}


def _check_versions(theirs: dict, where: str) -> None:
    mine = versions()
    if theirs != mine:
        diff = ", ".join(f"{name} {theirs.get(name)!r} on {where} but {mine.get(name)!r} here"
                         for name in mine if theirs.get(name) != mine.get(name))
        raise ClusterError(f"refusing {where}: {diff}; install the same versions of torch, Pyro "
                           f"and this package on the workers as on the client")


# ------------------------------------------------------------------------------------------------
# One model, in this process or on a worker
# ------------------------------------------------------------------------------------------------

def _train_here(model: BookModel, data: MNISTData, cache, device=None) -> None:
    """Load or train ``model`` into the cache ``cache``, as a chapter would."""
    k, config, budget = model.num_quadrants, model.config, model.budget
    if model.kind == "baseline":
        trained_baseline(k, config, budget, data, cache=cache, device=device)
    elif model.kind == "cvae":
        trained_cvae(k, config, budget, data, cache=cache, device=device)
    elif model.kind == "classifier":
        trained_classifier(budget, data, config, cache=cache, device=device)
    else:
        raise ValueError(f"unknown model kind {model.kind!r}")


def _baseline_key(model: BookModel) -> dict:
    return model_key("baseline", model.config, model.budget, model.num_quadrants)


def _train_task(model: BookModel, data: MNISTData, baseline: dict | bytes | None,
                client_versions: dict) -> dict:
    """The task a worker runs: train ``model`` into a temporary cache and return its checkpoint.

    ``baseline``: the checkpoint of a CVAE's baseline (the baseline task's result, or the bytes
    of the client's cached file). Returns {"checkpoint": bytes, "seconds", "worker"}.
    """
    from distributed import get_worker

    worker = get_worker()
    _check_versions(client_versions, f"the client (seen from worker {worker.address})")
    key = (classifier_key(model.config, model.budget) if model.kind == "classifier" else
           model_key(model.kind, model.config, model.budget, model.num_quadrants))
    if key != model.key:  # e.g. the package's files changed on disk since the client started
        differ = sorted(name for name in key.keys() | model.key.keys()
                        if key.get(name) != model.key.get(name))
        raise ClusterError(f"worker {worker.address} derives another cache key for "
                           f"{model.label} than the client ({', '.join(differ)} differ); run "
                           f"client and workers on the same code")
    torch.set_num_threads(max(1, worker.state.nthreads))  # the worker's share of its machine
    if isinstance(baseline, dict):
        baseline = baseline["checkpoint"]
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="cvae-worker-") as tmp:
        if baseline is not None:
            checkpoint_path(_baseline_key(model), tmp).write_bytes(baseline)
        _train_here(model, data, tmp)
        checkpoint = checkpoint_path(model.key, tmp).read_bytes()
    return {"checkpoint": checkpoint, "seconds": time.perf_counter() - start,
            "worker": worker.address}


def _identity(value):
    return value


def _module_of(model: BookModel) -> torch.nn.Module:
    """An untrained module of the model's shape, to check a checkpoint against."""
    if model.kind == "baseline":
        config = model.config.baseline if isinstance(model.config, CVAEConfig) else model.config
        return BaselineNet(config)
    if model.kind == "cvae":
        return build_cvae(BaselineNet(model.config.baseline), model.config)
    return DigitClassifier(model.config)


def _store(model: BookModel, checkpoint: bytes) -> None:
    """Check a worker's checkpoint like any cache file, then move it into the cache atomically;
    a bad one raises CheckpointError and leaves the cache as it was."""
    def write(tmp: Path) -> None:
        tmp.write_bytes(checkpoint)
        load_checkpoint(tmp, model.key, _module_of(model))

    write_atomically(model.path, write)


# ------------------------------------------------------------------------------------------------
# Many models
# ------------------------------------------------------------------------------------------------

def connect(workers: int | None = None, scheduler: str | None = None):
    """A Dask client: of a new `LocalCluster` of ``workers`` single-thread processes, or of the
    scheduler at ``scheduler``. An unreachable scheduler is a ClusterError within
    `SCHEDULER_TIMEOUT` seconds, and so is one that gets no worker for six times as long."""
    from distributed import Client, LocalCluster

    if scheduler:
        try:
            client = Client(scheduler, timeout=SCHEDULER_TIMEOUT)
        except (OSError, TimeoutError, ValueError) as error:
            raise ClusterError(
                f"cannot reach the Dask scheduler at {scheduler!r} within {SCHEDULER_TIMEOUT} s "
                f"({type(error).__name__}: {error}); start one with `dask scheduler` and "
                f"workers with `dask worker {scheduler}`, or fix --scheduler / CVAE_SCHEDULER"
            ) from None
        try:
            client.wait_for_workers(1, timeout=6 * SCHEDULER_TIMEOUT)
        except TimeoutError:
            client.close()
            raise ClusterError(f"the Dask scheduler at {scheduler!r} has no worker after "
                               f"{6 * SCHEDULER_TIMEOUT} s; start some with `dask worker "
                               f"{scheduler}`") from None
        return client
    cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                           dashboard_address=None)
    return Client(cluster)


def _order(models: list[BookModel]) -> list[BookModel]:
    """Baselines and the classifier before the CVAEs that read them; otherwise as given."""
    return sorted(models, key=lambda m: m.kind == "cvae")


def train_models(models: list[BookModel], data: MNISTData | None = None, *,
                 workers: int | None = None, scheduler: str | None = None, cache=None,
                 retrain: bool = False, device=None,
                 log: Callable[[str], None] = print) -> int:
    """Put every model of ``models`` in the model cache ``cache``; the number trained.

    Models already cached are skipped (``retrain``: removed and trained again). Without
    ``workers`` or ``scheduler`` they train in this process, one after another; otherwise on a
    Dask cluster (see the module's docstring). ``device`` is this process's (default: its GPU
    if it has one); a worker uses its own. ``log`` receives a line per model and the state
    of the run: models done, running and left, with an estimate of the time left.
    """
    if workers is not None and scheduler:
        raise ValueError("give workers (a cluster on this machine) or scheduler (an existing "
                         "cluster), not both")
    if workers is not None:
        check_int("workers", workers, 1)
    directory = cache_dir(cache)
    check_writable(directory, "model cache")
    models = [_with_path(m, directory) for m in models]
    if retrain:
        for model in models:
            model.path.unlink(missing_ok=True)
    todo = _order([m for m in models if not m.cached])
    if not todo:
        log(f"all {len(models)} models are in the model cache ({directory})")
        return 0
    where = (f" on {scheduler}" if scheduler else
             f" on a local Dask cluster of {workers} workers" if workers else " in this process")
    if not workers and not scheduler:
        log(f"{len(todo)} of {len(models)} models to train{where}")
        data = data if data is not None else load_mnist()
        return _train_in_process(todo, data, directory, device, log)
    with connect(workers, scheduler) as client:  # an unusable cluster fails before any work
        log(f"{len(todo)} of {len(models)} models to train{where}")
        data = data if data is not None else load_mnist()
        return _train_on_cluster(client, todo, data, log)


def _with_path(model: BookModel, directory: Path) -> BookModel:
    """The model with its config resolved for this machine (the client's default device decides
    "auto", as a chapter here would) and its file in ``directory``."""
    return dataclasses.replace(model, config=resolved(model.config),
                               path=checkpoint_path(model.key, directory))


def _status(done: int, running: int, total: int, seconds: list[float], parallel: int) -> str:
    left = total - done
    estimate = ""
    if seconds and left:
        mean = sum(seconds) / len(seconds)
        estimate = f", about {format_duration(mean * left / max(1, parallel))} left"
    return f"{done}/{total} done, {running} running, {left - running} waiting{estimate}"


def _train_in_process(todo: list[BookModel], data: MNISTData, directory: Path, device,
                      log: Callable[[str], None]) -> int:
    seconds = []
    for done, model in enumerate(todo, start=1):
        start = time.perf_counter()
        _train_here(model, data, directory, device)
        seconds.append(time.perf_counter() - start)
        log(f"{model.label} ({model.budget.name}): {format_duration(seconds[-1])}; "
            + _status(done, 0, len(todo), seconds, 1))
    return len(todo)


def _train_on_cluster(client, todo: list[BookModel], data: MNISTData,
                      log: Callable[[str], None]) -> int:
    from distributed import as_completed

    for address, theirs in client.run(versions).items():
        _check_versions(theirs, f"worker {address}")
    largest = max((m.budget for m in todo), key=lambda b: (b.num_train, b.num_val, b.num_test))
    # the data goes to the scheduler once, inside a task that returns it: workers fetch it from
    # one another, and if the worker holding it dies the scheduler makes it again (data only
    # scattered to the workers would be lost with them)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*Large object", category=UserWarning)
        shared = client.submit(_identity, data.subset(largest), pure=False)
    mine, futures = versions(), {}
    for model in todo:
        baseline = None
        if model.kind == "cvae":
            path = checkpoint_path(_baseline_key(model), model.path.parent)
            baseline = (futures[path] if path in futures
                        else path.read_bytes() if path.exists() else None)
        # the same key for the same model: two clients of one scheduler share its training
        futures[model.path] = client.submit(_train_task, model, shared, baseline, mine,
                                            key=f"cvae_utils-{model.path.stem}")
    by_future = {future: model for model, future in zip(todo, futures.values())}
    done, seconds = 0, []
    for future in as_completed(list(futures.values())):
        model = by_future[future]
        result = future.result()  # a task's error (a version, a bad config) is raised here
        _store(model, result["checkpoint"])
        done += 1
        seconds.append(result["seconds"])
        workers = client.scheduler_info().get("workers", {})
        parallel = max(1, sum(w.get("nthreads", 1) for w in workers.values()))
        assigned = sum(len(keys) for keys in client.processing().values())
        running = min(assigned, parallel)  # a worker may hold more tasks than it has threads
        log(f"{model.label} ({model.budget.name}): {format_duration(result['seconds'])} on "
            f"{result['worker']}; " + _status(done, running, len(todo), seconds, parallel))
    return done
