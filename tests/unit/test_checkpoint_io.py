"""Checkpoint files without training (aae_lightning/checkpoint_io.py): a write that fails or is killed halfway leaves
the previous checkpoint intact, which resuming depends on; and what a checkpoint older than a hyperparameter, or
with other milestones, may resume with."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from aae_lightning import get_variant
from aae_lightning.checkpoint_io import ADDED_LATER, AtomicCheckpointIO, check_resumable, temporary_path
from aae_lightning.errors import UserError
from tests.helpers import REPO_ROOT, small_model


# ----- faults: checkpoint writes that fail or are killed ---------------------------------------------------------
class FailsToPickle:
    """Fails the checkpoint write from inside `torch.save`, recording what the folder held at that moment."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.seen = folder, []

    def __reduce__(self):
        self.seen.extend(sorted(path.name for path in self.folder.iterdir()))
        raise RuntimeError("this object cannot be pickled")


def test_a_failed_checkpoint_write_leaves_the_previous_file_and_no_temporary(tmp_path: Path) -> None:
    io, path = AtomicCheckpointIO(), tmp_path / "last.ckpt"
    io.save_checkpoint({"epoch": 0, "weights": torch.arange(10.0)}, path)
    before = path.read_bytes()
    failing = FailsToPickle(tmp_path)
    with pytest.raises(RuntimeError, match="cannot be pickled"):
        io.save_checkpoint({"epoch": 1, "weights": torch.zeros(1000), "bad": failing}, path)
    assert failing.seen == sorted([temporary_path(path).name, "last.ckpt"])  # the write was under way
    assert path.read_bytes() == before
    assert io.load_checkpoint(path)["epoch"] == 0
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


STALLED_WRITE = """
import sys, time
from pathlib import Path
from aae_lightning.checkpoint_io import AtomicCheckpointIO

class Stall:
    def __reduce__(self):
        Path(sys.argv[2]).touch()
        time.sleep(600)

AtomicCheckpointIO().save_checkpoint({"epoch": 1, "stall": Stall()}, sys.argv[1])
"""


def test_a_write_killed_midway_leaves_the_previous_checkpoint(tmp_path: Path) -> None:
    io, path, marker = AtomicCheckpointIO(), tmp_path / "last.ckpt", tmp_path / "writing"
    io.save_checkpoint({"epoch": 0, "weights": torch.arange(10.0)}, path)
    writer = subprocess.Popen(
        [sys.executable, "-c", STALLED_WRITE, str(path), str(marker)], cwd=REPO_ROOT, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 300
        while not marker.exists() and writer.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert marker.exists(), writer.stderr.read() if writer.poll() is not None else "the write never started"
        os.kill(writer.pid, signal.SIGKILL)
    finally:
        writer.kill()
        writer.communicate()
    leftover = temporary_path(path, writer.pid)
    assert leftover.is_file()  # killed mid-write: nothing could clean up
    assert io.load_checkpoint(path)["epoch"] == 0
    io.save_checkpoint({"epoch": 2}, path)  # the next write of the same checkpoint sweeps the leftover away
    assert [p.name for p in tmp_path.iterdir() if p != marker] == ["last.ckpt"]
    assert io.load_checkpoint(path)["epoch"] == 2


def test_every_hyperparameter_added_since_the_first_checkpoints_has_the_value_they_were_trained_with() -> None:
    assert ADDED_LATER == {
        "init_std": 0.0,
        "disc_input_noise": 0.0,
        "labeled_reconstruction": False,
        "class_balance": 0.0,
        "input_dropout": 0.0,
        "encoder_batchnorm": False,
        "head_gradient": "reconstruction",
        "posterior": "deterministic",
        "hidden_dropout": 0.0,
        "head_batchnorm": True,
    }


def test_a_checkpoint_older_than_a_hyperparameter_resumes_with_the_value_it_was_trained_with() -> None:
    hparams = dataclasses.asdict(get_variant("semi").Hparams(init_std=0.0))
    older = {name: value for name, value in hparams.items() if name not in ADDED_LATER}
    checkpoint = {"aae_variant": "semi", "hyper_parameters": older, "datamodule_hyper_parameters": {}}
    check_resumable(checkpoint, "old.ckpt", "semi", hparams, {})
    with pytest.raises(UserError, match="--init-std 0.0 \\(now 0.01\\)"):
        check_resumable(checkpoint, "old.ckpt", "semi", {**hparams, "init_std": 0.01}, {})


def test_milestones_may_change_on_resuming_only_where_the_checkpoint_has_not_trained_yet() -> None:
    hparams = {**dataclasses.asdict(get_variant("aae").Hparams()), "lr_milestones": (3,)}
    checkpoint = {"aae_variant": "aae", "hyper_parameters": hparams, "datamodule_hyper_parameters": {}, "epoch": 49}
    # epochs 0-49 trained at the first rates: a drop from epoch 50 on, or a later one moved, leaves them as they were
    check_resumable(checkpoint, "e49.ckpt", "aae", {**hparams, "lr_milestones": (3, 50)}, {})
    check_resumable(
        {**checkpoint, "hyper_parameters": {**hparams, "lr_milestones": (3, 80)}},
        "e49.ckpt",
        "aae",
        {**hparams, "lr_milestones": [3, 60]},
        {},
    )
    for rewritten in ((), (4,), (3, 49), (3, 10)):
        with pytest.raises(UserError, match="--lr-milestones 3 \\(now"):
            check_resumable(checkpoint, "e49.ckpt", "aae", {**hparams, "lr_milestones": rewritten}, {})
    with pytest.raises(UserError, match="--lr-gamma"):
        check_resumable(checkpoint, "e49.ckpt", "aae", {**hparams, "lr_milestones": (3, 50), "lr_gamma": 0.5}, {})


def test_a_checkpoint_of_the_one_process_format_still_restores_its_random_states() -> None:
    """Checkpoints written before the random states were kept per rank hold one process's states at the top of
    `aae_rng` (and the CUDA states of every GPU of the machine as a list)."""
    model = small_model("aae")
    before = torch.get_rng_state()
    try:
        torch.manual_seed(5)
        saved = torch.get_rng_state()
        generator = torch.Generator().manual_seed(11)
        torch.manual_seed(6)
        model.on_load_checkpoint({"aae_rng": {"prior_generator": generator.get_state(), "torch": saved, "cuda": []}})
        assert torch.equal(torch.get_rng_state(), saved)
        assert torch.equal(model.prior_generator.get_state(), generator.get_state())
    finally:
        torch.set_rng_state(before)
