"""Tests of cvae_utils.seeds (how many training seeds, the summary of a number over seeds and test
images, the verdict) and of the seeds in the tables, the book's list of models and its plan.

`summarize` is checked against an independent numpy computation; `compare_rows` (and so
`variant_comparison`) on constructed rows that share the difficulty of each image, where the
paired difference sees what the rows' own error bars hide, and on rows whose seeds disagree,
where the seed term keeps a verdict from being claimed. The CLL table of two seeds is checked
against the two single-seed tables of the same models, on MNIST at the smoke budget.
"""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from cvae_utils import tables
from cvae_utils.book_models import book_models
from cvae_utils.cache import checkpoint_path, model_key
from cvae_utils.cluster import train_models
from cvae_utils.config import BaselineConfig, Budget, CVAEConfig, get_budget, tutorial_config
from cvae_utils.seeds import (SEEDS_PER_BUDGET, resolve_seeds, seeded, seeds_origin, summarize,
                              training_seeds, verdict)
from cvae_utils.tables import (CLL_ROWS, cll_table, cll_table_key, compare_rows, error_bar,
                               format_table, make_table, row_difference)
from cvae_utils.variants import variant_comparison

TINY = CVAEConfig(hidden_1=32, hidden_2=32, z_dim=4)
SMALL = tutorial_config().replace(
    hidden_1=16, hidden_2=8, z_dim=3, batch_size=32,
    baseline=BaselineConfig(hidden_1=16, hidden_2=8, batch_size=32, precision="fp32"))


@pytest.fixture(autouse=True)
def no_seeds_variable(monkeypatch):
    """Each test starts from the budget's own count; those about CVAE_SEEDS set it."""
    monkeypatch.delenv("CVAE_SEEDS", raising=False)


pytestmark = pytest.mark.usefixtures("one_thread")


# ------------------------------------------------------------------------------------------------
# The summary and the verdict
# ------------------------------------------------------------------------------------------------

def test_summarize_against_numpy():
    rng = np.random.default_rng(0)
    values = rng.normal(70.0, 8.0, size=(3, 50)) + rng.normal(0.0, 2.0, size=(3, 1))  # seeds
    summary = summarize(torch.tensor(values, dtype=torch.float32))
    as32 = values.astype(np.float32).astype(np.float64)
    seed_sd = np.std(as32.mean(axis=1), ddof=1)
    test_se = np.std(as32.mean(axis=0), ddof=1) / np.sqrt(50)
    assert summary.mean == pytest.approx(as32.mean(), rel=1e-12)
    assert summary.seed_sd == pytest.approx(seed_sd, rel=1e-10)
    assert summary.test_se == pytest.approx(test_se, rel=1e-10)
    assert summary.uncertainty == pytest.approx(np.sqrt(seed_sd ** 2 / 3 + test_se ** 2),
                                                rel=1e-10)
    assert (summary.num_seeds, summary.num_images) == (3, 50)
    one = summarize(torch.tensor(values[:1]))
    assert one.test_se == pytest.approx(np.std(values[0], ddof=1) / np.sqrt(50), rel=1e-12)
    assert math.isnan(one.seed_sd) and math.isnan(one.uncertainty)
    for bad in (torch.zeros(5), torch.zeros(0, 4), torch.zeros(2, 3, 4)):
        with pytest.raises(ValueError, match=r"shape \(n_seeds, n_images\)"):
            summarize(bad)


def test_verdict_needs_the_difference_beyond_twice_its_uncertainty():
    # two seeds agreeing on -1 nat, images spread by 0.1 around it: clearly lower
    values = -1.0 + 0.1 * torch.randn(2, 400, generator=torch.Generator().manual_seed(0))
    assert verdict(summarize(values)) == "lower" and verdict(summarize(-values)) == "higher"
    # seeds that disagree (+3 and +0.2): the seed term makes it noise, although a single seed's
    # test standard error alone would call it higher
    disagree = torch.stack([torch.full((400,), 3.0), torch.full((400,), 0.2)])
    disagree = disagree + 0.1 * torch.randn(2, 400, generator=torch.Generator().manual_seed(1))
    assert verdict(summarize(disagree)) == "within noise"
    assert verdict(summarize(disagree[:1])) == "higher"           # one seed: test_se alone


# ------------------------------------------------------------------------------------------------
# How many seeds
# ------------------------------------------------------------------------------------------------

