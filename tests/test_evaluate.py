"""Tests of cvae_utils.evaluate (the -log p(y|x) estimators) and of the CLL table of
cvae_utils.tables.

The estimators are checked against independent references: a linear-Gaussian toy model whose
p(y|x), exact posterior and KL divergences are known in closed form, and torch's own binary
cross-entropy for the baseline. The CVAE wrappers run on tiny randomly initialised CVAEs with
synthetic images. The table tests need MNIST (skipped when it is absent): the table's cells
against the estimators called directly on the same cached models, its files and cache, its key
(which follows the estimators' code and the models' keys, not the labels), and rows by key.
"""
from __future__ import annotations

import inspect
import json
import math
import weakref

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch.distributions import Independent, Normal

from cvae_utils import cache as cache_module
from cvae_utils import evaluate, tables
from cvae_utils.cache import trained_baseline, trained_cvae
from cvae_utils.config import CVAEConfig, get_budget
from cvae_utils.data import (MNISTNotFoundError, QuadrantData, load_mnist, make_quadrant_data,
                             mask_quadrants, quadrant_label)
from cvae_utils.evaluate import (
    Conditional, Estimate, baseline_ncll, cvae_conditional, cvae_importance_sampling,
    cvae_mc_prior, cvae_neg_elbo, estimate_nll, log_mean_exp, neg_elbo, neg_log_importance,
    standard_normal_noise,
)
from cvae_utils.networks import CVAE, BaselineNet
from cvae_utils.published import PUBLISHED, published_table
from cvae_utils.seeds import summarize
from cvae_utils.tables import CLL_ROWS, STATISTICS, cll_labels, cll_table, format_table
from cvae_utils.variant_models import build_cvae

TINY = CVAEConfig(hidden_1=32, hidden_2=32, z_dim=4)


pytestmark = pytest.mark.usefixtures("one_thread")


# ------------------------------------------------------------------------------------------------
# A toy model with a closed form: z ~ N(a x, s^2), y | z ~ N(b z, t^2), independently per dimension
# ------------------------------------------------------------------------------------------------

class LinearGaussian:
    """p(y|x) = N(a b x, b^2 s^2 + t^2); p(z|x,y) = N(m, v), 1/v = 1/s^2 + b^2/t^2."""

    def __init__(self, a=0.8, s=1.0, b=2.0, t=0.5):
        self.a, self.s, self.b, self.t = a, s, b, t

    def true_nll(self, x, y):
        scale = math.sqrt(self.b ** 2 * self.s ** 2 + self.t ** 2)
        return -Normal(self.a * self.b * x, scale).log_prob(y).sum(-1)  # (N,)

    def posterior(self, x, y):
        var = 1.0 / (1.0 / self.s ** 2 + self.b ** 2 / self.t ** 2)
        mean = var * (self.a * x / self.s ** 2 + self.b * y / self.t ** 2)
        return mean, torch.full_like(mean, math.sqrt(var))              # (N, D) each

    def condition(self, shift=0.0, widen=1.0):
        """A `condition` function; the proposal is the exact posterior, shifted and widened."""
        def condition(x, y):
            mean, sd = self.posterior(x, y)
            prior = Independent(Normal(self.a * x, torch.full_like(x, self.s)), 1)
            proposal = Independent(Normal(mean + shift * sd, widen * sd), 1)

            def log_lik(z):                                             # (S, n, D) -> (S, n)
                return Normal(self.b * z, self.t).log_prob(y).sum(-1)

            return Conditional(prior, proposal, log_lik)
        return condition

    def kl_proposal_posterior(self, x, y, shift, widen):
        """KL(q || p(z|x,y)) summed over dimensions, (N,)."""
        _, sd = self.posterior(x, y)
        q_sd = widen * sd
        return (torch.log(sd / q_sd) + (q_sd ** 2 + (shift * sd) ** 2) / (2 * sd ** 2)
                - 0.5).sum(-1)


@pytest.fixture(scope="module")
def toy():
    model = LinearGaussian()
    g = torch.Generator().manual_seed(123)
    x = torch.randn(40, 2, generator=g, dtype=torch.float64)                   # (N, D)
    z = model.a * x + model.s * torch.randn(40, 2, generator=g, dtype=torch.float64)
    y = model.b * z + model.t * torch.randn(40, 2, generator=g, dtype=torch.float64)
    return model, x, y


