"""Networks, the masked BCE and the Pyro model and guide."""
from __future__ import annotations

import pyro
import pytest
import torch
import torch.nn.functional as F
from pyro import poutine
from pyro.infer import SVI, Trace_ELBO

from cvae_utils.variant_models import build_cvae
from cvae_utils import CVAE, BaselineNet, CVAEConfig, mask_quadrants, masked_bce
from cvae_utils.speed import decoder_hidden
from cvae_utils.speed import float32_outputs
from cvae_utils.variant_models import (JointBaselineCVAE, PriorWithoutBaselineCVAE,
                                       TutorialDecoderCVAE, build_cvae)

SMALL = CVAEConfig(hidden_1=32, hidden_2=16, z_dim=4)


def masked_batch(n=6, k=1, seed=0):
    images = torch.rand(n, 28, 28, generator=torch.Generator().manual_seed(seed))
    x, y, _, _ = mask_quadrants(images.reshape(n, 784), k)
    return x, y


@pytest.mark.parametrize("k", [1, 2, 3])
def test_masked_bce_matches_torch_bce_on_output_pixels(k):
    x, y = masked_batch(k=k)
    logits = torch.randn(6, 784, generator=torch.Generator().manual_seed(1)) * 3
    got = masked_bce(logits, y)
    assert got.shape == (6,)
    for i in range(6):
        out = y[i] >= 0
        expected = F.binary_cross_entropy(torch.sigmoid(logits[i, out]), y[i, out], reduction="sum")
        torch.testing.assert_close(got[i], expected, rtol=1e-5, atol=1e-4)


def test_masked_bce_ignores_non_output_pixels_and_checks_shapes():
    x, y = masked_batch(k=2)
    logits = torch.randn(6, 784)
    changed = logits.clone()
    changed[y < 0] = 1000.0  # wild predictions where there is nothing to predict
    torch.testing.assert_close(masked_bce(logits, y), masked_bce(changed, y))
    with pytest.raises(ValueError, match="must match"):
        masked_bce(torch.randn(6, 700), y)
    with pytest.raises(ValueError, match="must match"):
        masked_bce(torch.randn(5, 784), y)


def test_masked_bce_broadcasts_over_samples():
    _, y = masked_batch(k=1)
    logits = torch.randn(3, 6, 784)
    expected = torch.stack([masked_bce(logits[s], y) for s in range(3)])
    torch.testing.assert_close(masked_bce(logits, y), expected)


def test_baseline_shapes_and_range():
    net = BaselineNet(SMALL)
    x, _ = masked_batch()
    probs = net(x)
    assert probs.shape == (6, 784) and (probs > 0).all() and (probs < 1).all()
    assert net(x.reshape(6, 28, 28)).shape == (6, 784)  # square images are flattened
    sizes = [tuple(p.shape) for p in BaselineNet().parameters()]
    assert sizes == [(500, 784), (500,), (500, 500), (500,), (784, 500), (784,)]


@pytest.mark.parametrize("sees_x", [False, True])
def test_model_and_guide_trace_with_the_right_shapes(sees_x):
    config = SMALL.replace(decoder_sees_x=sees_x)
    cvae = build_cvae(BaselineNet(config), config)
    x, y = masked_batch(n=5, k=1)
    guide_trace = poutine.trace(cvae.guide).get_trace(x, y)
    model_trace = poutine.trace(poutine.replay(cvae.model, trace=guide_trace)).get_trace(x, y)
    model_trace.compute_log_prob()
    assert guide_trace.nodes["z"]["value"].shape == (5, 4)
    assert model_trace.nodes["z"]["log_prob"].shape == (5,)
    assert model_trace.nodes["y"]["log_prob"].shape == (5,)
    # the likelihood covers the output pixels alone: it equals minus the masked BCE
    z = guide_trace.nodes["z"]["value"]
    expected = -masked_bce(cvae.generation_net(z, x), y)
    torch.testing.assert_close(model_trace.nodes["y"]["log_prob"], expected)
    # without y, the model predicts every pixel and the guide falls back to the prior
    assert cvae.model(x).shape == (5, 784)
    prior_trace = poutine.trace(cvae.guide).get_trace(x)
    assert prior_trace.nodes["z"]["value"].shape == (5, 4)
    assert cvae.sample(x, num_samples=3).shape == (3, 5, 784)


