"""Training loops, budgets, the model cache and the command line."""
from __future__ import annotations

import copy
import gc
import pickle
import platform
import shutil

import pytest
import torch
from pyro import poutine

import cvae_utils.cache as cache_module
from cvae_utils import (BUDGETS, BaselineConfig, Budget, CVAEConfig, get_budget,
                        make_quadrant_data, train_baseline, train_cvae, trained_baseline,
                        trained_cvae, tutorial_config)
from cvae_utils.__main__ import main
from cvae_utils.cache import CheckpointError, checkpoint_path, load_checkpoint, model_key
from cvae_utils.networks import CVAE, BaselineNet, masked_bce
from cvae_utils.optim import JointAdam, WeightAverage
from cvae_utils.train import KLWeight, Snapshots, baseline_loss
from cvae_utils.variant_models import build_cvae, objective, prior_guide

# small networks trained the tutorial's way (float32, no warm-up, no average), so that each
# test switches on only what it tests
SMALL = tutorial_config().replace(
    hidden_1=32, hidden_2=16, z_dim=4, batch_size=16, patience=2,
    baseline=BaselineConfig(hidden_1=32, hidden_2=16, batch_size=16, patience=2,
                            precision="fp32"))
BASE = SMALL.baseline
TINY = Budget("smoke", num_train=96, num_val=48, num_test=32, max_epochs=3)


def quadrant_splits(data, k=1):
    return make_quadrant_data(data.train, k), make_quadrant_data(data.val, k)


def test_budgets_from_environment(monkeypatch):
    monkeypatch.delenv("CVAE_BUDGET", raising=False)
    assert get_budget().name == "paper"
    monkeypatch.setenv("CVAE_BUDGET", "smoke")
    assert get_budget() is BUDGETS["smoke"]
    assert get_budget("quick").name == "quick"
    monkeypatch.setenv("CVAE_BUDGET", "huge")
    with pytest.raises(ValueError, match="CVAE_BUDGET.*smoke, quick, paper|smoke, quick, paper"):
        get_budget()
    paper = BUDGETS["paper"]
    assert (paper.num_train, paper.num_val, paper.num_test) == (50_000, 10_000, 10_000)


def test_baseline_training_history_and_best_weights(tiny_data):
    train, val = quadrant_splits(tiny_data)
    model, history = train_baseline(train, val, BASE, max_epochs=3, device="cpu")
    assert history.num_epochs >= 1 and len(history.val_loss) == len(history.seconds)
    assert all(0 < seconds < 60 for seconds in history.seconds)  # each epoch's wall time
    assert history.best_val_loss == min(history.val_loss)
    # the returned weights are the best epoch's: they reproduce its validation loss
    torch.testing.assert_close(baseline_loss(model, val).mean().item(), history.best_val_loss)
    assert history.to_frame().index.name == "epoch"


def test_early_stopping_respects_patience(tiny_data):
    train, val = quadrant_splits(tiny_data)
    config = BASE.replace(patience=1, lr=0.5)  # absurd rate: validation gets worse
    _, history = train_baseline(train, val, config, max_epochs=20, device="cpu")
    assert history.num_epochs == history.best_epoch + 1 < 20


def test_training_is_reproducible(tiny_data):
    train, val = quadrant_splits(tiny_data)
    base1, h1 = train_baseline(train, val, BASE, max_epochs=2, device="cpu")
    base2, h2 = train_baseline(train, val, BASE, max_epochs=2, device="cpu")
    assert h1.train_loss == h2.train_loss and h1.val_loss == h2.val_loss
    c1, g1 = train_cvae(train, val, base1, SMALL, max_epochs=2, device="cpu")
    c2, g2 = train_cvae(train, val, base2, SMALL, max_epochs=2, device="cpu")
    assert g1.train_loss == g2.train_loss and g1.val_loss == g2.val_loss
    other = SMALL.replace(seed=1)
    _, g3 = train_cvae(train, val, base1, other, max_epochs=2, device="cpu")
    assert g3.train_loss != g1.train_loss


