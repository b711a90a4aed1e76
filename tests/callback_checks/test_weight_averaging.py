"""Weight averaging (callbacks/weight_averaging.py, train.py's --average-weights) on a module trained in this process:
training is the same with and without it, the epochs before its first one validate the trained weights, the later
ones the average of the weights after each of their batches (the mean for swa, the moving average for ema, and
exactly what torch's AveragedModel makes of the same weights), checkpoints hold the average as their weights and
the trained weights beside it, and validating or testing a checkpoint after fitting scores its average; a checkpoint
of Lightning's own `WeightAveraging` is told apart and not resumed by train.py.

The model is the clustering one with batch normalization in its encoder (buffers averaged too) and dropout (training
draws random numbers). A `Recorder` keeps the module's state after every training batch and at the first batch of
every validation and test. Checked on every `device` (conftest.py); the run in float64, on the CPU.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import WeightAveraging
from pytorch_lightning.trainer.states import TrainerFn
from torch import Tensor
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn, get_swa_avg_fn

from aae_lightning import AutoencoderBase
from aae_lightning.checkpoint_io import (
    AVERAGING_KEY,
    NO_AVERAGING,
    check_averaging_resumable,
    load_trained,
    weights_held,
)
from aae_lightning.errors import UserError
from aae_lightning.run_folder import checkpoint_callbacks
from callbacks.weight_averaging import AverageWeights
from tests.helpers import assert_same_tensors, load_checkpoint, make_trainer, small_model, tiny_datamodule

EPOCHS, BATCHES, VAL_BATCHES = 3, 4, 2
#: counted from 1, as the flag: epoch 1 validates the trained weights, epochs 2 and 3 the average of their 8 batches
FROM_EPOCH = 2
#: far from 1, so that the moving average of 8 batches differs from the equal one
EMA_DECAY = 0.7
MODEL = {"encoder_batchnorm": True, "input_dropout": 0.2, "dropout": 0.1}
SETTINGS = {
    "plain": None,
    "swa": {"average_weights": "swa", "average_from_epoch": FROM_EPOCH, "ema_decay": None},
    "ema": {"average_weights": "ema", "average_from_epoch": FROM_EPOCH, "ema_decay": EMA_DECAY},
}
State = dict[str, Tensor]


def snapshot(module: torch.nn.Module) -> State:
    return {name: value.detach().clone() for name, value in module.state_dict().items()}


class Recorder(pl.Callback):
    """The module's state after every training batch (with its 0-based epoch), and at the first batch of every
    validation while fitting (by epoch) and of `trainer.validate` and `trainer.test` afterwards: what each scored."""

    def __init__(self) -> None:
        self.trained: list[tuple[int, State]] = []
        self.validated: dict[int, State] = {}
        self.scored: dict[str, State] = {}

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self.trained.append((trainer.current_epoch, snapshot(pl_module)))

    def on_validation_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        if batch_idx > 0 or trainer.sanity_checking:
            return
        if trainer.state.fn == TrainerFn.FITTING:
            self.validated[trainer.current_epoch] = snapshot(pl_module)
        else:
            self.scored["validate"] = snapshot(pl_module)

    def on_test_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        if batch_idx == 0:
            self.scored["test"] = snapshot(pl_module)

    def last_of_epoch(self, epoch: int) -> State:
        return [state for at, state in self.trained if at == epoch][-1]

    def averaged(self, through_epoch: int) -> list[State]:
        """The states after the batches an average through (0-based) `through_epoch` takes in."""
        return [state for at, state in self.trained if FROM_EPOCH - 1 <= at <= through_epoch]


@dataclass
class Fitted:
    model: AutoencoderBase
    trainer: pl.Trainer
    datamodule: Any
    recorder: Recorder
    #: the module's state when fitting ended (later tests validate and test through the same trainer)
    after_fit: State
    checkpoints: Path


def fit(data_dir: Path, run_dir: Path, device: str, settings: dict[str, Any] | None, **trainer: Any) -> Fitted:
    pl.seed_everything(0, workers=True, verbose=False)
    model = small_model("clustering", **MODEL)
    datamodule = tiny_datamodule(data_dir, model)
    recorder = Recorder()
    best, last = checkpoint_callbacks(run_dir, *model.monitor, every_n_epochs=1)
    averaging = [] if settings is None else [AverageWeights(**settings)]
    fitter = make_trainer(
        BATCHES,
        EPOCHS,
        [recorder, *averaging, best, last],
        accelerator=device,
        limit_val_batches=VAL_BATCHES,
        enable_checkpointing=True,
        **trainer,
    )
    fitter.fit(model, datamodule)
    return Fitted(model, fitter, datamodule, recorder, snapshot(model), run_dir / "checkpoints")


@pytest.fixture(scope="module")
def fits(device: str, tiny_mnist_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Fitted]:
    """The same run without averaging, with swa and with ema."""
    return {
        name: fit(tiny_mnist_dir, tmp_path_factory.mktemp(name), device, settings)
        for name, settings in SETTINGS.items()
    }


def floats(state: State) -> State:
    """The floating-point entries, on the CPU: BatchNorm's num_batches_tracked counts, its average means nothing."""
    return {name: value.cpu() for name, value in state.items() if value.is_floating_point()}


