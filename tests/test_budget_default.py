"""Every pytest run defaults to the smoke budget (the root ``conftest.py``), ``--nbval`` or not,
so that ``pytest tests/`` never trains the paper models because ``CVAE_BUDGET`` was unset."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from cvae_utils.config import get_budget

ROOT = Path(__file__).resolve().parents[1]


def test_the_budget_this_run_sees():
    """The budget is always set in a test run: the one given outside, else smoke. Run alone by
    the test below with ``CVAE_BUDGET`` unset and ``CVAE_EXPECTED_BUDGET=smoke``."""
    expected = os.environ.get("CVAE_EXPECTED_BUDGET") or os.environ["CVAE_BUDGET"]
    assert get_budget().name == expected


def test_pytest_without_a_budget_runs_at_smoke():
    env = {k: v for k, v in os.environ.items() if k not in ("CVAE_BUDGET", "PYTEST_ADDOPTS")}
    env.update(CVAE_EXPECTED_BUDGET="smoke",
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         "tests/test_budget_default.py::test_the_budget_this_run_sees"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "1 passed" in result.stdout