def test_log_mean_exp_does_not_underflow():
    log_w = torch.tensor([[-1000.0], [-1001.0]])
    expected = -1000.0 + math.log((1 + math.exp(-1)) / 2)
    assert log_mean_exp(log_w, dim=0).item() == pytest.approx(expected, abs=1e-4)


def test_importance_sampling_with_exact_posterior_is_exact_with_one_sample(toy):
    model, x, y = toy
    estimate = estimate_nll("importance", model.condition(), x, y, num_samples=1)
    torch.testing.assert_close(estimate.values, model.true_nll(x, y), rtol=0, atol=1e-10)
    # and so is the ELBO: with q equal to the posterior the bound is tight
    elbo = estimate_nll("neg_elbo", model.condition(), x, y, num_samples=3)
    torch.testing.assert_close(elbo.values, model.true_nll(x, y), rtol=0, atol=1e-10)


def test_importance_sampling_converges_to_the_truth(toy):
    model, x, y = toy
    estimate = estimate_nll("importance", model.condition(shift=0.5, widen=1.5), x, y,
                            num_samples=20_000)
    truth = model.true_nll(x, y)
    # this proposal has E_q[w^2] / E_q[w]^2 = 1.29 per dimension, so the error of one image's
    # estimate has a standard deviation of about sqrt((1.29^2 - 1) / S) = 0.006 nats
    assert (estimate.values - truth).abs().max().item() < 0.03
    assert estimate.mean == pytest.approx(truth.mean().item(), abs=0.005)


def test_neg_elbo_is_the_nll_plus_kl_in_expectation(toy):
    model, x, y = toy
    shift, widen = 1.0, 1.5
    estimate = estimate_nll("neg_elbo", model.condition(shift, widen), x, y, num_samples=20_000)
    truth = model.true_nll(x, y)
    kl = model.kl_proposal_posterior(x, y, shift, widen)
    assert (kl > 0.3).all()                                  # a visibly loose bound
    # log w has variance 2 * (shift^2 widen^2 + (1 - widen^2)^2 / 2) = 6.1 here: per image the
    # error has a standard deviation of sqrt(6.1 / S) = 0.017 nats, the mean over 40 of 0.003
    torch.testing.assert_close(estimate.values, truth + kl, rtol=0, atol=0.1)
    assert estimate.mean == pytest.approx((truth + kl).mean().item(), abs=0.015)
    assert (estimate.values > truth).all()


def test_mc_prior_overestimates_with_finite_samples_and_converges(toy):
    model, x, y = toy
    truth = model.true_nll(x, y)
    # S = 5: by Jensen, E[-log mean p(y|z_s)] > -log p(y|x); average over seeds and images
    bias = torch.stack([estimate_nll("mc_prior", model.condition(), x, y, 5, seed=seed).values
                        - truth for seed in range(40)])                  # (seeds, N)
    stderr = bias.std() / math.sqrt(bias.numel())
    assert bias.mean() > 5 * stderr and bias.mean() > 0.1
    # large S: close to the truth (the prior is much wider than the posterior, so S is large)
    estimate = estimate_nll("mc_prior", model.condition(), x, y, 20_000)
    assert abs(estimate.mean - truth.mean().item()) < 0.05


def test_importance_never_above_elbo_with_shared_samples(toy):
    model, x, y = toy
    condition = model.condition(shift=1.0, widen=0.8)
    conditional = condition(x, y)
    eps = standard_normal_noise(7, 2, 0, len(x), seed=3, dtype=torch.float64)  # (S, N, D)
    assert (neg_log_importance(conditional, eps) <= neg_elbo(conditional, eps) + 1e-12).all()


def test_chunking_does_not_change_the_result(toy, monkeypatch):
    model, x, y = toy
    condition = model.condition(shift=0.5, widen=1.5)
    for method in evaluate.METHODS:
        big = estimate_nll(method, condition, x, y, 9, chunk_size=1000)
        for chunk_size in (1, 7, None):
            small = estimate_nll(method, condition, x, y, 9, chunk_size=chunk_size)
            torch.testing.assert_close(small.values, big.values, rtol=0, atol=1e-12)
        # tiny blocks also split the samples of each image
        monkeypatch.setattr(evaluate, "PAIRS_PER_CHUNK", 4)
        split = estimate_nll(method, condition, x, y, 9, chunk_size=3)
        monkeypatch.undo()
        torch.testing.assert_close(split.values, big.values, rtol=0, atol=1e-12)


