"""train.py's --average-weights: Lightning's `WeightAveraging` (torch's `AveragedModel`) set up for these modules.

Validation, the checkpoints' `state_dict` and what is tested after fitting see the average; training never does.
Lightning swaps the average into the module for each validation epoch and swaps it back, exactly, afterwards; an
update reads the weights and draws no random number. So a run trains the same weights with or without it.

What Lightning's callback (pytorch_lightning/callbacks/weight_averaging.py, 2.6) does, and what changes here:

- It builds the average in `setup`, as a copy of the module before any update, and updates it after a training
  batch: `should_update(step_idx=trainer.global_step - 1)`, at most once per batch. With manual optimization every
  phase's `optimizer.step()` counts as a step (base.py), so a step index says nothing of the epoch: the epochs
  from `average_from_epoch` on update after each of their batches, the earlier ones never.
- Until its first update the average is that copy of the module as built: Lightning would validate, save as the
  checkpoint's weights, and copy into the module when fitting ends, the initial weights. Here the module keeps its
  own weights until the average has begun (`began`).
- Its `on_save_checkpoint` writes the average as the `state_dict` (what `load_from_checkpoint`, evaluate.py and
  `trainer.validate/test(ckpt_path=...)` load), the trained weights as `current_model_state`, the average's count
  as `averaging_state`; its `state_dict` keeps the last updated step; `on_load_checkpoint` puts all of it back, so
  a resumed run continues the same average. Outside fitting, loading a checkpoint, it would put the trained
  weights into the module, and `trainer.test(ckpt_path=...)` (which it never swaps for) would score those. Here
  `validate` and `test` both score the checkpoint's `state_dict`, the average that epoch validated.
- A checkpoint written after fitting ended (Lightning's `save_last=True`, or `trainer.save_checkpoint` after
  `fit`) holds the average twice: Lightning's `on_train_end` has copied it over the trained weights. train.py
  writes none.
"""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import WeightAveraging
from pytorch_lightning.trainer.states import TrainerFn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn, get_swa_avg_fn

from aae_lightning.checkpoint_io import AVERAGING_KEY, average_begun_by


class AverageWeights(WeightAveraging):
    """The average of the weights after every batch of the epochs from `average_from_epoch` (counted from 1):
    `average_weights` "swa" for the equal average, "ema" for the exponential moving average with `ema_decay`, which
    starts there from the weights after that epoch's first batch. Its arguments are `cli.averaging_settings`."""

    def __init__(self, average_weights: str, average_from_epoch: int, ema_decay: float | None = None) -> None:
        if average_weights == "swa":
            # torch's equal-average formula, applied tensor by tensor as AveragedModel does on a CPU. On a GPU its
            # default grouped update would divide the integer buffers (BatchNorm's num_batches_tracked) with
            # `_foreach_addcdiv_`, an integer division torch's addcdiv refuses.
            averaging: dict[str, Any] = {"avg_fn": get_swa_avg_fn()}
        elif average_weights == "ema" and ema_decay is not None:
            averaging = {"multi_avg_fn": get_ema_multi_avg_fn(ema_decay)}
        else:
            raise ValueError(f"average_weights must be 'swa', or 'ema' with an ema_decay, not {average_weights!r}")
        # Buffers are averaged with the weights: the BatchNorm running statistics of the clustering and semi
        # encoders then average those of the same batches, and describe the averaged encoder as closely as the
        # averaged weights describe the trained ones. Left out, the average would be validated with the statistics
        # of the latest weights; torch's update_bn would recompute them with an extra pass over the training data,
        # in training mode, drawing dropout and noise from the stream training draws from.
        super().__init__(use_buffers=True, **averaging)
        self.settings = {
            "average_weights": average_weights,
            "average_from_epoch": average_from_epoch,
            "ema_decay": ema_decay,
        }

    def __reduce__(self) -> tuple[type, tuple[Any, ...]]:
        # The averaging functions are closures, which pickle cannot hand to the processes `--strategy ddp_spawn`
        # starts. Those get the callback built anew from its settings: it is sent before any fit builds an average.
        return type(self), tuple(self.settings.values())

    @property
    def average(self) -> AveragedModel | None:
        """Lightning's average of the module, None before fitting starts. `WeightAveraging` keeps it in a private
        attribute and has no accessor for it: this is the one place that reads it."""
        return self._average_model

    @property
    def began(self) -> bool:
        """Whether the average has taken its first update: before that it holds the module as it was built."""
        return self.average is not None and int(self.average.n_averaged) > 0

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # The average was built in `setup` on the training device already (Lightning gives the module its device
        # before the callbacks' `setup`), but in the dtype the module was built in: the precision casts the module
        # later, in the strategy's setup. Left in float32, a swap would round float64 weights (64-true) and hand
        # them back to training.
        assert self.average is not None
        self.average.to(dtype=pl_module.dtype)

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if average_begun_by(self.settings, trainer.current_epoch):
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._validates_average(trainer):
            super().on_validation_epoch_start(trainer, pl_module)

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # the callbacks before this one in the Trainer's list (train.py's images and Parzen estimate) still see
        # the average: Lightning calls them in order
        if self._validates_average(trainer):
            super().on_validation_epoch_end(trainer, pl_module)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.began:
            super().on_train_end(trainer, pl_module)

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        checkpoint[AVERAGING_KEY] = self.settings
        if self.began:  # before, the weights validated are the module's own, and the checkpoint holds them alone
            super().on_save_checkpoint(trainer, pl_module, checkpoint)

    def on_load_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        # A checkpoint without `current_model_state` holds no average yet: its weights are the trained ones, and
        # the average begins with its first update (Lightning would copy them into it and warn).
        if trainer.state.fn == TrainerFn.FITTING and "current_model_state" in checkpoint:
            super().on_load_checkpoint(trainer, pl_module, checkpoint)

    def _validates_average(self, trainer: pl.Trainer) -> bool:
        """Whether this validation sees the average: while fitting, once it has begun. `trainer.validate` after
        fitting loads a checkpoint whose weights already are the average that epoch validated, or keeps the
        module as fitting left it, the average copied in."""
        return trainer.state.fn == TrainerFn.FITTING and self.began


def weight_averaging(settings: dict[str, Any]) -> list[pl.Callback]:
    """The callbacks of train.py's --average-weights (`cli.averaging_settings`): none for "none"."""
    return [] if settings["average_weights"] == "none" else [AverageWeights(**settings)]
