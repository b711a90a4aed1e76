"""What a run prints: no warning on stderr, and its progress on stdout, one line per epoch when stdout is a file or
a pipe, Lightning's bar with the variant's main metric and the reconstruction loss when it is a terminal."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import pytorch_lightning as pl

from aae_lightning import get_variant
from callbacks.progress import EpochLines, MetricsProgressBar, progress_callbacks
from datamodules import MNISTDataModule
from tests.helpers import REPO_ROOT, make_trainer

EPOCHS = 2
#: a line of the warnings module (`x.py:12: UserWarning: ...`, or Lightning's own `x.py:12: ...`), the source line
#: it quotes (`warnings.warn(...)`), or a library's own warning (`wandb: WARNING ...`)
WARNING_LINE = re.compile(r"\.py:\d+: |warn", re.IGNORECASE)


@pytest.fixture(scope="module")
def plain_run(tiny_mnist_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> subprocess.CompletedProcess:
    """`python train.py` as a user starts it, its output sent to files: the default logger (W&B, offline here),
    images and device. An `aae`, which cannot draw a style grid or a confusion matrix; two epochs on tiny data."""
    output = tmp_path_factory.mktemp("console")
    env = {**os.environ, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}
    for name in ("WANDB_SILENT", "AAE_RUN_NAME"):  # a plain run has neither
        env.pop(name, None)
    argv = [
        sys.executable,
        str(REPO_ROOT / "train.py"),
        "--variant",
        "aae",
        "--data-dir",
        str(tiny_mnist_dir),
        "--no-download",
        "--val-size",
        "100",
        "--batch-size",
        "50",
        "--max-epochs",
        str(EPOCHS),
        "--hidden-sizes",
        "64",
        "64",
        "--disc-hidden-sizes",
        "32",
        "32",
        # fewer batches than logging steps is a warning of its own (10 batches an epoch here)
        "--log-every-n-batches",
        "5",
        "--output-dir",
        str(output),
        "--run-name",
        "plain",
    ]
    return subprocess.run(argv, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=900)


def test_a_plain_run_prints_no_warning(plain_run: subprocess.CompletedProcess) -> None:
    assert plain_run.returncode == 0, plain_run.stderr[-3000:]
    assert [line for line in plain_run.stderr.splitlines() if WARNING_LINE.search(line)] == [], plain_run.stderr
    assert "litlogger" not in plain_run.stderr  # Lightning's advertisement


def test_what_a_variant_cannot_draw_is_said_once_in_one_line(plain_run: subprocess.CompletedProcess) -> None:
    said = [line.split(" draws nothing: ")[0] for line in plain_run.stderr.splitlines() if " draws nothing: " in line]
    assert sorted(said) == ["ConfusionMatrix", "StyleGrid"]


def test_without_a_terminal_each_epoch_is_one_line(plain_run: subprocess.CompletedProcess) -> None:
    lines = [line for line in plain_run.stdout.splitlines() if line.startswith("epoch ")]
    assert [line.split(" | ")[0] for line in lines] == [f"epoch {epoch}/{EPOCHS}" for epoch in range(1, EPOCHS + 1)]
    for line in lines:
        _, seconds, losses, metrics, left = line.split(" | ")
        assert re.fullmatch(r"\d+\.\d s", seconds), line
        assert re.fullmatch(r"train disc_loss_z=\S+ gen_loss_z=\S+ recon_loss=\S+", losses), line
        assert re.fullmatch(r"val recon_loss=\S+", metrics), line
        assert re.fullmatch(r"(\d+ days?, )?\d+:\d\d:\d\d left", left), line
    assert lines[-1].endswith(" | 0:00:00 left")


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


class Recording(io.StringIO):
    """A file or pipe: what had been written each time it was flushed."""

    def __init__(self) -> None:
        super().__init__()
        self.flushed: list[str] = []

    def flush(self) -> None:
        self.flushed.append(self.getvalue())


def fit_semi(data_dir: Path, callbacks: list[pl.Callback], **settings: object) -> pl.Trainer:
    """Two epochs of a small `semi` (main metric: val/acc) on the tiny data, validating after each."""
    model = get_variant("semi")(hidden_sizes=(32,), disc_hidden_sizes=(16,))
    datamodule = MNISTDataModule(
        str(data_dir), num_labels=100, val_size=100, batch_size=50, download=False, train_streams=model.train_streams
    )
    trainer = make_trainer(
        None, epochs=EPOCHS, callbacks=callbacks, limit_val_batches=1.0, log_every_n_steps=5, **settings
    )
    trainer.fit(model, datamodule)
    return trainer


def test_lines_are_flushed_as_they_are_printed(tiny_mnist_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    stdout = Recording()
    monkeypatch.setattr(sys, "stdout", stdout)
    callbacks = progress_callbacks("auto")
    assert [type(callback) for callback in callbacks] == [EpochLines]
    fit_semi(tiny_mnist_dir, callbacks)
    lines = stdout.getvalue().splitlines()
    assert [line.split(" | ")[0] for line in lines] == [f"epoch {epoch}/{EPOCHS}" for epoch in range(1, EPOCHS + 1)]
    assert all(" val acc=" in line for line in lines)
    written = stdout.getvalue()
    assert all(written[: written.index(line) + len(line) + 1] in stdout.flushed for line in lines)


def test_on_a_terminal_the_bar_shows_the_main_metric_and_the_reconstruction_loss(
    tiny_mnist_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "stdout", Terminal())
    (bar,) = progress_callbacks("auto")
    assert isinstance(bar, MetricsProgressBar)
    fit_semi(tiny_mnist_dir, [bar], enable_progress_bar=True)
    shown = {item.split("=")[0] for item in bar.train_progress_bar.postfix.split(", ")}
    assert {"val/acc", "train/recon_loss"} <= shown