def test_training_seeds_follow_the_budget_and_cvae_seeds(monkeypatch):
    assert SEEDS_PER_BUDGET["paper"] == 3
    assert training_seeds("paper") == (0, 1, 2) and training_seeds("smoke") == (0,)
    assert "the paper budget's count; CVAE_SEEDS overrides it" == seeds_origin("paper")
    monkeypatch.setenv("CVAE_SEEDS", " 2 ")
    assert training_seeds("paper") == training_seeds("smoke") == (0, 1)
    assert seeds_origin("paper") == "CVAE_SEEDS=2"
    assert training_seeds("paper", 4) == (0, 1, 2, 3)            # the argument first
    monkeypatch.setenv("CVAE_SEEDS", "")                          # empty: as if unset
    assert training_seeds("paper") == (0, 1, 2)


@pytest.mark.parametrize("value", ["three", "0", "21", "2.5", "-1"])
def test_a_bad_cvae_seeds_names_the_variable_and_the_fix(monkeypatch, value):
    monkeypatch.setenv("CVAE_SEEDS", value)
    with pytest.raises(ValueError, match=r"environment variable CVAE_SEEDS.*e\.g\. CVAE_SEEDS=3, "
                                         r"or unset it for the budget's own count"):
        training_seeds("smoke")


def test_a_table_takes_none_a_count_or_the_seeds_themselves():
    assert resolve_seeds(None, "paper") == (0, 1, 2)
    assert resolve_seeds(2, "paper") == (0, 1)
    assert resolve_seeds((1,), "paper") == (1,) and resolve_seeds([2, 0]) == (2, 0)
    for bad, message in (((0, 0), "distinct"), ((), "distinct"), ((-1,), "training seed"),
                         ("2", "a count such as 3"), (2.5, "a count such as 3"),
                         (0, "argument count")):
        with pytest.raises(ValueError, match=message):
            resolve_seeds(bad, "smoke")


def test_seed_zero_is_the_unseeded_config():
    """Seed 0 of a default config is that config: the models cached before seeds existed are
    seed 0's, under the same keys."""
    config = CVAEConfig()
    assert seeded(config, 0) == config
    two = seeded(config, 2)
    assert two.seed == 2 and two.baseline.seed == 2
    smoke = get_budget("smoke")
    assert model_key("cvae", two, smoke, 1) != model_key("cvae", config, smoke, 1)


# ------------------------------------------------------------------------------------------------
# Paired comparisons of rows
# ------------------------------------------------------------------------------------------------

def shared_difficulty_table():
    """Two rows scored on the same 400 images, whose difficulty (sd 10 nats) they share; row
    "better" is 0.5 nats lower on every image, up to 0.1 nats of its own noise."""
    g = torch.Generator().manual_seed(0)
    difficulty = 80.0 + 10.0 * torch.randn(400, generator=g, dtype=torch.float64)
    seed_luck = torch.tensor([[0.3], [-0.2]], dtype=torch.float64)   # shared by both rows
    worse = difficulty + seed_luck                                    # (2, 400)
    better = worse - 0.5 + 0.1 * torch.randn(2, 400, generator=g, dtype=torch.float64)
    return make_table({"worse": {1: worse}, "better": {1: better}}, seeds=(0, 1))


def test_paired_difference_sees_what_the_rows_error_bars_hide():
    table = shared_difficulty_table()
    label = "1 quadrant"
    a, b = (table.loc[row, (label, "uncertainty")] for row in ("better", "worse"))
    gap = table.loc["better", (label, "mean")] - table.loc["worse", (label, "mean")]
    # unpaired, the two rows' uncertainties (about 0.5 each) swallow the 0.5-nat difference ...
    assert abs(gap) < 2 * math.sqrt(a ** 2 + b ** 2)
    # ... paired by seed and image, the shared difficulty and luck cancel and it is clear
    difference = row_difference(table, "better", "worse")[label]
    assert difference.mean == pytest.approx(gap, abs=1e-9)
    assert difference.uncertainty < 0.05 and difference.seed_sd < 0.05
    assert compare_rows(table, "better", "worse") == {label: "lower"}
    assert compare_rows(table, "worse", "better") == {label: "higher"}
    assert compare_rows(table, "worse", "worse") == {label: "within noise"}
    assert variant_comparison(table, "better", "worse") == {label: "lower"}
    with pytest.raises(ValueError, match="no row 'gsnn'"):
        compare_rows(table, "gsnn", "worse")
    plain = table.copy()
    plain.attrs = {}
    with pytest.raises(ValueError, match="per-seed, per-image values"):
        compare_rows(plain, "better", "worse")


