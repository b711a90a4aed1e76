"""Checkpoint files: written so that a crash never leaves a broken one, read back with one-line errors.

`AtomicCheckpointIO` is the Lightning plugin train.py writes every checkpoint through: the new checkpoint goes
to a temporary file in the same folder, is flushed to the disk, and only then renamed over the old one. A
rename within one file system is atomic, so `last.ckpt` is at every instant either the complete old checkpoint
or the complete new one, whether the process dies of an exception, SIGKILL or a power cut during the write.

`read_checkpoint` and `check_resumable` are what train.py checks a `--ckpt-path` with before handing it to
Lightning, which would otherwise fail with a traceback deep inside its restore logic. `load_trained` is where the
notebooks start: the model of any variant and its data, with the split it was trained on.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from pytorch_lightning.plugins import TorchCheckpointIO

from aae_lightning.errors import UserError, first_line, flag, in_flag_terms, shown

if TYPE_CHECKING:
    from aae_lightning.base import AutoencoderBase
    from datamodules import MNISTDataModule

#: what every checkpoint train.py writes holds, beyond Lightning's own keys
REQUIRED_KEYS = ("aae_variant", "hyper_parameters", "state_dict", "datamodule_hyper_parameters")
#: where a checkpoint of a run with --average-weights records its averaging (`cli.averaging_settings`); a checkpoint
#: without it was trained without, or averaged by Lightning's own `WeightAveraging` (`current_model_state`)
AVERAGING_KEY = "aae_weight_averaging"
#: the averaging of a run without --average-weights, as `cli.averaging_settings` gives it, and so what a checkpoint
#: without `AVERAGING_KEY` and without an average was trained with. Here, not in cli.py: reading a checkpoint needs
#: no parser.
NO_AVERAGING = {"average_weights": "none", "average_from_epoch": None, "ema_decay": None}
#: datamodule settings that may change between a run and its resumption: where the files are, not what they are
RELOCATABLE = ("data_dir", "download")


def temporary_path(path: Path, pid: int | str | None = None) -> Path:
    """Where `path` is written before it is renamed into place: hidden, in the same folder (a rename across
    file systems would be a copy, and not atomic), and distinct per process (`pid`, default this one's)."""
    return path.with_name(f".{path.name}.{os.getpid() if pid is None else pid}.tmp")


class AtomicCheckpointIO(TorchCheckpointIO):
    """`torch.save` to a temporary file, fsync, then `os.replace` onto the target. If the write fails, the
    temporary file is removed and the previous checkpoint is untouched; one that a killed process left behind
    is removed by the next successful write of the same checkpoint. Local paths only."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = temporary_path(path)
        try:
            with open(temporary, "wb") as file:
                torch.save(checkpoint, file)
                file.flush()
                os.fsync(file.fileno())  # the data must be on the disk before the rename makes it the checkpoint
            os.replace(temporary, path)
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise
        _fsync_directory(path.parent)
        for stale in path.parent.glob(temporary_path(path, "*").name):
            stale.unlink(missing_ok=True)


def _fsync_directory(folder: Path) -> None:
    """Persist the rename itself: without this a power cut can bring back the old directory entry."""
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """A checkpoint written by train.py, loaded on the CPU. A missing file, a file that is not a checkpoint
    (random bytes, text, a truncated write of an older Lightning) or one written by something else is a
    `UserError` naming the file. Checkpoints are unpickled: load trusted files only."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} " + ("is a folder, not a file" if path.is_dir() else "does not exist"))
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # torch.load raises a different type for every kind of bad file  # noqa: BLE001
        raise UserError(f"{path} is not a readable checkpoint ({type(error).__name__}: {first_line(error)})") from None
    if not isinstance(checkpoint, dict):
        raise UserError(f"{path} is not a checkpoint of train.py (it holds a {type(checkpoint).__name__})")
    missing = [key for key in REQUIRED_KEYS if key not in checkpoint]
    if missing:
        raise UserError(f"{path} is not a checkpoint of train.py: it lacks {', '.join(missing)}")
    return checkpoint


#: hyperparameters added after checkpoints were first written, with the value that trains as those did: a checkpoint
#: without one was trained with that value
#: (input_dropout and encoder_batchnorm existed for clustering from the start; semi and dimreduction got them later)
ADDED_LATER = {
    "init_std": 0.0,
    "disc_input_noise": 0.0,
    "labeled_reconstruction": False,
    "class_balance": 0.0,
    "input_dropout": 0.0,
    "encoder_batchnorm": False,
    "head_gradient": "reconstruction",
    "posterior": "deterministic",
    "hidden_dropout": 0.0,
    "head_batchnorm": True,
}


def check_resumable(
    checkpoint: dict[str, Any],
    path: str | Path,
    variant: str,
    hparams: dict[str, Any],
    datamodule_hparams: dict[str, Any],
) -> None:
    """Resuming continues the very run the checkpoint comes from: same variant, same model and data settings
    (the data may have moved). The one setting that may change is the schedule ahead: milestones after the
    checkpoint's epoch, which the epochs it trained never used, so the run stays the one the new flags would
    train from scratch. Anything else is a `UserError` that names every differing flag."""
    if checkpoint["aae_variant"] != variant:
        raise UserError(
            f"{path} is a checkpoint of --variant {checkpoint['aae_variant']}, not {variant}; resume it with "
            f"--variant {checkpoint['aae_variant']}"
        )
    wanted = {**datamodule_hparams, **hparams}
    added_later = {name: value for name, value in ADDED_LATER.items() if name in wanted}
    saved = {**added_later, **checkpoint["datamodule_hyper_parameters"], **checkpoint["hyper_parameters"]}
    differing = [
        f"{flag(name)} {shown(saved.get(name))} (now {shown(wanted.get(name))})"
        for name in sorted(set(saved) | set(wanted))
        if name not in RELOCATABLE
        and _trained_part(name, saved.get(name), checkpoint.get("epoch", 0))
        != _trained_part(name, wanted.get(name), checkpoint.get("epoch", 0))
    ]
    if differing:
        raise UserError(f"{path} was trained with {', '.join(differing)}; resume it with the flags it was trained with")