def test_cvae_training_records_snapshots(tiny_data):
    train, val = quadrant_splits(tiny_data)
    baseline, _ = train_baseline(train, val, BASE, max_epochs=1, device="cpu")
    cvae, history = train_cvae(train, val, baseline, SMALL, max_epochs=2, device="cpu",
                               on_epoch=Snapshots(train.x[:3], 5, SMALL.z_dim))
    assert history.snapshots.shape == (history.num_epochs, 3, 5, 784)
    assert history.snapshots.dtype == torch.uint8


def test_cache_round_trip_loads_without_training(tiny_data, cache_path, monkeypatch):
    model, history = trained_cvae(1, SMALL, TINY, tiny_data, device="cpu")
    files = sorted(p.name for p in cache_path.iterdir())
    assert len(files) == 2 and files[0].startswith("baseline-k1-smoke-")
    assert not any(p.suffix == ".tmp" for p in cache_path.iterdir())

    def must_not_train(*args, **kwargs):
        raise AssertionError("trained although the cache holds the model")

    monkeypatch.setattr(cache_module, "train_baseline", must_not_train)
    monkeypatch.setattr(cache_module, "train_cvae", must_not_train)
    loaded, loaded_history = trained_cvae(1, SMALL, TINY, tiny_data, device="cpu")
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name
    assert loaded_history.val_loss == history.val_loss
    assert torch.equal(loaded_history.snapshots, history.snapshots)


def test_cache_keys_separate_runs(tiny_data, cache_path):
    trained_baseline(1, SMALL, TINY, tiny_data, device="cpu")
    trained_baseline(2, SMALL, TINY, tiny_data, device="cpu")
    # a CVAE-only field does not change the baseline, so its file is shared
    trained_baseline(1, SMALL.replace(z_dim=8), TINY, tiny_data, device="cpu")
    assert len(list(cache_path.glob("baseline-*.pt"))) == 2
    trained_baseline(1, SMALL.replace(baseline={"seed": 3}), TINY, tiny_data, device="cpu")
    assert len(list(cache_path.glob("baseline-*.pt"))) == 3


@pytest.mark.parametrize("damage", ["truncate", "garbage", "foreign_key", "pickle"])
def test_bad_checkpoints_are_reported_and_retrained(damage, tiny_data, cache_path):
    trained_baseline(1, SMALL, TINY, tiny_data, device="cpu")
    key = model_key("baseline", SMALL, TINY, 1)
    path = checkpoint_path(key)
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[:1000])
    elif damage == "garbage":
        path.write_bytes(b"not a checkpoint at all")
    elif damage == "foreign_key":  # another run's file under this run's name
        trained_baseline(2, SMALL, TINY, tiny_data, device="cpu")
        shutil.copy(checkpoint_path(model_key("baseline", SMALL, TINY, 2)), path)
    else:  # arbitrary pickled objects are refused by weights_only loading
        path.write_bytes(pickle.dumps({"key": "x", "state_dict": {}, "history": object(),
                                       "digest": ""}))
    with pytest.raises(CheckpointError):
        load_checkpoint(path, key, BaselineNet(BASE))
    with pytest.warns(UserWarning, match="bad cached model"):
        model, _ = trained_baseline(1, SMALL, TINY, tiny_data, device="cpu")
    load_checkpoint(path, key, BaselineNet(BASE))  # rewritten: loads cleanly now


def test_checkpoint_with_wrong_shapes_is_rejected(tiny_data, cache_path):
    trained_baseline(1, SMALL, TINY, tiny_data, device="cpu")
    key = model_key("baseline", SMALL, TINY, 1)
    with pytest.raises(CheckpointError, match="does not fit"):
        load_checkpoint(checkpoint_path(key), key, BaselineNet(BASE.replace(hidden_1=40)))


def test_command_line_fills_then_reads_the_cache(mnist_root, tmp_path, capsys):
    args = ["train", "--quadrants", "1", "--budget", "smoke", "--data-dir", str(mnist_root),
            "--cache-dir", str(tmp_path / "models")]
    assert main(args) == 0
    first = capsys.readouterr().out
    assert "budget smoke" in first and "2 of 2 models to train in this process" in first
    assert len(list((tmp_path / "models").glob("*.pt"))) == 2
    assert main(args) == 0
    assert "all 2 models are in the model cache" in capsys.readouterr().out


