"""Shared fixtures: a private copy of MNIST, tiny synthetic data, the small configs and budget
the tests train with, Pyro validation on."""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pyro
import pytest
import torch

from cvae_utils.config import BaselineConfig, Budget, CVAEConfig, tutorial_config
from cvae_utils.data import MNIST_FILES, MNISTData, Split, data_root

# the book's build (book/_ext/: book_build, book_plan, book_terminal, book_kernel, book_browser)
# is not part of the package; its tests import it from there, as Sphinx does
BOOK_EXT = Path(__file__).resolve().parents[1] / "book" / "_ext"
if str(BOOK_EXT) not in sys.path:
    sys.path.insert(0, str(BOOK_EXT))

SHARED_RAW = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "MNIST" / "raw"


def _raw_source() -> Path | None:
    """Where the four official .gz files can be copied from, if anywhere."""
    for raw in (data_root() / "MNIST" / "raw", SHARED_RAW):
        if all((raw / name).exists() for name in MNIST_FILES):
            return raw
    return None


@pytest.fixture(scope="session")
def mnist_raw() -> Path:
    raw = _raw_source()
    if raw is None:
        pytest.skip("the four MNIST .gz files are in neither CVAE_DATA_DIR nor ../shared/data")
    return raw


@pytest.fixture(scope="session")
def mnist_root(mnist_raw, tmp_path_factory) -> Path:
    """A writable data root holding a copy of the four official files (never the shared one)."""
    root = tmp_path_factory.mktemp("mnist")
    (root / "MNIST" / "raw").mkdir(parents=True)
    for name in MNIST_FILES:
        shutil.copy(mnist_raw / name, root / "MNIST" / "raw" / name)
    return root


@pytest.fixture(scope="session")
def mnist(mnist_root):
    from cvae_utils.data import load_mnist

    return load_mnist(mnist_root, download=False)


def synthetic_data(n_train=96, n_val=48, n_test=32, seed=0) -> MNISTData:
    """Random 'digits' with MNIST's shapes and range, for fast tests that need no real data."""
    g = torch.Generator().manual_seed(seed)

    def split(n):
        images = (torch.rand(n, 28, 28, generator=g) > 0.7).float() * torch.rand(n, 28, 28, generator=g)
        return Split(images, torch.randint(0, 10, (n,), generator=g))

    return MNISTData(split(n_train), split(n_val), split(n_test))


@pytest.fixture
def tiny_data() -> MNISTData:
    return synthetic_data()


@pytest.fixture(scope="session")
def tiny_budget() -> Budget:
    """One epoch over all of `tiny_data` (96 training, 48 validation, 32 test images)."""
    return Budget("smoke", num_train=96, num_val=48, num_test=32, max_epochs=1)


@pytest.fixture(scope="session")
def small_config() -> CVAEConfig:
    """Networks of a few thousand weights, trained the tutorial's way (float32, no warm-up, no
    average) in minibatches of 32: for tests that train or cache models on `tiny_data`."""
    return tutorial_config().replace(
        hidden_1=16, hidden_2=8, z_dim=3, batch_size=32,
        baseline=BaselineConfig(hidden_1=16, hidden_2=8, batch_size=32, precision="fp32"))


@pytest.fixture(scope="session")
def toy_config() -> CVAEConfig:
    """The book's recipe at toy size (hidden 16, z 3): untrained networks, shapes, plumbing."""
    return CVAEConfig(hidden_1=16, hidden_2=16, z_dim=3)


@pytest.fixture(autouse=True)
def _pyro_validation():
    pyro.enable_validation(True)
    pyro.clear_param_store()
    yield
    pyro.clear_param_store()


@pytest.fixture(scope="module")
def one_thread():
    """Torch on one thread for a module (``pytestmark = pytest.mark.usefixtures("one_thread")``):
    threads only add overhead at these tiny sizes, and on a busy machine oversubscribed threads
    made a module several times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def cache_path(tmp_path, monkeypatch) -> Path:
    path = tmp_path / "cache"
    monkeypatch.setenv("CVAE_CACHE_DIR", str(path))
    return path