def test_prior_sees_the_baseline_guess_and_recognition_sees_the_truth():
    cvae = build_cvae(BaselineNet(SMALL), SMALL)
    x, y = masked_batch(n=3)
    seen = {}

    def record(name):
        def hook(module, inputs, output):
            seen[name] = inputs[0]
        return hook

    cvae.prior_net.register_forward_hook(record("prior"))
    cvae.recognition_net.register_forward_hook(record("rec"))
    cvae.prior(x)
    cvae.posterior(x, y)
    guess = cvae.baseline(x)
    torch.testing.assert_close(seen["prior"], torch.where(x < 0, guess, x))
    torch.testing.assert_close(seen["rec"], torch.where(x < 0, y, x))


def test_baseline_stays_frozen_under_svi():
    cvae = build_cvae(BaselineNet(SMALL), SMALL)
    before = [p.clone() for p in cvae.baseline.parameters()]
    svi = SVI(cvae.model, cvae.guide, pyro.optim.Adam({"lr": 1e-2}), Trace_ELBO())
    x, y = masked_batch(n=8)
    for _ in range(3):
        svi.step(x, y)
    assert all(torch.equal(a, b) for a, b in zip(before, cvae.baseline.parameters()))
    names = set(pyro.get_param_store().keys())
    assert any(n.startswith("recognition_net") for n in names)
    assert not any("baseline" in n for n in names)


@pytest.mark.parametrize("scale", ["exp", "softplus"])
def test_a_few_svi_steps_lower_the_loss_on_a_fixed_batch(scale):
    pyro.set_rng_seed(0)
    config = SMALL.replace(scale=scale)
    cvae = build_cvae(BaselineNet(config), config)
    svi = SVI(cvae.model, cvae.guide, pyro.optim.Adam({"lr": 1e-2}), Trace_ELBO(num_particles=4))
    # a learnable batch: binary images drawn from two prototypes
    prototypes = (torch.rand(2, 784, generator=torch.Generator().manual_seed(5)) > 0.5).float()
    x, y, _, _ = mask_quadrants(prototypes[torch.arange(32) % 2], 1)
    first = sum(svi.evaluate_loss(x, y) for _ in range(10)) / 10
    for _ in range(60):
        svi.step(x, y)
    last = sum(svi.evaluate_loss(x, y) for _ in range(10)) / 10
    assert last < 0.9 * first


def test_config_rejects_nonsense():
    with pytest.raises(ValueError, match="z_dim"):
        CVAEConfig(z_dim=0)
    with pytest.raises(ValueError, match="scale"):
        CVAEConfig(scale="relu")
    with pytest.raises(ValueError, match="CVAEConfig.lr must be a finite number"):
        CVAEConfig(lr=-1.0)
    with pytest.raises(ValueError, match="precision must be one of 'auto', 'fp32', 'bf16'"):
        CVAEConfig(precision="fp16")
    with pytest.raises(ValueError, match="batch_size must be an int >= 1"):
        CVAEConfig(batch_size=0)
    with pytest.raises(ValueError, match="patience must be an int >= 1"):
        CVAEConfig(patience=True)
    assert CVAEConfig(batch_size=64).baseline.batch_size == 256  # the baseline's is its own


def test_float32_outputs_make_the_networks_return_float32_under_bfloat16_autocast():
    """Mixed precision runs the products in bfloat16 but hands float32 to the distributions
    (the hooks of `speed.float32_outputs`); without autocast the hooks change nothing."""
    cvae = build_cvae(BaselineNet(SMALL), SMALL)
    x, y, _, _ = mask_quadrants(torch.rand(4, 784), 1)
    z = torch.randn(4, SMALL.z_dim)
    with torch.no_grad():
        plain = (cvae.prior(x).base_dist.scale, cvae.generation_net(z, x))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert cvae.generation_net(z, x).dtype == torch.bfloat16  # no hooks yet
    float32_outputs(float32_outputs(cvae))  # a second call adds nothing
    assert len(cvae.generation_net.net[-1]._forward_hooks) == 1
    with torch.autocast("cpu", dtype=torch.bfloat16):
        hidden = cvae.prior_net.body(x)
        prior, posterior = cvae.prior(x), cvae.posterior(x, y)
        logits = cvae.generation_net(prior.sample(), x)
        guess = cvae.baseline_guess(x)
    assert hidden.dtype == torch.bfloat16  # autocast is really on
    for t in (prior.base_dist.loc, prior.base_dist.scale, posterior.base_dist.loc, logits, guess):
        assert t.dtype == torch.float32
    with torch.no_grad():  # float32 arithmetic: the hooks are the identity
        assert torch.equal(cvae.prior(x).base_dist.scale, plain[0])
        assert torch.equal(cvae.generation_net(z, x), plain[1])


