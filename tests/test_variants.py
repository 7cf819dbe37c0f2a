"""Tests of cvae_utils.variants (the variants' configurations, the chapter's budget, TorchZQ's
numbers, `variant_comparison`, the seeds) and of `cvae_utils.variants.variants_table` on tiny
models and synthetic digits: the GSNN row against `cvae_mc_prior` called directly, the other rows
against `cvae_importance_sampling`, bit for bit; the cache; rows by key; and `plot_variants`."""
from __future__ import annotations

import json
import math

import pandas as pd
import pytest
import torch

from cvae_utils import cache as cache_module
from cvae_utils import variants as variants_module
from cvae_utils.cache import model_key, trained_baseline, trained_cvae
from cvae_utils.config import BaselineConfig, Budget, CVAEConfig, book_config, tutorial_config
from cvae_utils.data import make_quadrant_data
from cvae_utils.evaluate import baseline_ncll, cvae_importance_sampling, cvae_mc_prior
from cvae_utils.plot_results import plot_variants
from cvae_utils.published import TORCHZQ_ABLATION
from cvae_utils.seeds import seeded
from cvae_utils.tables import STATISTICS, format_table, make_table
from cvae_utils.variants import (VARIANT_CHANGES, VARIANT_LABELS, VARIANTS, torchzq_ablation,
                                 variant_comparison, variant_config, variant_label,
                                 variants_budget, variants_overview, variants_seeds,
                                 variants_table)

TINY = CVAEConfig(baseline=BaselineConfig(hidden_1=16, hidden_2=16, batch_size=32),
                  hidden_1=16, hidden_2=16, z_dim=3, batch_size=32)
TINY_BUDGET = Budget("smoke", num_train=64, num_val=32, num_test=16, max_epochs=1)
KEYS = ("pyro_tutorial", "tutorial", "book", "gsnn", "hybrid", "joint", "no_baseline_prior")


pytestmark = pytest.mark.usefixtures("one_thread")


# ------------------------------------------------------------------------------------------------
# Configurations and budget
# ------------------------------------------------------------------------------------------------

def test_each_variant_changes_exactly_its_field():
    assert tuple(VARIANTS) == KEYS and tuple(VARIANT_LABELS) == KEYS
    assert CVAEConfig() == book_config()
    expected = {"tutorial": {"decoder_sees_x": False}, "book": {}, "gsnn": {"objective": "gsnn"},
                "hybrid": {"objective": "hybrid"}, "joint": {"joint_baseline": True},
                "no_baseline_prior": {"prior_uses_baseline": False}}
    for key, changes in expected.items():
        assert variant_config(key).differences(CVAEConfig()) == changes, key
        assert VARIANT_CHANGES[key].items() >= changes.items()
    assert variant_config("hybrid").hybrid_alpha == 0.5
    assert variant_config("book") == CVAEConfig()
    # a given base is kept in every other field
    assert variant_config("gsnn", TINY).differences(TINY) == {"objective": "gsnn"}
    assert variant_config("tutorial", TINY).hidden_1 == 16


def test_reference_row_is_the_tutorials_cvae_on_the_shared_baseline():
    tutorial = tutorial_config()
    for base in (CVAEConfig(), TINY):
        reference = variant_config("pyro_tutorial", base)
        # the tutorial's CVAE in every field of its own ...
        assert reference.differences(tutorial) == {"baseline": base.baseline.to_dict()}
        # ... on the base's baseline, the one every row reads: the same cached baseline
        assert model_key("baseline", reference, TINY_BUDGET, 1) == model_key(
            "baseline", base, TINY_BUDGET, 1)
    # against the book, it resets the book's recipe to the tutorial's values, and nothing else
    recipe = variant_config("pyro_tutorial").differences(CVAEConfig())
    assert recipe == {"decoder_sees_x": False, "analytic_kl": False, "kl_warmup_epochs": 0,
                      "weight_average": 0.0, "precision": "fp32", "patience": 3}
    changes = variants_overview().loc["pyro_tutorial", "changes"]
    assert changes.startswith("decoder_sees_x=False") and "kl_warmup_epochs=0" in changes
    assert "patience=3" in changes and "weight_average=0.0" in changes
    assert "baseline" not in changes