def test_a_table_carries_its_values_through_pandas():
    """The values ride in attrs: copies share them, and pandas may concatenate tables (it
    compares attrs, which must not compare tensors element by element)."""
    import pandas as pd

    table = shared_difficulty_table()
    assert table.copy().attrs["values"] is table.attrs["values"]
    assert table.xs("mean", axis=1, level="statistic").attrs["values"] is table.attrs["values"]
    both = pd.concat([table, table])
    assert both.shape == (4, 4)
    assert table.attrs["num_seeds"] == 2 and table.attrs["seeds"] == (0, 1)
    with pytest.raises(ValueError, match="same seeds and images"):
        make_table({"a": {1: torch.zeros(2, 3)}, "b": {1: torch.zeros(1, 3)}})
    with pytest.raises(ValueError, match="3 seeds"):
        make_table({"a": {1: torch.zeros(2, 3)}}, seeds=(0, 1, 2))


def test_error_bars_and_strings_name_their_uncertainty():
    table = shared_difficulty_table()
    label = "1 quadrant"
    uncertainty = table.loc["worse", (label, "uncertainty")]
    assert error_bar(table, "worse", label) == uncertainty
    strings = format_table(table, digits=2)
    mean = table.loc["worse", (label, "mean")]
    assert strings.loc["worse", label] == f"{mean:.2f} ± {uncertainty:.2f}"
    assert strings.attrs["error"].startswith("the uncertainty of the mean over 2 training seeds")
    one = make_table({"worse": {1: table.attrs["values"]["worse"][1][:1]}})
    assert math.isnan(one.loc["worse", (label, "uncertainty")])
    assert error_bar(one, "worse", label) == one.loc["worse", (label, "test_se")]
    assert "one training seed" in format_table(one).attrs["error"]


# ------------------------------------------------------------------------------------------------
# The CLL table of several seeds, on MNIST
# ------------------------------------------------------------------------------------------------

ARGS = dict(num_quadrants=(1,), config=TINY, budget="smoke", num_samples=2, elbo_samples=1,
            device="cpu", progress=False)


def test_cll_table_of_two_seeds_is_the_two_single_seed_tables(mnist, tmp_path, monkeypatch):
    two = cll_table(**ARGS, seeds=2, data=mnist, cache=tmp_path)
    cvaes = sorted(tmp_path.glob("cvae-*.pt"))
    baselines = sorted(tmp_path.glob("baseline-*.pt"))
    assert len(cvaes) == 2 and len(baselines) == 2                 # one of each per seed
    for seed in (0, 1):
        assert checkpoint_path(model_key("cvae", seeded(TINY, seed), get_budget("smoke"), 1),
                               tmp_path) in cvaes
    assert two.attrs["seeds"] == (0, 1) and two.attrs["num_seeds"] == 2

    # the single-seed tables load the same models (nothing is trained again)
    def forbidden(*args, **kwargs):
        raise AssertionError("the models of both seeds should be cached")
    monkeypatch.setattr("cvae_utils.cache.train_cvae", forbidden)
    monkeypatch.setattr("cvae_utils.cache.train_baseline", forbidden)
    singles = [cll_table(**ARGS, seeds=(seed,), data=mnist, cache=tmp_path) for seed in (0, 1)]
    label = "1 quadrant"
    for row in CLL_ROWS:
        cells = [single.attrs["values"][row][1] for single in singles]   # (1, 256) each
        assert torch.equal(two.attrs["values"][row][1], torch.cat(cells)), row
        means = [single.loc[row, (label, "mean")] for single in singles]
        # the spread over seeds is that of the two single-seed means; the models differ
        assert two.loc[row, (label, "seed_sd")] == pytest.approx(
            abs(means[0] - means[1]) / math.sqrt(2), rel=1e-9), row
        assert two.loc[row, (label, "mean")] == pytest.approx(sum(means) / 2, rel=1e-12)
        assert two.loc[row, (label, "uncertainty")] == pytest.approx(math.sqrt(
            two.loc[row, (label, "seed_sd")] ** 2 / 2
            + two.loc[row, (label, "test_se")] ** 2), rel=1e-12)
    assert (two.xs("seed_sd", axis=1, level="statistic") > 0).all().all()
    # the gap is paired per seed and image: its values are the rows' differences
    values = two.attrs["values"]
    assert torch.equal(values["gap"][1], values["baseline"][1].double()
                       - values["importance"][1].double())

    # the seeds are part of the key: three tables, three files; the default is the budget's
    files = sorted(tmp_path.glob("cll-table-smoke-*.json"))
    assert len(files) == 3
    key = cll_table_key((1,), TINY, get_budget("smoke"), seeds=2, num_samples=2,
                        elbo_samples=1, device=tables.pick_device("cpu"))
    assert key["seeds"] == [0, 1] and set(key["models"]["1"]) == {"0", "1"}
    assert json.loads(tables.table_paths(key, tmp_path)[1].read_text())["key"] == key
    default = cll_table_key((1,), TINY, get_budget("smoke"))
    assert default == cll_table_key((1,), TINY, get_budget("smoke"), seeds=(0,))
    monkeypatch.setenv("CVAE_SEEDS", "2")
    assert cll_table_key((1,), TINY, get_budget("smoke"))["seeds"] == [0, 1]
    assert cll_table(**ARGS, data=mnist, cache=tmp_path).equals(two)  # read from the cache


