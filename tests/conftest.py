"""The fixtures every folder below shares: tiny MNIST files written by the tests, the real MNIST for the learning
checks, and the devices that device-dependent tests run on. What is no fixture is in helpers.py."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from tests.helpers import REPO_ROOT, make_fake_mnist


def share_the_cores_among_workers() -> None:
    """Under pytest-xdist (setup.cfg: `-n auto`) each worker gets its share of the cores, it and the train.py
    processes it starts: OpenMP threads of several processes on the same cores spin against each other and run
    several times slower than one thread each."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        threads = max(1, (os.cpu_count() or 1) // workers)
        torch.set_num_threads(threads)
        os.environ["OMP_NUM_THREADS"] = str(threads)


share_the_cores_among_workers()

#: the modules that take longest, in that order: the learning checks on the real MNIST, and those that start Python
#: interpreters (DDP ranks, runs killed and resumed, notebook kernels, train.py's refusals), which spend seconds
#: importing. pytest-xdist hands whole modules to its workers in collection order (setup.cfg:
#: `--no-loadscope-reorder`; by default it starts with the modules that hold the most tests, the quick generated
#: ones), so these start early, while the quick modules fill in around them.
LONGEST_FIRST = (
    "learning/test_learning.py",
    "distributed/test_ddp.py",
    "cli/test_resume.py",
    "scripts_and_notebooks/test_notebooks.py",
    "cli/test_errors.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    tests = Path(__file__).parent

    def position(item: pytest.Item) -> int:
        path = item.path.relative_to(tests).as_posix() if item.path.is_relative_to(tests) else None
        return LONGEST_FIRST.index(path) if path in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=position)  # stable: the other modules, and the tests within each, keep their order


CUDA = pytest.param(
    "cuda", marks=[pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")]
)


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
