"""The CVAE's optimiser and the moving average of its weights (chapter "The CVAE in Pyro").

- `JointAdam` is the optimiser Pyro's SVI calls after every step: one fused `torch.optim.Adam`
  over all of SVI's parameters, whose learning rate `decay_lr` multiplies by a fixed factor
  once per epoch.
- `WeightAverage` keeps an exponential moving average of a list of parameters (Polyak
  averaging) and swaps it into the parameters for validation and for keeping the best weights.

Both do what the plain versions do (Pyro's ``pyro.optim.Adam``, an average updated after every
step) for less work per step; `DECISIONS.md` has the measurements.
"""
from __future__ import annotations

import contextlib
from typing import Iterable

import pyro
import torch

from .config import check_int, check_number

__all__ = ["JointAdam", "WeightAverage"]


class JointAdam(pyro.optim.PyroOptim):
    """Adam over all of SVI's parameters at once, with a learning rate that decays per epoch.

    Pyro's own ``pyro.optim.Adam`` keeps one torch optimizer per parameter tensor: 22 for the
    CVAE, each with its own Python step. This gives all tensors to one ``torch.optim.Adam``
    (``fused=True``: one kernel for all), whose update of every element is the same, so the
    numbers are the same. It drops the gradients after the step instead of letting SVI fill
    them with zeros: the next backward pass writes fresh ones. ``decay_lr()`` multiplies the
    learning rate by ``gamma``.
    """

    def __init__(self, lr: float, gamma: float = 1.0):
        super().__init__(torch.optim.Adam, {"lr": lr, "fused": True})
        self.gamma = gamma
        self.optimizer: torch.optim.Adam | None = None
        self._seen: set = set()

    def __call__(self, params, *args, **kwargs) -> None:
        new = [p for p in params if p not in self._seen]
        if new:  # the first step, or a parameter that appeared later: a group of its own
            new.sort(key=pyro.get_param_store().param_name)  # a fixed order, whatever the set's
            self._seen.update(new)
            if self.optimizer is None:
                self.optimizer = torch.optim.Adam(new, **self.pt_optim_args)
            else:
                lr = self.optimizer.param_groups[0]["lr"]  # decayed as far as the others
                self.optimizer.add_param_group({"params": new, "lr": lr})
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def decay_lr(self) -> None:
        """Multiply the learning rate by ``gamma`` (once per epoch in `train_cvae`)."""
        if self.optimizer is not None:
            for group in self.optimizer.param_groups:
                group["lr"] *= self.gamma

    def get_state(self) -> dict:
        return {} if self.optimizer is None else {"adam": self.optimizer.state_dict()}


class WeightAverage:
    """An exponential moving average of the trainable ``params``, updated every ``every`` steps.

    It starts from the parameters' values when it is made. After step t, when t is a multiple
    of ``every``, ``avg += (1 - d) * (param - avg)`` with ``d = min(decay, t / (t + 9)) **
    every``, so the average soon spans about ``1 / (1 - decay)`` steps. Updating it every step
    reads and writes every weight once more per step, as much memory traffic as a third of
    Adam's; every fourth step gives the same window for a quarter of that. With ``decay`` 0 it
    does nothing. Inside ``with average.swapped_in():`` the parameters hold the averages.
    """

    def __init__(self, params: Iterable[torch.Tensor], decay: float, every: int = 1):
        check_number("decay", decay, 0.0, 1.0, high_open=True, rule="in [0, 1)")
        check_int("every", every, 1)
        self.decay, self.every, self.steps = decay, every, 0
        self.params = [p for p in params if p.requires_grad] if decay else []
        self.averages = [p.detach().clone() for p in self.params]

    @torch.no_grad()
    def update(self) -> None:
        """Count one optimiser step; every ``every`` steps, move the average."""
        if not self.params:
            return
        self.steps += 1
        if self.steps % self.every == 0:
            weight = 1.0 - min(self.decay, self.steps / (self.steps + 9)) ** self.every
            for average, param in zip(self.averages, self.params):
                average.lerp_(param, weight)

    @contextlib.contextmanager
    def swapped_in(self):
        """Within the block the parameters hold their averages (no-op without averaging)."""
        if not self.params:
            yield
            return
        with torch.no_grad():
            current = [p.detach().clone() for p in self.params]
            for param, average in zip(self.params, self.averages):
                param.copy_(average)
        try:
            yield
        finally:
            with torch.no_grad():
                for param, value in zip(self.params, current):
                    param.copy_(value)