def test_unknown_variant_names_the_valid_keys():
    with pytest.raises(ValueError, match="pyro_tutorial, tutorial, book, gsnn,"):
        variant_config("GSNN")
    with pytest.raises(ValueError, match="unknown variant 'cvae'"):
        variants_table(keys=("book", "cvae"), budget=TINY_BUDGET)
    with pytest.raises(ValueError, match="unknown variant"):
        variant_label("paper")


@pytest.mark.parametrize("book, expected", [("smoke", "smoke"), ("quick", "quick"),
                                            ("paper", "quick"), (None, "quick")])
def test_variants_budget_follows_the_book_capped_at_quick(monkeypatch, book, expected):
    monkeypatch.delenv("CVAE_VARIANTS_BUDGET", raising=False)
    if book is None:
        monkeypatch.delenv("CVAE_BUDGET", raising=False)   # the book's default is paper
    else:
        monkeypatch.setenv("CVAE_BUDGET", book)
    assert variants_budget().name == expected


def test_variants_budget_override_and_errors(monkeypatch):
    monkeypatch.setenv("CVAE_BUDGET", "paper")
    monkeypatch.setenv("CVAE_VARIANTS_BUDGET", "paper")
    assert variants_budget().name == "paper"
    monkeypatch.setenv("CVAE_BUDGET", "smoke")
    monkeypatch.setenv("CVAE_VARIANTS_BUDGET", "quick")
    assert variants_budget().name == "quick"
    for strict in (" quick ", "Quick"):  # names are strict, as for CVAE_BUDGET
        monkeypatch.setenv("CVAE_VARIANTS_BUDGET", strict)
        with pytest.raises(ValueError, match=f"{strict!r} from the environment variable "
                                             f"CVAE_VARIANTS_BUDGET"):
            variants_budget()
    monkeypatch.setenv("CVAE_VARIANTS_BUDGET", "")             # empty: as if unset
    assert variants_budget().name == "smoke"
    assert variants_budget("paper").name == "paper" and variants_budget(TINY_BUDGET) is TINY_BUDGET
    monkeypatch.setenv("CVAE_VARIANTS_BUDGET", "full")
    with pytest.raises(ValueError, match=r"'full' from the .*CVAE_VARIANTS_BUDGET.*smoke, quick, paper"):
        variants_budget()
    monkeypatch.delenv("CVAE_VARIANTS_BUDGET")
    monkeypatch.setenv("CVAE_BUDGET", "huge")
    with pytest.raises(ValueError, match="CVAE_BUDGET"):
        variants_budget()


@pytest.mark.parametrize("book, expected", [("smoke", 1), ("quick", 1), ("paper", 3)])
def test_variants_take_the_books_seeds_although_their_budget_is_capped(monkeypatch, book,
                                                                        expected):
    """A paper build trains the variants at quick, but with the paper protocol's seeds: the
    chapter compares their rows. CVAE_SEEDS overrides the count, as for every table."""
    monkeypatch.delenv("CVAE_VARIANTS_BUDGET", raising=False)
    monkeypatch.delenv("CVAE_SEEDS", raising=False)
    monkeypatch.setenv("CVAE_BUDGET", book)
    assert variants_seeds() == tuple(range(expected))
    assert variants_budget().name == ("quick" if book == "paper" else book)
    monkeypatch.setenv("CVAE_SEEDS", "2")
    assert variants_seeds() == (0, 1) and variants_seeds(4) == (0, 1, 2, 3)


@pytest.mark.parametrize("kwargs, message", [
    (dict(num_quadrants=(0,)), "1, 2 or 3"), (dict(num_quadrants=(1, 1)), "distinct"),
    (dict(num_quadrants=()), "distinct"), (dict(num_samples=0), "num_samples"),
    (dict(num_samples=2.5), "num_samples"), (dict(estimator="elbo"), "importance, mc_prior"),
    (dict(keys=()), "distinct variants"), (dict(keys=("book", "book")), "distinct variants"),
    (dict(seeds=(0, 0)), "distinct training seeds"), (dict(seeds=0), "training seeds"),
    (dict(seeds="2"), "a count such as 3"),
])
def test_bad_arguments_raise_before_any_work(monkeypatch, tmp_path, kwargs, message):
    def forbidden(*args, **kwargs):
        raise AssertionError("nothing should be loaded or trained")
    monkeypatch.setattr(variants_module, "trained_cvae", forbidden)
    monkeypatch.setattr(variants_module, "load_mnist", forbidden)
    with pytest.raises(ValueError, match=message):
        variants_table(**{"budget": TINY_BUDGET, "cache": tmp_path, **kwargs})


