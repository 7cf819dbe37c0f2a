"""How the arithmetic runs on this machine: the training precision and denormal flushing.

Nothing here changes the model or the maths of the book; it changes how fast the same
computation runs. Chapter "The CVAE in Pyro" explains both switches (`DECISIONS.md` has the
measurements):

- `resolve_precision` turns a config's ``precision`` ("auto", "fp32" or "bf16") into the one a
  run uses: "auto" means bfloat16 matrix products where the hardware multiplies them natively
  (`fast_bfloat16`), float32 elsewhere, unless the environment variable ``CVAE_PRECISION``
  (`PRECISION_ENV`: fp32, bf16 or auto) decides for every "auto" of a process, e.g. to build the
  whole book in float32 on a machine that would choose bfloat16. `autocast` is the context the
  training steps run in.
- `float32_outputs` makes the layers that end each network of the package return float32
  under bfloat16 autocast, so that densities and losses stay float32; `autocast` calls it.
- `decoder_hidden` computes the generation network's hidden layers for many samples of z with
  the x part of its first layer computed once per image (the evaluation's estimators).
- `flush_denormals` makes CPU arithmetic treat denormal floats as zero, on the calling thread
  and on every thread of torch's pool; the training functions call it when they start.
"""
from __future__ import annotations

import ctypes
import functools
import os

import torch
import torch.nn.functional as F
from torch import nn

from .data import NUM_PIXELS
from .networks import BaselineNet, Decoder, Encoder

from .settings import PRECISION_ENV, precision_override

__all__ = ["fast_bfloat16", "resolve_precision", "explain_precision", "precision_override",
           "autocast", "float32_outputs", "decoder_hidden", "flush_denormals", "BF16_CPU_FLAGS", "PRECISION_ENV"]


# capability flags of torch.cpu.get_capabilities() that mean native bfloat16 products: Intel's
# AMX tiles, and the AVX-512 BF16 dot-product instructions (AMD Zen 4 and later, Intel Cooper
# Lake and later); without either, bfloat16 products are emulated and slower than float32
BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")


