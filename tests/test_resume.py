"""Resuming through train.py: a run killed with SIGKILL and resumed with `--ckpt-path last` ends bit for bit where
the same run ends without the interruption (weights, every optimizer, random states, best checkpoint, metrics),
logs into the same W&B run, and `--ckpt-path` resolves run folders as documented. And the faults a resume
depends on: a checkpoint write that fails or is killed halfway leaves the previous checkpoint intact.

The runs are real `python train.py` processes on tiny data with small networks. Dropout and input noise are on,
so training draws from the global random stream, and images are drawn every epoch, so a callback that touched
that stream would show up as a difference. The resume, and a checkpoint's round trip through save and load, are
checked on every `device` (conftest.py): the CPU, and CUDA where there is one.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from trainers import gpus_flag, make_trainer

import train
from aae_lightning import get_variant
from aae_lightning.checkpoint_io import ADDED_LATER, AtomicCheckpointIO, check_resumable, load_trained, temporary_path
from aae_lightning.errors import UserError
from datamodules.mnist import MNISTDataModule

REPO_ROOT = Path(__file__).resolve().parents[1]
EPOCHS = 5
#: killed once the checkpoint of this epoch is on disk (the second epoch), well before the last one
KILL_AFTER_EPOCH = 1
RUN = [
    "--variant",
    "semi",
    "--labels",
    "100",
    "--val-size",
    "100",
    "--batch-size",
    "20",
    "--hidden-sizes",
    "64",
    "64",
    "--disc-hidden-sizes",
    "32",
    "--dropout",
    "0.1",
    "--input-noise",
    "0.1",
    "--image-every-n-epochs",
    "1",
    "--max-epochs",
    str(EPOCHS),
    "--seed",
    "3",
]


@dataclass
class TrainProcess:
    process: subprocess.Popen
    #: stdout and stderr: a pipe nobody reads while the run goes on could fill up and block it
    log: Path


def train_process(data_dir: Path, output_dir: Path, run_name: str, device: str, *extra: str) -> TrainProcess:
    """`python train.py` on tiny data with the flags of `RUN`, on `device`."""
    # one thread each: on a shared two-core machine torch's default thread pool spins and runs several times slower
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "OMP_NUM_THREADS": "1"}
    env.pop("AAE_RUN_NAME", None)
    argv = [
        sys.executable,
        str(REPO_ROOT / "train.py"),
        *RUN,
        *gpus_flag(device),
        "--data-dir",
        str(data_dir),
        "--output-dir",
        str(output_dir),
        "--run-name",
        run_name,
        "--results-json",
        str(output_dir / f"{run_name}.json"),
        *extra,
    ]
    with (output_dir / f"{run_name}-{time.monotonic_ns()}.log").open("w") as log:
        return TrainProcess(
            subprocess.Popen(argv, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT), Path(log.name)
        )


def kill_after_checkpoint(run: TrainProcess, last: Path, epoch: int, timeout: float = 600) -> int:
    """SIGKILL the run as soon as `last` holds a checkpoint of `epoch` or later, and return that epoch.
    Reading the file while training goes on is safe only because checkpoints are replaced atomically."""
    process, deadline, seen = run.process, time.monotonic() + timeout, None
    while time.monotonic() < deadline and process.poll() is None:
        stamp = last.stat().st_mtime_ns if last.is_file() else None
        if stamp is not None and stamp != seen:
            seen = stamp
            saved = torch.load(last, map_location="cpu", weights_only=False)["epoch"]
            if saved >= epoch:
                os.kill(process.pid, signal.SIGKILL)
                process.wait()
                return saved
        time.sleep(0.02)
    process.wait()
    pytest.fail(
        f"the run ended (code {process.returncode}) before its epoch-{epoch} checkpoint: {run.log.read_text()[-2000:]}"
    )


def finish(run: TrainProcess) -> None:
    assert run.process.wait(timeout=600) == 0, run.log.read_text()[-3000:]


@pytest.fixture(scope="module")
def runs(device: str, tiny_mnist_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """An uninterrupted run (CSV logger) and, side by side, the same run (W&B offline on the CPU) killed after its
    second epoch and then resumed with `--ckpt-path last`."""
    output = tmp_path_factory.mktemp("resume")
    # W&B is optional where the CUDA checks run (benchmarks/gpu_check.sh); what it logs does not depend on the device
    logger = "wandb" if device == "cpu" else "csv"
    whole = train_process(tiny_mnist_dir, output, "whole", device, "--logger", "csv")
    killed = train_process(tiny_mnist_dir, output, "killed", device, "--logger", logger)
    try:
        killed_at = kill_after_checkpoint(killed, output / "killed" / "checkpoints" / "last.ckpt", KILL_AFTER_EPOCH)
        assert killed.process.returncode == -signal.SIGKILL
        assert not (output / "killed.json").exists()
        resumed = train_process(tiny_mnist_dir, output, "killed", device, "--logger", logger, "--ckpt-path", "last")
        finish(resumed)
        finish(whole)
    finally:
        for run in (whole, killed):
            if run.process.poll() is None:
                run.process.kill()
                run.process.wait()
    return {"output": output, "killed_at": killed_at, "logger": logger}


def load(run_dir: Path, name: str = "last.ckpt") -> dict:
    return torch.load(run_dir / "checkpoints" / name, map_location="cpu", weights_only=False)


def assert_same_tensors(a: object, b: object, where: str) -> None:
    """Nested dicts/lists of tensors and plain values, compared exactly."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            assert_same_tensors(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for index, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same_tensors(x, y, f"{where}[{index}]")
    else:
        assert a == b, where


