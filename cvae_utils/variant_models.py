"""The variants of the CVAE as models (chapter "Variants of the model").

The book's model is `cvae_utils.networks.CVAE`. Each variant that changes the model is a
subclass here, with the one method it changes: `TutorialDecoderCVAE` (the generation network reads
z alone, as in the Pyro tutorial), `PriorWithoutBaselineCVAE` (the prior network reads x, not x
completed by the baseline's guess) and `JointBaselineCVAE` (the baseline is fine-tuned with the
CVAE). `build_cvae` builds the class a `CVAEConfig` asks for. The variants that change the
objective, the paper's GSNN and its hybrid, keep the model and change the guide and the loss:
`prior_guide` and `objective`.
"""
from __future__ import annotations

import copy

import pyro
import torch
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO

from .config import CVAEConfig
from .data import NUM_PIXELS
from .networks import CVAE, MODEL_FIELDS, BaselineNet, Decoder

__all__ = ["ZDecoder", "TutorialDecoderCVAE", "PriorWithoutBaselineCVAE", "JointBaselineCVAE",
           "build_cvae", "prior_guide", "objective"]


class ZDecoder(Decoder):
    """The Pyro tutorial's generation network: z alone to the logits of y (x is not read)."""

    def __init__(self, config: CVAEConfig | None = None):
        torch.nn.Module.__init__(self)
        config = config or CVAEConfig()
        self.net = torch.nn.Sequential(
            torch.nn.Linear(config.z_dim, config.hidden_1), torch.nn.ReLU(),
            torch.nn.Linear(config.hidden_1, config.hidden_2), torch.nn.ReLU(),
            torch.nn.Linear(config.hidden_2, NUM_PIXELS),
        )

    def forward(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self.net(z)                                             # (..., batch, 784)


class TutorialDecoderCVAE(CVAE):
    """The CVAE whose generation network reads z alone (``decoder_sees_x=False``)."""

    decoder_class = ZDecoder


class PriorWithoutBaselineCVAE(CVAE):
    """The CVAE whose prior network reads x with its gaps, not the baseline's guess
    (``prior_uses_baseline=False``)."""

    def prior(self, x: torch.Tensor, y_hat: torch.Tensor | None = None):
        loc, scale = self.prior_net(x.reshape(x.shape[0], NUM_PIXELS))
        return pyro.distributions.Normal(loc, scale).to_event(1)


class JointBaselineCVAE(CVAE):
    """The CVAE that fine-tunes its baseline with the rest (``joint_baseline=True``)."""

    def __init__(self, baseline: BaselineNet, config: CVAEConfig | None = None):
        super().__init__(baseline, config)
        self.baseline.requires_grad_(True)

    def baseline_guess(self, x: torch.Tensor) -> torch.Tensor:
        return self.baseline(x.reshape(x.shape[0], NUM_PIXELS))        # with gradients

    def prior(self, x: torch.Tensor, y_hat: torch.Tensor | None = None):
        return super().prior(x)  # the guesses of the baseline as it is now, not as it was

    def model(self, x, y=None, y_hat=None):
        pyro.module("baseline", self.baseline)
        return super().model(x, y, y_hat)


_CLASSES = {"decoder_sees_x": TutorialDecoderCVAE, "prior_uses_baseline": PriorWithoutBaselineCVAE,
            "joint_baseline": JointBaselineCVAE}  # the class of each change of MODEL_FIELDS


def build_cvae(baseline: BaselineNet, config: CVAEConfig | None = None) -> CVAE:
    """The CVAE that ``config`` describes: `CVAE` itself for the book's model, else the
    variant's class (several changes combine). A baseline that the variant fine-tunes is
    copied first, so that the caller's stays as it was."""
    config = config or CVAEConfig()
    classes = tuple(_CLASSES[name] for name, book in MODEL_FIELDS.items()
                    if getattr(config, name) != book)
    if config.joint_baseline:
        baseline = copy.deepcopy(baseline)
    if not classes:
        return CVAE(baseline, config)
    cls = classes[0] if len(classes) == 1 else type(
        "+".join(c.__name__ for c in classes), classes, {})
    return cls(baseline, config)


def prior_guide(cvae: CVAE):
    """The GSNN's guide: z from the prior network, whatever y is. With it
    the ELBO's KL term vanishes and SVI trains the prior and generation
    networks on the Monte Carlo likelihood of y under the prior, as they
    are used at test time."""

    def guide(x, y=None, y_hat=None):
        cvae.guide(x, None, y_hat)

    return guide


def objective(cvae: CVAE, config: CVAEConfig, kl_weight):
    """The guide and the loss of ``config.objective`` for SVI, the guides
    under ``kl_weight``.

    The CVAE's loss is the negative ELBO: with ``analytic_kl`` (the book)
    `TraceMeanField_ELBO` computes its KL term in closed form;
    `Trace_ELBO` estimates it from the sampled z, as the tutorial does.
    The GSNN is the ELBO with the prior network as guide; the hybrid
    objective is alpha * ELBO (recognition guide) + (1 - alpha) * ELBO
    (prior guide).
    """
    elbo = TraceMeanField_ELBO() if config.analytic_kl else Trace_ELBO()
    if config.objective == "cvae":
        return kl_weight(cvae.guide), elbo
    if config.objective == "gsnn":
        return kl_weight(prior_guide(cvae)), elbo
    alpha, guide_of_prior = (config.hybrid_alpha,
                             kl_weight(prior_guide(cvae)))

    def hybrid_loss(model, guide, *args, **kwargs):
        return (alpha * elbo.differentiable_loss(
                    model, guide, *args, **kwargs)
                + (1 - alpha) * elbo.differentiable_loss(
                    model, guide_of_prior, *args, **kwargs))

    return kl_weight(cvae.guide), hybrid_loss
