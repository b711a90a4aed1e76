"""Resuming through train.py: a run killed with SIGKILL and resumed with `--ckpt-path last` ends bit for bit where
the same run ends without the interruption (weights, every optimizer, random states, best checkpoint, metrics),
logs into the same W&B run, and `--ckpt-path` resolves run folders as documented; a CSV history survives a resume.

The runs are real `python train.py` processes on tiny data with small networks. Dropout and input noise are on,
so training draws from the global random stream, and images are drawn every epoch, so a callback that touched
that stream would show up as a difference. The resume is checked on every `device` (conftest.py): the CPU, and
CUDA where there is one. A checkpoint's round trip in process: tests/modules/test_checkpoints.py; the faults a
resume depends on (a checkpoint write that fails or is killed halfway): tests/unit/test_checkpoint_io.py.
"""

from __future__ import annotations

import argparse
import csv
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

import train
from aae_lightning import cli
from aae_lightning.run_folder import RUN_NAME_VARIABLE, WANDB_RUN_ID_FILE, resolve_run
from tests.helpers import REPO_ROOT, TINY, assert_same_tensors, gpus_flag

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
    run_id = (run_dir / WANDB_RUN_ID_FILE).read_text().strip()
    pieces = sorted((run_dir / "wandb").glob("offline-run-*"))
    assert len(pieces) == 2, pieces  # before the kill and after the resume; `wandb sync` joins them into one run
    assert all(piece.name.endswith(f"-{run_id}") for piece in pieces), (run_id, pieces)


def namespace(**given: object) -> argparse.Namespace:
    return cli.parse_args(
        [
            "--variant",
            "ae",
            *[part for key, value in given.items() for part in (f"--{key.replace('_', '-')}", str(value))],
        ]
    )


def test_ckpt_path_last_is_the_last_ckpt_of_run_name(tmp_path: Path) -> None:
    run_dir, path = resolve_run(namespace(output_dir=tmp_path, run_name="r", ckpt_path="last"))
    assert (run_dir, path) == (tmp_path / "r", tmp_path / "r" / "checkpoints" / "last.ckpt")


def test_a_checkpoint_inside_a_run_folder_continues_that_run(tmp_path: Path) -> None:
    inside = tmp_path / "elsewhere" / "r" / "checkpoints" / "best-epoch003.ckpt"
    assert resolve_run(namespace(output_dir=tmp_path, ckpt_path=inside)) == (inside.parent.parent, inside)
    # --run-name starts a new run (in its own folder) from that checkpoint instead
    assert resolve_run(namespace(output_dir=tmp_path, run_name="new", ckpt_path=inside)) == (
        tmp_path / "new",
        inside,
    )


def test_each_run_in_one_process_gets_a_folder_of_its_own(
    tiny_mnist_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two runs without --run-name in one process, as a notebook or a sweep makes them: the name the first one
    recorded for its DDP ranks must not name the second one's folder."""
    monkeypatch.delenv(RUN_NAME_VARIABLE, raising=False)
    folders = []
    for variant in ("ae", "aae"):
        results = tmp_path / f"{variant}.json"
        argv = [*TINY, "--data-dir", str(tiny_mnist_dir), "--max-epochs", "1", "--gpus", "0", "--logger", "none"]
        argv += ["--image-every-n-epochs", "0", "--output-dir", str(tmp_path), "--results-json", str(results)]
        assert train.main(["--variant", variant, *argv]) == 0
        folders.append(Path(json.loads(results.read_text())["run_dir"]).name)
    assert folders[0].startswith("ae-seed0-") and folders[1].startswith("aae-seed0-"), folders
    assert RUN_NAME_VARIABLE not in os.environ


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
