"""Tests of cvae_utils.variants: the variants' configurations, the chapter's budget, the table of
variants on tiny models and synthetic digits (the GSNN row against `cvae_mc_prior` called
directly, the other rows against `cvae_importance_sampling`, the cache), TorchZQ's numbers and
the figure."""
from __future__ import annotations

import json
import math
from dataclasses import fields

import pandas as pd
import pytest
import torch

from cvae_utils import cache as cache_module
from cvae_utils import variants
from cvae_utils.cache import BASELINE_FIELDS, run_key, trained_baseline, trained_cvae
from cvae_utils import config as config_module
from cvae_utils.config import Budget, CVAEConfig, book_config, tutorial_config
from cvae_utils.data import make_quadrant_data
from cvae_utils.evaluate import (baseline_ncll, cvae_importance_sampling, cvae_mc_prior,
                                 format_table)
from cvae_utils.variants import (TORCHZQ_ABLATION, VARIANT_LABELS, VARIANTS, plot_variants,
                                 torchzq_ablation, variant_config, variant_row_label,
                                 variants_budget, variants_overview, variants_table)

TINY = CVAEConfig(hidden_1=16, hidden_2=16, z_dim=3, batch_size=32)
TINY_BUDGET = Budget("smoke", num_train=64, num_val=32, num_test=16, max_epochs=1)
KEYS = ("pyro_tutorial", "tutorial", "book", "gsnn", "hybrid", "joint", "no_baseline_prior")


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def changed_fields(config: CVAEConfig, reference: CVAEConfig) -> dict:
    return {f.name: getattr(config, f.name) for f in fields(CVAEConfig)
            if getattr(config, f.name) != getattr(reference, f.name)}


# ------------------------------------------------------------------------------------------------
# Configurations and budget
# ------------------------------------------------------------------------------------------------

def test_each_variant_changes_exactly_its_field():
    assert tuple(VARIANTS) == KEYS and tuple(VARIANT_LABELS) == KEYS
    tutorial_cvae = tutorial_config().replace(  # the tutorial's CVAE on the book's baseline
        **{name: getattr(book_config(), name) for name in BASELINE_FIELDS}, cvae_batch_size=128)
    expected = {"pyro_tutorial": changed_fields(tutorial_cvae, book_config()),
                "tutorial": {"decoder_sees_x": False}, "book": {}, "gsnn": {"objective": "gsnn"},
                "hybrid": {"objective": "hybrid"}, "joint": {"joint_baseline": True},
                "no_baseline_prior": {"prior_uses_baseline": False}}
    for key in KEYS:
        assert changed_fields(variant_config(key), book_config()) == expected[key], key
    assert variant_config("hybrid").hybrid_alpha == 0.5
    assert variant_config("book") == book_config()
    # the reference row is the tutorial's configuration, whatever the book's precision, with
    # the book's baseline, and the tutorial's CVAE batch stated explicitly
    assert variant_config("pyro_tutorial") == tutorial_cvae
    assert tutorial_cvae.cvae_batch == tutorial_config().cvae_batch
    # a given base is kept in every other field
    assert changed_fields(variant_config("gsnn", TINY), TINY) == {"objective": "gsnn"}
    assert variant_config("tutorial", TINY).hidden_1 == 16


@pytest.mark.parametrize("bf16", [False, True])
def test_reference_row_resets_the_books_recipe(monkeypatch, bf16):
    monkeypatch.setattr(config_module, "fast_bfloat16", lambda: bf16)
    book, tutorial = book_config(), tutorial_config()
    assert book.precision == ("bf16" if bf16 else "fp32")
    # the recipe's fields cover every departure of the book from the tutorial (precision only
    # where bfloat16 is fast), and no field of the baseline, which every row shares
    recipe = set(variants.BOOK_RECIPE_FIELDS)
    baseline_changes = {"batch_size"} | ({"baseline_precision"} if bf16 else set())
    assert set(changed_fields(book, tutorial)) == (
        recipe - ({"precision"} if not bf16 else set())) | baseline_changes
    assert not recipe & set(BASELINE_FIELDS)
    book_baseline = {name: getattr(book, name) for name in BASELINE_FIELDS}
    # the tutorial's CVAE, on the book's baseline: one baseline for every row
    expected = tutorial.replace(**book_baseline, cvae_batch_size=128)
    assert variant_config("pyro_tutorial") == expected
    assert variant_config("pyro_tutorial", book) == expected
    assert run_key("baseline", expected, TINY_BUDGET, 1) == run_key("baseline", book,
                                                                     TINY_BUDGET, 1)
    # its CVAE is the tutorial's in every field the CVAE's training reads
    for name in set(recipe) - {"cvae_batch_size"}:
        assert getattr(expected, name) == getattr(tutorial, name), name
    assert expected.cvae_batch == tutorial.cvae_batch == 128
    # another base keeps its networks and baseline, and takes the tutorial's training recipe
    base = book.replace(hidden_1=16, z_dim=3, batch_size=32)
    reference = variant_config("pyro_tutorial", base)
    assert reference == expected.replace(hidden_1=16, z_dim=3, batch_size=32)
    assert reference.cvae_batch == 128
    changes = variants_overview(book).loc["pyro_tutorial", "changes"]
    assert changes.startswith("decoder_sees_x=False") and "kl_warmup_epochs=0" in changes
    assert "cvae_batch_size=128" in changes and "cvae_lr=0.001" in changes
    assert ("precision='fp32'" in changes) == bf16
    assert "batch_size=128" not in changes.replace("cvae_batch_size", "")