def test_the_run_was_killed_before_its_end(runs: dict[str, object]) -> None:
    assert KILL_AFTER_EPOCH <= runs["killed_at"] < EPOCHS - 1


def test_resumed_run_ends_with_the_same_weights_optimizers_and_random_states(runs: dict[str, object]) -> None:
    whole, resumed = load(runs["output"] / "whole"), load(runs["output"] / "killed")
    # last.ckpt is the last epoch: Lightning's own save_last rewrites it only when the best checkpoint improves,
    # and with val/acc stuck at its maximum a resume would then repeat epochs
    assert (
        (resumed["epoch"], resumed["global_step"])
        == (whole["epoch"], whole["global_step"])
        == (EPOCHS - 1, EPOCHS * 25 * 4)
    )
    assert_same_tensors(whole["state_dict"], resumed["state_dict"], "state_dict")
    assert len(whole["optimizer_states"]) == 4  # one per phase of the semi-supervised model
    assert_same_tensors(whole["optimizer_states"], resumed["optimizer_states"], "optimizer_states")
    assert_same_tensors(whole["aae_rng"], resumed["aae_rng"], "aae_rng")
    assert whole["loops"]["fit_loop"]["epoch_progress"] == resumed["loops"]["fit_loop"]["epoch_progress"]


def test_resumed_run_reports_the_same_metrics_and_best_checkpoint(runs: dict[str, object]) -> None:
    output = runs["output"]
    whole = json.loads((output / "whole.json").read_text())
    resumed = json.loads((output / "killed.json").read_text())
    assert resumed["val"] == whole["val"] and set(whole["val"]) == {"val/recon_loss", "val/acc"}
    assert resumed["epochs"] == whole["epochs"] == EPOCHS
    assert Path(resumed["best_checkpoint"]).name == Path(whole["best_checkpoint"]).name
    assert Path(resumed["best_checkpoint"]).parent == output / "killed" / "checkpoints"
    # the best checkpoint the resumed run kept is the one the uninterrupted run kept, byte for byte in its weights
    assert_same_tensors(
        load(output / "whole", Path(whole["best_checkpoint"]).name)["state_dict"],
        torch.load(resumed["best_checkpoint"], map_location="cpu", weights_only=False)["state_dict"],
        "best state_dict",
    )
    assert sorted(p.name for p in (output / "killed" / "checkpoints").iterdir()) == sorted(
        p.name for p in (output / "whole" / "checkpoints").iterdir()
    )


def test_resumed_run_logs_into_the_same_wandb_run(runs: dict[str, object]) -> None:
    if runs["logger"] != "wandb":
        pytest.skip("the CUDA runs log to CSV; the W&B run is checked on the CPU")
    run_dir = runs["output"] / "killed"
    run_id = (run_dir / train.WANDB_RUN_ID_FILE).read_text().strip()
    pieces = sorted((run_dir / "wandb").glob("offline-run-*"))
    assert len(pieces) == 2, pieces  # before the kill and after the resume; `wandb sync` joins them into one run
    assert all(piece.name.endswith(f"-{run_id}") for piece in pieces), (run_id, pieces)


