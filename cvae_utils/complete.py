"""Complete any digit: your own image, the models of the book (chapter "Beyond the table").

`complete_digit` takes one 28 x 28 image with values in [0, 1] (a numpy array or a torch tensor,
square or flattened to 784 pixels) and says which pixels are known, either as a quadrant count
k (1: bottom-left, 2: the left half, 3: all but bottom-right, the layouts of the book) or as an
explicit boolean mask. It returns the input, the baseline's completion and ``num_samples`` CVAE
completions, each a whole (28, 28) image whose known pixels are exactly those of the input.

Explicit masks. The models were trained only on the three quadrant layouts, so a mask is mapped
to the layout whose input region matches it best: the k whose `input_mask` has the largest
intersection over union (Jaccard index) with the known pixels (ties go to the smaller k). The
models for that k then receive the known pixels of the image as input and -1 (the networks' mark
for "missing") at every unknown pixel, wherever it is; every unknown pixel is filled with the
model's prediction for it and every known pixel is kept. A mask equal to a layout gives exactly
the result of that k. Two caveats follow from the training: known pixels outside the layout's input
region, and -1 inside it, are inputs the networks never saw; and unknown pixels inside the layout's
input region are filled by output units that training never scored (the loss covers only the
layout's output pixels), so expect them to be poor. When the match is below `MASK_MATCH_WARNING`
(0.8) a `UserWarning` says so: the completion is then an extrapolation.

`cvae_utils.plot_results.plot_completion` shows a result; `draw_digit_strokes` draws a digit from
a few pen strokes with numpy, so that the book can complete a digit that is in no data set.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import torch
from torch import nn

from .config import check_int
from .data import IMAGE_SIDE, NUM_PIXELS, check_layout, check_num_quadrants, input_mask
from .diversity import assemble, sample_completions
from .networks import device_of

__all__ = ["Completion", "complete_digit", "best_layout", "draw_digit_strokes", "DIGIT_STROKES",
           "MASK_MATCH_WARNING"]

MASK_MATCH_WARNING = 0.8  # below this intersection over union with a layout, warn

# Pen strokes of a few digits: polylines of (column, row) points in pixel coordinates of a 28 x 28
# image (column to the right, row down), inside MNIST's central 20 x 20 box.
DIGIT_STROKES: dict[str, tuple[tuple[tuple[float, float], ...], ...]] = {
    "1": (((15.0, 5.0), (13.5, 22.5)),),
    "4": (((16.0, 5.0), (8.0, 16.0), (20.0, 16.0)), ((16.0, 8.5), (15.0, 22.5))),
    "7": (((8.0, 6.0), (20.0, 6.0), (12.5, 22.5)), ((11.5, 14.0), (17.5, 14.0))),
}


@dataclass(frozen=True, eq=False)  # holds arrays, so == is identity (compare fields)
class Completion:
    """The completions of one image; all images are float32 numpy arrays in [0, 1].

    ``image``: the image as given (28, 28); ``known_mask``: (28, 28) bool, True at known pixels;
    ``x``: the models' input (28, 28), the known pixels and -1 elsewhere; ``baseline``: the
    baseline's completion (28, 28); ``samples``: the CVAE's completions (S, 28, 28). In
    ``baseline`` and ``samples`` the known pixels equal ``image`` exactly and the unknown pixels
    are predicted probabilities. ``num_quadrants``: the layout whose models were used;
    ``mask_match``: intersection over union of the known pixels with that layout (1.0 for k).
    """

    image: np.ndarray
    known_mask: np.ndarray
    x: np.ndarray
    baseline: np.ndarray
    samples: np.ndarray
    num_quadrants: int
    mask_match: float
    seed: int


def _as_array(value, name: str) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    try:
        return np.asarray(value)
    except Exception as error:  # ragged lists and other things numpy cannot hold
        raise ValueError(f"{name} must be an array, got {type(value).__name__} ({error})") \
            from error


def _check_image(image) -> np.ndarray:
    """The image as a float32 (28, 28) array, or a ValueError that names the problem and the fix."""
    array = _as_array(image, "image")
    if array.dtype == bool:
        array = array.astype(np.float32)
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise ValueError(f"image must hold numbers, got dtype {array.dtype}; pass a float array "
                         f"with values in [0, 1]")
    if array.shape not in ((IMAGE_SIDE, IMAGE_SIDE), (NUM_PIXELS,)):
        raise ValueError(f"image must be one 28 x 28 image or 784 flattened pixels, got shape "
                         f"{array.shape}; for a batch call complete_digit once per image, and "
                         f"resize other sizes to 28 x 28 first")
    array = array.astype(np.float64).reshape(IMAGE_SIDE, IMAGE_SIDE)
    if not np.isfinite(array).all():
        raise ValueError(f"image has {int((~np.isfinite(array)).sum())} NaN or infinite pixels; "
                         f"replace them (e.g. np.nan_to_num(image)) before completing it")
    low, high = float(array.min()), float(array.max())
    if low < 0 or high > 1:
        hint = (" (it looks like 0-255 values: divide by 255)" if high > 1 and high <= 255
                else "")
        raise ValueError(f"image values must be in [0, 1] (0 = background, 1 = ink), got values "
                         f"from {low:g} to {high:g}{hint}")
    return array.astype(np.float32)


def _check_mask(known_mask) -> np.ndarray:
    """The known-pixel mask as a bool (28, 28) array, or a ValueError naming the problem."""
    mask = _as_array(known_mask, "known_mask")
    if mask.dtype != bool:
        raise ValueError(f"known_mask must be boolean (True = known pixel), got dtype "
                         f"{mask.dtype}; convert it, e.g. known_mask=mask > 0.5")
    if mask.shape not in ((IMAGE_SIDE, IMAGE_SIDE), (NUM_PIXELS,)):
        raise ValueError(f"known_mask must have shape (28, 28) like the image (or (784,)), got "
                         f"{mask.shape}")
    mask = mask.reshape(IMAGE_SIDE, IMAGE_SIDE)
    if not mask.any():
        raise ValueError("known_mask has no known pixel: there is nothing to complete from; set "
                         "True where the image's pixels are given")
    if mask.all():
        raise ValueError("known_mask has no unknown pixel: there is nothing to complete; set "
                         "False where the pixels should be filled in")
    return mask


def best_layout(known_mask) -> tuple[int, float]:
    """The quadrant count k whose input region best matches a mask, and the match.

    The match is the intersection over union of the known pixels with `input_mask(k)`, in [0, 1];
    ties go to the smaller k.
    """
    mask = _check_mask(known_mask)
    best_k, best_iou = 1, -1.0
    for k in (1, 2, 3):
        layout = input_mask(k).numpy()
        iou = float((mask & layout).sum() / (mask | layout).sum())
        if iou > best_iou:
            best_k, best_iou = k, iou
    return best_k, best_iou


def _pick(models, k: int, name: str):
    """The model for k from a module or a mapping {k: module}."""
    if isinstance(models, Mapping):
        if k not in models:
            raise ValueError(f"{name} has no model for {k} quadrant(s) (keys {sorted(models)}); "
                             f"pass {name}={{{k}: model, ...}}")
        return models[k]
    return models



@torch.no_grad()
def complete_digit(image, num_quadrants: int | None = None, known_mask=None, *,
                   cvae: nn.Module | Mapping[int, nn.Module],
                   baseline: nn.Module | Mapping[int, nn.Module] | None = None,
                   num_samples: int = 8, seed: int = 0) -> Completion:
    """Complete one image with the baseline and the CVAE.

    Give exactly one of ``num_quadrants`` (1, 2 or 3: the book's layouts) and ``known_mask`` (bool
    (28, 28), True at known pixels; see the module docstring for how it is mapped to a layout).
    ``cvae`` and ``baseline`` are the models for that layout, or mappings {k: model} from which
    the right one is taken (needed with a mask whose layout is not known beforehand);
    ``baseline`` defaults to the CVAE's own frozen baseline ``cvae.baseline``. Sampling is seeded
    by ``seed`` inside `torch.random.fork_rng`: the global random state is left alone.
    """
    array = _check_image(image)
    if (num_quadrants is None) == (known_mask is None):
        raise ValueError("give exactly one of num_quadrants (1, 2 or 3) and known_mask (a "
                         "boolean (28, 28) array), not "
                         + ("both" if known_mask is not None else "neither"))
    check_int("num_samples", num_samples, 1, rule="a positive int")
    check_int("seed", seed)
    if num_quadrants is not None:
        k, match = check_num_quadrants(num_quadrants), 1.0
        mask = input_mask(k).numpy()
    else:
        mask = _check_mask(known_mask)
        k, match = best_layout(mask)
        if match < MASK_MATCH_WARNING:
            warnings.warn(
                f"known_mask matches no trained layout well: the best is {k} quadrant(s) with "
                f"intersection over union {match:.2f} < {MASK_MATCH_WARNING}; the models never "
                f"saw inputs like this, so the completion is an extrapolation", stacklevel=2)
    if cvae is None:
        raise ValueError("complete_digit needs cvae=... (e.g. trained_cvae(k)[0], or a mapping "
                         "{k: cvae} for all layouts)")
    cvae_k = _pick(cvae, k, "cvae")
    baseline_k = _pick(baseline, k, "baseline") if baseline is not None else cvae_k.baseline
    for name, model in (("cvae", cvae_k), ("baseline", baseline_k)):
        check_layout(model, input_mask(k), f"this completion (models: {name}={{k: model}})")

    known = torch.from_numpy(mask.reshape(1, NUM_PIXELS))                # (1, 784)
    pixels = torch.from_numpy(array.reshape(1, NUM_PIXELS))              # (1, 784)
    x = torch.where(known, pixels, torch.tensor(-1.0))                   # (1, 784)
    ((_, samples),) = sample_completions(cvae_k, x, int(num_samples), int(seed))  # (S, 1, 784)
    guess = assemble(x, baseline_k(x.to(device_of(baseline_k))).cpu().float())    # (1, 784)

    def image(pixels: torch.Tensor) -> np.ndarray:  # (..., 784) -> (..., 28, 28) float32
        return pixels.reshape(*pixels.shape[:-1], IMAGE_SIDE, IMAGE_SIDE).numpy().astype(np.float32)

    return Completion(image=array, known_mask=mask.copy(), x=image(x)[0],
                      baseline=image(guess)[0], samples=image(samples[:, 0]), num_quadrants=k,
                      mask_match=match, seed=int(seed))


def draw_digit_strokes(strokes: str | Sequence[Sequence[tuple[float, float]]] = "7",
                       thickness: float = 2.5, size: int = IMAGE_SIDE) -> np.ndarray:
    """Draw pen strokes into a (size, size) float32 image in [0, 1] with anti-aliased edges.

    ``strokes``: a key of `DIGIT_STROKES` ("1", "4", "7") or polylines of (column, row) points
    in pixel coordinates. Each pixel's ink is 1 within ``thickness / 2`` of a stroke and falls
    linearly to 0 over one more pixel: a digit in MNIST's style that no data set contains.
    """
    if isinstance(strokes, str):
        if strokes not in DIGIT_STROKES:
            raise ValueError(f"no strokes for {strokes!r}; choose one of "
                             f"{', '.join(DIGIT_STROKES)} or pass polylines of (column, row)")
        strokes = DIGIT_STROKES[strokes]
    if not thickness > 0:
        raise ValueError(f"thickness must be positive, got {thickness!r}")
    segments = [(p, q) for line in strokes for p, q in zip(line[:-1], line[1:])]
    if not segments:
        raise ValueError("strokes must hold at least one polyline of two or more points")
    start = np.array([p for p, _ in segments], dtype=np.float64)        # (m, 2) (col, row)
    end = np.array([q for _, q in segments], dtype=np.float64)          # (m, 2)
    rows, cols = np.mgrid[0:size, 0:size]
    points = np.stack([cols, rows], axis=-1).reshape(-1, 1, 2)          # (P, 1, 2)
    direction = end - start                                             # (m, 2)
    length2 = np.maximum((direction ** 2).sum(-1), 1e-12)               # (m,)
    t = np.clip(((points - start) * direction).sum(-1) / length2, 0.0, 1.0)  # (P, m)
    nearest = start + t[..., None] * direction                          # (P, m, 2)
    distance = np.sqrt(((points - nearest) ** 2).sum(-1)).min(-1)       # (P,)
    ink = np.clip(thickness / 2 + 0.5 - distance, 0.0, 1.0)
    return ink.reshape(size, size).astype(np.float32)
