"""The training precision is chosen from what the CPU can do: each kind of machine the book is
built on, simulated by the capability flags torch reports for it."""
from __future__ import annotations

import pytest
import torch

from cvae_utils import speed
from cvae_utils.config import BaselineConfig, CVAEConfig

# what torch.cpu.get_capabilities() reports (the flags that matter) on each kind of machine
MACHINES = {
    # Intel Xeon Sapphire Rapids: AMX tiles and AVX-512 BF16
    "intel-sapphire-rapids": ({"avx2": True, "avx512": True, "avx512_bf16": True,
                               "amx_bf16": True, "amx_tile": True}, "bf16"),
    # AMD EPYC Zen 4: AVX-512 with the BF16 dot products, no AMX
    "amd-zen4": ({"avx2": True, "avx512": True, "avx512_bf16": True, "amx_bf16": False,
                  "amx_tile": False}, "bf16"),
    # Intel Ice Lake / AMD Zen 3: AVX-512 or AVX2 without BF16: bfloat16 would be emulated
    "intel-ice-lake": ({"avx2": True, "avx512": True, "avx512_bf16": False, "amx_bf16": False},
                       "fp32"),
    "amd-zen3": ({"avx2": True, "avx512": False}, "fp32"),
    # an ARM laptop (torch reports other flags, none of ours)
    "arm": ({"neon": True, "sve": False}, "fp32"),
}


@pytest.fixture
def machine(monkeypatch):
    def simulate(name):
        flags, _ = MACHINES[name]
        monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: dict(flags))
    return simulate


@pytest.mark.parametrize("name", list(MACHINES))
def test_auto_precision_follows_the_machine(machine, name):
    machine(name)
    expected = MACHINES[name][1]
    assert speed.fast_bfloat16("cpu") is (expected == "bf16")
    assert speed.resolve_precision("auto", "cpu") == expected
    line = speed.explain_precision("auto", "cpu")
    assert line.startswith(f"{expected} (auto: ")
    if expected == "bf16":
        assert "avx512_bf16" in line
        assert ("amx_bf16" in line) is (name == "intel-sapphire-rapids")
    else:
        assert "emulated" in line


@pytest.mark.parametrize("name", list(MACHINES))
def test_an_explicit_precision_wins_on_every_machine(machine, name):
    machine(name)
    for precision in ("fp32", "bf16"):
        assert speed.resolve_precision(precision, "cpu") == precision
        assert speed.explain_precision(precision, "cpu") == f"{precision} (set in the config)"


def test_a_torch_without_the_query_trains_in_fp32(monkeypatch):
    def missing():
        raise AttributeError("get_capabilities")
    monkeypatch.setattr(torch.cpu, "get_capabilities", missing)
    assert speed.resolve_precision("auto", "cpu") == "fp32"
    assert speed.explain_precision("auto", "cpu").startswith("fp32 (auto: ")


@pytest.mark.parametrize("name", ["amd-zen4", "amd-zen3"])
def test_the_model_cache_keys_the_precision_the_machine_uses(machine, name):
    from cvae_utils.cache import model_key
    from cvae_utils.config import get_budget

    machine(name)
    key = model_key("cvae", CVAEConfig(), get_budget("smoke"), 1)
    expected = MACHINES[name][1]
    assert key["config"]["precision"] == key["config"]["baseline"]["precision"] == expected
    explicit = CVAEConfig(precision=expected, baseline=BaselineConfig(precision=expected))
    assert model_key("cvae", explicit, get_budget("smoke"), 1) == key


def test_an_unknown_precision_is_named():
    with pytest.raises(ValueError, match="'fp16'"):
        speed.resolve_precision("fp16", "cpu")


def test_cvae_precision_forces_every_auto(machine, monkeypatch):
    machine("intel-sapphire-rapids")
    monkeypatch.setenv("CVAE_PRECISION", "fp32")
    assert speed.resolve_precision("auto", "cpu") == "fp32"
    assert speed.explain_precision("auto", "cpu") == (
        "fp32 (auto, set by CVAE_PRECISION=fp32; this machine alone would choose bf16)")
    assert speed.resolve_precision("bf16", "cpu") == "bf16"  # a config's own choice still wins
    machine("amd-zen3")
    monkeypatch.setenv("CVAE_PRECISION", "bf16")
    assert speed.resolve_precision("auto", "cpu") == "bf16"
    monkeypatch.setenv("CVAE_PRECISION", "auto")
    assert speed.resolve_precision("auto", "cpu") == "fp32"


def test_a_forced_precision_gets_its_own_models_and_pages(machine, monkeypatch, tmp_path):
    from book_build import execution_cache_folder  # book/_ext (tests/conftest.py)
    from cvae_utils.cache import model_key
    from cvae_utils.config import get_budget

    machine("intel-sapphire-rapids")
    default = model_key("cvae", CVAEConfig(), get_budget("smoke"), 1)
    monkeypatch.setenv("CVAE_PRECISION", "fp32")
    forced = model_key("cvae", CVAEConfig(), get_budget("smoke"), 1)
    assert default["config"]["precision"] == "bf16" and forced["config"]["precision"] == "fp32"
    assert execution_cache_folder(tmp_path, "paper", "quick", speed.precision_override()) == (
        tmp_path / "budget-paper-variants-quick-fp32")
    assert execution_cache_folder(tmp_path, "paper", "quick") == (
        tmp_path / "budget-paper-variants-quick")


@pytest.mark.parametrize("value", ["fp16", "FP32", "float32", "1"])
def test_a_bad_cvae_precision_is_named_with_the_choices(monkeypatch, value):
    monkeypatch.setenv("CVAE_PRECISION", value)
    with pytest.raises(ValueError, match=r"CVAE_PRECISION=.*choose fp32, bf16 or auto"):
        speed.resolve_precision("auto", "cpu")
