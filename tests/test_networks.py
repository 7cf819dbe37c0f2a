"""Networks, the masked BCE and the Pyro model and guide."""
from __future__ import annotations

import pyro
import pytest
import torch
import torch.nn.functional as F
from pyro import poutine
from pyro.infer import SVI, Trace_ELBO

from cvae_utils import CVAE, BaselineNet, CVAEConfig, mask_quadrants, masked_bce

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
    cvae = CVAE(BaselineNet(config), config)
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
    cvae = CVAE(BaselineNet(SMALL), SMALL)
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
    cvae = CVAE(BaselineNet(SMALL), SMALL)
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
    cvae = CVAE(BaselineNet(config), config)
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


def test_networks_return_float32_under_bfloat16_autocast():
    """Mixed precision runs the products in bfloat16 but hands float32 to the distributions."""
    cvae = CVAE(BaselineNet(SMALL), SMALL.replace(decoder_sees_x=True))
    x, y, _, _ = mask_quadrants(torch.rand(4, 784), 1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        hidden = cvae.prior_net.body(x)
        prior, posterior = cvae.prior(x), cvae.posterior(x, y)
        logits = cvae.generation_net(prior.sample(), x)
        guess = cvae.baseline_guess(x)
    assert hidden.dtype == torch.bfloat16  # autocast is really on
    for t in (prior.base_dist.loc, prior.base_dist.scale, posterior.base_dist.loc, logits, guess):
        assert t.dtype == torch.float32


def test_decoder_reading_x_is_one_linear_map_of_z_and_x_with_or_without_samples():
    """The decoder's first layer on [z, x]: computed on the concatenation for one z per image,
    and as W_z z + (W_x x + b) over samples of z; both must be the layer applied to [z, x]."""
    config = SMALL.replace(decoder_sees_x=True)
    decoder = CVAE(BaselineNet(config), config).generation_net
    x, _ = masked_batch(n=5)
    z = torch.randn(3, 5, config.z_dim, generator=torch.Generator().manual_seed(1))

    def reference(z, x):  # the layers applied, one by one, to [z, x]
        out = torch.cat([z, x.expand(*z.shape[:-1], 784)], dim=-1)
        for layer in decoder.net:
            out = layer(out)
        return out

    with torch.no_grad():
        torch.testing.assert_close(decoder(z, x), reference(z, x))            # (3, 5, 784)
        torch.testing.assert_close(decoder(z[0], x), reference(z[0], x))      # (5, 784)
        torch.testing.assert_close(decoder(z, x)[1], decoder(z[1], x))
        assert decoder(z, x.reshape(5, 28, 28)).shape == (3, 5, 784)
    # gradients reach every weight of the first layer through both paths
    for zz in (z, z[0]):
        decoder.zero_grad()
        decoder(zz, x).sum().backward()
        grad = decoder.net[0].weight.grad
        assert grad[:, :config.z_dim].abs().sum() > 0 and grad[:, config.z_dim:].abs().sum() > 0
