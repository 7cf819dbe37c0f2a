"""Export trained models to ONNX, for the browser page and for readers who deploy their own
(chapter "Completing digits in the browser").

`export_model` writes any trained network of the package to one ONNX file: a `BaselineNet`
(x -> pixel probabilities), an `Encoder` (image -> loc, scale), a `Decoder` (z, x -> pixel
probabilities) or a `DigitClassifier` (image -> digit logits). `export_cvae` writes the three
networks a CVAE needs at test time, the frozen baseline, the prior network and the generation
network, with a ``manifest.json`` that says how to wire them:

    guess = baseline(x)                        # (n, 784), x has -1 at missing pixels
    loc, scale = prior(x, guess)               # (n, z_dim) each; fills x's gaps with the guess
    z = loc + scale * eps                      # eps ~ N(0, 1), drawn by the caller
    probs = generation(z, x)                   # (n, 784) pixel probabilities of y

Sampling stays outside the files, so a caller that passes the same ``eps`` gets the same
completions everywhere (`torch_completions` and `onnx_completions` compute exactly this wiring,
in PyTorch and with onnxruntime). The batch axis is dynamic.

With ``float16=True`` every weight matrix is stored in float16 and cast back to float32 inside
the graph (a Cast node per weight): the files are half the size, the arithmetic stays float32,
and the model computed is the original one with its weights rounded to float16, which
`round_weights_float16` builds in PyTorch as the reference. Files are written atomically.
"""
from __future__ import annotations

import copy
import json
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .classifier import DigitClassifier
from .data import NUM_PIXELS, input_mask
from .files import write_atomically
from .networks import CVAE, BaselineNet, Decoder, Encoder, fill_missing
from .variant_models import ZDecoder

__all__ = ["export_model", "export_cvae", "round_weights_float16", "torch_completions",
           "onnx_completions", "load_onnx_cvae", "MANIFEST_NAME", "CVAE_FILES", "MIN_CAST_SIZE"]

MANIFEST_NAME = "manifest.json"
CVAE_FILES = {"baseline": "baseline.onnx", "prior": "prior.onnx", "generation": "generation.onnx"}
_OPSET = 18  # supported by onnxruntime (Python and web) of the pinned versions
MIN_CAST_SIZE = 1024  # weights with fewer entries (biases) stay float32: no gain, one more node


# ---------------------------------------------------------------------- the exported programs
class _BaselineProbs(nn.Module):
    def __init__(self, baseline: BaselineNet):
        super().__init__()
        self.baseline = baseline

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.baseline(x)                                       # (n, 784)


class _PriorProgram(nn.Module):
    """p(z|x) as the CVAE computes it: x with its gaps filled by ``guess`` -> loc, scale."""

    def __init__(self, cvae: CVAE):
        super().__init__()
        self.prior_net = cvae.prior_net
        self.uses_baseline = cvae.config.prior_uses_baseline

    def forward(self, x: torch.Tensor, guess: torch.Tensor):
        image = fill_missing(x, guess) if self.uses_baseline else x + 0.0 * guess
        return self.prior_net(image)                                  # (n, z_dim) twice


class _GenerationProbs(nn.Module):
    def __init__(self, decoder: Decoder):
        super().__init__()
        self.decoder = decoder

    def forward(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.decoder(z, x))                      # (n, 784)


def _program(module: nn.Module):
    """(program, example inputs, input names, output names) for a network of the package."""
    x = torch.full((2, NUM_PIXELS), -1.0)
    if isinstance(module, BaselineNet):
        return _BaselineProbs(module), (x,), ["x"], ["probs"]
    if isinstance(module, Encoder):
        return module, (torch.zeros(2, NUM_PIXELS),), ["image"], ["loc", "scale"]
    if isinstance(module, Decoder):
        z_dim = module.net[0].in_features - (0 if isinstance(module, ZDecoder) else NUM_PIXELS)
        return _GenerationProbs(module), (torch.zeros(2, z_dim), x), ["z", "x"], ["probs"]
    if isinstance(module, DigitClassifier):
        return module, (torch.zeros(2, NUM_PIXELS),), ["image"], ["logits"]
    if isinstance(module, _PriorProgram):
        return module, (x, torch.zeros(2, NUM_PIXELS)), ["x", "guess"], ["loc", "scale"]
    raise TypeError(f"export_model exports a BaselineNet, Encoder, Decoder or DigitClassifier, "
                    f"got {type(module).__name__}; for a whole CVAE use export_cvae(cvae, "
                    f"directory)")


def _to_float16_weights(model):
    """Store large float32 initializers as float16, each followed by a Cast back to float32."""
    import onnx
    from onnx import helper, numpy_helper

    graph = model.graph
    casts, kept = [], []
    for tensor in graph.initializer:
        array = numpy_helper.to_array(tensor)
        if array.dtype != np.float32 or array.size < MIN_CAST_SIZE:
            kept.append(tensor)
            continue
        half_name = f"{tensor.name}__float16"
        kept.append(numpy_helper.from_array(array.astype(np.float16), half_name))
        casts.append(helper.make_node("Cast", [half_name], [tensor.name], to=onnx.TensorProto.FLOAT,
                                      name=f"{tensor.name}__cast"))
    del graph.initializer[:]
    graph.initializer.extend(kept)
    nodes = casts + list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.checker.check_model(model)
    return model


def _export_program(program: nn.Module, inputs, input_names, output_names, path, float16: bool):
    import onnx

    program = copy.deepcopy(program).float().eval().cpu()
    batch = torch.export.Dim("batch", min=1, max=4096)
    dynamic = tuple({0: batch} for _ in inputs)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the exporter's notes on its own internals
        exported = torch.onnx.export(program, tuple(inputs), input_names=input_names,
                                     output_names=output_names, dynamic_shapes=dynamic,
                                     opset_version=_OPSET, dynamo=True, external_data=False,
                                     verbose=False)
    model = exported.model_proto
    if float16:
        model = _to_float16_weights(model)
    return write_atomically(path, lambda tmp: onnx.save_model(model, str(tmp)))


