"""The networks: the baseline MLP, the CVAE's encoders and decoder, and its Pyro model and guide.

Chapter "The baseline" explains `BaselineNet` and `masked_bce`; chapter "The CVAE in Pyro" shows
`CVAE.model` and `CVAE.guide` straight from this file. Conventions: images are flattened to
(batch, 784); in x a missing pixel is -1, in y a pixel that is not an output is -1, so each tensor
carries its own mask. Networks return logits (unbounded scores) and the likelihoods are Bernoulli
with logits, which is the numerically stable form of sigmoid followed by binary cross-entropy.

These classes are the book's model and nothing else. What makes them run faster lives beside
them (`cvae_utils.speed`: bfloat16 products with float32 outputs; `cvae_utils.evaluate`: the
decoder's first layer shared across samples of z), and the variants of chapter "Variants of the
model" are subclasses in `cvae_utils.variant_models`.
"""
from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from torch import nn

from .config import BaselineConfig, CVAEConfig, check_int
from .data import IMAGE_SIDE, NUM_PIXELS

__all__ = ["BaselineNet", "Encoder", "Decoder", "CVAE", "masked_bce", "fill_missing", "device_of",
           "MODEL_FIELDS"]


def _flat(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(t.shape[0], NUM_PIXELS) if t.shape[-2:] == (IMAGE_SIDE, IMAGE_SIDE) else t


def device_of(module: nn.Module) -> torch.device:
    """The device of a module's first parameter (the CPU for a module without parameters)."""
    parameter = next(iter(module.parameters()), None) if isinstance(module, nn.Module) else None
    return parameter.device if parameter is not None else torch.device("cpu")


def fill_missing(x: torch.Tensor, guess: torch.Tensor) -> torch.Tensor:
    """x with its missing pixels (-1) replaced by ``guess``: one complete image per row."""
    return torch.where(x == -1, guess, x)


def masked_bce(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Bernoulli negative log-likelihood of the output pixels, summed per
    image, in nats.

    ``logits``: (..., batch, 784) scores of the predicted pixel
    probabilities, where leading dimensions (samples of z) broadcast
    against ``y``: (batch, 784) with the true output pixels and -1
    elsewhere. Pixels where y is -1 contribute nothing. Returns
    (..., batch). Grey values in (0, 1) are used as soft targets, as is
    usual for MNIST.
    """
    logits, y = _flat(logits), _flat(y)
    try:
        torch.broadcast_shapes(logits.shape, y.shape)
    except RuntimeError:
        raise ValueError(f"logits {tuple(logits.shape)} and y "
                         f"{tuple(y.shape)} must match (or broadcast): "
                         f"both end in (batch, 784)") from None
    is_output = y >= 0
    target = y.clamp(min=0)
    # -[t log s(l) + (1-t) log(1-s(l))]
    nll = F.softplus(logits) - target * logits
    return torch.where(is_output, nll, torch.zeros_like(nll)).sum(-1)


class BaselineNet(nn.Module):
    """The deterministic baseline: 784-500-500-784 MLP from x to the pixel
    probabilities of y.

    ``input_mask`` records the input pixels of the layout it was trained
    for, (784,) bool (set by training and by the cache; None for a model
    built by hand), so that functions given data can check that it fits
    (`cvae_utils.data.check_layout`).
    """

    input_mask: torch.Tensor | None = None

    def __init__(self, config: BaselineConfig | None = None):
        super().__init__()
        config = config or BaselineConfig()
        self.net = nn.Sequential(
            nn.Linear(NUM_PIXELS, config.hidden_1), nn.ReLU(),
            nn.Linear(config.hidden_1, config.hidden_2), nn.ReLU(),
            nn.Linear(config.hidden_2, NUM_PIXELS),
        )

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(_flat(x))                          # (batch, 784)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pixel probabilities (sigmoid of the logits), (batch, 784)."""
        return torch.sigmoid(self.logits(x))


class Encoder(nn.Module):
    """784-500-500 MLP to the loc and positive scale of a diagonal
    Gaussian over z.

    Used twice: as the prior network p(z|x) and as the recognition network
    q(z|x,y). Both read a complete 784-pixel image: x with its missing
    pixels filled in (by the baseline's guess for the prior, by the true y
    for the recognition network).
    """

    def __init__(self, config: CVAEConfig | None = None):
        super().__init__()
        config = config or CVAEConfig()
        self.body = nn.Sequential(
            nn.Linear(NUM_PIXELS, config.hidden_1), nn.ReLU(),
            nn.Linear(config.hidden_1, config.hidden_2), nn.ReLU(),
        )
        self.loc = nn.Linear(config.hidden_2, config.z_dim)
        # pre-activation of the scale
        self.log_scale = nn.Linear(config.hidden_2, config.z_dim)
        self.positive = torch.exp if config.scale == "exp" else F.softplus

    def forward(self, image: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = self.body(_flat(image))               # (batch, hidden_2)
        # (batch, z_dim) each
        return self.loc(hidden), self.positive(self.log_scale(hidden))


class Decoder(nn.Module):
    """The generation network p(y|x,z): x and z to the logits of the 784
    pixels of y."""

    def __init__(self, config: CVAEConfig | None = None):
        super().__init__()
        config = config or CVAEConfig()
        self.net = nn.Sequential(
            nn.Linear(config.z_dim + NUM_PIXELS, config.hidden_1),
            nn.ReLU(),
            nn.Linear(config.hidden_1, config.hidden_2), nn.ReLU(),
            nn.Linear(config.hidden_2, NUM_PIXELS),
        )

    def forward(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Logits (..., batch, 784) for z (..., batch, z_dim): one x
        serves every sample of z."""
        # (..., batch, 784)
        x = _flat(x).expand(*z.shape[:-1], NUM_PIXELS)
        return self.net(torch.cat([z, x], dim=-1))


# the fields of CVAEConfig that change the model's structure, with the book's values: another
# value is a variant, built by `cvae_utils.variant_models.build_cvae`
MODEL_FIELDS = {"decoder_sees_x": True, "prior_uses_baseline": True, "joint_baseline": False}


def _refuse_variant(model: nn.Module, config: CVAEConfig) -> None:
    changed = [f"{name}={getattr(config, name)}" for name, book in MODEL_FIELDS.items()
               if getattr(config, name) != book]
    if type(model) is CVAE and changed:
        raise ValueError(f"a config with {', '.join(changed)} describes a variant of the model: "
                         f"build it with cvae_utils.variant_models.build_cvae(baseline, config)")


class CVAE(nn.Module):
    """The conditional VAE of Sohn et al. (2015) built on a frozen, pre-trained baseline.

    Three networks: the prior p(z|x) reads x completed by the baseline's guess; the recognition
    network q(z|x,y) reads x completed by the true y; the generation network p(y|x,z) turns x and
    z into pixel logits. `model` and `guide` are the Pyro programs trained with SVI.
    """

    input_mask: torch.Tensor | None = None  # the layout it was trained for (see BaselineNet)
    decoder_class = Decoder                 # the generation network's class (a variant swaps it)

    def __init__(self, baseline: BaselineNet, config: CVAEConfig | None = None):
        super().__init__()
        self.config = config or CVAEConfig()
        _refuse_variant(self, self.config)
        self.baseline = baseline.requires_grad_(False).eval()          # frozen: trained before
        self.prior_net = Encoder(self.config)
        self.recognition_net = Encoder(self.config)
        self.generation_net = self.decoder_class(self.config)

    def baseline_guess(self, x: torch.Tensor) -> torch.Tensor:
        """The frozen baseline's prediction of the missing pixels, (batch, 784)."""
        with torch.no_grad():
            return self.baseline(_flat(x))

    def prior(self, x: torch.Tensor,
              y_hat: torch.Tensor | None = None) -> dist.Normal:
        """p(z|x) as a batch of diagonal Gaussians, read from x completed by
        the baseline's guess ``y_hat`` (computed here unless given)."""
        x = _flat(x)
        if y_hat is None:
            y_hat = self.baseline_guess(x)
        loc, scale = self.prior_net(fill_missing(x, y_hat))
        return dist.Normal(loc, scale).to_event(1)

    def posterior(self, x: torch.Tensor, y: torch.Tensor) -> dist.Normal:
        """q(z|x,y) as a batch of diagonal Gaussians."""
        loc, scale = self.recognition_net(fill_missing(_flat(x), _flat(y)))
        return dist.Normal(loc, scale).to_event(1)

    def likelihood(self, x: torch.Tensor, z: torch.Tensor) -> dist.Bernoulli:
        """p(y|x,z) over all 784 pixels; mask it with the output pixels before use."""
        # validate_args=False: grey pixel values in (0, 1) are soft targets, not Booleans
        return dist.Bernoulli(logits=self.generation_net(z, x), validate_args=False)

    def model(self, x: torch.Tensor, y: torch.Tensor | None = None,
              y_hat: torch.Tensor | None = None) -> torch.Tensor:
        """Generative story: z ~ p(z|x), y ~ p(y|x,z). Returns the pixel
        probabilities of y.

        ``x``, ``y``: (batch, 784) with -1 for pixels they do not hold. The
        baseline is frozen, so its guesses ``y_hat`` for the training images
        never change: training computes them once and passes them in
        (without them the prior computes them).
        """
        pyro.module("prior_net", self.prior_net)
        pyro.module("generation_net", self.generation_net)
        x = _flat(x)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", self.prior(x, y_hat))     # (batch, z_dim)
            p_y = self.likelihood(x, z)
            if y is not None:
                y = _flat(y)
                # only the output pixels (y >= 0) are observed; the rest
                # is masked out
                pyro.sample("y", p_y.mask(y >= 0).to_event(1),
                            obs=y.clamp(min=0))
            return p_y.probs                               # (batch, 784)

    def guide(self, x: torch.Tensor, y: torch.Tensor | None = None,
              y_hat: torch.Tensor | None = None) -> None:
        """Variational posterior q(z|x,y); without y, it falls back to the
        prior p(z|x)."""
        x = _flat(x)
        with pyro.plate("data", x.shape[0]):
            if y is None:
                pyro.module("prior_net", self.prior_net)
                pyro.sample("z", self.prior(x, y_hat))
            else:
                pyro.module("recognition_net", self.recognition_net)
                pyro.sample("z", self.posterior(x, y))

    @torch.no_grad()
    def sample(self, x: torch.Tensor, num_samples: int = 1) -> torch.Tensor:
        """Completions of y drawn from the prior: (num_samples, batch, 784) pixel probabilities."""
        num_samples = check_int("num_samples", num_samples, 1,
                                rule="an int >= 1 (completions per input)")
        x = _flat(x)
        z = self.prior(x).sample((num_samples,))                       # (S, batch, z_dim)
        return torch.sigmoid(self.generation_net(z, x))
