"""Randomness per process under DDP on 2 CPU processes: each rank draws its own input noise, dropout and prior
samples, and a run stopped and resumed continues every rank's own streams, exactly as the run in one piece."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch

from aae_lightning.base import rank_seed
from tests.helpers import REPO_ROOT, TINY_FLAGS


def train_on_two_processes(data_dir: Path, output_dir: Path, run_name: str, epochs: int, *extra: str) -> None:
    command = [
        sys.executable,
        "train.py",
        *TINY_FLAGS,
        "--variant",
        "semi",  # input noise on the encoder, prior samples for two discriminators
        "--dropout",
        "0.1",
        "--accelerator",  # overrides TINY_FLAGS' --gpus 0
        "cpu",
        "--devices",
        "2",
        "--strategy",
        "ddp",
        "--data-dir",
        str(data_dir),
        "--output-dir",
        str(output_dir),
        "--run-name",
        run_name,
        "--max-epochs",
        str(epochs),
        *extra,
    ]
    process = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert process.returncode == 0, process.stderr[-4000:]


def test_each_rank_has_its_own_streams_and_resuming_continues_them(tiny_mnist_dir: Path, tmp_path: Path) -> None:
    train_on_two_processes(tiny_mnist_dir, tmp_path, "whole", 2)
    train_on_two_processes(tiny_mnist_dir, tmp_path, "pieces", 1)
    train_on_two_processes(tiny_mnist_dir, tmp_path, "pieces", 2, "--ckpt-path", "last")
    whole, pieces = (
        torch.load(tmp_path / name / "checkpoints" / "last.ckpt", weights_only=False) for name in ("whole", "pieces")
    )
    assert whole["epoch"] == pieces["epoch"] == 1
    ranks = whole["aae_rng"]["ranks"]
    assert len(ranks) == 2
    for stream in ("torch", "prior_generator"):
        assert not torch.equal(ranks[0][stream], ranks[1][stream]), f"both ranks share the {stream} stream"
        for rank in (0, 1):
            assert torch.equal(ranks[rank][stream], pieces["aae_rng"]["ranks"][rank][stream]), (stream, rank)
    # the same weights in one piece and in two: every rank's noise, dropout and prior samples continued
    for name, tensor in whole["state_dict"].items():
        assert torch.equal(tensor, pieces["state_dict"][name]), name


def test_rank_seeds_differ_for_every_seed_and_rank() -> None:
    seeds = {rank_seed(seed, rank) for seed in range(4) for rank in range(1, 9)}
    assert len(seeds) == 4 * 8
    assert all(0 <= seed < 2**64 for seed in seeds)