def export_model(module: nn.Module, path: str | os.PathLike, *, float16: bool = False) -> Path:
    """Write one trained network to the ONNX file ``path`` (inputs and outputs float32, batch
    axis dynamic) and return the path.

    A `BaselineNet` reads ``x`` (n, 784; -1 at missing pixels) and returns ``probs``; an
    `Encoder` reads a complete ``image`` (n, 784) and returns ``loc`` and ``scale``; a `Decoder`
    reads ``z`` (n, z_dim) and ``x`` and returns ``probs``; a `DigitClassifier` reads ``image``
    and returns ``logits`` (n, 10). ``float16`` stores the weights in half precision (see the
    module docstring). The module is copied, never changed.
    """
    program, inputs, input_names, output_names = _program(module)
    return _export_program(program, inputs, input_names, output_names, path, float16)


def export_cvae(cvae: CVAE, directory: str | os.PathLike, *, num_quadrants: int | None = None,
                float16: bool = False) -> dict:
    """Write the baseline, prior and generation networks of ``cvae`` to ``directory``.

    Files: ``baseline.onnx``, ``prior.onnx`` (inputs ``x`` and ``guess``, the baseline's
    output), ``generation.onnx`` and ``manifest.json``, which records the file sizes, ``z_dim``,
    the weight precision and, when ``num_quadrants`` is given, the layout and its input mask
    (784 zeros and ones, row by row). Returns the manifest as a dict.
    """
    if not isinstance(cvae, CVAE):
        raise TypeError(f"export_cvae needs a CVAE, got {type(cvae).__name__}; use export_model "
                        f"for a single network")
    directory = Path(directory)
    export_model(cvae.baseline, directory / CVAE_FILES["baseline"], float16=float16)
    _export_program(*_program(_PriorProgram(cvae)), directory / CVAE_FILES["prior"], float16)
    export_model(cvae.generation_net, directory / CVAE_FILES["generation"], float16=float16)
    manifest = {
        "format": "cvae_utils ONNX export, version 1",
        "z_dim": int(cvae.config.z_dim),
        "weights": "float16" if float16 else "float32",
        "files": {name: {"path": file, "bytes": (directory / file).stat().st_size}
                  for name, file in CVAE_FILES.items()},
        "wiring": "guess = baseline(x); loc, scale = prior(x, guess); z = loc + scale * eps; "
                  "probs = generation(z, x)",
    }
    if num_quadrants is not None:
        manifest["num_quadrants"] = int(num_quadrants)
        manifest["input_mask"] = input_mask(num_quadrants).reshape(-1).int().tolist()
    text = json.dumps(manifest, indent=1)
    write_atomically(directory / MANIFEST_NAME, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    return manifest


# ------------------------------------------------------------------- references for the tests
def round_weights_float16(module: nn.Module) -> nn.Module:
    """A copy of ``module`` whose large weights are rounded to float16 (and kept as float32):
    the model that an export with ``float16=True`` computes."""
    module = copy.deepcopy(module).float()
    with torch.no_grad():
        for parameter in module.parameters():
            if parameter.numel() >= MIN_CAST_SIZE:
                parameter.copy_(parameter.half().float())
    return module


@torch.no_grad()
def torch_completions(cvae: CVAE, x, eps):
    """PyTorch's baseline guess (n, 784) and completions (S, n, 784) for
    noise ``eps``.

    ``x``: (n, 784) with -1 at missing pixels; ``eps``: (S, n, z_dim)
    standard normal noise, turned into z = loc + scale * eps of the prior
    p(z|x), as `CVAE.sample` does.
    """
    cvae = cvae.float().eval()
    x = torch.as_tensor(np.asarray(x, dtype=np.float32))
    eps = torch.as_tensor(np.asarray(eps, dtype=np.float32))
    guess = cvae.baseline(x)                              # (n, 784)
    prior = cvae.prior(x, guess).base_dist
    z = prior.loc + prior.scale * eps                     # (S, n, z_dim)
    samples = torch.stack([torch.sigmoid(cvae.generation_net(z_s, x))
                           for z_s in z])
    return guess.numpy(), samples.numpy()


def load_onnx_cvae(directory: str | os.PathLike) -> dict:
    """onnxruntime sessions for the files of `export_cvae`, with the manifest under "manifest"."""
    import onnxruntime

    directory = Path(directory)
    manifest_path = directory / MANIFEST_NAME
    if not manifest_path.exists():
        raise FileNotFoundError(f"{manifest_path} is missing: export the model first with "
                                f"cvae_utils.export.export_cvae(cvae, {str(directory)!r})")
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    sessions = {name: onnxruntime.InferenceSession(str(directory / entry["path"]), options,
                                                   providers=["CPUExecutionProvider"])
                for name, entry in manifest["files"].items()}
    return {"manifest": manifest, **sessions}


def onnx_completions(sessions: dict, x, eps):
    """`torch_completions` computed with onnxruntime from the sessions of `load_onnx_cvae`."""
    x = np.asarray(x, dtype=np.float32)
    eps = np.asarray(eps, dtype=np.float32)
    (guess,) = sessions["baseline"].run(None, {"x": x})
    loc, scale = sessions["prior"].run(None, {"x": x, "guess": guess})
    samples = [sessions["generation"].run(None, {"z": (loc + scale * e).astype(np.float32),
                                                 "x": x})[0] for e in eps]
    return guess, np.stack(samples)
