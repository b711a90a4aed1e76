"""The validation confusion matrix of a classifying variant, drawn at the end of validation."""

from __future__ import annotations

from typing import Any, ClassVar

import pytorch_lightning as pl
from pytorch_lightning.utilities import rank_zero_info
from torch import Tensor
from torchmetrics.classification import MulticlassConfusionMatrix

from aae_lightning.base import AutoencoderBase
from callbacks.needs import CLASSIFIER, Need, unmet
from callbacks.publish import image_due, publish
from callbacks.rendering import confusion_matrix_image
from datamodules import NUM_CLASSES

CLASS_LOGITS = "y"


class ConfusionMatrix(pl.Callback):
    """True digit x predicted class over the whole validation set, every `every_n_epochs` epochs.

    Needs `classify(x) -> scores` with one column per class. The scores come from what `validation_step`
    returns under "y" (the class logits of the semi-supervised and dimensionality-reduction models), so no
    extra forward pass is made; a module that returns no "y" (the label-regularized model reads the digit off
    z) is asked `classify` on the validation batch. Classes are the digits for a model scored on accuracy (a
    `val/acc` metric), and the title gives that accuracy; otherwise (the clustering model's K categories) the
    image is the digit x category table. Each rank counts its own validation batches; `compute()` sums the
    counts over all ranks, so it runs on every rank, and rank 0 alone draws and logs the result. `seed` is
    accepted for a uniform signature with the image callbacks: nothing here is random.
    """

    name = "confusion_matrix"
    needs: ClassVar[tuple[Need, ...]] = (CLASSIFIER,)

    def __init__(self, every_n_epochs: int = 1, seed: int = 0) -> None:
        if every_n_epochs < 1:
            raise ValueError(f"every_n_epochs must be at least 1, got {every_n_epochs}")
        self.every_n_epochs = every_n_epochs
        self.matrix: MulticlassConfusionMatrix | None = None
        self.classes = 0
        self._told = False

    def setup(self, trainer: pl.Trainer, pl_module: AutoencoderBase, stage: str) -> None:
        reason = unmet(self.needs, pl_module)
        if reason is not None:
            if not self._told:
                rank_zero_info(f"ConfusionMatrix draws nothing: {reason}")
                self._told = True
            self.matrix = None
            return
        # `classify` scores the classes of a conditioned decoder, or the digits
        self.classes = pl_module.num_classes or NUM_CLASSES
        # square, as torchmetrics wants it, and wide enough for both the true digits and the predicted classes
        self.matrix = MulticlassConfusionMatrix(max(self.classes, NUM_CLASSES))

    def _counting(self, trainer: pl.Trainer) -> bool:
        return self.matrix is not None and image_due(trainer, self.every_n_epochs)

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._counting(trainer):
            # here, not in setup: the strategy moves the module to its device only after the setup hooks
            self.matrix = self.matrix.to(pl_module.device)
            self.matrix.reset()

    def on_validation_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: AutoencoderBase,
        outputs: Any,
        batch: tuple[Tensor, Tensor],
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if not self._counting(trainer):
            return
        images, labels = batch
        has_logits = isinstance(outputs, dict) and CLASS_LOGITS in outputs
        scores = outputs[CLASS_LOGITS] if has_logits else pl_module.classify(images)
        self.matrix.update(scores.detach().argmax(dim=1), labels)

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: AutoencoderBase) -> None:
        if not self._counting(trainer):
            return
        counts = self.matrix.compute()  # collective under DDP: every rank must get here
        self.matrix.reset()
        if not trainer.is_global_zero:
            return
        counts = counts[:NUM_CLASSES, : self.classes]
        total = int(counts.sum())
        if "acc" in pl_module.metrics["val"]:
            accuracy = counts.diagonal().sum().item() / max(total, 1)
            title = f"validation confusion matrix: {total} images, accuracy {accuracy:.2%}"
            image = confusion_matrix_image(counts, title)
        else:
            title = f"validation digits x {self.classes} categories: {total} images"
            image = confusion_matrix_image(counts, title, predicted_label="category")
        publish(trainer, self.name, image, f"{title} (epoch {trainer.current_epoch})")
