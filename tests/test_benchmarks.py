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

from cvae_utils.config import CVAEConfig

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
    assert SCRIPTS == ["bench_book.py", "bench_browser.py", "bench_cluster.py", "bench_epoch.py",
                       "bench_is.py", "bench_memory.py", "profile_step.py"]


def test_bench_epoch(tmp_path, mnist_root):
    out = run("bench_epoch.py", tmp_path=tmp_path, mnist_root=mnist_root)
    assert re.search(r"^precision path: (bf16|fp32) \(auto: ", out, re.M)
    assert re.search(r"^matmul peaks: fp32 \d+\.\d, bf16 \d+\.\d GFLOP/s$", out, re.M)
    rows = [line for line in out.splitlines() if re.match(r"(baseline|cvae) (bf16|fp32) +\d", line)]
    assert len(rows) == 2, out
    for row in rows:
        values = numbers(row.split(" ", 2)[2])
        assert len(values) == 5 and all(math.isfinite(v) and v > 0 for v in values), row


def test_bench_epoch_times_both_precision_paths(tmp_path, mnist_root):
    out = run("bench_epoch.py", "--precision", "fp32", "--both-precisions",
              tmp_path=tmp_path, mnist_root=mnist_root)
    assert "precision path: fp32 (set in the config); forced by --precision" in out
    for name in ("baseline fp32", "baseline bf16", "cvae fp32", "cvae bf16"):
        assert re.search(rf"^{name} +\d+\.\d+", out, re.M), name
    for model in ("baseline", "cvae"):
        assert re.search(rf"ratio fp32 / bf16, {model} *: +\d+\.\d+x per epoch", out)


def test_bench_is(tmp_path, mnist_root):
    out = run("bench_is.py", tmp_path=tmp_path, mnist_root=mnist_root)
    assert re.search(r"importance sampling \(book config\), S=4, 20 test images, k=1", out)
    assert re.search(r"MFLOP per image -> \d+\.\d+ GFLOP/s", out)
    assert "per-image seeded noise alone" in out


def test_bench_memory(tmp_path, mnist_root):
    out = run("bench_memory.py", "--compare", tmp_path=tmp_path, mnist_root=mnist_root)
    assert "estimators of the CLL table, k=1, 200 test images" in out
    for method in ("neg_elbo", "mc_prior", "importance"):
        rows = re.findall(rf"^{method} +4 (array|list) +\d+ +\d+ +-?\d+ +\d+ +\d+\.\d", out, re.M)
        assert sorted(rows) == ["array", "list"], out
        assert re.search(rf"^{method}: peak \d+ MiB \(one array\) against \d+ MiB \(list of "
                         rf"chunks\), the same mean$", out, re.M), out


def test_bench_memory_executes_a_chapter_with_a_probe_per_cell(tmp_path, mnist_root):
    out = run("bench_memory.py", "--chapter", "maths", tmp_path=tmp_path, mnist_root=mnist_root)
    assert re.search(r"^  cell\d+ +\d+\.\d s  rss +\d+  peak +\d+", out, re.M), out
    assert re.search(r"^chapter maths: peak \d+ MiB, \d+ s$", out, re.M), out


def test_bench_memory_trains_a_chapter_s_models_when_asked(tmp_path, mnist_root):
    out = run("bench_memory.py", "--chapter", "baseline", "--train", tmp_path=tmp_path,
              mnist_root=mnist_root)
    assert re.search(r"^chapter baseline: peak \d+ MiB, \d+ s$", out, re.M), out
    assert sorted(p.name[:11] for p in (tmp_path / "cache").glob("baseline-*.pt")) == [
        "baseline-k1", "baseline-k2", "baseline-k3"]


def test_profile_step(tmp_path, mnist_root):
    out = run("profile_step.py", tmp_path=tmp_path, mnist_root=mnist_root)
    config = CVAEConfig()
    assert f"== baseline step (train_baseline: batch {config.baseline.batch_size}" in out
    assert f"== CVAE step (train_cvae after its first epoch: batch {config.batch_size}" in out
    for group in ("matrix products", "Adam (optimizer)", "other"):
        assert len(re.findall(rf"{re.escape(group)} +\d+\.\d+ ms/step", out)) == 2, group


def test_bench_book_trains_into_a_fresh_cache(tmp_path, mnist_root):
    out = run("bench_book.py", tmp_path=tmp_path, mnist_root=mnist_root)
    assert "cvae_utils train --quadrants 1 --budget smoke" in out
    assert "exit status 0" in out
    assert re.search(r"wall time \d+ s", out) and re.search(r"peak resident memory .* MiB", out)
    assert not (tmp_path / "cache").exists()  # a fresh temporary cache, not CVAE_CACHE_DIR


def test_bench_cluster(tmp_path, mnist_root):
    out = run("bench_cluster.py", tmp_path=tmp_path, mnist_root=mnist_root)
    makespan = next(line for line in out.splitlines() if line.startswith("makespan of 2 smoke"))
    assert all(math.isfinite(v) and v > 0 for v in numbers(makespan))
    assert "overhead per paper model:" in out
    for workers in (3, 9, 27):
        line = next(line for line in out.splitlines() if line.strip().startswith(f"{workers} workers"))
        hours, speedup = numbers(line)[1:3]
        assert 0 < hours and 1 < speedup <= workers
