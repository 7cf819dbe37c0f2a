"""A damaged cached model is never served: damage inside the tensor data is caught by the digest
stored with the weights, weights that are not finite are refused, and the model is retrained."""
from __future__ import annotations

import struct
import zipfile

import pytest
import torch

from cvae_utils import trained_baseline, trained_cvae
from cvae_utils.cache import (CheckpointError, checkpoint_path, load_checkpoint, model_key,
                              save_checkpoint)
from cvae_utils.networks import BaselineNet
from cvae_utils.train import History


def tensor_data_span(path) -> tuple[int, int]:
    """Byte offset and length, in the file, of the largest tensor record of a torch checkpoint."""
    with zipfile.ZipFile(path) as archive:
        info = max((i for i in archive.infolist() if "/data/" in i.filename),
                   key=lambda i: i.file_size)
    with open(path, "rb") as handle:
        handle.seek(info.header_offset)
        header = handle.read(30)
    name_length, extra_length = struct.unpack("<HH", header[26:30])
    assert info.compress_type == zipfile.ZIP_STORED  # torch stores tensors uncompressed
    return info.header_offset + 30 + name_length + extra_length, info.file_size


@pytest.fixture
def saved(tiny_data, cache_path, small_config, tiny_budget):
    trained_baseline(1, small_config, tiny_budget, tiny_data, device="cpu")
    key = model_key("baseline", small_config, tiny_budget, 1)
    return key, checkpoint_path(key)


def test_one_flipped_byte_inside_the_weights_is_detected(saved, small_config):
    key, path = saved
    start, size = tensor_data_span(path)
    data = bytearray(path.read_bytes())
    data[start + size // 2] ^= 0x01  # the lowest bit of one byte of one weight
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="damaged: its weights do not match the digest"):
        load_checkpoint(path, key, BaselineNet(small_config.baseline))


def test_random_bytes_inside_the_weights_are_detected_and_the_model_retrained(
        saved, tiny_data, small_config, tiny_budget):
    key, path = saved
    start, size = tensor_data_span(path)
    data = bytearray(path.read_bytes())
    noise = torch.randint(0, 256, (1024,), generator=torch.Generator().manual_seed(0))
    data[start + 100:start + 1124] = bytes(noise.tolist())
    path.write_bytes(bytes(data))
    with pytest.warns(UserWarning, match="bad cached model.*damaged"):
        model, _ = trained_baseline(1, small_config, tiny_budget, tiny_data, device="cpu")
    assert all(torch.isfinite(p).all() for p in model.parameters())
    load_checkpoint(path, key, BaselineNet(small_config.baseline))  # rewritten: loads cleanly


def test_non_finite_weights_are_refused_even_with_a_matching_digest(saved, small_config):
    key, path = saved
    model = BaselineNet(small_config.baseline)
    state = model.state_dict()
    state["net.0.weight"][0, 0] = float("nan")
    save_checkpoint(path, key, state, History())  # a valid file of NaN weights
    with pytest.raises(CheckpointError, match="not finite: net.0.weight"):
        load_checkpoint(path, key, BaselineNet(small_config.baseline))


def test_a_file_without_a_digest_is_refused(saved, small_config):
    key, path = saved
    payload = torch.load(path, weights_only=True)
    del payload["digest"]
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match="fields missing"):
        load_checkpoint(path, key, BaselineNet(small_config.baseline))


def test_a_cvae_loaded_from_the_cache_knows_its_layout(tiny_data, cache_path, small_config,
                                                      tiny_budget):
    cvae, _ = trained_cvae(2, small_config, tiny_budget, tiny_data, device="cpu")
    loaded, _ = trained_cvae(2, small_config, tiny_budget, tiny_data, device="cpu")
    from cvae_utils import input_mask

    for model in (cvae, loaded, loaded.baseline):
        assert torch.equal(model.input_mask, input_mask(2).reshape(-1))