def test_each_chunks_result_is_released_before_the_next_chunk(toy, monkeypatch):
    """The values go into one tensor allocated once; no chunk's result lives on until the end.

    Chunk results kept in a list until a final concatenation sat in glibc's heap above each
    chunk's freed temporaries, which the heap then could neither reuse nor trim: at the book's
    sizes (10,000 test images, S = 100) it grew by about 12 MiB per chunk, 1.7 GiB at the end
    of one estimator (benchmarks/bench_memory.py prints the peak)."""
    model, x, y = toy
    condition = model.condition(shift=0.5, widen=1.5)
    expected = estimate_nll("importance", condition, x, y, 5, chunk_size=7)
    results = []

    def recording(conditional, eps):
        assert all(ref() is None for ref in results), "an earlier chunk's result is alive"
        values = neg_log_importance(conditional, eps)
        results.append(weakref.ref(values))
        return values

    monkeypatch.setitem(evaluate._ESTIMATORS, "importance", recording)
    estimate = estimate_nll("importance", condition, x, y, 5, chunk_size=7)
    assert len(results) == math.ceil(len(x) / 7)
    assert estimate.values.dtype == expected.values.dtype == torch.float64
    assert torch.equal(estimate.values, expected.values)


def test_fixed_seed_same_numbers_and_global_rng_untouched(toy):
    model, x, y = toy
    condition = model.condition(shift=0.5, widen=1.5)
    state = torch.get_rng_state()
    first = estimate_nll("importance", condition, x, y, 10, seed=5)
    second = estimate_nll("importance", condition, x, y, 10, seed=5)
    other = estimate_nll("importance", condition, x, y, 10, seed=6)
    assert torch.equal(state, torch.get_rng_state())
    assert torch.equal(first.values, second.values)
    assert not torch.equal(first.values, other.values)


def test_estimate_summary(toy):
    model, x, y = toy
    estimate = estimate_nll("importance", model.condition(), x, y, 1, name="toy")
    values = estimate.values
    assert estimate.name == "toy" and estimate.num_samples == 1
    assert estimate.mean == pytest.approx(values.mean().item())
    assert estimate.stderr == pytest.approx(values.std().item() / math.sqrt(len(values)))
    assert estimate.per_pixel == pytest.approx(estimate.mean / 2)  # D = 2 outputs per image
    assert "toy" in str(estimate)


@pytest.mark.parametrize("num_samples", [0, -3, 1.5, True, "10", None])
def test_bad_num_samples_raise(toy, num_samples):
    model, x, y = toy
    with pytest.raises(ValueError, match="num_samples"):
        estimate_nll("importance", model.condition(), x, y, num_samples)


def test_bad_data_raise(toy):
    model, x, y = toy
    with pytest.raises(ValueError, match="same number of images"):
        estimate_nll("importance", model.condition(), x, y[:-1], 5)
    with pytest.raises(ValueError, match="no images"):
        estimate_nll("importance", model.condition(), x[:0], y[:0], 5)
    with pytest.raises(ValueError, match="unknown method"):
        estimate_nll("elbo", model.condition(), x, y, 5)
    with pytest.raises(ValueError, match="seed"):
        estimate_nll("importance", model.condition(), x, y, 5, seed=0.5)
    with pytest.raises(ValueError, match="chunk_size"):
        estimate_nll("importance", model.condition(), x, y, 5, chunk_size=0)


# ------------------------------------------------------------------------------------------------
# The CVAE wrappers, on tiny random networks and synthetic images
# ------------------------------------------------------------------------------------------------

def quadrant_data(num_images: int, num_quadrants: int, seed: int = 0) -> QuadrantData:
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(num_images, 784, generator=g)
    images = torch.where(images > 0.7, images, torch.zeros_like(images))  # sparse, MNIST-like
    x, y, _, _ = mask_quadrants(images, num_quadrants)
    return QuadrantData(x, y, torch.zeros(num_images, dtype=torch.int64), num_quadrants)


@pytest.fixture(scope="module")
def tiny_cvae():
    torch.manual_seed(0)
    return build_cvae(BaselineNet(TINY), TINY).eval()