def fast_bfloat16(device: torch.device | str | None = None) -> bool:
    """Whether ``device`` (default: the CPU, or the GPU when one is present) multiplies
    bfloat16 matrices natively: a CUDA GPU that supports bfloat16, or a CPU with one of
    `BF16_CPU_FLAGS`."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    if device.type != "cpu":
        return False
    try:
        capabilities = torch.cpu.get_capabilities()
    except Exception:  # an older torch without the query: assume no
        return False
    return any(bool(capabilities.get(flag, False)) for flag in BF16_CPU_FLAGS)


def resolve_precision(precision: str, device: torch.device | str | None = None) -> str:
    """The precision a run uses: "fp32" or "bf16"; "auto" becomes what ``CVAE_PRECISION`` says
    if it is set, else "bf16" where `fast_bfloat16` says the device multiplies it natively and
    "fp32" elsewhere."""
    if precision == "auto":
        override = precision_override()
        if override is not None:
            return override
        return "bf16" if fast_bfloat16(device) else "fp32"
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"precision must be 'auto', 'fp32' or 'bf16', got {precision!r}")
    return precision


def explain_precision(precision: str, device: torch.device | str | None = None) -> str:
    """One line on the precision a run uses and why, e.g. "bf16 (auto: this CPU has amx_bf16)"."""
    chosen = resolve_precision(precision, device)
    if precision != "auto":
        return f"{chosen} (set in the config)"
    override = precision_override()
    if override is not None:
        machine = "bf16" if fast_bfloat16(device) else "fp32"
        return (f"{chosen} (auto, set by {PRECISION_ENV}={override}; this machine alone would "
                f"choose {machine})")
    device = torch.device(device if device is not None
                          else "cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        return f"{chosen} (auto: GPU {'with' if chosen == 'bf16' else 'without'} bfloat16)"
    try:
        capabilities = torch.cpu.get_capabilities()
    except Exception:
        capabilities = {}
    found = [flag for flag in BF16_CPU_FLAGS if capabilities.get(flag)]
    if found:
        return f"{chosen} (auto: this CPU has {' and '.join(found)})"
    return (f"{chosen} (auto: this CPU has none of {', '.join(BF16_CPU_FLAGS)}, so bfloat16 "
            f"would be emulated)")


def _to_float32(module: nn.Module, inputs, output: torch.Tensor) -> torch.Tensor:
    return output.float()


def float32_outputs(model: nn.Module) -> nn.Module:
    """Make every network inside ``model`` return float32 even when its products run in
    bfloat16: a forward hook casts the output of each layer that ends a network (the last
    layer of `BaselineNet` and `Decoder`, the loc and scale layers of `Encoder`). Without
    autocast the outputs are float32 already and the hooks change nothing. Returns ``model``;
    a second call adds nothing."""
    for module in model.modules():
        if isinstance(module, (BaselineNet, Decoder)):
            ends = [module.net[-1]]
        elif isinstance(module, Encoder):
            ends = [module.loc, module.log_scale]
        else:
            continue
        for layer in ends:
            if not getattr(layer, "_float32_output", False):
                layer.register_forward_hook(_to_float32)
                layer._float32_output = True
    return model


def autocast(precision: str, device: torch.device, model: nn.Module | None = None):
    """bfloat16 autocast when ``precision`` resolves to "bf16", else a context that does
    nothing. Only matrix products change precision: the networks of ``model`` are made to
    return float32 (`float32_outputs`), so densities and losses stay float32."""
    bf16 = resolve_precision(precision, device) == "bf16"
    if bf16 and model is not None:
        float32_outputs(model)
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)


def decoder_hidden(decoder: nn.Module, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The generation network's last hidden layer, (..., n, hidden_2), computed fast.

    For samples of z, (S, n, z_dim), with one x each, (n, 784), the first layer's product
    W [z; x] + b = W_z z + (W_x x + b) computes the x part once per image and broadcasts it over
    the samples (a third of the decoder's work at S = 100): the same numbers as
    ``decoder.net[:-1]`` on ``[z; x]`` up to rounding. A decoder that reads z alone (the
    tutorial's) gets its layers as they are.
    """
    hidden, first = decoder.net[:-1], decoder.net[0]
    if first.in_features == z.shape[-1]:            # the tutorial's decoder: z alone
        return hidden(z)
    if z.dim() == x.dim():                           # one z per image: one product on [z, x]
        return hidden(torch.cat([z, x], dim=-1))
    w_z, w_x = first.weight.split([z.shape[-1], NUM_PIXELS], dim=1)
    return hidden[1:](F.linear(z, w_z) + F.linear(x, w_x, first.bias))


@functools.lru_cache(maxsize=1)
def _openmp_parallel():
    """libgomp's ``GOMP_parallel`` of the OpenMP runtime torch uses, or None if there is none."""
    try:
        with open("/proc/self/maps", encoding="utf-8") as maps:
            paths = sorted({line.split()[-1] for line in maps if "libgomp" in line})
    except OSError:  # not Linux
        return None
    for path in paths:
        try:
            parallel = ctypes.CDLL(path).GOMP_parallel
        except (OSError, AttributeError):
            continue
        parallel.restype = None
        parallel.argtypes = [ctypes.CFUNCTYPE(None, ctypes.c_void_p), ctypes.c_void_p,
                             ctypes.c_uint, ctypes.c_uint]
        return parallel
    return None


def flush_denormals() -> bool:
    """Treat denormal floats (below about 1e-38) as zero in CPU arithmetic; True if it worked.

    Adam keeps running averages of the gradients; for a weight whose gradient stays zero (a
    unit that never fires) the average decays into the denormal range after about 800 steps,
    and CPU arithmetic on denormals is many times slower: on the book's CVAE, 5.8 s per epoch
    instead of 3.5 from the fifth epoch on, with the same validation losses to the printed
    digits when they are flushed.

    The switch belongs to each thread. This sets it on the calling thread and then, through the
    OpenMP runtime torch computes with, on every thread of torch's pool, so that it holds
    however much torch has already computed. Where that runtime is not libgomp (torch's Linux
    builds use it), threads that already exist keep their mode and threads started later copy
    the caller's.
    """
    if not torch.set_flush_denormal(True):
        return False
    parallel = _openmp_parallel()
    if parallel is not None:
        body = ctypes.CFUNCTYPE(None, ctypes.c_void_p)(lambda _: torch.set_flush_denormal(True))
        parallel(body, None, torch.get_num_threads(), 0)
    return True

