"""Shared fixtures: tiny MNIST files written by the tests, the real MNIST for the learning checks, and the devices
that device-dependent tests run on."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
IDX_TYPE_UBYTE = 0x08
CUDA = pytest.param(
    "cuda", marks=[pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")]
)


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write a uint8 array in the IDX format MNIST ships in (magic, dimensions, raw bytes)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = struct.pack(">HBB", 0, IDX_TYPE_UBYTE, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def make_fake_mnist(root: Path, train_per_class: int = 60, test_per_class: int = 10, seed: int = 0) -> Path:
    """A small MNIST look-alike in torchvision's layout under `root/MNIST/raw`: each digit is a bright bar at
    its own position plus noise, so models can learn something from it in a few steps."""
    rng = np.random.default_rng(seed)
    raw = root / "MNIST" / "raw"
    for prefix, per_class in (("train", train_per_class), ("t10k", test_per_class)):
        labels = np.repeat(np.arange(10), per_class)
        rng.shuffle(labels)
        images = rng.integers(0, 60, size=(len(labels), 28, 28))
        for index, digit in enumerate(labels):
            images[index, 2 + 2 * digit : 4 + 2 * digit, 4:24] = 255
        write_idx(raw / f"{prefix}-images-idx3-ubyte", images)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels)
    return root


@pytest.fixture(scope="session")
def tiny_mnist_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """600 training and 100 test images, 10 of each class per 100."""
    return make_fake_mnist(tmp_path_factory.mktemp("tiny_mnist"))


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    """The real MNIST (`$AAE_MNIST_DIR`, default ../shared/data). Missing: skipped locally, an error on CI."""
    path = Path(os.environ.get("AAE_MNIST_DIR", REPO_ROOT.parent / "shared" / "data"))
    if not (path / "MNIST" / "raw" / "train-images-idx3-ubyte").is_file():
        message = f"real MNIST not found under {path} (set AAE_MNIST_DIR)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


# module-scoped, not session-scoped: module fixtures can build on it, and pytest's grouping of the tests by device
# stays within each module instead of moving tests across modules
@pytest.fixture(scope="module", params=["cpu", CUDA])
def device(request: pytest.FixtureRequest) -> str:
    """The device a test whose behaviour could depend on it runs on: the CPU, and CUDA where there is one (skipped
    elsewhere). `pytest -m cuda` selects the CUDA cases: benchmarks/gpu_check.sh runs them."""
    return request.param


@pytest.fixture(autouse=True)
def wandb_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test may reach for the network: W&B runs are written to disk only."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
