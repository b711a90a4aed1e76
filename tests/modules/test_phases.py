"""The phase-by-phase training step, driven by a real `pl.Trainer` on tiny MNIST files.

Optimizer step hooks (`register_step_pre_hook` / `register_step_post_hook`, torch's own API) see each phase's
step from the inside: which parameters it changed, which gradients its backward pass wrote, and which networks
were in training mode. Nothing is mocked: the hooks observe the very optimizers Lightning configured. The phase
records and the NaN stops are checked on every `device` (conftest.py): the CPU, and CUDA where there is one.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import CSVLogger
from torch import Tensor

from aae_lightning import VARIANTS, NonFiniteLossError, get_variant
from aae_lightning.base import AutoencoderBase
from tests import helpers
from tests.helpers import make_trainer, tiny_datamodule

SMALL = {"hidden_sizes": (32, 24), "disc_hidden_sizes": (16,), "dropout": 0.2, "input_noise": 0.1}
PAPER_VARIANTS = ("ae", "aae", "supervised", "semi")
NETWORKS = ("encoder", "decoder", "discriminators")


def small_model(name: str, **overrides: Any) -> AutoencoderBase:
    """With dropout and input noise: the phases' train and eval modes make a difference."""
    return helpers.small_model(name, **{**SMALL, **overrides})


def snapshot(model: torch.nn.Module) -> dict[str, Tensor]:
    # on the CPU: Lightning moves the module back there when fitting ends, by an exception too, and the snapshots
    # taken on the device during training are compared with it
    return {name: p.detach().to("cpu", copy=True) for name, p in model.named_parameters()}


def changed(before: dict[str, Tensor], after: dict[str, Tensor]) -> set[str]:
    return {name for name in before if not torch.equal(before[name], after[name])}


def top(name: str) -> str:
    return name.split(".")[0]


@dataclass
class StepRecord:
    phase: str
    batch: int
    #: (parameter, its .grad was None when this phase's backward delivered a gradient to it)
    gradients: list[tuple[str, bool]]
    #: for each network, whether it and every submodule were in training mode (None: mixed)
    modes: dict[str, bool | None]
    before: dict[str, Tensor]
    changed: set[str] = field(default_factory=set)


class PhaseRecorder(pl.Callback):
    """Records every optimizer step of the run, hooked into the optimizers Lightning built."""

    def __init__(self) -> None:
        self.steps: list[StepRecord] = []
        self.pending: list[tuple[str, bool]] = []
        self.batch = -1
        self.requires_grad_after_batch: list[bool] = []
        self.handles: list[Any] = []

    def on_train_start(self, trainer: pl.Trainer, model: AutoencoderBase) -> None:
        for phase, optimizer in zip(model.phases, trainer.optimizers, strict=True):
            self.handles.append(optimizer.register_step_pre_hook(partial(self._before_step, phase, model)))
            self.handles.append(optimizer.register_step_post_hook(partial(self._after_step, model)))
        for name, parameter in model.named_parameters():
            # a tensor hook runs before the gradient is accumulated into .grad, so it can tell a fresh one
            self.handles.append(parameter.register_hook(partial(self._on_gradient, name, parameter)))

    def on_train_end(self, trainer: pl.Trainer, model: AutoencoderBase) -> None:
        for handle in self.handles:
            handle.remove()

    def on_train_batch_start(self, trainer: pl.Trainer, model: AutoencoderBase, batch: Any, batch_idx: int) -> None:
        self.batch = batch_idx

    def on_train_batch_end(self, trainer: pl.Trainer, model: AutoencoderBase, *args: Any) -> None:
        self.requires_grad_after_batch.extend(p.requires_grad for p in model.parameters())

    def _on_gradient(self, name: str, parameter: Tensor, grad: Tensor) -> None:
        self.pending.append((name, parameter.grad is None))

    def _before_step(self, phase: str, model: AutoencoderBase, optimizer: Any, args: Any, kwargs: Any) -> None:
        modes = {}
        for name in NETWORKS:
            flags = {m.training for m in getattr(model, name).modules()}
            modes[name] = flags.pop() if len(flags) == 1 else None
        self.steps.append(StepRecord(phase, self.batch, self.pending, modes, snapshot(model)))
        self.pending = []

    def _after_step(self, model: AutoencoderBase, optimizer: Any, args: Any, kwargs: Any) -> None:
        self.steps[-1].changed = changed(self.steps[-1].before, snapshot(model))