def by_definition(kind: str, states: list[State]) -> State:
    """The average of `states` by its definition, in float64: swa their mean; ema the first, then for each next
    one decay * average + (1 - decay) * it."""
    if kind == "swa":
        return {name: torch.stack([floats(s)[name].double() for s in states]).mean(0) for name in floats(states[0])}
    average = {name: value.double() for name, value in floats(states[0]).items()}
    for state in states[1:]:
        average = {
            name: EMA_DECAY * value + (1 - EMA_DECAY) * floats(state)[name].double() for name, value in average.items()
        }
    return average


def assert_close(actual: State, expected: State, where: str) -> None:
    actual = floats(actual)
    assert actual.keys() == expected.keys(), where
    for name, value in expected.items():
        torch.testing.assert_close(actual[name].double(), value, rtol=1e-5, atol=1e-6, msg=f"{where}: {name}")


def differs(a: State, b: State) -> bool:
    a, b = floats(a), floats(b)
    return any(not torch.allclose(a[name], b[name], rtol=1e-4, atol=1e-5) for name in a)


@pytest.mark.parametrize("kind", ["swa", "ema"])
def test_training_is_the_same_with_and_without_averaging(fits: dict[str, Fitted], kind: str) -> None:
    plain, averaged = fits["plain"].recorder.trained, fits[kind].recorder.trained
    assert [epoch for epoch, _ in averaged] == [epoch for epoch, _ in plain] == sorted(list(range(EPOCHS)) * BATCHES)
    assert_same_tensors([state for _, state in plain], [state for _, state in averaged], "weights after each batch")


def test_without_averaging_every_epoch_validates_the_trained_weights(fits: dict[str, Fitted]) -> None:
    recorder = fits["plain"].recorder
    assert sorted(recorder.validated) == list(range(EPOCHS))
    for epoch, validated in recorder.validated.items():
        assert_same_tensors(validated, recorder.last_of_epoch(epoch), f"epoch {epoch}")


@pytest.mark.parametrize("kind", ["swa", "ema"])
def test_epochs_before_the_first_averaged_one_validate_the_trained_weights(fits: dict[str, Fitted], kind: str) -> None:
    """Not the module as it was built, which Lightning's average holds until its first update."""
    recorder = fits[kind].recorder
    for epoch in range(FROM_EPOCH - 1):
        assert_same_tensors(recorder.validated[epoch], recorder.last_of_epoch(epoch), f"epoch {epoch}")


@pytest.mark.parametrize("kind", ["swa", "ema"])
def test_later_epochs_validate_the_average_of_the_weights_after_each_of_their_batches(
    fits: dict[str, Fitted], kind: str
) -> None:
    recorder = fits[kind].recorder
    for epoch in range(FROM_EPOCH - 1, EPOCHS):
        validated = recorder.validated[epoch]
        assert_close(validated, by_definition(kind, recorder.averaged(epoch)), f"{kind}, epoch {epoch}")
        assert differs(validated, recorder.last_of_epoch(epoch)), f"{kind}, epoch {epoch}: the latest weights"
    # the decay matters: the moving average is not the equal one
    assert differs(fits["swa"].recorder.validated[EPOCHS - 1], fits["ema"].recorder.validated[EPOCHS - 1])


@pytest.mark.parametrize("kind", ["swa", "ema"])
def test_the_average_is_what_torchs_averaged_model_makes_of_the_same_weights(
    fits: dict[str, Fitted], kind: str, device: str
) -> None:
    fitted = fits[kind]
    feeder = small_model("clustering", **MODEL).to(device)
    averaging = {"avg_fn": get_swa_avg_fn()} if kind == "swa" else {"multi_avg_fn": get_ema_multi_avg_fn(EMA_DECAY)}
    reference = AveragedModel(feeder, use_buffers=True, **averaging)
    for state in fitted.recorder.averaged(EPOCHS - 1):
        feeder.load_state_dict(state)
        reference.update_parameters(feeder)
    last = load_checkpoint(fitted.checkpoints / "last.ckpt")
    expected = {name: value.cpu() for name, value in reference.module.state_dict().items()}
    assert_same_tensors(last["state_dict"], expected, "last.ckpt's weights")
    assert (
        int(last["averaging_state"]["n_averaged"]) == int(reference.n_averaged) == (EPOCHS - FROM_EPOCH + 1) * BATCHES
    )


