"""Smoke tests of the benchmarks: each script runs end to end at toy sizes (``--tiny``), in a
subprocess as a reader would start it, so that none of them drifts from the package unnoticed.

The numbers they print at these sizes mean nothing; the tests check that every report line the
README quotes is still printed, with finite numbers where it has them. They need the MNIST files
(the scripts read real batches) and skip without them.
"""
from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest


ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted(p.name for p in (ROOT / "benchmarks").glob("*.py") if p.name != "common.py")


def run(script: str, *args: str, tmp_path: Path, mnist_root: Path) -> str:
    env = dict(os.environ, CVAE_DATA_DIR=str(mnist_root), CVAE_CACHE_DIR=str(tmp_path / "cache"),
               MPLBACKEND="Agg", OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), "--tiny", *args],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, (f"{script} --tiny failed (exit {result.returncode}):\n"
                                    f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result.stdout


def numbers(line: str) -> list[float]:
    return [float(v) for v in re.findall(r"-?\d+(?:\.\d+)?(?:e-?\d+)?", line)]


def test_every_script_has_a_smoke_test():
    # bench_browser.py needs a built book and Chromium: its smoke test is in test_browser.py
    assert SCRIPTS == ["bench_book.py", "bench_browser.py", "bench_epoch.py", "bench_is.py",
                       "lr_schedule.py", "profile_step.py", "step_floor.py", "stopping_rules.py"]


def test_bench_epoch(tmp_path, mnist_root):
    out = run("bench_epoch.py", tmp_path=tmp_path, mnist_root=mnist_root)
    for name in ("baseline / project", "baseline / tutorial", "cvae / project",
                 "cvae / tutorial"):
        (row,) = [line for line in out.splitlines() if line.startswith(name)]
        values = numbers(row.removeprefix(name))
        assert len(values) == 9 and all(math.isfinite(v) and v > 0 for v in values), row
    assert re.search(r"ratio tutorial / project, cvae +: +\d+\.\d+x per epoch", out)
    assert re.search(r"the issue's arithmetic limit, cvae +: .* % of the limit", out)
    assert "VALIDATION: seconds per pass over 64 images" in out
    assert re.search(r"^precision path of the project: (bf16|fp32) \(auto: ", out, re.M)
    assert re.search(r"^fp32 matmul peak .*: \d+\.\d GFLOP/s", out, re.M)
    assert re.search(r"^bf16 matmul peak .*: \d+\.\d GFLOP/s wall-clock, \d+\.\d+x", out, re.M)


def test_bench_epoch_times_both_precision_paths(tmp_path, mnist_root):
    out = run("bench_epoch.py", "--precision", "fp32", "--both-precisions", "--val-images", "0",
              tmp_path=tmp_path, mnist_root=mnist_root)
    assert "precision path of the project: fp32 (set in the config); forced by --precision" in out
    for name in ("cvae / project", "cvae / project bf16", "baseline / project bf16"):
        (row,) = [line for line in out.splitlines()
                  if re.match(rf"{re.escape(name)} +\d", line)]
        values = numbers(row.removeprefix(name))
        assert len(values) == 9 and all(v > 0 for v in values), row
    for model in ("baseline", "cvae"):
        assert re.search(rf"ratio fp32 / bf16 paths, {model} *: +\d+\.\d+x per epoch", out)


def test_bench_is(tmp_path, mnist_root):
    out = run("bench_is.py", tmp_path=tmp_path, mnist_root=mnist_root)
    assert re.search(r"importance sampling \(book config\), S=4, 20 test images, k=1", out)
    assert re.search(r"MFLOP per image -> \d+\.\d+ GFLOP/s", out)
    assert "per-image seeded noise alone" in out


def test_profile_step(tmp_path, mnist_root):
    out = run("profile_step.py", tmp_path=tmp_path, mnist_root=mnist_root)
    assert "== baseline step (train_baseline: batch 256" in out
    assert "== CVAE step (train_cvae after its first epoch: batch 256" in out
    for group in ("matrix products", "Adam (optimizer)", "other"):
        assert len(re.findall(rf"{re.escape(group)} +\d+\.\d+ ms/step", out)) == 2, group


def test_bench_book_trains_into_a_fresh_cache(tmp_path, mnist_root):
    out = run("bench_book.py", tmp_path=tmp_path, mnist_root=mnist_root)
    assert "cvae_utils train --quadrants 1 --budget smoke" in out
    assert "exit status 0" in out
    assert re.search(r"wall time \d+ s", out) and re.search(r"peak resident memory .* MiB", out)
    assert not (tmp_path / "cache").exists()  # a fresh temporary cache, not CVAE_CACHE_DIR


def test_stopping_rules(tmp_path, mnist_root):
    out = run("stopping_rules.py", "--patience", "6", "3", "--min-delta", "0.05",
              tmp_path=tmp_path, mnist_root=mnist_root)
    rows = {tuple(numbers(line)[:2]): line for line in out.splitlines()
            if re.match(r" +\d+ +0\.05 ", line)}
    epochs = {rule: int(numbers(line)[2]) for rule, line in rows.items()}
    assert set(epochs) == {(6, 0.05), (3, 0.05)}
    # the made-up run flattens out: the shorter patience stops it sooner
    assert epochs[(3, 0.05)] < epochs[(6, 0.05)] <= 30, out


def test_stopping_rules_replays_the_training_loop():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from stopping_rules import BeyondRecord, replay

    losses = [10, 9, 8.99, 8.98, 8.97, 8.96, 7, 6.5]
    # improvements of 0.01 do not count with min_delta 0.05: patience 3 stops after epoch 5
    assert replay(losses, patience=3, min_delta=0.05, warmup=0, max_epochs=8) == (5, 5)
    # without a threshold every small improvement resets the patience
    assert replay(losses, patience=3, min_delta=0.0, warmup=0, max_epochs=8) == (8, 8)
    # no epoch counts during the warm-up
    assert replay(losses, patience=1, min_delta=0.05, warmup=6, max_epochs=8) == (8, 8)
    # a rule that would train past the recorded epochs says so
    with pytest.raises(BeyondRecord):
        replay([10, 9, 9.5], patience=5, min_delta=0.0, warmup=0, max_epochs=100)


def test_step_floor(tmp_path, mnist_root):
    out = run("step_floor.py", tmp_path=tmp_path, mnist_root=mnist_root)
    # the step without Pyro computes the book's loss: same weights and noise, same value
    (check,) = [line for line in out.splitlines() if line.startswith("loss on one batch")]
    pyro_value, plain_value = numbers(check)[:2]
    assert abs(pyro_value - plain_value) <= 1e-5 * abs(pyro_value), check
    for name in ("book", "no Pyro", "networks only", "Adam only"):
        rows = [line for line in out.splitlines() if line.startswith(f"  {name} ")]
        assert len(rows) == 2, (name, out)  # ms per step, and seconds of the paper's training
        step, paper = numbers(rows[0]), numbers(rows[1])
        assert len(step) == 3 and all(v > 0 and math.isfinite(v) for v in step), rows[0]
        assert len(paper) == 1 and paper[0] > 0, rows[1]
    assert re.search(r"\(196 steps x 215 epochs\)", out)
    assert re.search(r"^matmul peak now .*: fp32 \d+\.\d, bf16 \d+\.\d GFLOP/s$", out, re.M)


def test_lr_schedule(tmp_path, mnist_root):
    out = run("lr_schedule.py", tmp_path=tmp_path, mnist_root=mnist_root)
    assert re.search(r"^trained 2 epochs in \d+ s .*; the last epoch's lr 7\.50e-04$", out, re.M)
    assert re.search(r"^CVAE IS \(S=2\): \d+\.\d+ ± \d+\.\d+ nats per image", out, re.M)
    assert re.search(r"^CVAE -ELBO \(S=2\): \d+\.\d+ ± ", out, re.M)


def test_lr_schedule_anneals_along_a_half_cosine():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from lr_schedule import cosine_lr

    rates = [cosine_lr(2e-3, epoch, 50) for epoch in range(1, 51)]
    assert rates[0] == 2e-3 and math.isclose(rates[25], 1e-3)  # epoch 26: half way
    assert all(a > b > 0 for a, b in zip(rates, rates[1:]))
    assert rates[-1] < 1e-5  # nearly 0 in the last epoch