def namespace(**given: object) -> argparse.Namespace:
    return train.parse_args(
        [
            "--variant",
            "ae",
            *[part for key, value in given.items() for part in (f"--{key.replace('_', '-')}", str(value))],
        ]
    )


def test_ckpt_path_last_is_the_last_ckpt_of_run_name(tmp_path: Path) -> None:
    run_dir, path = train.resolve_run(namespace(output_dir=tmp_path, run_name="r", ckpt_path="last"))
    assert (run_dir, path) == (tmp_path / "r", tmp_path / "r" / "checkpoints" / "last.ckpt")


def test_a_checkpoint_inside_a_run_folder_continues_that_run(tmp_path: Path) -> None:
    inside = tmp_path / "elsewhere" / "r" / "checkpoints" / "best-epoch003.ckpt"
    assert train.resolve_run(namespace(output_dir=tmp_path, ckpt_path=inside)) == (inside.parent.parent, inside)
    # --run-name starts a new run (in its own folder) from that checkpoint instead
    assert train.resolve_run(namespace(output_dir=tmp_path, run_name="new", ckpt_path=inside)) == (
        tmp_path / "new",
        inside,
    )


def test_csv_history_survives_a_resume(tiny_mnist_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Lightning's CSV logger deletes metrics.csv when it starts in a non-empty folder; resuming keeps the rows of
    the epochs before. In this process: `train.main`, twice."""
    monkeypatch.delenv("AAE_RUN_NAME", raising=False)
    base = [
        "--variant",
        "ae",
        "--data-dir",
        str(tiny_mnist_dir),
        "--val-size",
        "100",
        "--batch-size",
        "50",
        "--hidden-sizes",
        "16",
        "--gpus",
        "0",
        "--logger",
        "csv",
        "--image-every-n-epochs",
        "0",
        "--output-dir",
        str(tmp_path),
        "--run-name",
        "r",
    ]
    assert train.main([*base, "--max-epochs", "1"]) == 0
    assert (
        train.main([*base, "--max-epochs", "2", "--ckpt-path", str(tmp_path / "r" / "checkpoints" / "last.ckpt")]) == 0
    )
    with (tmp_path / "r" / "metrics.csv").open(newline="") as file:
        rows = list(csv.DictReader(file))
    # one training mean per epoch: epoch 0 from the first process, epoch 1 from the resumed one, no repeats
    assert [int(row["epoch"]) for row in rows if row.get("train/recon_loss_epoch")] == [0, 1]
    assert [int(row["epoch"]) for row in rows] == sorted(int(row["epoch"]) for row in rows)


def test_a_checkpoint_loads_back_onto_its_device_and_onto_the_cpu(
    device: str, tiny_mnist_dir: Path, tmp_path: Path
) -> None:
    """Weights, prior generator and outputs of a model trained on `device` come back from its checkpoint: onto that
    device (`load_from_checkpoint` with `map_location`), and onto the CPU (`load_trained`, where the notebooks and
    evaluate.py start)."""
    model = get_variant("semi")(hidden_sizes=(32,), disc_hidden_sizes=(16,), dropout=0.1)
    datamodule = MNISTDataModule(
        str(tiny_mnist_dir),
        num_labels=100,
        val_size=100,
        batch_size=50,
        download=False,
        train_streams=model.train_streams,
    )
    trainer = make_trainer(2, accelerator=device)
    trainer.fit(model, datamodule)
    path = tmp_path / "model.ckpt"
    trainer.save_checkpoint(path)
    generator_state = model.prior_generator.get_state()
    model.to(device).eval()  # Lightning moved it back to the CPU when fitting ended
    images = datamodule.validation_data()[0][:20].to(device)
    expected = model.reconstruct(images)

    again = type(model).load_from_checkpoint(path, map_location=device, weights_only=False).eval()
    assert again.device.type == device
    assert_same_tensors(model.state_dict(), again.state_dict(), "state_dict")
    assert torch.equal(again.prior_generator.get_state(), generator_state)
    assert torch.equal(again.reconstruct(images), expected)

    on_cpu, _ = load_trained(path)
    assert on_cpu.device.type == "cpu"
    assert_same_tensors(model.cpu().state_dict(), on_cpu.state_dict(), "state_dict on the CPU")
    assert torch.equal(on_cpu.prior_generator.get_state(), generator_state)
    # the same weights; the arithmetic of another device may round differently
    assert torch.allclose(on_cpu.reconstruct(images.cpu()), expected.cpu(), atol=1e-5)


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
