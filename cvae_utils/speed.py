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
- `flush_denormals` makes CPU arithmetic treat denormal floats as zero, on the calling thread
  and on every thread of torch's pool; the training functions call it when they start.
"""
from __future__ import annotations

import ctypes
import functools
import os

import torch

from .settings import PRECISION_ENV, precision_override

__all__ = ["fast_bfloat16", "resolve_precision", "explain_precision", "precision_override",
           "autocast", "flush_denormals", "BF16_CPU_FLAGS", "PRECISION_ENV"]


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


def autocast(precision: str, device: torch.device):
    """bfloat16 autocast when ``precision`` resolves to "bf16", else a context that does
    nothing. Only matrix products change precision; every network of the package returns
    float32, so densities and losses stay float32."""
    bf16 = resolve_precision(precision, device) == "bf16"
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)


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

