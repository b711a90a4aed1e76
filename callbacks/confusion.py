"""The validation confusion matrix of a classifying variant, drawn at the end of validation."""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.utilities import rank_zero_warn
from torch import Tensor
from torchmetrics.classification import MulticlassConfusionMatrix

from callbacks.publish import image_due, publish
from callbacks.rendering import confusion_matrix_image

CLASS_LOGITS = "y"


class ConfusionMatrix(pl.Callback):
    """True digit x predicted digit over the whole validation set, every `every_n_epochs` epochs.

    Needs a classifying module: `classify(x)`, `num_classes` > 0, and a `validation_step` that returns the
    class logits under "y" (as `update_metrics` does for the semi-supervised model), so no extra forward pass is
    made. Each rank counts its own validation batches; `compute()` sums the counts over all ranks, so it runs
    on every rank, and rank 0 alone draws and logs the result. `seed` is accepted for a uniform signature with
    the image callbacks: nothing here is random.
    """

    name = "confusion_matrix"

    def __init__(self, every_n_epochs: int = 1, seed: int = 0) -> None:
        if every_n_epochs < 1:
            raise ValueError(f"every_n_epochs must be at least 1, got {every_n_epochs}")
        self.every_n_epochs = every_n_epochs
        self.matrix: MulticlassConfusionMatrix | None = None
        self._warned = False

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        classes = getattr(pl_module, "num_classes", 0)
        if not callable(getattr(pl_module, "classify", None)) or not classes:
            if not self._warned:
                rank_zero_warn(f"ConfusionMatrix draws nothing: {type(pl_module).__name__} does not classify")
                self._warned = True
            self.matrix = None
            return
        self.matrix = MulticlassConfusionMatrix(classes)

    def _counting(self, trainer: pl.Trainer) -> bool:
        return self.matrix is not None and image_due(trainer, self.every_n_epochs)

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._counting(trainer):
            # here, not in setup: the strategy moves the module to its device only after the setup hooks
            self.matrix = self.matrix.to(pl_module.device)
            self.matrix.reset()

    def on_validation_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any,
                                batch: tuple[Tensor, Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        if self._counting(trainer):
            self.matrix.update(outputs[CLASS_LOGITS].detach(), batch[1])

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._counting(trainer):
            return
        counts = self.matrix.compute()  # collective under DDP: every rank must get here
        self.matrix.reset()
        if not trainer.is_global_zero:
            return
        total = int(counts.sum())
        accuracy = counts.diagonal().sum().item() / max(total, 1)
        title = f"validation confusion matrix: {total} images, accuracy {accuracy:.2%}"
        publish(trainer, self.name, confusion_matrix_image(counts, title), f"{title} (epoch {trainer.current_epoch})")
