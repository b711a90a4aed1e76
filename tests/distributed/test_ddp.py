"""DDP on 2 CPU processes (gloo). Lightning starts the extra ranks by re-running the launching script, so every
multi-process run here is a subprocess running a script (never pytest itself)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from aae_lightning import VARIANTS
from datamodules.mnist import _EpochBatches
from tests.helpers import REPO_ROOT, TINY_FLAGS, json_lines

#: the programs the DDP runs start (Lightning re-runs the launching script for rank 1)
SCRIPTS = REPO_ROOT / "tests" / "scripts"


def run(args: list[str], expect_code: int = 0, timeout: float = 600) -> subprocess.CompletedProcess:
    process = subprocess.run([sys.executable, *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout)
    assert process.returncode == expect_code, process.stderr[-4000:]
    return process


def test_every_variant_trains_under_ddp_with_replicas_in_sync(tiny_mnist_dir: Path) -> None:
    names = sorted(VARIANTS)
    results = json_lines(run([str(SCRIPTS / "ddp_variants.py"), "--data-dir", str(tiny_mnist_dir), *names]).stdout)
    assert [result["variant"] for result in results] == names
    for result in results:
        assert result["world_size"] == 2
        # ranks saw different halves of each batch: identical replicas prove the gradients were averaged
        assert result["replicas_identical"], result
        assert result["parameters_moved"], result
        assert result["same_split_fingerprint"], result
        if result["prior_samples_differ"] is not None:
            assert result["prior_samples_differ"], result
        assert result["val_metrics"], result


def test_a_nan_on_one_rank_stops_every_rank_with_the_same_error(tiny_mnist_dir: Path) -> None:
    """Only rank 1 diverges. Were it to stop alone, rank 0 would wait in the next gradient all-reduce for a peer
    that is gone (with NCCL, until the collective timeout)."""
    process = run(
        [str(SCRIPTS / "ddp_variants.py"), "--data-dir", str(tiny_mnist_dir), "--poison-rank", "1", "aae"], timeout=180
    )
    results = sorted(json_lines(process.stdout), key=lambda result: result["rank"])
    assert [result["rank"] for result in results] == [0, 1], process.stdout
    # the flag travels with the gradients: every rank knows, and says the same
    for result in results:
        assert result["error"].startswith("reconstruction loss is not finite at epoch 0, batch 1;"), results


def test_two_processes_train_like_one_with_the_same_global_batch(tiny_mnist_dir: Path, tmp_path: Path) -> None:
    """Batch sizes are global and each rank takes its slice of the same global batch, so DDP on 2 processes
    follows the single-process run (the plain autoencoder has no per-rank randomness)."""
    for devices in (1, 2):
        out = tmp_path / str(devices)
        out.mkdir()
        run(
            [
                str(SCRIPTS / "ddp_variants.py"),
                "--data-dir",
                str(tiny_mnist_dir),
                "--devices",
                str(devices),
                "--batches",
                "4",
                "--save-params",
                str(out),
                "ae",
            ]
        )
    one, two = (torch.load(tmp_path / str(devices) / "ae.pt") for devices in (1, 2))
    assert torch.allclose(one, two, atol=1e-5), (one - two).abs().max()


def test_validation_metrics_identical_on_one_and_two_processes(tiny_mnist_dir: Path, tmp_path: Path) -> None:
    """An odd validation size (99) leaves the ranks unequal shares: nothing may be padded or counted twice.
    Also: only rank 0 writes the checkpoints, the results and the progress lines."""
    results_file = tmp_path / "results.json"
    process = run(
        [
            "train.py",
            "--variant",
            "semi",
            "--data-dir",
            str(tiny_mnist_dir),
            "--val-size",
            "99",
            "--labels",
            "100",
            "--batch-size",
            "50",
            "--max-epochs",
            "2",
            "--accelerator",
            "cpu",
            "--devices",
            "2",
            "--logger",
            "none",
            "--image-every-n-epochs",
            "0",
            "--hidden-sizes",
            "64",
            "64",
            "--disc-hidden-sizes",
            "32",
            "--output-dir",
            str(tmp_path / "runs"),
            "--run-name",
            "ddp",
            "--results-json",
            str(results_file),
        ]
    )
    assert process.stdout.count('"best_checkpoint"') == 1  # the results are printed (and written) by rank 0 only
    assert [line.split(" | ")[0] for line in process.stdout.splitlines() if line.startswith("epoch ")] == [
        "epoch 1/2",
        "epoch 2/2",
    ]
    results = json.loads(results_file.read_text())
    checkpoints = sorted(path.name for path in (tmp_path / "runs" / "ddp" / "checkpoints").iterdir())
    assert len(checkpoints) == 2 and "last.ckpt" in checkpoints, checkpoints
    metrics = {}
    for devices in (1, 2):
        # batch 20 leaves a short last batch on each rank (49 and 50 images) as well
        output = run(
            [
                str(SCRIPTS / "validate_checkpoint.py"),
                "--ckpt",
                results["best_checkpoint"],
                "--devices",
                str(devices),
                "--batch-size",
                "20",
            ]
        ).stdout
        metrics[devices] = json_lines(output)[0]
    assert metrics[1]["val/acc"] == metrics[2]["val/acc"] == pytest.approx(results["val"]["val/acc"], abs=0)
    assert metrics[1]["val/recon_loss"] == pytest.approx(metrics[2]["val/recon_loss"], rel=1e-6)


def test_train_py_leaves_the_process_group_before_it_returns(tiny_mnist_dir: Path, tmp_path: Path) -> None:
    """Left to interpreter shutdown, the gloo group's threads can abort a finished run with exit code -6
    ("terminate called without an active exception"): on some runs only, so the check is on its cause."""
    process = run(
        [
            str(SCRIPTS / "train_then_report_process_group.py"),
            "--variant",
            "aae",
            "--data-dir",
            str(tiny_mnist_dir),
            *TINY_FLAGS,
            "--accelerator",
            "cpu",
            "--devices",
            "2",
            "--output-dir",
            str(tmp_path),
        ]
    )
    # train.py's results, printed by rank 0, are indented JSON, whose lines do not start with this
    reports = sorted(json_lines(process.stdout, start='{"rank"'), key=lambda report: report["rank"])
    assert reports == [{"rank": rank, "exit_code": 0, "holds_process_group": False} for rank in (0, 1)], process.stdout


def test_batch_size_that_does_not_split_over_devices_is_refused_once(tiny_mnist_dir: Path) -> None:
    process = run(
        [
            "train.py",
            "--variant",
            "ae",
            "--data-dir",
            str(tiny_mnist_dir),
            "--accelerator",
            "cpu",
            "--devices",
            "2",
            "--batch-size",
            "51",
            "--logger",
            "none",
        ],
        expect_code=2,
    )
    lines = process.stderr.strip().splitlines()
    assert len(lines) == 1 and "--batch-size 51" in lines[0] and "Traceback" not in process.stderr


def test_labeled_set_on_eight_ranks_is_used_whole_and_not_repeated_across_ranks() -> None:
    """100 labels on 8 devices: each step the ranks take disjoint slices of one global labeled batch, and over
    a few steps every labeled image comes round."""
    images = torch.arange(1000, dtype=torch.float32).unsqueeze(1)
    labels = torch.zeros(1000, dtype=torch.long)
    labeled = torch.arange(0, 1000, 10)  # 100 labeled images
    streams = {"unlabeled": torch.arange(1000), "labeled": labeled}
    sizes = {"unlabeled": 96, "labeled": 48}
    ranks = [
        list(_EpochBatches(images, labels, streams, sizes, seed=3, epoch=lambda: 0, rank=rank, world_size=8))
        for rank in range(8)
    ]
    seen = set()
    for step in range(len(ranks[0])):
        per_rank = [set(ranks[rank][step]["labeled_x"].squeeze(1).long().tolist()) for rank in range(8)]
        assert all(len(batch) == 6 for batch in per_rank)
        assert len(set.union(*per_rank)) == 48  # no two ranks drew the same labeled image this step
        seen |= set.union(*per_rank)
    assert seen == set(labeled.tolist())