def check_averaging_resumable(checkpoint: dict[str, Any], path: str | Path, averaging: dict[str, Any]) -> None:
    """The average a checkpoint holds goes on only under the settings that made it: resumed with others, or none,
    the run would end with an average it never took, or drop it and train on from the averaged weights (they are the
    checkpoint's `state_dict`). A checkpoint without one resumes under any averaging that begins after its epochs:
    training never depends on the averaging, so the run is the one those flags train from scratch. A checkpoint
    averaged by Lightning's own `WeightAveraging` records no settings to compare with. `averaging`:
    `cli.averaging_settings` of the flags now. Anything else is a `UserError`."""
    if AVERAGING_KEY not in checkpoint and "current_model_state" in checkpoint:
        raise UserError(
            f"{path} holds an average of Lightning's WeightAveraging without its settings (no {AVERAGING_KEY}): "
            "no --average-weights is known to continue it; resume it with the Trainer callback that wrote it"
        )
    saved = checkpoint.get(AVERAGING_KEY, NO_AVERAGING)
    epoch = checkpoint.get("epoch", 0)
    if average_begun_by(saved, epoch):
        if saved != averaging:
            raise UserError(
                f"{path} holds weights averaged with {_as_flags(saved)} (now {_as_flags(averaging)}); resume it "
                "with the flags it was trained with"
            )
    elif average_begun_by(averaging, epoch):
        raise UserError(
            f"{path} holds no averaged weights of its {epoch + 1} epoch(s): resumed, it can average from "
            f"--average-from-epoch {epoch + 2} on (now {averaging['average_from_epoch']})"
        )


def weights_held(checkpoint: dict[str, Any]) -> str:
    """Which weights a checkpoint's `state_dict` holds, the ones `load_trained` and evaluate.py score: the trained
    ones, or the average a run with --average-weights validated in their place (the trained ones are then in
    `current_model_state`, as Lightning's `WeightAveraging` writes it). A checkpoint of Lightning's own
    `WeightAveraging` (a Python user's Trainer) records no settings: its average is told by its count alone."""
    if "averaging_state" not in checkpoint:
        return "trained"
    count = int(checkpoint["averaging_state"]["n_averaged"])
    settings = checkpoint.get(AVERAGING_KEY)
    if settings is None:
        return f"average of {count} updates, settings unknown"
    return f"{settings['average_weights']} average of {count} batches from epoch {settings['average_from_epoch']}"


def weights_held_at(path: str | Path | None) -> str | None:
    """`weights_held` of the checkpoint at `path` (read with `read_checkpoint`); None for no checkpoint."""
    return None if path is None else weights_held(read_checkpoint(path))


def average_begun_by(settings: dict[str, Any], epoch: int) -> bool:
    """Whether a run averaging with `settings` (`cli.averaging_settings`) has begun its average by the end of its
    `epoch`, counted from 0 as Lightning counts (the flag counts from 1). Once begun, the average takes in every
    batch: so this is also whether the batches of that epoch are averaged."""
    return settings["average_weights"] != "none" and settings["average_from_epoch"] <= epoch + 1


def _as_flags(settings: dict[str, Any]) -> str:
    return " ".join(f"{flag(name)} {value}" for name, value in settings.items() if value is not None)


def _trained_part(name: str, value: Any, epoch: int) -> Any:
    """What of a setting the checkpoint's epochs trained with. A milestone m first lowers the rates of epoch m,
    so of the milestones only those up to the checkpoint's epoch count (a checkpoint written after its epoch's
    end carries the next epoch's number: that milestone is kept too, which errs on the side of refusing)."""
    value = _comparable(value)
    if name == "lr_milestones" and value is not None:
        return tuple(sorted(milestone for milestone in value if milestone <= epoch))
    return value


def _comparable(value: Any) -> Any:
    # hyperparameters may come back from a checkpoint as lists where the flags give tuples
    return tuple(value) if isinstance(value, list) else value


def load_trained(
    path: str | Path, data_dir: str | Path | None = None, *, checkpoint: dict[str, Any] | None = None
) -> tuple[AutoencoderBase, MNISTDataModule]:
    """The model a checkpoint of any variant holds, in evaluation mode on the CPU, and its MNIST datamodule set up
    with the split the run trained on (checked against the checkpoint's fingerprint). `data_dir`: where the MNIST
    files are now (default: where the run read them); nothing is downloaded. `checkpoint`: `read_checkpoint(path)`
    where the caller has it already, so that the file is not unpickled once more (Lightning's `load_from_checkpoint`
    reads it itself: it takes a path, not the contents). Data errors are `UserError`s worded in the flags the run
    was trained with, as for train.py."""
    from aae_lightning.registry import get_variant
    from datamodules import DataError, MNISTDataModule

    if checkpoint is None:
        checkpoint = read_checkpoint(path)
    model = get_variant(checkpoint["aae_variant"]).load_from_checkpoint(path, map_location="cpu", weights_only=False)
    settings = {**checkpoint["datamodule_hyper_parameters"], "download": False}
    if data_dir is not None:
        settings["data_dir"] = str(data_dir)
    try:
        datamodule = MNISTDataModule(**settings)
        datamodule.load_state_dict(checkpoint.get(MNISTDataModule.__qualname__, {}))
        datamodule.setup("test")
    except DataError as error:
        raise in_flag_terms(error) from error
    return model.eval(), datamodule