def test_command_line_rejects_bad_quadrants(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--quadrants", "4", "--budget", "smoke"])
    assert "invalid choice" in capsys.readouterr().err


@pytest.mark.parametrize("changes", [
    {"objective": "gsnn"}, {"objective": "hybrid", "hybrid_alpha": 0.3},
    {"joint_baseline": True}, {"prior_uses_baseline": False}, {"decoder_sees_x": True},
    {"kl_warmup_epochs": 2, "lr_decay": 0.5}, {"precision": "bf16"},
    {"weight_average": 0.9, "average_every": 2}])
def test_variants_train_and_lower_their_loss(changes, tiny_data):
    train, val = quadrant_splits(tiny_data)
    config = SMALL.replace(**changes, patience=5)
    baseline, _ = train_baseline(train, val, BASE, max_epochs=1, device="cpu")
    frozen = [p.clone() for p in baseline.parameters()]
    cvae, history = train_cvae(train, val, baseline, config, max_epochs=3, device="cpu")
    assert all(torch.isfinite(torch.tensor(history.train_loss)))
    assert history.train_loss[-1] < history.train_loss[0]
    # the caller's baseline never changes; a jointly trained copy inside the CVAE does
    assert all(torch.equal(a, b) for a, b in zip(frozen, baseline.parameters()))
    moved = any(not torch.equal(a, b) for a, b in zip(frozen, cvae.baseline.parameters()))
    assert moved == bool(changes.get("joint_baseline"))


def test_gsnn_loss_has_no_kl_term(tiny_data):
    """With the prior as guide, Pyro's ELBO is exactly the Monte Carlo likelihood under the prior."""
    train, _ = quadrant_splits(tiny_data)
    cvae = build_cvae(BaselineNet(BASE), SMALL)
    x, y = train.x[:8], train.y[:8]
    guide_trace = poutine.trace(prior_guide(cvae)).get_trace(x, y)
    model_trace = poutine.trace(poutine.replay(cvae.model, trace=guide_trace)).get_trace(x, y)
    elbo = model_trace.log_prob_sum() - guide_trace.log_prob_sum()
    z = guide_trace.nodes["z"]["value"]
    torch.testing.assert_close(elbo, -masked_bce(cvae.generation_net(z, x), y).sum())


def test_kl_warmup_scales_the_kl_term(tiny_data):
    train, _ = quadrant_splits(tiny_data)
    cvae = build_cvae(BaselineNet(BASE), SMALL)
    x, y = train.x[:4], train.y[:4]
    weight = KLWeight(0.25)
    guide_trace = poutine.trace(weight(cvae.guide)).get_trace(x, y)
    model_trace = poutine.trace(poutine.replay(weight(cvae.model), trace=guide_trace)).get_trace(x, y)
    model_trace.compute_log_prob()
    guide_trace.compute_log_prob()
    assert model_trace.nodes["z"]["scale"] == 0.25 and guide_trace.nodes["z"]["scale"] == 0.25
    assert model_trace.nodes["y"]["scale"] == 1.0


def test_nan_data_gives_a_clear_error_before_training(tiny_data):
    train, val = quadrant_splits(tiny_data)
    val.x[:] = float("nan")
    with pytest.raises(ValueError, match="validation data: x holds NaN"):
        train_baseline(train, val, BASE, max_epochs=2, device="cpu")


def test_a_validation_loss_that_is_never_finite_gives_a_clear_error(tiny_data, monkeypatch):
    import cvae_utils.train as train_module

    train, val = quadrant_splits(tiny_data)
    monkeypatch.setattr(train_module, "baseline_loss",
                        lambda model, data: torch.full((len(data),), float("nan")))
    with pytest.raises(FloatingPointError, match="baseline k=1: the validation loss was never "
                                                 "finite"):
        train_baseline(train, val, BASE, max_epochs=2, device="cpu")


@pytest.mark.filterwarnings("ignore:Encountered NaN")
def test_pyro_checks_the_first_cvae_epoch_and_a_non_finite_loss_stops_training(tiny_data,
                                                                                monkeypatch):
    import pyro
    import pyro.distributions as dist

    train, val = quadrant_splits(tiny_data)
    baseline, _ = train_baseline(train, val, BASE, max_epochs=1, device="cpu")
    seen, model = [], CVAE.model

    def recording_model(self, *args, **kwargs):
        seen.append(dist.is_validation_enabled())
        return model(self, *args, **kwargs)

    monkeypatch.setattr(CVAE, "model", recording_model)
    config = SMALL.replace(patience=10)
    train_cvae(train, val, baseline, config, max_epochs=3, device="cpu")
    steps = -(-len(train) // config.batch_size)
    assert seen == [True] * steps + [False] * 2 * steps  # Pyro's checks in the first epoch only
    assert dist.is_validation_enabled()                  # and the user's setting restored
    # without the checks (the later epochs, or validation switched off), a NaN loss stops the run
    poisoned = copy.deepcopy(baseline)
    with torch.no_grad():
        poisoned.net[0].weight.fill_(float("nan"))  # its guesses, read by the prior, are NaN
    with pyro.validation_enabled(False):
        with pytest.raises(FloatingPointError, match="training loss became nan in epoch 1"):
            train_cvae(train, val, poisoned, config, max_epochs=2, device="cpu")
    with pytest.raises(ValueError):  # with them, Pyro itself rejects the NaN parameters
        train_cvae(train, val, poisoned, config, max_epochs=2, device="cpu")


def test_book_config_is_the_default_and_departs_from_the_tutorial_in_its_recipe():
    from cvae_utils import book_config

    assert book_config() == CVAEConfig()
    book, tutorial = CVAEConfig(), tutorial_config()
    assert set(book.differences(tutorial)) == {
        "baseline", "decoder_sees_x", "analytic_kl", "kl_warmup_epochs", "weight_average",
        "precision", "patience"}
    assert CVAEConfig().min_delta == 0.0  # 0.05 hurt on validation (DECISIONS.md, step 4)
    # the baseline's own training (batch, precision), not its network or its rate
    assert set(book.baseline.differences(tutorial.baseline)) == {"batch_size", "precision"}
    assert tutorial_config().precision == tutorial_config().baseline.precision == "fp32"


def test_baseline_precision_selects_the_baselines_autocast(monkeypatch, tiny_data):
    dtypes = []
    logits = BaselineNet.logits

    def recording(self, x):
        out = self.net[:-1](x)  # the products (the last layer's output is cast to float32)
        dtypes.append((torch.is_autocast_enabled("cpu"), out.dtype))
        return logits(self, x)

    monkeypatch.setattr(BaselineNet, "logits", recording)
    train, val = quadrant_splits(tiny_data)
    config = BASE.replace(precision="bf16", patience=5)
    train_baseline(train, val, config, max_epochs=1, device="cpu")
    assert set(dtypes) == {(True, torch.bfloat16)}  # training steps and validation pass
    dtypes.clear()
    train_baseline(train, val, config.replace(precision="fp32"), max_epochs=1, device="cpu")
    assert set(dtypes) == {(False, torch.float32)}
    # a different baseline precision is a different baseline in the cache
    assert model_key("baseline", config, TINY, 1) != model_key("baseline", BASE, TINY, 1)


def test_cvae_and_baseline_use_their_own_batch_sizes(tiny_data, monkeypatch):
    import cvae_utils.train as train_module

    seen = []
    original = train_module.iterate_minibatches

    def recording(num_items, batch_size, generator=None):
        seen.append(batch_size)
        return original(num_items, batch_size, generator)

    monkeypatch.setattr(train_module, "iterate_minibatches", recording)
    train, val = quadrant_splits(tiny_data)
    config = SMALL.replace(batch_size=32, baseline={"batch_size": 8})
    baseline, _ = train_baseline(train, val, config.baseline, max_epochs=1, device="cpu")
    assert seen == [8]
    train_cvae(train, val, baseline, config, max_epochs=1, device="cpu")
    assert seen == [8, 32]


def test_cvae_patience_is_its_own(tiny_data):
    train, val = quadrant_splits(tiny_data)
    baseline, _ = train_baseline(train, val, BASE.replace(patience=1), max_epochs=1,
                                 device="cpu")
    # a learning rate of ~0 never improves the validation loss after the first epoch
    config = SMALL.replace(lr=1e-12, patience=3)
    _, history = train_cvae(train, val, baseline, config, max_epochs=10, device="cpu")
    assert history.num_epochs == 4 and history.best_epoch == 1
    _, history = train_cvae(train, val, baseline, config.replace(patience=1),
                            max_epochs=10, device="cpu")
    assert history.num_epochs == 2


@pytest.mark.parametrize("min_delta, losses, stop, best", [
    # any fall resets the patience: the run creeps on to the cap
    (0.0, [10, 9, 8.99, 8.98, 8.97, 8.96, 8.95, 8.94], 8, 8),
    # falls of 0.01 < 0.05 do not: patience 3 runs out at epoch 5; the kept weights are still
    # those of the lowest loss, epoch 5's
    (0.05, [10, 9, 8.99, 8.98, 8.97, 8.96, 8.95, 8.94], 5, 5),
    # a fall of more than 0.05 below the last reset (9 -> 8.9) resets it again
    (0.05, [10, 9, 8.99, 8.9, 8.89, 8.88, 8.87, 8.86], 7, 7),
    # a rise after a small fall: the best epoch is the small fall's, stopped 3 epochs after 9
    (0.05, [10, 9, 8.98, 9.5, 9.4, 9.3, 9.2, 9.1], 5, 3),
])
def test_min_delta_stops_a_run_whose_loss_only_creeps(min_delta, losses, stop, best, tiny_data,
                                                      monkeypatch):
    """`train_cvae`'s early stopping on scripted validation losses: the run stops where the
    rule says, and the weights kept are those validated in the best epoch."""
    import cvae_utils.train as train_module

    train, val = quadrant_splits(tiny_data)
    baseline, _ = train_baseline(train, val, BASE, max_epochs=1, device="cpu")
    validated = []

    def scripted(cvae, val, y_hat=None):
        validated.append(copy.deepcopy(cvae.state_dict()))
        return losses[len(validated) - 1]

    monkeypatch.setattr(train_module, "validation_loss", scripted)
    config = SMALL.replace(min_delta=min_delta, patience=3, kl_warmup_epochs=0)
    cvae, history = train_cvae(train, val, baseline, config, max_epochs=len(losses),
                               device="cpu")
    assert history.num_epochs == stop and history.best_epoch == best
    assert history.best_val_loss == min(losses[:stop])
    kept = validated[best - 1]
    assert all(torch.equal(cvae.state_dict()[name], kept[name]) for name in kept)


def test_min_delta_reaches_the_cvae_loop(tiny_data):
    train, val = quadrant_splits(tiny_data)
    baseline, _ = train_baseline(train, val, BASE, max_epochs=1, device="cpu")
    config = SMALL.replace(patience=1)
    _, falling = train_cvae(train, val, baseline, config, max_epochs=5, device="cpu")
    # without a threshold the falling loss keeps resetting the patience (1) to the cap ...
    assert falling.num_epochs == 5 and falling.val_loss == sorted(falling.val_loss, reverse=True)
    # ... with one no fall can exceed (a billion nats), the patience runs out after epoch 2,
    # on the same losses
    _, history = train_cvae(train, val, baseline, config.replace(min_delta=1e9),
                            max_epochs=5, device="cpu")
    assert history.num_epochs == 2 and history.val_loss == falling.val_loss[:2]


def test_kl_warmup_is_capped_at_a_share_of_the_run(tiny_data, monkeypatch):
    import cvae_utils.train as train_module

    assert SMALL.replace(kl_warmup_epochs=10).warmup_epochs(100) == 10
    assert SMALL.replace(kl_warmup_epochs=10).warmup_epochs(8) == 4
    assert SMALL.replace(kl_warmup_epochs=10).warmup_epochs(1) == 0
    assert SMALL.replace(kl_warmup_epochs=10, kl_warmup_max_share=0.25).warmup_epochs(8) == 2
    seen = []

    class Recording(train_module.KLWeight):
        def _process_message(self, msg):
            if msg["type"] == "sample" and msg["name"] == "z":
                seen.append(round(self.weight, 6))
            super()._process_message(msg)

    monkeypatch.setattr(train_module, "KLWeight", Recording)
    train, val = quadrant_splits(tiny_data)
    baseline, _ = train_baseline(train, val, BASE, max_epochs=1, device="cpu")
    # one step per epoch, four epochs: a warm-up of 10 is cut to 2, then the full weight
    config = SMALL.replace(kl_warmup_epochs=10, batch_size=len(train), patience=10)
    train_cvae(train, val, baseline, config, max_epochs=4, device="cpu")
    assert list(dict.fromkeys(seen)) == [round(1 / 3, 6), round(2 / 3, 6), 1.0]


def test_flush_denormals_reaches_every_thread_of_torchs_pool():
    """In a fresh interpreter whose pool already computed: the explicit call reaches its
    threads, and so does training, which calls it."""
    import subprocess
    import sys

    code = ("import torch\n"
            "torch.set_num_threads(2)\n"
            "x = torch.full((4_000_000,), 1e-39)  # denormal float32, split over both threads\n"
            "before = int((x * 1.0).count_nonzero())  # the pool runs before any flushing\n"
            "from cvae_utils.speed import flush_denormals\n"
            "print(flush_denormals(), before, int((x * 1.0).count_nonzero()))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    supported, before, after = out.stdout.split()
    if supported != "True":
        pytest.skip("this CPU cannot flush denormals")
    assert before == "4000000" and after == "0"


def test_joint_adam_matches_pyros_per_parameter_adam_and_decays(tiny_data, monkeypatch):
    """One fused Adam over all tensors must train exactly as Pyro's one-Adam-per-tensor did."""
    import pyro

    import cvae_utils.train as train_module

    train, val = quadrant_splits(tiny_data)
    baseline, _ = train_baseline(train, val, BASE, max_epochs=1, device="cpu")
    config = SMALL.replace(lr_decay=0.5, patience=10)
    joint, joint_history = train_cvae(train, val, baseline, config, max_epochs=3, device="cpu")
    lrs = []

    def pyro_exponential_lr(lr, gamma):  # the reference: Pyro's per-tensor Adams
        optim = pyro.optim.ExponentialLR({"optimizer": torch.optim.Adam,
                                          "optim_args": {"lr": lr, "fused": True}, "gamma": gamma})

        def decay_lr():
            optim.step()
            lrs.append({s.optimizer.param_groups[0]["lr"] for s in optim.optim_objs.values()})
        optim.decay_lr = decay_lr
        return optim

    monkeypatch.setattr(train_module, "JointAdam", pyro_exponential_lr)
    ref, ref_history = train_cvae(train, val, baseline, config, max_epochs=3, device="cpu")
    assert joint_history.val_loss == ref_history.val_loss
    for (name, a), (_, b) in zip(joint.state_dict().items(), ref.state_dict().items()):
        assert torch.equal(a, b), name
    assert lrs == [{config.lr * 0.5}, {config.lr * 0.25}, {config.lr * 0.125}]  # every epoch

    # its own learning rate follows the same schedule; a later parameter joins the optimizer
    optim = JointAdam(1e-2, gamma=0.5)
    a = pyro.param("joint_adam_a", torch.ones(3))
    a.grad = torch.ones(3)
    optim([a])
    assert a.grad is None and torch.all(a < 1)
    optim.decay_lr()
    b = pyro.param("joint_adam_b", torch.ones(2))
    b.grad, a.grad = torch.ones(2), torch.ones(3)
    optim([a, b])
    assert [g["lr"] for g in optim.optimizer.param_groups] == [5e-3, 5e-3]
    assert torch.all(b < 1)


@pytest.mark.parametrize("weight", [1.0, 0.25])
def test_analytic_kl_loss_is_likelihood_plus_closed_form_kl(tiny_data, weight):
    """TraceMeanField_ELBO against a hand computation with torch.distributions' Gaussian KL."""
    import pyro
    from torch.distributions import kl_divergence

    import cvae_utils.train as train_module

    config = SMALL.replace(analytic_kl=True)
    train, _ = quadrant_splits(tiny_data)
    x, y = train.x[:8], train.y[:8]
    torch.manual_seed(0)
    cvae = build_cvae(BaselineNet(config.baseline), config)
    kl_weight = KLWeight(weight)
    guide, elbo = objective(cvae, config, kl_weight)
    assert type(elbo).__name__ == "TraceMeanField_ELBO"
    pyro.set_rng_seed(3)
    loss = elbo.differentiable_loss(kl_weight(cvae.model), guide, x, y)
    pyro.set_rng_seed(3)
    with torch.no_grad():
        q, p = cvae.posterior(x, y), cvae.prior(x)
        z = q.rsample()  # the same draw as the guide's
        expected = (masked_bce(cvae.generation_net(z, x), y).sum()
                    + weight * kl_divergence(q, p).sum())
    assert torch.allclose(loss.detach(), expected, rtol=1e-5)
    # the sampled-KL loss of the same draw differs (log q(z) - log p(z) is not the KL)
    _, sampled = objective(cvae, SMALL, kl_weight)
    pyro.set_rng_seed(3)
    assert not torch.allclose(sampled.differentiable_loss(kl_weight(cvae.model), guide, x, y),
                              expected, rtol=1e-5)


@pytest.mark.parametrize("every", [1, 3])
def test_weight_average_follows_its_recursion_and_swaps_in_and_out(every):
    w = torch.nn.Parameter(torch.zeros(4))
    frozen = torch.nn.Parameter(torch.zeros(4), requires_grad=False)  # not averaged
    average = WeightAverage([w, frozen], decay=0.9, every=every)
    assert average.params == [w]
    w = w.data  # the optimiser's in-place steps
    expected, updates = w.clone(), 0
    for t in range(1, 41):
        w += float(t % 3) - 1.0 + 0.1 * t  # a step of the optimiser
        average.update()
        if t % every == 0:  # the documented recursion, applied every `every` steps
            decay = min(0.9, t / (t + 9)) ** every
            expected = decay * expected + (1 - decay) * w
            updates += 1
    assert updates == 40 // every
    current = w.clone()
    with average.swapped_in():
        assert torch.allclose(w, expected, atol=1e-5)
        assert not torch.allclose(w, current)
    assert torch.equal(w, current)  # restored after the block
    with pytest.raises(ValueError, match="decay"):
        WeightAverage([w], decay=1.0)
    with pytest.raises(ValueError, match="every"):
        WeightAverage([w], decay=0.9, every=0)
    with pytest.raises(ValueError, match="weight_average"):
        CVAEConfig(weight_average=-0.1)


def test_training_keeps_the_averaged_weights_it_validated(tiny_data):
    from cvae_utils.train import cvae_loss

    train, val = quadrant_splits(tiny_data)
    baseline, _ = train_baseline(train, val, BASE, max_epochs=1, device="cpu")
    config = SMALL.replace(weight_average=0.9, patience=10)
    averaged, history = train_cvae(train, val, baseline, config, max_epochs=3, device="cpu")
    plain, plain_history = train_cvae(train, val, baseline, SMALL.replace(patience=10),
                                      max_epochs=3, device="cpu")
    assert history.train_loss == plain_history.train_loss  # averaging does not change training
    assert history.val_loss != plain_history.val_loss      # but what is validated and kept
    kept = cvae_loss(averaged, val, seed=config.seed).mean().item()
    assert kept == pytest.approx(history.best_val_loss, abs=1e-4)


def _resident_mib() -> float:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:")) / 1024


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                    reason="malloc_trim and /proc are glibc's and Linux's")
def test_free_memory_hands_freed_heap_pages_back():
    # 4,000 blocks of 64 KiB live in glibc's heap (below its mmap threshold); freeing every
    # other one leaves holes that glibc keeps, resident, until malloc_trim returns them
    blocks = [bytearray(64 * 1024) for _ in range(4000)]
    del blocks[::2]
    gc.collect()
    before = _resident_mib()
    cache_module.free_memory()
    assert before - _resident_mib() > 0.5 * 2000 * 64 / 1024, "freed pages stayed resident"
    assert len(blocks) == 2000


def test_training_frees_memory_once_the_model_is_trained(tiny_data, cache_path, monkeypatch):
    calls = []
    monkeypatch.setattr(cache_module, "free_memory", lambda: calls.append("free"))
    trained_cvae(1, SMALL, TINY, tiny_data, device="cpu")  # trains a baseline, then a CVAE
    assert calls == ["free", "free"]
    trained_cvae(1, SMALL, TINY, tiny_data, device="cpu")  # both from the cache
    assert calls == ["free", "free"]
