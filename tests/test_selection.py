"""The recipe's selection run: every decision examined, scored on validation only, paired by seed."""
import subprocess
import sys
from dataclasses import fields

import pytest
import torch

from cvae_utils import selection
from cvae_utils.cache import trained_cvae
from cvae_utils.config import CVAEConfig, tutorial_config
from cvae_utils.data import make_quadrant_data
from cvae_utils.evaluate import cvae_importance_sampling
from cvae_utils.seeds import seeded
from cvae_utils.selection import DECISIONS, RULES, check_decisions, selection_table


def _differences(a, b, prefix=""):
    out = {}
    for f in fields(a):
        va, vb = getattr(a, f.name), getattr(b, f.name)
        if f.name == "baseline":
            out.update(_differences(va, vb, "baseline."))
        elif va != vb and f.name not in ("snapshot_inputs", "snapshot_samples", "seed"):
            out[prefix + f.name] = vb
    return out


def test_every_difference_from_the_tutorial_is_a_decision_undone_to_the_tutorials_value():
    recipe, tutorial = CVAEConfig(), tutorial_config()
    undone = {}
    for decision in DECISIONS:
        changed = _differences(recipe, decision.config(recipe))
        assert changed, f"{decision.name} changes nothing"
        assert decision.kind in RULES
        undone.update(changed)
    # each undo goes back to the tutorial's value, and nothing the recipe changed is left out
    assert undone == _differences(recipe, tutorial)


def test_unknown_decisions_and_a_single_seed_are_refused():
    with pytest.raises(ValueError, match="choose among: the decoder reads x and z"):
        check_decisions(["warm-up"])
    with pytest.raises(ValueError, match="at least 2 training seeds"):
        selection_table(["KL warm-up"], seeds=1, budget="smoke")


def test_the_selection_scores_on_validation_paired_by_seed(mnist, tmp_path, tiny_budget,
                                                          small_config, monkeypatch):
    seen = []
    real = selection.cvae_importance_sampling

    def spy(model, data, *args, **kwargs):
        seen.append(data.x)
        return real(model, data, *args, **kwargs)

    monkeypatch.setattr(selection, "cvae_importance_sampling", spy)
    budget = tiny_budget.__class__("smoke", num_train=256, num_val=64, num_test=32, max_epochs=1)
    frame = selection_table(["moving average of the weights"], seeds=2, budget=budget, data=mnist,
                            recipe=small_config.replace(weight_average=0.9, average_every=1),
                            num_samples=8, cache=tmp_path, log=lambda line: None)
    assert list(frame["decision"]) == ["moving average of the weights"]
    val_x = make_quadrant_data(mnist.subset(budget).val, 1).x
    assert len(seen) == 4 and all(torch.equal(x, val_x) for x in seen)  # never the test images

    # the gain, recomputed independently from the cached models
    recipe = small_config.replace(weight_average=0.9, average_every=1)
    val = make_quadrant_data(mnist.subset(budget).val, 1)
    diffs = []
    for seed in (0, 1):
        kept, _ = trained_cvae(1, seeded(recipe, seed), budget, mnist, cache=tmp_path)
        undone, _ = trained_cvae(1, seeded(recipe.replace(weight_average=0.0), seed), budget,
                                 mnist, cache=tmp_path)
        diffs.append(real(undone, val, 8, 0).values.double() - real(kept, val, 8, 0).values.double())
    diffs = torch.stack(diffs)
    row = frame.iloc[0]
    assert row["gain"] == pytest.approx(diffs.mean().item(), rel=1e-6)
    assert row["seed_sd"] == pytest.approx(diffs.mean(1).std().item(), rel=1e-6)
    assert row["effect"] in ("helps", "hurts", "within noise")
    assert row["action"] == ("keep" if row["effect"] == "helps" else "undo")  # a quality rule


def test_the_command_line_writes_the_table_and_refuses_one_seed(mnist_root, tmp_path):
    env = {"PATH": "/usr/bin:/bin", "CVAE_DATA_DIR": str(mnist_root),
           "CVAE_CACHE_DIR": str(tmp_path / "cache"), "PYTHONPATH": ":".join(sys.path)}
    bad = subprocess.run([sys.executable, "-m", "cvae_utils", "select", "--budget", "smoke",
                          "--seeds", "1"], capture_output=True, text=True, env=env, timeout=120)
    assert bad.returncode == 2 and "--seeds must be 2 or more" in bad.stderr
    run = subprocess.run([sys.executable, "-m", "cvae_utils", "select", "--budget", "smoke",
                          "--seeds", "2", "--decision", "baseline: bf16 products",
                          "--out", str(tmp_path)], capture_output=True, text=True, env=env,
                         timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    table = (tmp_path / "selection.md").read_text()
    assert table.count("| baseline: bf16 products |") == 4  # k = 1, 2, 3 and all
    import pandas as pd
    rows = pd.read_csv(tmp_path / "selection.csv").set_index("k")
    # judged on the three tasks together: the per-image sum, whose mean is the sum of the means
    assert rows.loc["all", "gain"] == pytest.approx(rows.loc[["1", "2", "3"], "gain"].sum())
    assert rows.loc["all", "uncertainty"] > 0
    assert "training seeds [0, 1]" in table and "Validation split (256 images)" in table
