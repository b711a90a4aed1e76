"""Precision: every precision Lightning accepts on the CPU trains every variant (but 16-true with Adam, which
train.py refuses), everything a phase creates
follows the module's dtype, and under mixed precision each phase sees the weights the previous phase's step wrote
(Lightning from 2.6 on autocasts without a weight cache; setup.cfg requires it)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import torch
from torch import nn

from aae_lightning import VARIANTS
from aae_lightning.errors import UserError
from aae_lightning.hardware import check_precision
from tests.helpers import make_trainer, small_model, tiny_datamodule

#: what Lightning accepts for accelerator="cpu" (transformer-engine needs its package and a GPU; train.py refuses it)
CPU_PRECISIONS = ["32-true", "64-true", "16-true", "bf16-true", "16-mixed", "bf16-mixed"]


def fit(model: pl.LightningModule, data_dir: Path, batches: int, **trainer_settings: Any) -> pl.Trainer:
    trainer = make_trainer(batches, **{"limit_val_batches": 1, **trainer_settings})
    trainer.fit(model, tiny_datamodule(data_dir, model))
    return trainer


def trains_in(precision: str, variant: str) -> bool:
    """Whether train.py lets the variant (with its own optimizer) train in this precision (`check_precision`)."""
    try:
        check_precision(precision, VARIANTS[variant].Hparams().optimizer)
    except UserError:
        return False
    return True


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("precision", CPU_PRECISIONS)
def test_every_variant_trains_under_every_cpu_precision(variant: str, precision: str, tiny_mnist_dir: Path) -> None:
    if not trains_in(precision, variant):
        pytest.skip(f"train.py refuses {variant} with {precision} (see test_adam_in_float16_weights_is_refused...)")
    torch.manual_seed(0)
    model = small_model(variant)
    before = [p.detach().clone() for p in model.parameters()]
    trainer = fit(model, tiny_mnist_dir, batches=2, precision=precision)
    after = list(model.parameters())
    assert all(torch.isfinite(p).all() for p in after), "a parameter is not finite"
    moved = [not torch.equal(a.to(b.dtype), b) for a, b in zip(after, before, strict=True)]
    assert sum(moved) > len(moved) // 2, f"only {sum(moved)} of {len(moved)} parameter tensors moved"
    assert all(torch.isfinite(value).all() for value in trainer.callback_metrics.values())


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
@pytest.mark.parametrize("variant", sorted(name for name, cls in VARIANTS.items() if "regularization" in cls.phases))
def test_prior_samples_follow_the_module_dtype(variant: str, dtype: torch.dtype) -> None:
    model = small_model(variant).to(dtype)
    batch = {
        "x": torch.rand(4, 784, dtype=dtype),
        "labeled_x": torch.rand(4, 784, dtype=dtype),
        "labeled_y": torch.arange(4),
    }
    codes = model.regularized_codes(batch)
    for name, reals in model.prior_samples(batch, codes).items():
        assert reals.dtype == dtype, name
        assert reals.shape == codes[name].shape, name


class ZeroFirstEncoderLayerAfterReconstruction(pl.Callback):
    """After the reconstruction phase's optimizer step, the encoder's first layer weights become zero, and every
    later use of that layer in the batch is recorded."""

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.layer = next(module for module in pl_module.encoder.modules() if isinstance(module, nn.Linear))
        self.outputs: list[torch.Tensor] = []
        self.stepped = False
        trainer.optimizers[0].register_step_post_hook(self.zero_weights)
        self.layer.register_forward_hook(self.record)

    def zero_weights(self, optimizer: torch.optim.Optimizer, args: object, kwargs: object) -> None:
        with torch.no_grad():
            self.layer.weight.zero_()
        self.stepped = True

    def record(self, module: nn.Module, inputs: object, output: torch.Tensor) -> None:
        if self.stepped:
            self.outputs.append(output.detach())


@pytest.mark.parametrize("precision", ["bf16-mixed"])  # 16-mixed on a CPU is bf16-mixed (Lightning says so)
def test_each_phase_sees_the_weights_the_previous_phase_stepped_to(precision: str, tiny_mnist_dir: Path) -> None:
    """A weight cast cached at the reconstruction phase's forward pass would give the adversarial phases' encoder
    pass the old weights: its first layer would still tell the images apart."""
    recorder = ZeroFirstEncoderLayerAfterReconstruction()
    fit(small_model("aae"), tiny_mnist_dir, batches=1, precision=precision, callbacks=[recorder], limit_val_batches=0)
    assert recorder.outputs, "the encoder ran no pass after the reconstruction step"
    first_pass_after_step = recorder.outputs[0]
    # zero weights: every image gets the bias alone
    assert torch.equal(first_pass_after_step, first_pass_after_step[:1].expand_as(first_pass_after_step))


def test_adam_in_float16_weights_is_refused_and_sgd_is_not() -> None:
    """Adam's eps is 0 in float16: a few steps blow the weights up. SGD has no such term and trains."""
    with pytest.raises(UserError, match="^--precision 16-true with --optimizer adam: Adam's eps"):
        check_precision("16-true", "adam")
    check_precision("16-true", "sgd")
    for precision in ("32-true", "64-true", "bf16-true", "bf16-mixed", "16-mixed"):
        check_precision(precision, "adam")
    assert [variant for variant in sorted(VARIANTS) if not trains_in("16-true", variant)] == [
        "aae",
        "ae",
        "clustering",
        "label_regularized",
        "supervised",
    ]


def test_a_trainer_built_in_python_refuses_adam_on_float16_weights(tiny_mnist_dir: Path) -> None:
    """The module's own guard, for a Trainer that train.py's flag check never saw."""
    model = small_model("aae")
    with pytest.raises(UserError, match="^Adam cannot train float16 weights"):
        fit(model, tiny_mnist_dir, batches=1, precision="16-true")
    fit(small_model("aae", optimizer="sgd"), tiny_mnist_dir, batches=1, precision="16-true")
