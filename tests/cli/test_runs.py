"""train.py from the outside, on tiny data: a short run writes its run folder, checkpoints, metrics and the results
JSON, and `--fast-dev-run` goes through the labeled stream. Both start together, at module setup, as
`python train.py`."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from tests.helpers import REPO_ROOT, TINY, Launched, start, train_py


@pytest.fixture(scope="module")
def launched(tiny_mnist_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Launched]:
    """Starts both runs at once: they spend most of their time importing."""
    work = tmp_path_factory.mktemp("train_py_runs")
    on_tiny = ["--data-dir", str(tiny_mnist_dir), *TINY, "--output-dir", str(work / "runs")]
    run = Launched(work, {})
    run.processes = {
        "end_to_end": start(
            train_py(
                "--variant",
                "ae",
                *on_tiny,
                "--max-epochs",
                "1",
                "--logger",
                "csv",
                "--test",
                "--results-json",
                str(work / "r.json"),
            ),
            cwd=REPO_ROOT,
        ),
        "fast_dev_run": start(
            train_py(
                "--variant",
                "semi",
                "--labels",
                "100",
                *on_tiny,
                "--fast-dev-run",
                "--logger",
                "none",
                "--test",
                "--results-json",
                str(work / "fast.json"),
            ),
            cwd=REPO_ROOT,
        ),
    }
    yield run
    run.stop()


def test_end_to_end_on_tiny_data(launched: Launched) -> None:
    code, _, stderr = launched.finish("end_to_end")
    assert code == 0, stderr[-3000:]
    results = json.loads((launched.work / "r.json").read_text())
    run_dir = Path(results["run_dir"])
    assert run_dir.parent == launched.work / "runs"
    assert run_dir.name.startswith("ae-seed0-")  # the plain autoencoder uses no labels: none in the name
    best = Path(results["best_checkpoint"])
    assert best.parent == run_dir / "checkpoints" and best.is_file()
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert (run_dir / "metrics.csv").is_file()
    for metric in ("val/recon_loss", "test/recon_loss"):
        value = {**results["val"], **results["test"]}[metric]
        assert math.isfinite(value) and value > 0
    checkpoint = torch.load(best, map_location="cpu", weights_only=False)
    assert checkpoint["MNISTDataModule"] == results["split"]
    assert checkpoint["datamodule_hyper_parameters"]["val_size"] == 100


def test_fast_dev_run_with_the_labeled_stream(launched: Launched) -> None:
    code, _, stderr = launched.finish("fast_dev_run")
    assert code == 0, stderr[-3000:]
    results = json.loads((launched.work / "fast.json").read_text())
    assert Path(results["run_dir"]).name.startswith("semi-100labels-seed0-")
    assert results["split"]["num_labels"] == 100
    assert {"val/recon_loss", "val/acc"} <= set(results["val"])
    assert {"test/recon_loss", "test/acc"} <= set(results["test"])