@dataclass
class Run:
    model: AutoencoderBase
    trainer: pl.Trainer
    recorder: PhaseRecorder


BATCHES = 2


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def run(request: pytest.FixtureRequest, device: str, tiny_mnist_dir: Path) -> Run:
    torch.manual_seed(0)
    model = small_model(request.param)
    recorder = PhaseRecorder()
    trainer = make_trainer(BATCHES, callbacks=[recorder], accelerator=device)
    trainer.fit(model, tiny_datamodule(tiny_mnist_dir, model))
    return Run(model, trainer, recorder)


def test_every_phase_steps_once_per_batch_in_order(run: Run) -> None:
    phases = [(step.batch, step.phase) for step in run.recorder.steps]
    assert phases == [(batch, phase) for batch in range(BATCHES) for phase in run.model.phases]
    # manual optimization: global_step counts optimizer steps, one per phase, not batches
    assert run.trainer.global_step == BATCHES * len(run.model.phases)


def test_the_paper_phases_own_the_paper_networks() -> None:
    # what the generic checks below compare against, pinned: a change here changes what each phase may touch
    assert AutoencoderBase.phase_modules == {
        "reconstruction": ("encoder", "decoder"),
        "regularization": ("discriminators",),
        "generator": ("encoder",),
        "classification": ("encoder",),
    }
    for name in PAPER_VARIANTS:
        assert get_variant(name).phase_modules == AutoencoderBase.phase_modules


def test_each_step_changes_its_own_parameters_only(run: Run) -> None:
    for step in run.recorder.steps:
        owners = set(run.model.phase_modules[step.phase])
        touched = {top(name) for name in step.changed}
        assert touched <= owners, f"{step.phase} step changed {touched - owners}"
        assert step.changed, f"{step.phase} step changed nothing"
        if step.phase == "regularization":  # every discriminator learns, not just the first
            assert {name.split(".")[1] for name in step.changed} == set(run.model.discriminators)
        if step.phase in ("reconstruction", "generator", "classification"):
            assert "encoder" in touched


def test_each_step_uses_fresh_gradients_of_its_own_loss_only(run: Run) -> None:
    for step in run.recorder.steps:
        owners = set(run.model.phase_modules[step.phase])
        received = {name for name, _ in step.gradients}
        # frozen networks get no gradient at all: a critic or decoder the loss passes through stays untouched
        assert {top(name) for name in received} <= owners, f"{step.phase} backward wrote into {received}"
        # every gradient arrived into an empty .grad: nothing left over from an earlier phase was added to it
        stale = [name for name, fresh in step.gradients if not fresh]
        assert not stale, f"{step.phase} accumulated onto stale gradients of {stale}"
        # and exactly the parameters that received one moved (Adam moves nothing without a gradient)
        assert step.changed <= received


def test_parameters_are_trainable_again_after_every_batch(run: Run) -> None:
    assert run.recorder.requires_grad_after_batch and all(run.recorder.requires_grad_after_batch)


EXPECTED_MODES = {  # the rule in `_set_train_modes`: a network trains where it is updated; the encoder always
    "reconstruction": {"encoder": True, "decoder": True, "discriminators": False},
    "regularization": {"encoder": True, "decoder": False, "discriminators": True},
    "generator": {"encoder": True, "decoder": False, "discriminators": False},
    "classification": {"encoder": True, "decoder": False, "discriminators": False},
}


def test_train_and_eval_modes_follow_the_phase(run: Run) -> None:
    for step in run.recorder.steps:
        if (
            step.phase in EXPECTED_MODES
            and run.model.phase_modules[step.phase] == AutoencoderBase.phase_modules[step.phase]
        ):
            assert step.modes == EXPECTED_MODES[step.phase], step.phase


def test_dropout_is_really_active_in_the_encoder_and_off_where_a_phase_does_not_update(tiny_mnist_dir: Path) -> None:
    # the mode flags above matter only if they change outputs: dropout makes two passes differ in training mode
    model = small_model("aae", dropout=0.5)
    images = torch.rand(8, 784)
    model._set_train_modes("generator")
    assert not torch.equal(model.encoder(images)["z"], model.encoder(images)["z"])
    assert torch.equal(model.decoder(torch.ones(8, 2)), model.decoder(torch.ones(8, 2)))