@pytest.mark.parametrize("sees_x", [True, False])
def test_decoder_hidden_computes_the_decoders_hidden_layers_for_samples_of_z(sees_x):
    """The evaluation's fast path for the decoder: over samples of z the x part of the first
    layer is computed once per image (W_z z + (W_x x + b)); it must equal the layers applied to
    [z, x] (or to z for the tutorial's decoder), with and without samples."""
    config = SMALL.replace(decoder_sees_x=sees_x)
    decoder = build_cvae(BaselineNet(config), config).generation_net
    x, _ = masked_batch(n=5)
    z = torch.randn(3, 5, config.z_dim, generator=torch.Generator().manual_seed(1))

    def reference(z, x):  # the layers applied, one by one, to [z, x]
        out = torch.cat([z, x.expand(*z.shape[:-1], 784)], dim=-1) if sees_x else z
        for layer in decoder.net:
            out = layer(out)
        return out

    with torch.no_grad():
        torch.testing.assert_close(decoder(z, x), reference(z, x))            # (3, 5, 784)
        torch.testing.assert_close(decoder(z[0], x), reference(z[0], x))      # (5, 784)
        for zz in (z, z[0]):
            fast = decoder.net[-1](decoder_hidden(decoder, zz, x))
            torch.testing.assert_close(fast, reference(zz, x))
        assert decoder(z, x.reshape(5, 28, 28)).shape == (3, 5, 784)


def test_build_cvae_builds_each_variant_as_its_own_class():
    """The taught `CVAE` is the book's model; each change of a variant is a subclass, and
    changes combine."""
    baseline = BaselineNet(SMALL)
    assert type(build_cvae(baseline, SMALL)) is CVAE
    tutorial = build_cvae(baseline, SMALL.replace(decoder_sees_x=False))
    assert isinstance(tutorial, TutorialDecoderCVAE)
    assert tutorial.generation_net.net[0].in_features == SMALL.z_dim
    assert build_cvae(baseline, SMALL).generation_net.net[0].in_features == SMALL.z_dim + 784
    joint = build_cvae(baseline, SMALL.replace(joint_baseline=True, prior_uses_baseline=False))
    assert isinstance(joint, JointBaselineCVAE) and isinstance(joint, PriorWithoutBaselineCVAE)
    assert joint.baseline is not baseline  # fine-tuned: a copy, the caller's stays frozen
    assert all(p.requires_grad for p in joint.baseline.parameters())
    assert not any(p.requires_grad for p in baseline.parameters())
    x, _ = masked_batch(n=3)
    with torch.no_grad():  # the prior without baseline reads x itself
        loc, _ = joint.prior_net(x)
        torch.testing.assert_close(joint.prior(x).base_dist.loc, loc)


def test_frozen_guesses_give_the_loss_the_model_computes_itself():
    """The training loop's speed device: the frozen baseline's guesses, computed once before
    training and passed to the model, give the ELBO that the model computes on its own."""
    from pyro.infer import TraceMeanField_ELBO

    from cvae_utils.train import frozen_guesses

    cvae = build_cvae(BaselineNet(SMALL), SMALL)
    x, y = masked_batch(n=8)
    y_hat = frozen_guesses(cvae, x)
    torch.testing.assert_close(y_hat, cvae.baseline(x))
    losses = []
    for args in ((x, y), (x, y, y_hat)):
        pyro.set_rng_seed(3)
        losses.append(TraceMeanField_ELBO().loss(cvae.model, cvae.guide, *args))
    assert losses[0] == pytest.approx(losses[1], rel=1e-6)
    # a baseline that trains computes its own guesses, with gradients, and ignores these
    joint = build_cvae(BaselineNet(SMALL), SMALL.replace(joint_baseline=True))
    stale = torch.zeros_like(x)
    assert torch.equal(joint.prior(x, stale).base_dist.loc, joint.prior(x).base_dist.loc)
    assert joint.prior(x).base_dist.loc.requires_grad


def test_the_books_cvae_refuses_the_config_of_a_variant():
    with pytest.raises(ValueError, match="decoder_sees_x=False describes a variant.*build_cvae"):
        CVAE(BaselineNet(SMALL), SMALL.replace(decoder_sees_x=False))
