"""ONNX export: onnxruntime reproduces PyTorch's pixel probabilities for fixed inputs and noise."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from cvae_utils.variant_models import build_cvae
from cvae_utils import book_config, input_mask, tutorial_config  # noqa: E402
from cvae_utils.classifier import DigitClassifier  # noqa: E402
from cvae_utils.export import (export_cvae, export_model, load_onnx_cvae,  # noqa: E402
                               onnx_completions, round_weights_float16, torch_completions)
from cvae_utils.networks import CVAE, BaselineNet  # noqa: E402

TOLERANCE = 1e-5


def _random_cvae(config, seed=0):
    torch.manual_seed(seed)
    cvae = build_cvae(BaselineNet(config.baseline), config)
    with torch.no_grad():  # weights larger than at initialisation: saturated, varied pixels
        for parameter in cvae.parameters():
            parameter.mul_(1.5)
    return cvae.eval()


def _inputs(k, n=4, num_samples=16, z_dim=200, seed=1):
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(n, 784, generator=g)
    x = torch.where(input_mask(k).reshape(-1), images, torch.tensor(-1.0))   # (n, 784)
    eps = torch.randn(num_samples, n, z_dim, generator=g)                    # (S, n, z_dim)
    return x, eps


@pytest.mark.parametrize("config_name, k", [("book", 1), ("tutorial", 3)])
def test_cvae_export_matches_pytorch(tmp_path, config_name, k):
    config = book_config() if config_name == "book" else tutorial_config()
    cvae = _random_cvae(config)
    manifest = export_cvae(cvae, tmp_path, num_quadrants=k)
    x, eps = _inputs(k, z_dim=config.z_dim)
    guess_ref, samples_ref = torch_completions(cvae, x, eps)
    guess, samples = onnx_completions(load_onnx_cvae(tmp_path), x, eps)
    assert samples.shape == (16, 4, 784) and guess.shape == (4, 784)
    assert np.abs(guess - guess_ref).max() < TOLERANCE
    assert np.abs(samples - samples_ref).max() < TOLERANCE
    # the noise matters: other noise gives other completions
    assert np.abs(samples[0] - samples[1]).max() > 1e-3
    # the manifest tells a browser how to wire the files
    on_disk = json.loads((tmp_path / "manifest.json").read_text())
    assert on_disk == manifest and manifest["z_dim"] == config.z_dim
    assert manifest["input_mask"] == input_mask(k).reshape(-1).int().tolist()
    for entry in manifest["files"].values():
        assert (tmp_path / entry["path"]).stat().st_size == entry["bytes"]


def test_float16_export_is_the_rounded_model(tmp_path):
    config = book_config()
    cvae = _random_cvae(config)
    export_cvae(cvae, tmp_path / "f32", num_quadrants=2)
    manifest = export_cvae(cvae, tmp_path / "f16", num_quadrants=2, float16=True)
    x, eps = _inputs(2, z_dim=config.z_dim)
    guess, samples = onnx_completions(load_onnx_cvae(tmp_path / "f16"), x, eps)
    guess_ref, samples_ref = torch_completions(round_weights_float16(cvae), x, eps)
    assert np.abs(guess - guess_ref).max() < TOLERANCE
    assert np.abs(samples - samples_ref).max() < TOLERANCE
    # the rounding is real (the float32 model differs) and the files are about half the size
    _, samples_f32 = torch_completions(cvae, x, eps)
    assert np.abs(samples - samples_f32).max() > TOLERANCE
    f32 = json.loads((tmp_path / "f32" / "manifest.json").read_text())
    for name, entry in manifest["files"].items():
        assert entry["bytes"] < 0.55 * f32["files"][name]["bytes"]
    assert manifest["weights"] == "float16"


def test_export_model_classifier_and_errors(tmp_path):
    import onnxruntime

    torch.manual_seed(0)
    classifier = DigitClassifier().eval()
    path = export_model(classifier, tmp_path / "classifier.onnx")
    images = torch.rand(5, 784)
    (logits,) = onnxruntime.InferenceSession(str(path)).run(None, {"image": images.numpy()})
    with torch.no_grad():
        assert np.abs(logits - classifier(images).numpy()).max() < TOLERANCE
    with pytest.raises(TypeError, match="export_cvae"):
        export_model(_random_cvae(book_config()), tmp_path / "cvae.onnx")
    with pytest.raises(FileNotFoundError, match="export_cvae"):
        load_onnx_cvae(tmp_path / "nothing")