# ------------------------------------------------------------------------------------------------
# The table on tiny models
# ------------------------------------------------------------------------------------------------

def test_table_rows_estimators_cache_and_figure(tiny_data, tmp_path, monkeypatch):
    kwargs = dict(keys=KEYS, num_quadrants=(1, 3), budget=TINY_BUDGET, data=tiny_data,
                  num_samples=3, progress=False, cache=tmp_path, base=TINY, device="cpu",
                  seeds=(0,))
    table = variants_table(**kwargs)
    assert list(table.index) == ["baseline", *KEYS] and table.index.name == "variant"
    labels = table.attrs["labels"]
    assert labels == {"baseline": "NN baseline [exact]",
                      **{key: variant_label(key, "importance", 3, TINY) for key in KEYS}}
    assert labels["gsnn"] == "GSNN [MC prior, S=3]"
    assert labels["pyro_tutorial"] == "Pyro tutorial's configuration [IS, S=3]"
    assert labels["book"] == "book (decoder reads x and z) [IS, S=3]"
    assert list(table.columns) == [(label, stat) for label in ("1 quadrant", "3 quadrants")
                                   for stat in STATISTICS]
    assert table.xs("mean", axis=1, level=1).notna().all().all()
    assert (table.xs("test_se", axis=1, level=1) > 0).all().all()
    assert table.attrs["seeds"] == (0,) and table.attrs["num_seeds"] == 1
    assert table.attrs["estimators"] == {"baseline": "exact", **{
        key: "mc_prior" if key == "gsnn" else "importance" for key in KEYS}}
    assert table.attrs["num_test"] == 16 and table.attrs["budget"] == "smoke"

    # each row is, bit for bit, the estimator it claims on the cached model of its variant
    for k in (1, 3):
        test = make_quadrant_data(tiny_data.test.head(16), k)
        label = f"{k} quadrant" + ("s" if k > 1 else "")
        models = {key: trained_cvae(k, variant_config(key, TINY), TINY_BUDGET, tiny_data,
                                    device="cpu", cache=tmp_path)[0] for key in KEYS}
        for key, cvae in models.items():
            estimate_fn = cvae_mc_prior if key == "gsnn" else cvae_importance_sampling
            estimate = estimate_fn(cvae, test, 3, seed=0)
            assert torch.equal(table.attrs["values"][key][k][0], estimate.values), (key, k)
            assert table.loc[key, (label, "mean")] == pytest.approx(estimate.mean, abs=1e-9)
            assert table.loc[key, (label, "test_se")] == pytest.approx(estimate.stderr,
                                                                       rel=1e-12), (key, k)
        gsnn_is = cvae_importance_sampling(models["gsnn"], test, 3, seed=0).mean
        assert abs(gsnn_is - table.loc["gsnn", (label, "mean")]) > 1e-3  # they really differ
        baseline = trained_baseline(k, TINY, TINY_BUDGET, tiny_data, device="cpu",
                                    cache=tmp_path)[0]
        assert torch.equal(table.attrs["values"]["baseline"][k][0],
                           baseline_ncll(baseline, test).values)

    # the files beside the models: a long CSV and a JSON with the key
    csv_files = list(tmp_path.glob("variants-table-smoke-*.csv"))
    json_files = list(tmp_path.glob("variants-table-smoke-*.json"))
    assert len(csv_files) == 1 and len(json_files) == 1
    long = pd.read_csv(csv_files[0])
    assert list(long.columns) == ["key", "label", "estimator", "num_quadrants", "inputs",
                                  "num_seeds", "mean", "seed_sd", "test_se", "uncertainty",
                                  "per_pixel"]
    assert len(long) == 8 * 2 and long["key"].tolist()[::2] == ["baseline", *KEYS]
    assert long.loc[long["key"] == "gsnn", "estimator"].unique().tolist() == ["mc_prior"]
    stored = json.loads(json_files[0].read_text())
    assert stored["rows"] == ["baseline", *KEYS] and stored["key"]["num_samples"] == 3
    assert stored["key"]["estimators"]["gsnn"] == "mc_prior"

    # a second call reads the table: nothing is trained, loaded or estimated
    def forbidden(*args, **kwargs):
        raise AssertionError("the cached table should have been used")
    with monkeypatch.context() as patch:
        for name in ("trained_cvae", "trained_baseline", "load_mnist", "cvae_importance_sampling",
                     "cvae_mc_prior", "baseline_ncll"):
            patch.setattr(variants_module, name, forbidden)
        again = variants_table(**{**kwargs, "data": None})
        # the key is derived from the models' keys: a changed model key is another table
        real_key = variants_module.model_key
        patch.setattr(variants_module, "model_key", lambda kind, config, *args: {
            **real_key(kind, config, *args),
            **({"changed": True} if kind == "cvae" and config.objective == "gsnn" else {})})
        with pytest.raises(AssertionError, match="cached table"):
            variants_table(**{**kwargs, "data": None})
    assert again.equals(table) and again.attrs["estimators"] == table.attrs["estimators"]

    # without the table, a corrupt file is reported and the table recomputed from the cached
    # models: training is never called
    json_files[0].write_text("{not json")
    with monkeypatch.context() as patch:
        patch.setattr(cache_module, "train_cvae", forbidden)
        patch.setattr(cache_module, "train_baseline", forbidden)
        with pytest.warns(UserWarning, match="bad cached variants table"):
            recomputed = variants_table(**kwargs)
    assert recomputed.equals(table)

    # another S is another table; the string form and the figure
    assert not variants_table(**{**kwargs, "num_samples": 2}).equals(table)
    strings = format_table(table)
    assert list(strings.columns) == ["1 quadrant", "3 quadrants"]
    assert list(strings.index) == list(labels.values())
    assert " ± " in strings.loc["GSNN [MC prior, S=3]", "3 quadrants"]
    fig = plot_variants(table)
    assert len(fig.axes) == 2
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == list(labels.values())
    assert fig._repr_png_()[:8] == b"\x89PNG\r\n\x1a\n"