class InjectNaN(pl.Callback):
    """Writes NaN into one bias at the start of a given batch and snapshots the parameters right after."""

    def __init__(self, parameter: str, batch: int) -> None:
        self.parameter, self.batch = parameter, batch
        self.at_injection: dict[str, Tensor] = {}

    def on_train_batch_start(self, trainer: pl.Trainer, model: AutoencoderBase, batch: Any, batch_idx: int) -> None:
        if batch_idx == self.batch:
            with torch.no_grad():
                model.get_parameter(self.parameter).fill_(float("nan"))
            self.at_injection = snapshot(model)


def assert_unchanged(before: dict[str, Tensor], model: torch.nn.Module, prefix: str = "") -> None:
    for name, parameter in model.named_parameters():
        if name.startswith(prefix):
            assert torch.allclose(before[name], parameter.detach(), equal_nan=True, rtol=0, atol=0), name


def assert_finite_except(model: torch.nn.Module, poisoned: str) -> None:
    for name, parameter in model.named_parameters():
        if name != poisoned:
            assert torch.isfinite(parameter).all(), f"{name} caught the NaN"


@pytest.mark.parametrize("variant", PAPER_VARIANTS)
def test_a_nan_loss_never_moves_a_parameter_and_stops_training(variant: str, device: str, tiny_mnist_dir: Path) -> None:
    """The NaN phase's steps are skipped on the device; training stops at the next check (here the epoch's end)
    with the phase and the batch named. Later phases with finite losses may step meanwhile."""
    model = small_model(variant)
    last_layer = [name for name, _ in model.decoder.named_parameters()][-1]
    injector = InjectNaN(f"decoder.{last_layer}", batch=2)
    with pytest.raises(NonFiniteLossError, match=r"^reconstruction loss is not finite at epoch 0, batch 2;"):
        make_trainer(4, callbacks=[injector], accelerator=device).fit(model, tiny_datamodule(tiny_mnist_dir, model))
    assert injector.at_injection, "the NaN was never injected"
    assert_unchanged(injector.at_injection, model, prefix="decoder.")  # only the reconstruction phase moves it
    assert_finite_except(model, f"decoder.{last_layer}")


def test_a_logged_batch_stops_training_at_once(tiny_mnist_dir: Path) -> None:
    """On a batch whose losses are logged the host reads the device anyway: the check runs there."""
    model = small_model("aae")
    injector = InjectNaN("discriminators.z.net.0.bias", batch=1)
    stopped_at: list[int] = []

    class RecordBatches(pl.Callback):
        def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
            stopped_at.append(args[-1])

    with pytest.raises(NonFiniteLossError, match=r"^regularization loss is not finite at epoch 0, batch 1;"):
        make_trainer(4, callbacks=[injector, RecordBatches()], log_every_n_steps=2).fit(
            model, tiny_datamodule(tiny_mnist_dir, model)
        )
    assert stopped_at == [0], stopped_at  # batch 1 (the second, a logged one) never finished


def test_a_nan_in_a_later_phase_leaves_that_phase_untouched(device: str, tiny_mnist_dir: Path) -> None:
    model = small_model("aae")
    injector = InjectNaN("discriminators.z.net.0.bias", batch=1)
    with pytest.raises(NonFiniteLossError, match=r"^regularization loss is not finite at epoch 0, batch 1;"):
        make_trainer(4, callbacks=[injector], accelerator=device).fit(model, tiny_datamodule(tiny_mnist_dir, model))
    # reconstruction ran before the NaN phase; the discriminator, whose loss was NaN, never stepped
    assert_unchanged(injector.at_injection, model, prefix="discriminators.")
    assert changed(injector.at_injection, snapshot(model)) & {
        n for n, _ in model.decoder.named_parameters(prefix="decoder")
    }


class RecordLearningRates(pl.Callback):
    """Each optimizer's rate as the epoch's first batch sees it, keyed by (epoch, optimizer index)."""

    def __init__(self) -> None:
        self.by_epoch: dict[tuple[int, int], float] = {}

    def on_train_batch_start(self, trainer: pl.Trainer, model: AutoencoderBase, batch: Any, batch_idx: int) -> None:
        for index, optimizer in enumerate(trainer.optimizers):
            self.by_epoch[trainer.current_epoch, index] = optimizer.param_groups[0]["lr"]


