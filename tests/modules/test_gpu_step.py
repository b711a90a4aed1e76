"""A training step on a GPU never makes the host wait for the device, except on the batches whose losses are
logged: prior samples are drawn on the GPU, a non-finite loss is a flag the fused optimizers read there, and under
DDP the flag travels with the gradients. Runs only where CUDA is (benchmarks/gpu_check.sh runs it)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import torch

from aae_lightning import VARIANTS, AutoencoderBase
from tests.helpers import make_trainer, small_model, tiny_datamodule

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")]

#: the batch whose step is watched: the first one warms up (CUDA context, optimizer states, cuBLAS handles)
WATCHED_BATCH = 1


class ForbidSynchronisation(pl.Callback):
    """Any host-device synchronisation during the watched batch's training step is an error."""

    def __init__(self) -> None:
        self.watched = False

    def on_train_batch_start(self, trainer: pl.Trainer, module: AutoencoderBase, batch: Any, batch_idx: int) -> None:
        if batch_idx == WATCHED_BATCH:
            torch.cuda.set_sync_debug_mode("error")
            self.watched = True

    def on_train_batch_end(self, trainer: pl.Trainer, module: AutoencoderBase, *args: Any) -> None:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_a_training_step_never_waits_for_the_gpu(variant: str, precision: str, tiny_mnist_dir: Path) -> None:
    model = small_model(variant)
    watcher = ForbidSynchronisation()
    trainer = make_trainer(
        WATCHED_BATCH + 1, accelerator="gpu", precision=precision, log_every_n_steps=50, callbacks=[watcher]
    )
    try:
        trainer.fit(model, tiny_datamodule(tiny_mnist_dir, model))
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert watcher.watched
    assert model.prior_generator.device.type == "cuda"