def test_all_rows_by_mc_prior_on_request(tiny_data, tmp_path):
    table = variants_table(keys=("book", "gsnn"), num_quadrants=(2,), budget=TINY_BUDGET,
                           data=tiny_data, num_samples=2, progress=False, cache=tmp_path,
                           base=TINY, estimator="mc_prior", device="cpu")
    assert list(table.index) == ["baseline", "book", "gsnn"]
    assert list(table.attrs["labels"].values()) == [
        "NN baseline [exact]", "book (decoder reads x and z) [MC prior, S=2]",
        "GSNN [MC prior, S=2]"]
    cvae = trained_cvae(2, variant_config("book", TINY), TINY_BUDGET, tiny_data, device="cpu",
                        cache=tmp_path)[0]
    test = make_quadrant_data(tiny_data.test.head(16), 2)
    assert table.loc["book", ("2 quadrants", "mean")] == pytest.approx(
        cvae_mc_prior(cvae, test, 2, seed=0).mean, abs=1e-9)


# ------------------------------------------------------------------------------------------------
# TorchZQ's ablation
# ------------------------------------------------------------------------------------------------

def test_torchzq_ablation_numbers_and_correspondences():
    frame = torchzq_ablation()
    assert frame.shape == (8, 5) and frame.index.name == "method"
    assert frame["NCLL (IS, S=100)"].tolist() == [112.382, 83.745, 79.524, 76.024, 72.255,
                                                  70.868, 69.352, 67.813]
    assert frame.loc["CVAE", "key"] == "pyro_tutorial" and frame.loc["CVAE", "match"] == "closest"
    assert frame.loc["CVAE (w/ conditioned decoder)", "key"] == "book"
    assert frame.loc["CVAE (w/ conditioned decoder)", "match"] == "closest"
    assert frame.loc["CVAE (w/ conditioned decoder, w/o baseline)", "key"] == "no_baseline_prior"
    assert frame.loc["CVAE (w/ conditioned decoder, w/o baseline)", "match"] == "closest"
    assert frame.loc["CVAE (w/ jointly trained baseline from the pretrained)", "key"] == "joint"
    assert frame.loc["CVAE (w/ jointly trained baseline from the pretrained)", "match"] == \
        "closest"
    assert frame.loc["CVAE (w/o conditioned prior)", "key"] is None
    assert frame.loc["Baseline", "ours"] == "NN baseline"
    # every correspondence names a real variant, and every inexact one says why
    for name, _, key, match in TORCHZQ_ABLATION:
        assert key is None or key == "baseline" or key in VARIANTS
        assert (key is None) == (match is None)
        if match != "same":
            assert frame.loc[name, "note"], name
    assert all(math.isfinite(v) for v in frame["NCLL (IS, S=100)"])


