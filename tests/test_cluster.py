"""Training on a Dask cluster (`cvae_utils.cluster`), with the real engine on this machine.

A `LocalCluster` of two single-thread worker processes is shared by the tests of this module;
each test has its own model cache. The models are tiny (`small_config`, `tiny_budget`) or at
the smoke budget, so that the whole module takes about a minute.
"""
from __future__ import annotations

import os
import re
import signal
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from cvae_utils.book_models import book_models
from cvae_utils.cache import load_checkpoint
from cvae_utils.cluster import ClusterError, _check_versions, _module_of, train_models, versions
from cvae_utils.config import Budget

distributed = pytest.importorskip("distributed")


@pytest.fixture(scope="module")
def cluster():
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as local:
        yield local


@pytest.fixture
def models(tiny_budget, small_config, tmp_path):
    """The book's baseline and CVAE for one input quadrant, at toy size."""
    every = book_models(tiny_budget, tiny_budget, small_config, tmp_path / "cache")
    return [m for m in every if "book" in m.groups and m.num_quadrants == 1]


def _weights(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def _files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


def test_a_model_trained_on_a_worker_has_the_weights_of_one_trained_here(
        cluster, models, tiny_data, tmp_path):
    """Same seed, same thread count (one): the same weights, in process or on a worker."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        here = train_models(models, tiny_data, cache=tmp_path / "here", log=lambda line: None)
    finally:
        torch.set_num_threads(threads)
    lines = []
    there = train_models(models, tiny_data, scheduler=cluster.scheduler_address,
                         cache=tmp_path / "there", log=lines.append)
    assert here == there == 2
    assert any("on tcp://" in line and "2/2 done" in line for line in lines)
    for model in models:
        a, b = (_weights(tmp_path / where / model.path.name) for where in ("here", "there"))
        assert a.keys() == b.keys() and all(torch.equal(a[n], b[n]) for n in a), model.label
    # a second run finds both in the cache and trains nothing
    assert train_models(models, tiny_data, scheduler=cluster.scheduler_address,
                        cache=tmp_path / "there", log=lines.append) == 0
    assert lines[-1].startswith("all 2 models are in the model cache")


def test_a_worker_killed_mid_training_loses_nothing_but_time(cluster, models, tiny_data,
                                                            tmp_path):
    """The scheduler gives the task of a killed worker to another one; the client writes only
    a checked checkpoint, so nothing half-written reaches the cache."""
    long_run = Budget("smoke", num_train=96, num_val=48, num_test=32, max_epochs=400)
    config = models[0].config.replace(patience=1000, min_delta=0.0)
    slow = book_models(long_run, long_run, config, tmp_path / "cache")
    slow = [m for m in slow if "book" in m.groups and m.num_quadrants == 1]
    cvae = next(m for m in slow if m.kind == "cvae")
    client = distributed.Client(cluster.scheduler_address)
    killed = []

    def kill_when_training():
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not killed:
            for address, keys in client.processing().items():
                if any(cvae.path.stem in str(key) for key in keys):
                    time.sleep(1.0)  # well into its epochs
                    pid = client.run(os.getpid, workers=[address])[address]
                    os.kill(pid, signal.SIGKILL)
                    killed.append(address)
                    return
            time.sleep(0.05)

    killer = threading.Thread(target=kill_when_training)
    killer.start()
    try:
        trained = train_models(slow, tiny_data, scheduler=cluster.scheduler_address,
                               cache=tmp_path / "cache", log=lambda line: None)
    finally:
        killer.join()
        client.close()
    assert killed, "the CVAE's training was never seen running"
    assert trained == 2
    assert _files(tmp_path / "cache") == sorted(m.path.name for m in slow)  # no temporary file
    for model in slow:
        load_checkpoint(model.path, model.key, _module_of(model))  # complete and checked
    cluster.wait_for_workers(2, timeout=60)  # the nanny restarted the killed worker


def test_two_clients_asking_for_the_same_models_at_once(cluster, models, tiny_data, tmp_path):
    results, errors = [], []

    def run():
        try:
            results.append(train_models(models, tiny_data, scheduler=cluster.scheduler_address,
                                        cache=tmp_path / "cache", log=lambda line: None))
        except Exception as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors and sum(results) >= 2  # trained once each (or twice, harmlessly)
    assert _files(tmp_path / "cache") == sorted(m.path.name for m in models)
    for model in models:
        load_checkpoint(model.path, model.key, _module_of(model))


def test_an_interrupted_run_keeps_what_finished_and_a_rerun_trains_the_rest(
        cluster, models, tiny_data, tmp_path):
    def interrupt(line):
        if " done" in line:
            raise KeyboardInterrupt  # Ctrl-C after the first model is stored

    with pytest.raises(KeyboardInterrupt):
        train_models(models, tiny_data, scheduler=cluster.scheduler_address,
                     cache=tmp_path / "cache", log=interrupt)
    stored = _files(tmp_path / "cache")
    assert len(stored) == 1 and stored[0] == models[0].path.name  # the baseline
    assert train_models(models, tiny_data, scheduler=cluster.scheduler_address,
                        cache=tmp_path / "cache", log=lambda line: None) == 1


def test_an_unreachable_scheduler_is_one_clear_line_within_seconds(tmp_path, capsys,
                                                                   monkeypatch):
    from cvae_utils.__main__ import main

    monkeypatch.setenv("CVAE_SCHEDULER", "tcp://127.0.0.1:9")  # nothing listens there
    start = time.monotonic()
    status = main(["train", "--quadrants", "1", "--budget", "smoke",
                   "--cache-dir", str(tmp_path / "cache")])
    seconds = time.monotonic() - start
    err = capsys.readouterr().err
    assert status == 1 and seconds < 30
    assert err.startswith("error: cannot reach the Dask scheduler at 'tcp://127.0.0.1:9'")
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert _files(tmp_path / "cache") == []  # no work was done


def test_an_unusable_cache_is_one_clear_line(tmp_path, capsys):
    from cvae_utils.__main__ import main

    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache should be")
    status = main(["train", "--quadrants", "1", "--budget", "smoke", "--cache-dir",
                   str(blocker)])
    err = capsys.readouterr().err
    assert status == 1 and err.startswith("error: ") and "Traceback" not in err
    assert str(blocker) in err


def test_a_worker_of_other_versions_is_refused_naming_both():
    theirs = dict(versions(), torch="1.0.0")
    with pytest.raises(ClusterError, match=r"torch '1\.0\.0' on worker tcp://w:1 but "
                                           + re.escape(f"'{torch.__version__}' here")):
        _check_versions(theirs, "worker tcp://w:1")
    _check_versions(versions(), "worker tcp://w:1")  # the same versions pass


def test_the_command_line_trains_the_book_on_a_local_cluster_then_nothing(mnist_root,
                                                                          tmp_path):
    """``train --book --workers 2`` at the smoke budget: every model of the book (baselines,
    CVAEs, classifier, the variants' models) in the cache; run again, it trains nothing."""
    import subprocess

    command = [sys.executable, "-m", "cvae_utils", "train", "--book", "--budget", "smoke",
               "--workers", "2", "--data-dir", str(mnist_root), "--cache-dir",
               str(tmp_path / "cache")]
    env = {**os.environ, "CVAE_BUDGET": "smoke"}
    env.pop("CVAE_VARIANTS_BUDGET", None)
    first = subprocess.run(command, capture_output=True, text=True, env=env, timeout=900)
    assert first.returncode == 0, first.stderr[-3000:]
    expected = book_models("smoke", "smoke", directory=tmp_path / "cache")
    assert all(m.cached for m in expected)
    assert f"{len(expected)}/{len(expected)} done" in first.stdout
    second = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert second.returncode == 0
    assert f"all {len(expected)} models are in the model cache" in second.stdout


def test_the_book_build_trains_on_the_cluster_before_the_chapters(cluster, tiny_budget,
                                                                  small_config, tiny_data,
                                                                  tmp_path, monkeypatch):
    """The build's path (``CVAE_SCHEDULER`` set): `book_build.train_on_cluster` trains what the
    executing chapters need on the cluster, and a scheduler that cannot be reached stops the
    build with a clear error before any chapter runs."""
    import book_build
    from sphinx.errors import ExtensionError

    monkeypatch.setenv("CVAE_CACHE_DIR", str(tmp_path / "cache"))
    wanted = [m for m in book_models(tiny_budget, tiny_budget, small_config)
              if "book" in m.groups]
    monkeypatch.setattr(book_build, "book_models", lambda: wanted)
    monkeypatch.setattr(book_build, "train_models",
                        lambda models, **kw: train_models(models, tiny_data, **kw))
    lines = []
    assert book_build.train_on_cluster(cluster.scheduler_address, {"book"}, lines.append) == 6
    assert all(m.cached for m in wanted) and "6/6 done" in lines[-1]
    monkeypatch.setenv("CVAE_CACHE_DIR", str(tmp_path / "empty"))  # models to train again
    wanted[:] = [m for m in book_models(tiny_budget, tiny_budget, small_config)
                 if "book" in m.groups]
    with pytest.raises(ExtensionError, match="cannot reach the Dask scheduler.*before any "
                                             "chapter ran"):
        book_build.train_on_cluster("tcp://127.0.0.1:9", {"book"}, lines.append)


def test_a_worker_that_derives_another_key_is_refused(cluster, models, tiny_data, tmp_path):
    """A worker whose code gives another cache key than the client's (the package's files
    changed, say) trains nothing: its result could never be found under the client's key."""
    import dataclasses

    forged = dataclasses.replace(models[0], key={**models[0].key, "code": "0" * 16})
    with pytest.raises(ClusterError, match="derives another cache key for baseline k=1 "
                                           r"than the client \(code differ\)"):
        train_models([forged], tiny_data, scheduler=cluster.scheduler_address,
                     cache=tmp_path / "cache", log=lambda line: None)
    assert _files(tmp_path / "cache") == []