def test_unknown_variant_names_the_valid_keys():
    with pytest.raises(ValueError, match="pyro_tutorial, tutorial, book, gsnn,"):
        variant_config("GSNN")
    with pytest.raises(ValueError, match="unknown variant 'cvae'"):
        variants_table(keys=("book", "cvae"), budget=TINY_BUDGET)
    with pytest.raises(ValueError, match="unknown variant"):
        variant_row_label("paper")


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
    monkeypatch.setenv("CVAE_VARIANTS_BUDGET", " Quick ")
    assert variants_budget().name == "quick"
    monkeypatch.setenv("CVAE_VARIANTS_BUDGET", "")             # empty: as if unset
    assert variants_budget().name == "smoke"
    assert variants_budget("paper").name == "paper" and variants_budget(TINY_BUDGET) is TINY_BUDGET
    monkeypatch.setenv("CVAE_VARIANTS_BUDGET", "full")
    with pytest.raises(ValueError, match=r"CVAE_VARIANTS_BUDGET='full'.*smoke, quick, paper"):
        variants_budget()
    monkeypatch.delenv("CVAE_VARIANTS_BUDGET")
    monkeypatch.setenv("CVAE_BUDGET", "huge")
    with pytest.raises(ValueError, match="CVAE_BUDGET"):
        variants_budget()


@pytest.mark.parametrize("kwargs, message", [
    (dict(num_quadrants=(0,)), "1, 2 or 3"), (dict(num_quadrants=(1, 1)), "distinct"),
    (dict(num_quadrants=()), "distinct"), (dict(num_samples=0), "num_samples"),
    (dict(num_samples=2.5), "num_samples"), (dict(estimator="elbo"), "importance, mc_prior"),
    (dict(keys=()), "distinct variants"), (dict(keys=("book", "book")), "distinct variants"),
])
def test_bad_arguments_raise_before_any_work(monkeypatch, tmp_path, kwargs, message):
    def forbidden(*args, **kwargs):
        raise AssertionError("nothing should be loaded or trained")
    monkeypatch.setattr(variants, "trained_cvae", forbidden)
    monkeypatch.setattr(variants, "load_mnist", forbidden)
    with pytest.raises(ValueError, match=message):
        variants_table(**{"budget": TINY_BUDGET, "cache": tmp_path, **kwargs})


# ------------------------------------------------------------------------------------------------
# The table on tiny models
# ------------------------------------------------------------------------------------------------

def test_table_rows_estimators_cache_and_figure(tiny_data, tmp_path, monkeypatch):
    kwargs = dict(keys=KEYS, num_quadrants=(1, 3), budget=TINY_BUDGET, data=tiny_data,
                  num_samples=3, progress=False, cache=tmp_path, base=TINY, device="cpu")
    table = variants_table(**kwargs)
    rows = ["NN baseline [exact]"] + [variant_row_label(key, "importance", 3) for key in KEYS]
    assert list(table.index) == rows and rows[4] == "GSNN [MC prior, S=3]"
    assert rows[1] == "Pyro tutorial's configuration [IS, S=3]"
    assert rows[3] == "book (decoder reads x and z) [IS, S=3]"
    assert list(table.columns) == [(label, stat) for label in ("1 quadrant", "3 quadrants")
                                   for stat in ("mean", "stderr")]
    assert table.notna().all().all() and (table.xs("stderr", axis=1, level=1) > 0).all().all()
    assert table.attrs["keys"] == ["baseline", *KEYS]
    assert table.attrs["estimators"] == ["exact", "importance", "importance", "importance",
                                         "mc_prior", "importance", "importance", "importance"]
    assert table.attrs["num_test"] == 16 and table.attrs["budget"] == "smoke"

    # each row is the estimator it claims, on the cached model of its variant, same seed
    for k in (1, 3):
        test = make_quadrant_data(tiny_data.test.head(16), k)
        label = f"{k} quadrant" + ("s" if k > 1 else "")
        models = {key: trained_cvae(k, variant_config(key, TINY), TINY_BUDGET, tiny_data, "cpu",
                                    False, cache=tmp_path)[0] for key in ("gsnn", "book")}
        gsnn_mc = cvae_mc_prior(models["gsnn"], test, 3, seed=0).mean
        assert table.loc[rows[4], (label, "mean")] == pytest.approx(gsnn_mc, rel=1e-6)
        gsnn_is = cvae_importance_sampling(models["gsnn"], test, 3, seed=0).mean
        assert abs(gsnn_is - gsnn_mc) > 1e-3            # the two estimators really differ
        book_is = cvae_importance_sampling(models["book"], test, 3, seed=0)
        assert table.loc[rows[3], (label, "mean")] == pytest.approx(book_is.mean, rel=1e-6)
        assert table.loc[rows[3], (label, "stderr")] == pytest.approx(book_is.stderr, rel=1e-6)
        baseline = trained_baseline(k, TINY, TINY_BUDGET, tiny_data, "cpu", False,
                                    cache=tmp_path)[0]
        assert table.loc[rows[0], (label, "mean")] == pytest.approx(
            baseline_ncll(baseline, test).mean, rel=1e-6)

    # the files beside the models: a long CSV and a JSON with the key
    csv_files = list(tmp_path.glob("variants-table-smoke-*.csv"))
    json_files = list(tmp_path.glob("variants-table-smoke-*.json"))
    assert len(csv_files) == 1 and len(json_files) == 1
    long = pd.read_csv(csv_files[0])
    assert list(long.columns) == ["key", "variant", "estimator", "num_quadrants", "inputs",
                                  "mean", "stderr"]
    assert len(long) == 8 * 2 and long["key"].tolist()[::2] == ["baseline", *KEYS]
    assert long.loc[long["key"] == "gsnn", "estimator"].unique().tolist() == ["mc_prior"]
    stored = json.loads(json_files[0].read_text())
    assert stored["rows"] == rows and stored["key"]["num_samples"] == 3

    # a second call reads the table: nothing is trained, loaded or estimated
    def forbidden(*args, **kwargs):
        raise AssertionError("the cached table should have been used")
    with monkeypatch.context() as patch:
        for name in ("trained_cvae", "trained_baseline", "load_mnist", "cvae_importance_sampling",
                     "cvae_mc_prior", "baseline_ncll"):
            patch.setattr(variants, name, forbidden)
        again = variants_table(**{**kwargs, "data": None})
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
    assert " ± " in strings.loc[rows[4], "3 quadrants"]
    fig = plot_variants(table)
    assert len(fig.axes) == 2
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == rows
    assert fig._repr_png_()[:8] == b"\x89PNG\r\n\x1a\n"