def test_baseline_ncll_matches_torch_bce():
    torch.manual_seed(1)
    baseline = BaselineNet(TINY).eval()
    for k in (1, 2, 3):
        data = quadrant_data(30, k)
        estimate = baseline_ncll(baseline, data)
        with torch.no_grad():
            probs = baseline(data.x)                                     # (N, 784)
        out = data.y >= 0
        expected = torch.stack([
            F.binary_cross_entropy(probs[i][out[i]], data.y[i][out[i]], reduction="sum")
            for i in range(len(data))])
        torch.testing.assert_close(estimate.values, expected, rtol=1e-5, atol=1e-4)
        assert estimate.num_output_pixels == 196 * (4 - k)
        assert estimate.per_pixel == pytest.approx(estimate.mean / (196 * (4 - k)))
        assert estimate.num_samples is None


@pytest.mark.parametrize("sees_x", [False, True])
@pytest.mark.parametrize("mixed", [False, True])
def test_cvae_log_likelihood_matches_the_bernoulli_likelihood(sees_x, mixed):
    """The likelihood of the estimators against Pyro's Bernoulli over all 784 pixels, masked:
    for a chunk with one quadrant split (the output layer then computes the output pixels
    only) and for a chunk that mixes splits (all pixels, masked)."""
    config = TINY.replace(decoder_sees_x=sees_x)
    torch.manual_seed(4)
    cvae = build_cvae(BaselineNet(config), config).eval()
    data = quadrant_data(6, 2)
    x, y = data.x.clone(), data.y.clone()
    if mixed:  # the last image gets one input quadrant instead of two
        other = quadrant_data(6, 1)
        x[-1], y[-1] = other.x[-1], other.y[-1]
    conditional = cvae_conditional(cvae)(x, y)
    z = torch.randn(3, 6, config.z_dim)                                  # (S, N, z_dim)
    with torch.no_grad():
        bernoulli = cvae.likelihood(x, z)                                # over all 784 pixels
        reference = torch.where(y >= 0, bernoulli.log_prob(y.clamp(min=0)),
                                torch.zeros(())).sum(-1)                  # (S, N)
        torch.testing.assert_close(conditional.log_lik(z), reference, rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize("num_quadrants", [1, 3])
def test_cvae_estimators_shapes_order_and_determinism(tiny_cvae, num_quadrants):
    data = quadrant_data(50, num_quadrants)
    state = torch.get_rng_state()
    elbo = cvae_neg_elbo(tiny_cvae, data, num_samples=5)
    prior = cvae_mc_prior(tiny_cvae, data, num_samples=20)
    importance = cvae_importance_sampling(tiny_cvae, data, num_samples=20)
    again = cvae_importance_sampling(tiny_cvae, data, num_samples=20)
    assert torch.equal(state, torch.get_rng_state())
    assert torch.equal(importance.values, again.values)
    for estimate in (elbo, prior, importance):
        assert estimate.values.shape == (50,)
        assert torch.isfinite(estimate.values).all()
        assert estimate.num_output_pixels == 196 * (4 - num_quadrants)
    assert elbo.name == "CVAE -ELBO (S=5)" and importance.name == "CVAE IS (S=20)"
    # IS below the -ELBO: exactly with shared samples, on average with different S
    shared = cvae_neg_elbo(tiny_cvae, data, num_samples=20)
    assert (importance.values <= shared.values + 1e-3).all()
    difference = elbo.values - importance.values                         # (N,)
    assert difference.mean() > 3 * difference.std() / math.sqrt(len(difference))


def test_cvae_chunking_and_conditioned_decoder():
    config = TINY.replace(decoder_sees_x=True)
    torch.manual_seed(2)
    cvae = build_cvae(BaselineNet(config), config).eval()
    data = quadrant_data(23, 2)
    for estimator in (cvae_neg_elbo, cvae_mc_prior, cvae_importance_sampling):
        small = estimator(cvae, data, num_samples=6, chunk_size=4)
        big = estimator(cvae, data, num_samples=6)
        torch.testing.assert_close(small.values, big.values, rtol=1e-5, atol=1e-4)


def test_cvae_bad_inputs_raise(tiny_cvae):
    data = quadrant_data(5, 1)
    for bad in (0, 1.5):
        with pytest.raises(ValueError, match="num_samples"):
            cvae_importance_sampling(tiny_cvae, data, num_samples=bad)
    mismatch = QuadrantData(data.x, data.y[:4], data.labels, 1)
    with pytest.raises(ValueError, match="x has 5 images, y 4"):
        cvae_neg_elbo(tiny_cvae, mismatch)
    wrong_width = QuadrantData(data.x[:, :100], data.y[:, :100], data.labels, 1)
    with pytest.raises(ValueError, match=r"\(N, 784\)"):
        cvae_mc_prior(tiny_cvae, wrong_width)
    empty = QuadrantData(data.x[:0], data.y[:0], data.labels[:0], 1)
    with pytest.raises(ValueError, match="N >= 1"):
        baseline_ncll(tiny_cvae.baseline, empty)
    no_output = QuadrantData(data.x, torch.full_like(data.y, -1.0), data.labels, 1)
    with pytest.raises(ValueError, match="pixels present in y must be exactly those absent"):
        cvae_importance_sampling(tiny_cvae, no_output, num_samples=2)


# ------------------------------------------------------------------------------------------------
# The table, on the smoke budget with tiny networks
# ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def mnist():
    try:
        return load_mnist(download=False)
    except MNISTNotFoundError as error:
        pytest.skip(f"MNIST is not available: {error}")


# two of the three quadrant counts keep it quick, and check that only those are columns; one
# training seed (tests/test_seeds.py has tables of several)
TABLE_ARGS = dict(num_quadrants=(1, 3), config=TINY, budget="smoke", seeds=1, num_samples=4,
                  elbo_samples=2, device="cpu", progress=False)


@pytest.fixture(scope="module")
def cached_table(mnist, tmp_path_factory):
    """The CLL table of TINY at the smoke budget, computed once into a fresh cache."""
    directory = tmp_path_factory.mktemp("cll-cache")
    return cll_table(**TABLE_ARGS, data=mnist, cache=directory), directory


def forbid(monkeypatch, module, names):
    def forbidden(*args, **kwargs):
        raise AssertionError("the cached table should have been used")
    for name in names:
        monkeypatch.setattr(module, name, forbidden)


def test_cll_table_cells_are_the_estimators_on_the_cached_models(cached_table, mnist):
    """Every cell's values are exactly (bit for bit) what the estimator gives when called
    directly on the same cached models and test images, with the same S and seed, and its
    statistics their summary: with one training seed, the mean and the standard error over
    images of `Estimate`, the spread over seeds and the combined uncertainty unknown (NaN)."""
    table, directory = cached_table
    assert list(table.index) == list(CLL_ROWS) == ["baseline", "neg_elbo", "mc_prior",
                                                   "importance", "gap"]
    test_split = mnist.subset(get_budget("smoke")).test
    for k in (1, 3):
        cvae = trained_cvae(k, TINY, "smoke", mnist, device="cpu", cache=directory)[0]
        test = make_quadrant_data(test_split, k)
        expected = {"baseline": baseline_ncll(cvae.baseline, test),
                    "neg_elbo": cvae_neg_elbo(cvae, test, 2, seed=0),
                    "mc_prior": cvae_mc_prior(cvae, test, 4, seed=0),
                    "importance": cvae_importance_sampling(cvae, test, 4, seed=0)}
        gap = (expected["baseline"].values.double()
               - expected["importance"].values.double())                       # (N,)
        expected["gap"] = Estimate.from_values("gap", gap, 4, 196 * (4 - k))
        label = quadrant_label(k)
        for row, estimate in expected.items():
            values = table.attrs["values"][row][k]                             # (1, N)
            assert values.shape == (1, 256) and torch.equal(values[0], estimate.values), (row, k)
            assert table.loc[row, (label, "mean")] == pytest.approx(estimate.mean, abs=1e-9)
            assert table.loc[row, (label, "test_se")] == pytest.approx(estimate.stderr,
                                                                       rel=1e-12), (row, k)
            assert math.isnan(table.loc[row, (label, "seed_sd")])
            assert math.isnan(table.loc[row, (label, "uncertainty")])


def test_cll_table_layout_labels_files_and_cache(cached_table, mnist, monkeypatch):
    table, directory = cached_table
    assert list(table.columns) == [(f"{k} quadrant{'s' if k > 1 else ''}", stat)
                                   for k in (1, 3) for stat in STATISTICS]
    assert STATISTICS == ("mean", "seed_sd", "test_se", "uncertainty")
    assert table.xs("mean", axis=1, level=1).notna().all().all()
    assert (table.xs("test_se", axis=1, level=1) > 0).all().all()
    assert table.attrs["seeds"] == (0,) and table.attrs["num_seeds"] == 1
    assert table.attrs["labels"] == cll_labels(4, 2) == {
        "baseline": "NN baseline", "neg_elbo": "CVAE -ELBO (S=2)",
        "mc_prior": "CVAE MC prior (S=4)", "importance": "CVAE IS (S=4)",
        "gap": "Performance gap (NN - CVAE IS)"}
    assert table.attrs["estimators"]["mc_prior"] == "mc_prior"
    assert table.attrs["budget"] == "smoke" and table.attrs["num_test"] == 256

    csv_files = list(directory.glob("cll-table-smoke-*.csv"))
    json_files = list(directory.glob("cll-table-smoke-*.json"))
    assert len(csv_files) == 1 and len(json_files) == 1
    assert table.attrs["json"] == str(json_files[0])
    long = pd.read_csv(csv_files[0])
    assert list(long.columns) == ["key", "label", "estimator", "num_quadrants", "inputs",
                                  "num_seeds", "mean", "seed_sd", "test_se", "uncertainty",
                                  "per_pixel"]
    assert len(long) == 5 * 2 and long["key"].tolist()[::2] == list(CLL_ROWS)
    assert long["label"].tolist()[::2] == list(cll_labels(4, 2).values())
    first = long.iloc[0]
    assert first["mean"] == table.loc["baseline", ("1 quadrant", "mean")]  # repr round-trips
    assert first["per_pixel"] == pytest.approx(first["mean"] / 588)
    assert first["test_se"] == table.loc["baseline", ("1 quadrant", "test_se")]
    stored = json.loads(json_files[0].read_text())
    assert stored["rows"] == list(CLL_ROWS) and stored["key"]["num_samples"] == 4
    assert stored["seeds"] == stored["key"]["seeds"] == [0]

    # a second call reads the cache: nothing is loaded, trained or estimated again
    mtimes = (csv_files[0].stat().st_mtime_ns, json_files[0].stat().st_mtime_ns)
    forbid(monkeypatch, tables, ("trained_cvae", "trained_baseline", "load_mnist",
                                 "cvae_importance_sampling", "baseline_ncll"))
    again = cll_table(**TABLE_ARGS, cache=directory)
    assert again.equals(table) and again.attrs["labels"] == table.attrs["labels"]
    for row in CLL_ROWS:  # the per-image values come back exactly, in their own dtype
        for k in (1, 3):
            stored_values = again.attrs["values"][row][k]
            assert stored_values.dtype == table.attrs["values"][row][k].dtype
            assert torch.equal(stored_values, table.attrs["values"][row][k]), (row, k)
    assert (csv_files[0].stat().st_mtime_ns, json_files[0].stat().st_mtime_ns) == mtimes


def test_bad_cached_table_is_recomputed_from_the_cached_models(mnist, tmp_path, monkeypatch):
    kwargs = dict(TABLE_ARGS, num_quadrants=(1,), data=mnist, cache=tmp_path)
    table = cll_table(**kwargs)
    models = {path: path.stat().st_mtime_ns for path in tmp_path.glob("*.pt")}
    assert len(models) == 2                                  # baseline and CVAE for k = 1
    (json_file,) = tmp_path.glob("cll-table-smoke-*.json")
    # an unreadable file, a readable one of another key, and one whose values lack an image:
    # each is reported and recomputed
    good = json.loads(json_file.read_text())
    short = json.loads(json_file.read_text())
    short["values"]["gap"]["1"]["shape"] = [1, 255]
    short["values"]["gap"]["1"]["data"] = tables._encode(torch.zeros(1, 255))["data"]
    assert good["values"]["gap"]["1"]["shape"] == [1, 256]
    for bad in ("{not json", json.dumps({"key": {"kind": "cll-table"}, "rows": []}),
                json.dumps(short)):
        json_file.write_text(bad)
        with monkeypatch.context() as patch:
            forbid(patch, cache_module, ("train_cvae", "train_baseline"))
            with pytest.warns(UserWarning, match="bad cached CLL table"):
                recomputed = cll_table(**kwargs)
        assert recomputed.equals(table)                      # fixed seed: the same numbers
        assert {path: path.stat().st_mtime_ns for path in tmp_path.glob("*.pt")} == models
    assert json.loads(json_file.read_text())["rows"] == list(CLL_ROWS)


CHANGED_ESTIMATOR = """
def neg_log_importance(conditional, eps):
    return -log_mean_exp(_log_weights(conditional, eps), dim=0) + 0.0
"""


def test_table_key_follows_the_estimators_code_and_the_models_keys(cached_table, monkeypatch):
    """The cached table is found again only while the evaluation code and every model's key are
    unchanged: a changed estimator, or a changed model key, is another table (computed anew);
    a changed docstring, comment or label is the same table."""
    table, directory = cached_table
    source = inspect.getsource(evaluate)
    recompute = "the cached table should have been used"
    real = inspect.getsource

    def with_source(text):
        """Pretend evaluate.py reads ``text``: what code_digest hashes."""
        assert text != source

        def fake(obj):
            return text if obj is evaluate else real(obj)
        monkeypatch.setattr(cache_module.inspect, "getsource", fake)
        cache_module.code_digest.cache_clear()

    try:
        forbid(monkeypatch, tables, ("trained_cvae", "load_mnist"))
        # prose only: a new docstring and a comment leave the key, and the cached table, alone
        with_source(source.replace('"""Importance sampling:', '"""Importance-sampled estimate:')
                    .replace("# Over a data set", "# Over a whole data set"))
        assert cll_table(**TABLE_ARGS, cache=directory).equals(table)
        # a label is not part of the key either
        monkeypatch.setitem(tables.CLL_LABELS, "importance", "CVAE importance sampling")
        relabelled = cll_table(**TABLE_ARGS, cache=directory)
        assert relabelled.equals(table)
        assert relabelled.attrs["labels"]["importance"] == "CVAE importance sampling (S=4)"
        # a changed estimator is another table: the cache is not used, the models are asked for
        with_source(source.replace(real(evaluate.neg_log_importance), CHANGED_ESTIMATOR.lstrip()))
        with pytest.raises(AssertionError, match=recompute):
            cll_table(**TABLE_ARGS, cache=directory)
    finally:
        monkeypatch.undo()
        cache_module.code_digest.cache_clear()
    # the same for a changed model key (here: the CVAE's, e.g. a retrained model)
    real_key = tables.model_key
    monkeypatch.setattr(tables, "model_key", lambda kind, *args: {
        **real_key(kind, *args), **({"retrained": True} if kind == "cvae" else {})})
    forbid(monkeypatch, tables, ("trained_cvae", "load_mnist"))
    with pytest.raises(AssertionError, match=recompute):
        cll_table(**TABLE_ARGS, cache=directory)
    monkeypatch.setattr(tables, "model_key", real_key)
    assert cll_table(**TABLE_ARGS, cache=directory).equals(table)


def test_rows_are_picked_by_key_not_label(cached_table):
    """Relabelling a row changes what `format_table` shows, not which numbers a key selects."""
    table, _ = cached_table
    relabelled = table.copy()
    relabelled.attrs = {**table.attrs, "labels": {**table.attrs["labels"],
                                                  "importance": "NN baseline (not really)",
                                                  "baseline": "CVAE IS (S=4)"}}
    assert relabelled.loc["importance"].equals(table.loc["importance"])
    strings = format_table(relabelled)
    assert strings.loc["NN baseline (not really)", "1 quadrant"] == \
        format_table(table).loc["CVAE IS (S=4)", "1 quadrant"]


def test_format_table_shows_labels_beside_the_published_numbers(cached_table):
    table, _ = cached_table
    strings = format_table(table)
    assert list(strings.columns) == ["1 quadrant", "3 quadrants"]
    assert list(strings.index) == list(cll_labels(4, 2).values())
    # one training seed: ± the standard error over test images, and the table says so
    mean, test_se = (table.loc["importance", ("1 quadrant", statistic)]
                     for statistic in ("mean", "test_se"))
    assert strings.loc["CVAE IS (S=4)", "1 quadrant"] == f"{mean:.1f} ± {test_se:.1f}"
    assert "test images alone" in strings.attrs["error"] and "one training seed" in \
        strings.attrs["error"]
    # the full table is tidy: a line per row and setting, a column per statistic, named
    full = format_table(table, full=True, digits=2)
    assert list(full.columns) == ["mean", "spread over seeds", "test standard error",
                                  "uncertainty"]
    assert list(full.index.names) == ["method", "inputs"] and len(full) == 5 * 2
    assert full.loc[("CVAE IS (S=4)", "1 quadrant"), "test standard error"] == f"{test_se:.2f}"
    assert full.loc[("CVAE IS (S=4)", "1 quadrant"), "mean"] == f"{mean:.2f}"
    assert full.loc[("CVAE IS (S=4)", "1 quadrant"), "spread over seeds"] == "—"  # one seed
    full_published = format_table(table, full=True, published=True)
    assert full_published.loc[("Pyro tutorial", "NN baseline", "3 quadrants"), "mean"] == "25.4"
    assert full_published.loc[("Pyro tutorial", "NN baseline", "3 quadrants"),
                              "uncertainty"] == "—"
    assert full_published.loc[("this book", "CVAE IS (S=4)", "1 quadrant"), "mean"] == \
        f"{mean:.1f}"
    with_published = format_table(table, published=True)
    assert with_published.loc[("Pyro tutorial", "NN baseline"), "3 quadrants"] == "25.4"
    assert with_published.loc[("TorchZQ", "CVAE IS (S=100)"), "3 quadrants"] == "—"
    assert with_published.loc[("this book", "NN baseline"), "1 quadrant"] == \
        strings.loc["NN baseline", "1 quadrant"]


def test_published_numbers_by_key():
    frame = published_table()
    inputs = ["1 quadrant", "2 quadrants", "3 quadrants"]
    assert frame.loc[("Pyro tutorial", "baseline"), inputs].tolist() == [100.4, 61.9, 25.4]
    assert PUBLISHED["Pyro tutorial"]["neg_elbo"].values == (71.8, 51.0, 24.2)
    assert frame.loc[("Pyro tutorial", "neg_elbo"), "label"] == \
        'CVAE "Monte Carlo" (in fact -ELBO)'
    assert frame.loc[("TorchZQ", "importance"), "1 quadrant"] == pytest.approx(72.255)
    # every published row names the row of ours it is comparable with, or none
    assert set(frame["estimator"].dropna()) <= set(CLL_ROWS)
    assert frame.loc[("Pyro tutorial", "neg_elbo"), "estimator"] == "neg_elbo"
    assert pd.isna(frame.loc[("Pyro tutorial", "gap"), "estimator"])  # their gap: to the -ELBO


def test_estimate_is_a_frozen_record():
    estimate = Estimate.from_values("x", torch.tensor([1.0, 3.0]), 2, 4)
    assert (estimate.mean, estimate.per_pixel) == (2.0, 0.5)
    assert estimate.stderr == pytest.approx(math.sqrt(2) / math.sqrt(2))
    assert math.isnan(Estimate.from_values("x", torch.tensor([1.0]), 2, 4).stderr)


def test_jointly_trained_baseline_is_not_the_nn_row(mnist, tmp_path, monkeypatch):
    """Fine-tuned inside the CVAE, the baseline is a feature of the prior: the NN row must score
    the baseline trained on its own (the same number as for the frozen variant)."""
    monkeypatch.setenv("CVAE_BUDGET", "smoke")
    kwargs = dict(num_quadrants=(1,), data=mnist, num_samples=2, elbo_samples=1, device="cpu",
                  cache=tmp_path, progress=False)
    joint = cll_table(config=TINY.replace(joint_baseline=True), **kwargs)
    frozen = cll_table(config=TINY, **kwargs)
    cell = ("baseline", ("1 quadrant", "mean"))
    assert joint.loc[cell] == pytest.approx(frozen.loc[cell], abs=1e-4)
    baseline = trained_baseline(1, TINY, data=mnist, device="cpu", cache=tmp_path)[0]
    test = make_quadrant_data(mnist.subset(get_budget("smoke")).test, 1)
    assert joint.loc[cell] == baseline_ncll(baseline, test).mean


def test_noise_is_per_image_and_the_same_whatever_the_thread_count():
    """Each image's noise comes from its own seeded generator, whether the images are drawn in
    one thread or shared out between several."""
    from cvae_utils.evaluate import NOISE_ROWS_PER_THREAD, _image_seed

    n = 4 * NOISE_ROWS_PER_THREAD + 3  # enough images for several threads
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = standard_normal_noise(5, 3, 10, 10 + n, seed=2)
        torch.set_num_threads(4)
        several = standard_normal_noise(5, 3, 10, 10 + n, seed=2)
    finally:
        torch.set_num_threads(threads)
    assert one.shape == (5, n, 3) and torch.equal(one, several)
    for row in (0, 1, n - 1):  # image 10 + row: its own generator, independent of the chunk
        expected = torch.randn(5, 3, generator=torch.Generator().manual_seed(_image_seed(2, 10 + row)))
        assert torch.equal(one[:, row], expected)
    assert torch.equal(standard_normal_noise(5, 3, 11, 12, seed=2)[:, 0], one[:, 1])