# ------------------------------------------------------------------------------------------------
# The book's models and its plan
# ------------------------------------------------------------------------------------------------

def test_book_models_list_every_seed_of_both_groups(monkeypatch, tmp_path):
    budget = Budget("smoke", num_train=96, num_val=48, num_test=32, max_epochs=1)
    one = book_models(budget, budget, SMALL, tmp_path)
    assert {m.label for m in one if "book" in m.groups} == {
        f"{kind} k={k}" for kind in ("baseline", "cvae") for k in (1, 2, 3)}
    monkeypatch.setenv("CVAE_SEEDS", "2")
    two = book_models(budget, budget, SMALL, tmp_path)
    assert len({m.path for m in two}) == len(two)                  # each file once
    book = [m for m in two if "book" in m.groups]
    assert {m.label for m in book} == {f"{kind} k={k} seed {s}" for kind in ("baseline", "cvae")
                                       for k in (1, 2, 3) for s in (0, 1)}
    variant = [m for m in two if m.label.startswith("variant gsnn")]
    assert sorted((m.num_quadrants, m.seed) for m in variant) == [
        (k, s) for k in (1, 2, 3) for s in (0, 1)]
    # the files are those the CLL table of the same seeds reads
    key = cll_table_key((1, 2, 3), SMALL, budget)
    paths = {checkpoint_path(model_key, tmp_path) for by_seed in key["models"].values()
             for pair in by_seed.values() for model_key in pair.values()}
    assert paths == {m.path for m in book}
    assert all(m.config == seeded(SMALL, m.seed) for m in book)
    # at paper, the variants (trained at quick) get the book's three seeds
    monkeypatch.delenv("CVAE_SEEDS")
    paper = book_models("paper", "quick", SMALL, tmp_path)
    assert {m.seed for m in paper if "variants" in m.groups} == {0, 1, 2}
    assert {m.seed for m in paper if m.kind == "classifier"} == {0}


def test_seeded_models_train_in_process_and_the_table_finds_them(tiny_data, tiny_budget,
                                                                  small_config, tmp_path,
                                                                  monkeypatch):
    """`train_models`, as ``python -m cvae_utils train --book`` calls it, trains every seed's
    model; the CLL table of those seeds then trains nothing."""
    wanted = [m for m in book_models(tiny_budget, tiny_budget, small_config, tmp_path,
                                     seeds=2) if "book" in m.groups and m.num_quadrants == 1]
    assert len(wanted) == 4
    assert train_models(wanted, tiny_data, cache=tmp_path, log=lambda line: None) == 4

    def forbidden(*args, **kwargs):
        raise AssertionError("every seed's model should be cached")
    monkeypatch.setattr("cvae_utils.cache.train_cvae", forbidden)
    monkeypatch.setattr("cvae_utils.cache.train_baseline", forbidden)
    table = cll_table((1,), small_config, tiny_budget, tiny_data, seeds=2, num_samples=2,
                      elbo_samples=1, device="cpu", progress=False, cache=tmp_path)
    assert table.attrs["num_seeds"] == 2


def test_the_plan_says_how_many_seeds_and_where_from(monkeypatch, tmp_path):
    from book_plan import build_plan  # book/_ext, on sys.path from tests/conftest.py

    monkeypatch.setenv("CVAE_CACHE_DIR", str(tmp_path))
    budget = Budget("smoke", num_train=64, num_val=32, num_test=16, max_epochs=1)
    plan = build_plan(budget, budget, chapters=[], config=SMALL)
    assert plan.lines()[1] == ("training seeds: 1 per model of the tables (the smoke budget's "
                               "count; CVAE_SEEDS overrides it)")
    monkeypatch.setenv("CVAE_SEEDS", "2")
    plan = build_plan(budget, budget, chapters=["baseline"], needs={"book"}, config=SMALL)
    text = "\n".join(plan.lines())
    assert "training seeds: 2 per model of the tables (CVAE_SEEDS=2)" in text
    assert "to train (smoke): 6 baseline k=1,2,3 seeds 0,1, 1 epoch" in text
    assert len(plan.to_train) == 12


def test_cvae_seeds_has_its_own_execution_cache():
    from book_build import execution_cache_folder

    assert execution_cache_folder("c", "paper", "quick").name == "budget-paper-variants-quick"
    assert execution_cache_folder("c", "paper", "quick", seeds=5).name == \
        "budget-paper-variants-quick-seeds-5"