@pytest.mark.parametrize("kind", ["swa", "ema"])
def test_checkpoints_hold_the_average_with_the_trained_weights_beside_it(fits: dict[str, Fitted], kind: str) -> None:
    fitted = fits[kind]
    last = load_checkpoint(fitted.checkpoints / "last.ckpt")
    validated = {name: value.cpu() for name, value in fitted.recorder.validated[EPOCHS - 1].items()}
    trained = {name: value.cpu() for name, value in fitted.recorder.trained[-1][1].items()}
    assert_same_tensors(last["state_dict"], validated, "state_dict: the weights the last epoch validated")
    assert_same_tensors(last["current_model_state"], trained, "current_model_state: the trained weights")
    assert last[AVERAGING_KEY] == SETTINGS[kind]
    assert last["callbacks"]["AverageWeights"] == {"latest_update_step": last["global_step"]}
    # fitting ends with the average in the module, as the best checkpoint and --test see it
    assert_same_tensors({name: value.cpu() for name, value in fitted.after_fit.items()}, validated, "after fit")
    # evaluate.py and the notebooks start from load_trained: they score the average
    model, _ = load_trained(fitted.checkpoints / "last.ckpt")
    assert_same_tensors(model.state_dict(), validated, "load_trained")
    count = (EPOCHS - FROM_EPOCH + 1) * BATCHES
    assert weights_held(last) == f"{kind} average of {count} batches from epoch {FROM_EPOCH}"


def test_a_checkpoint_without_averaging_holds_the_trained_weights_alone(fits: dict[str, Fitted]) -> None:
    fitted = fits["plain"]
    last = load_checkpoint(fitted.checkpoints / "last.ckpt")
    trained = {name: value.cpu() for name, value in fitted.recorder.trained[-1][1].items()}
    assert_same_tensors(last["state_dict"], trained, "state_dict")
    assert not {"current_model_state", "averaging_state", AVERAGING_KEY} & last.keys()
    assert weights_held(last) == "trained"


def test_validate_and_test_after_fitting_score_the_checkpoints_average(fits: dict[str, Fitted]) -> None:
    """Lightning's callback would load the checkpoint's trained weights into the module for `trainer.test`."""
    fitted = fits["swa"]
    path = fitted.checkpoints / "last.ckpt"
    average = load_checkpoint(path)["state_dict"]
    fitted.trainer.validate(fitted.model, datamodule=fitted.datamodule, ckpt_path=str(path), verbose=False)
    fitted.trainer.test(fitted.model, datamodule=fitted.datamodule, ckpt_path=str(path), verbose=False)
    for stage in ("validate", "test"):
        scored = {name: value.cpu() for name, value in fitted.recorder.scored[stage].items()}
        assert_same_tensors(scored, average, stage)


def test_the_callback_pickles_for_the_processes_ddp_spawn_starts() -> None:
    """torch's averaging functions are closures, which pickle refuses: the callback travels as its settings."""
    for settings in (SETTINGS["swa"], SETTINGS["ema"]):
        again = pickle.loads(pickle.dumps(AverageWeights(**settings)))
        assert isinstance(again, AverageWeights) and again.settings == settings


def test_float64_training_is_the_same_with_and_without_averaging(tiny_mnist_dir: Path, tmp_path: Path) -> None:
    """The average is kept in the module's dtype: in float32, swapping it in and out for validation would round
    the float64 weights training goes on with."""
    plain = fit(tiny_mnist_dir, tmp_path / "plain", "cpu", None, precision="64-true")
    averaged = fit(tiny_mnist_dir, tmp_path / "swa", "cpu", SETTINGS["swa"], precision="64-true")
    assert_same_tensors(
        [state for _, state in plain.recorder.trained],
        [state for _, state in averaged.recorder.trained],
        "weights after each batch",
    )
    average = floats(load_checkpoint(averaged.checkpoints / "last.ckpt")["state_dict"])
    assert {value.dtype for value in average.values()} == {torch.float64}


def test_a_checkpoint_of_lightnings_own_weight_averaging_is_told_apart_and_not_resumed(
    tiny_mnist_dir: Path, tmp_path: Path
) -> None:
    """A Python user's Trainer with Lightning's `WeightAveraging` writes the average and the trained weights as this
    callback does, but none of the settings: evaluate.py names the average by its count, and train.py, which could
    not tell the averaging that continues it, refuses to resume it."""
    pl.seed_everything(0, workers=True, verbose=False)
    model = small_model("clustering")
    best, last = checkpoint_callbacks(tmp_path, *model.monitor, every_n_epochs=1)
    trainer = make_trainer(
        BATCHES, 1, [WeightAveraging(), best, last], limit_val_batches=VAL_BATCHES, enable_checkpointing=True
    )
    trainer.fit(model, tiny_datamodule(tiny_mnist_dir, model))
    checkpoint = load_checkpoint(tmp_path / "checkpoints" / "last.ckpt")
    assert {"current_model_state", "averaging_state"} <= checkpoint.keys() and AVERAGING_KEY not in checkpoint
    assert weights_held(checkpoint) == f"average of {BATCHES} updates, settings unknown"
    swa = {"average_weights": "swa", "average_from_epoch": 1, "ema_decay": None}
    for averaging in (NO_AVERAGING, swa):
        with pytest.raises(UserError, match="^last.ckpt holds an average of Lightning's WeightAveraging without"):
            check_averaging_resumable(checkpoint, "last.ckpt", averaging)
