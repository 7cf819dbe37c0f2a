"""The deploy workflow (.github/workflows/book.yml) builds the paper protocol by default, keeps the
model cache between runs (saved even when a run fails, times out or is cancelled) and stops its
training before GitHub's 6-hour job limit; and its pruning of the model cache deletes exactly the
checkpoints the current code can never load."""
from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest
import torch

from cvae_utils.cache import checkpoint_path, model_key, save_checkpoint
from cvae_utils.config import BaselineConfig, get_budget
from cvae_utils.networks import BaselineNet
from cvae_utils.train import History

yaml = pytest.importorskip("yaml")

ROOT = Path(__file__).resolve().parents[1]
WORKFLOW = ROOT / ".github" / "workflows" / "book.yml"
GITHUB_JOB_LIMIT_MINUTES = 360
MODELS = ".cache/models"


@pytest.fixture(scope="module")
def workflow() -> dict:
    return yaml.safe_load(WORKFLOW.read_text())


def _fallbacks(expression: str) -> list[str]:
    """The alternatives of a GitHub expression ``${{ a || b || 'c' }}``, in order."""
    inner = re.fullmatch(r"\$\{\{(.*)\}\}", expression.strip()).group(1)
    return [part.strip() for part in inner.split("||")]


def _steps(job: dict, uses: str) -> list[dict]:
    return [step for step in job["steps"] if step.get("uses", "").startswith(uses)]


def _training_jobs(workflow: dict) -> dict:
    """The jobs that train models: those that run `cvae_utils train` or build the book."""
    return {name: job for name, job in workflow["jobs"].items()
            if any("cvae_utils train" in step.get("run", "")
                   or "jupyter-book build" in step.get("run", "") for step in job["steps"])}


def test_the_default_budget_is_paper_with_the_budgets_seeds(workflow):
    budget = _fallbacks(workflow["env"]["CVAE_BUDGET"])
    assert budget[0] == "github.event_name == 'pull_request' && 'smoke'"  # pull requests: smoke
    assert budget[-1] == "'paper'", budget                                # else paper
    assert "vars.CVAE_BUDGET" in budget                                   # a variable overrides
    manual = workflow[True]["workflow_dispatch"]["inputs"]  # PyYAML reads `on:` as True
    assert manual["budget"]["default"] == "paper"
    # no seed count of its own: empty unless a variable or a manual run sets one
    seeds = workflow["env"]["CVAE_SEEDS"]
    assert not re.search(r"'\d+'", seeds), seeds
    assert manual["seeds"]["default"] == ""


def test_the_model_cache_is_restored_by_prefix_and_saved_always(workflow):
    jobs = _training_jobs(workflow)
    assert set(jobs) >= {"models", "build"}
    for name, job in jobs.items():
        restore, save = _steps(job, "actions/cache/restore@"), _steps(job, "actions/cache/save@")
        assert len(restore) == 1 and len(save) == 1, name
        assert restore[0]["with"]["path"] == save[0]["with"]["path"] == MODELS
        assert restore[0]["with"]["restore-keys"].strip(), name  # falls back to older caches
        assert save[0]["if"].startswith("always()"), name  # also after a failure or a timeout
        assert "pull_request" in save[0]["if"], name  # pull requests save nothing
        # no combined actions/cache on the models (it saves only when the job succeeds)
        assert all(step["with"]["path"] != MODELS for step in _steps(job, "actions/cache@")), name
        order = [step.get("id") or step.get("uses", "").split("@")[0] for step in job["steps"]]
        assert (order.index("restore") < order.index("contents")
                < order.index("actions/cache/save")), name
    key_step = next(step for step in workflow["jobs"]["models"]["steps"]
                    if step.get("id") == "keys")
    assert "hashFiles('requirements.txt', 'cvae_utils/**/*.py')" in key_step["run"]


def test_training_stops_before_the_job_limit(workflow):
    for name, job in _training_jobs(workflow).items():
        job_limit = job["timeout-minutes"]
        assert job_limit < GITHUB_JOB_LIMIT_MINUTES, name
        long_steps = [step for step in job["steps"]
                      if any(command in step.get("run", "")
                             for command in ("cvae_utils train", "jupyter-book build", "pytest"))]
        assert long_steps and all("timeout-minutes" in step for step in long_steps), name
        # the step limits leave time for the setup before them and the cache's save after them
        assert sum(step["timeout-minutes"] for step in long_steps) <= job_limit - 20, name
    train = [step for step in workflow["jobs"]["models"]["steps"]
             if "cvae_utils train" in step.get("run", "")]
    assert len(train) == 1 and "--book" in train[0]["run"]


def test_the_rest_of_the_workflow_is_kept(workflow):
    build = workflow["jobs"]["build"]
    assert build["needs"] == "models"
    runs = "\n".join(step.get("run", "") for step in build["steps"])
    assert "book_colab.py" in runs and "git push -q origin notebooks" in runs
    assert "jupyter-book build book/ -W -n --keep-going" in runs
    assert "tests/test_browser.py" in runs
    assert _steps(build, "actions/upload-pages-artifact@")
    assert workflow["jobs"]["deploy"]["needs"] == "build"


def _prune_module():
    spec = importlib.util.spec_from_file_location("prune_model_cache",
                                                  ROOT / ".github" / "prune_model_cache.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_pruning_deletes_only_checkpoints_of_other_code_or_versions(tmp_path, capsys):
    prune = _prune_module()
    config, budget = BaselineConfig(hidden_1=4, hidden_2=4), get_budget("smoke")
    state = BaselineNet(config).state_dict()

    def write(key):
        return save_checkpoint(checkpoint_path(key, tmp_path), key, state, History())

    current = write(model_key("baseline", config, budget, 1))
    other_k = write(model_key("baseline", config, budget, 2))
    old_code = write({**model_key("baseline", config, budget, 3), "code": "0" * 16})
    old_torch = model_key("baseline", config, get_budget("quick"), 1)
    old_torch = write({**old_torch, "versions": {**old_torch["versions"], "torch": "1.0"}})
    table = tmp_path / "cll-table-smoke-0123456789abcdef.json"
    table.write_text(json.dumps({"key": {"kind": "cll-table", "code": "0" * 16}}))
    foreign = tmp_path / "notes.pt"
    torch.save({"something": 1}, foreign)

    assert prune.main([str(tmp_path), "--dry-run"]) == 0
    assert old_code.exists() and old_torch.exists()  # a dry run deletes nothing
    assert prune.main([str(tmp_path)]) == 0
    assert not old_code.exists() and not old_torch.exists()
    assert current.exists() and other_k.exists() and table.exists() and foreign.exists()
    assert "2 stale checkpoints" in capsys.readouterr().out