def test_learning_rate_milestones_follow_the_epoch_even_after_resuming(tiny_mnist_dir: Path, tmp_path: Path) -> None:
    settings = {
        "lr_milestones": (2, 3),
        "lr_gamma": 0.5,
        "reconstruction_lr": 1e-3,
        "regularization_lr": 4e-4,
        "generator_lr": 2e-4,
    }
    base = [1e-3, 4e-4, 2e-4]
    factors = {0: 1, 1: 1, 2: 0.5, 3: 0.25}
    expected = {(epoch, index): lr * factor for epoch, factor in factors.items() for index, lr in enumerate(base)}

    model = small_model("aae", **settings)
    through = RecordLearningRates()
    make_trainer(1, epochs=4, callbacks=[through]).fit(model, tiny_datamodule(tiny_mnist_dir, model))
    assert through.by_epoch == pytest.approx(expected)

    # stopped after epoch 1 and resumed: nothing but the epoch counter tells the new run to decay at epoch 2
    model = small_model("aae", **settings)
    first = make_trainer(1, epochs=2)
    first.fit(model, tiny_datamodule(tiny_mnist_dir, model))
    first.save_checkpoint(tmp_path / "epoch1.ckpt")
    model = small_model("aae", **settings)
    resumed = RecordLearningRates()
    make_trainer(1, epochs=4, callbacks=[resumed]).fit(
        model, tiny_datamodule(tiny_mnist_dir, model), ckpt_path=str(tmp_path / "epoch1.ckpt")
    )
    assert resumed.by_epoch == pytest.approx({key: lr for key, lr in expected.items() if key[0] >= 2})


class RecordStepLosses(pl.Callback):
    def __init__(self) -> None:
        self.steps: list[dict[str, float]] = []

    def on_train_batch_end(self, trainer: pl.Trainer, model: AutoencoderBase, *args: Any) -> None:
        self.steps.append({k: v.item() for k, v in trainer.callback_metrics.items() if k.endswith("_step")})


def test_epoch_losses_are_the_means_of_the_step_losses(tiny_mnist_dir: Path) -> None:
    model = small_model("semi")
    recorder = RecordStepLosses()
    trainer = make_trainer(3, epochs=2, callbacks=[recorder], log_every_n_steps=1)
    trainer.fit(model, tiny_datamodule(tiny_mnist_dir, model))
    names = {"recon_loss", "disc_loss_y", "disc_loss_z", "gen_loss_y", "gen_loss_z", "class_loss"}
    assert {key for key in trainer.callback_metrics if key.startswith("train/")} == {
        f"train/{name}_{when}" for name in names for when in ("step", "epoch")
    }
    last_epoch = recorder.steps[3:]  # every batch has the same size, so the epoch mean is the plain mean
    for name in names:
        expected = sum(step[f"train/{name}_step"] for step in last_epoch) / len(last_epoch)
        assert trainer.callback_metrics[f"train/{name}_epoch"].item() == pytest.approx(expected, rel=1e-5)


def test_step_losses_reach_the_logger_every_n_batches(tiny_mnist_dir: Path, tmp_path: Path) -> None:
    """The module hands step losses to Lightning only on the batches its loggers write: each written row must
    hold that very batch's losses (not a stale earlier one), every phase's loss in it."""
    model = small_model("aae")
    batch_losses: list[float] = []
    reconstruction_phase = model.reconstruction_phase

    def recording_reconstruction_phase(batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        loss, logs = reconstruction_phase(batch)
        batch_losses.append(loss.item())
        return loss, logs

    model.reconstruction_phase = recording_reconstruction_phase
    logger = CSVLogger(tmp_path, name="", version="")
    make_trainer(7, epochs=2, logger=logger, log_every_n_steps=3).fit(model, tiny_datamodule(tiny_mnist_dir, model))
    with open(Path(logger.log_dir) / "metrics.csv") as file:
        rows = [row for row in csv.DictReader(file) if row["train/recon_loss_step"]]
    # 14 batches in all, counted across the epoch boundary: the 3rd, 6th, 9th and 12th are written
    assert [int(row["step"]) for row in rows] == [2, 5, 8, 11]
    for row in rows:
        assert float(row["train/recon_loss_step"]) == pytest.approx(batch_losses[int(row["step"])], rel=1e-6)
        for name in ("disc_loss_z", "gen_loss_z"):
            assert torch.isfinite(torch.tensor(float(row[f"train/{name}_step"]))), (name, row)
