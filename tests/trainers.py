"""How the tests train. In process: a quiet single-device trainer, on the CPU unless a test says otherwise, with no
logger, checkpoints, progress bar, model summary or validation, so a test times and sees nothing but training.
Through train.py: the flag that puts a run on a test's device."""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl


def make_trainer(
    batches: int | None, epochs: int = 1, callbacks: list[pl.Callback] | None = None, **kwargs: Any
) -> pl.Trainer:
    """A trainer for `epochs` epochs of `batches` batches each (None: whole epochs); `kwargs` override any setting."""
    settings: dict[str, Any] = dict(
        accelerator="cpu",
        devices=1,  # "auto" would be every GPU of the machine, and DDP
        max_epochs=epochs,
        limit_train_batches=batches,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=callbacks or [],
    )
    return pl.Trainer(**{**settings, **kwargs})


def gpus_flag(device: str) -> list[str]:
    """train.py's flag for a test's `device` ("cpu" or "cuda"), as a user asks for it."""
    return ["--gpus", "0" if device == "cpu" else "1"]


#: train.py flags for a one-epoch run of a tiny model on the tiny MNIST files (100 labels, 100 validation images),
#: without logger or images: what a test needs to get a real checkpoint fast
TINY_FLAGS = [
    "--hidden-sizes",
    "32",
    "32",
    "--disc-hidden-sizes",
    "16",
    "--val-size",
    "100",
    "--batch-size",
    "50",
    "--labels",
    "100",
    "--max-epochs",
    "1",
    "--logger",
    "none",
    "--gpus",
    "0",
    "--image-every-n-epochs",
    "0",
]