def test_all_rows_by_mc_prior_on_request(tiny_data, tmp_path):
    table = variants_table(keys=("book", "gsnn"), num_quadrants=(2,), budget=TINY_BUDGET,
                           data=tiny_data, num_samples=2, progress=False, cache=tmp_path,
                           base=TINY, estimator="mc_prior", device="cpu")
    assert list(table.index) == ["NN baseline [exact]", "book (decoder reads x and z) "
                                 "[MC prior, S=2]", "GSNN [MC prior, S=2]"]
    cvae = trained_cvae(2, variant_config("book", TINY), TINY_BUDGET, tiny_data, "cpu", False,
                        cache=tmp_path)[0]
    test = make_quadrant_data(tiny_data.test.head(16), 2)
    assert table.iloc[1, 0] == pytest.approx(cvae_mc_prior(cvae, test, 2, seed=0).mean, rel=1e-6)


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


def test_variant_comparison_and_our_numbers_beside_torchzq():
    rows = ["NN baseline [exact]", "Pyro tutorial [IS]", "book [IS]"]
    means = {rows[0]: {"1": 100.0, "2": 60.0}, rows[1]: {"1": 90.0, "2": 59.5},
             rows[2]: {"1": 95.0, "2": 70.0}}
    stderrs = {row: {"1": 1.0, "2": 1.0} for row in rows}
    table = variants._frame(rows, [1, 2], means, stderrs, {"keys": ["baseline", "pyro_tutorial",
                                                                    "book"]})
    # differences beyond 2 sqrt(1 + 1) = 2.83 nats count, smaller ones do not
    assert variants.variant_comparison(table, "pyro_tutorial", "baseline") == {
        "1 quadrant": "lower", "2 quadrants": "indistinguishable"}
    assert variants.variant_comparison(table, "book", "baseline") == {
        "1 quadrant": "lower", "2 quadrants": "higher"}
    with pytest.raises(ValueError, match="no row 'gsnn'"):
        variants.variant_comparison(table, "gsnn", "book")
    frame = torchzq_ablation(table)
    ours = frame["this book, 1 quadrant"]
    assert ours["CVAE"] == 90.0 and ours["CVAE (w/ conditioned decoder)"] == 95.0
    assert ours["Baseline"] == 100.0
    assert math.isnan(ours["CVAE (w/o baseline)"]) and math.isnan(ours["CVAE (w/o conditioned "
                                                                        "prior)"])
    with pytest.raises(ValueError, match="one visible quadrant"):
        torchzq_ablation(table.drop(columns="1 quadrant", level="inputs"))


def test_overview_lists_each_change():
    overview = variants_overview()
    assert list(overview.index) == list(KEYS)
    assert overview.loc["book", "changes"] == "none"
    assert overview.loc["tutorial", "changes"] == "decoder_sees_x=False"
    assert overview.loc["tutorial", "label"] == "decoder reads z only"
    assert overview.loc["pyro_tutorial", "label"] == "Pyro tutorial's configuration"
    assert overview.loc["pyro_tutorial", "changes"].startswith("decoder_sees_x=False, ")
    assert overview.loc["no_baseline_prior", "label"] == "prior without baseline"