def fake_variants_table(labels=None):
    """Rows of two seeds and 100 images whose images differ independently in each row (no
    shared difficulty), means as written, standard error over images 1 in every cell."""
    means = {"baseline": {1: 100.0, 2: 60.0}, "pyro_tutorial": {1: 90.0, 2: 59.5},
             "book": {1: 95.0, 2: 70.0}}
    values = {}
    for r, (row, by_k) in enumerate(means.items()):
        noise = torch.randn(100, generator=torch.Generator().manual_seed(r)).double()
        noise = (noise - noise.mean()) / noise.std() * 10.0     # sd 10 over 100 images: se 1
        values[row] = {k: (mean + noise).expand(2, 100) for k, mean in by_k.items()}
    return make_table(values, index_name="variant", labels=labels, seeds=(0, 1),
                      estimators={row: "importance" for row in means})


def test_variant_comparison_and_our_numbers_beside_torchzq():
    table = fake_variants_table()
    assert table.loc["book", ("1 quadrant", "test_se")] == pytest.approx(1.0)
    # unshared image noise: the paired difference's error is sqrt(1 + 1) = 1.41 nats, so
    # differences beyond 2.83 nats count, smaller ones do not
    assert variant_comparison(table, "pyro_tutorial", "baseline") == {
        "1 quadrant": "lower", "2 quadrants": "within noise"}
    assert variant_comparison(table, "book", "baseline") == {
        "1 quadrant": "lower", "2 quadrants": "higher"}
    with pytest.raises(ValueError, match="no row 'gsnn'"):
        variant_comparison(table, "gsnn", "book")
    frame = torchzq_ablation(table)
    ours = frame["this book, 1 quadrant"]
    assert ours["CVAE"] == 90.0 and ours["CVAE (w/ conditioned decoder)"] == 95.0
    assert ours["Baseline"] == 100.0
    assert math.isnan(ours["CVAE (w/o baseline)"]) and math.isnan(ours["CVAE (w/o conditioned "
                                                                        "prior)"])
    with pytest.raises(ValueError, match="one visible quadrant"):
        torchzq_ablation(table.drop(columns="1 quadrant", level="inputs"))


def test_rows_are_picked_by_key_not_label():
    """Swapping two rows' labels changes what is shown, not which numbers a key picks: the
    comparison, TorchZQ's column and the figure follow the keys."""
    table = fake_variants_table()
    swapped = fake_variants_table(labels={"book": "Pyro tutorial's configuration [IS, S=100]",
                                          "pyro_tutorial": "book (decoder reads x and z)"})
    assert variant_comparison(swapped, "book", "baseline") == variant_comparison(
        table, "book", "baseline")
    assert torchzq_ablation(swapped).equals(torchzq_ablation(table))
    figures = [plot_variants(t) for t in (table, swapped)]
    for ax_table, ax_swapped in zip(figures[0].axes, figures[1].axes):
        points = [[c.lines[0].get_xydata().tolist() for c in ax.containers]
                  for ax in (ax_table, ax_swapped)]
        assert points[0] == points[1]
    ticks = [t.get_text() for t in figures[1].axes[0].get_yticklabels()]
    assert ticks == ["baseline", "book (decoder reads x and z)",
                     "Pyro tutorial's configuration [IS, S=100]"]


def test_overview_lists_each_change():
    overview = variants_overview()
    assert list(overview.index) == list(KEYS)
    assert overview.loc["book", "changes"] == "none" and overview.index.name == "key"
    assert overview.loc["tutorial", "changes"] == "decoder_sees_x=False"
    assert overview.loc["tutorial", "label"] == "decoder reads z only"
    assert overview.loc["pyro_tutorial", "label"] == "Pyro tutorial's configuration"
    assert overview.loc["pyro_tutorial", "changes"].startswith("decoder_sees_x=False, ")
    assert overview.loc["no_baseline_prior", "label"] == "prior without baseline"
