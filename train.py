"""Train an adversarial autoencoder variant on MNIST.

    python train.py --variant semi --labels 100 --gpus 1
    python train.py --variant aae --prior mixture --data-dir ../shared/data --gpus 0 --logger csv

Every bad flag or file ends with one line on stderr and exit code 2; a NaN or infinite loss with one line
naming the phase, epoch and batch, and exit code 3.

This file composes a run; the parts live in aae_lightning/: the flags in cli.py (presets in presets.py), the
devices in hardware.py, the run folder and its checkpoints in run_folder.py.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aae_lightning import NonFiniteLossError, cli, get_variant, run_folder
from aae_lightning.checkpoint_io import AtomicCheckpointIO, weights_held_at
from aae_lightning.console import quiet_console
from aae_lightning.distributed import leave_process_group
from aae_lightning.errors import UserError, in_flag_terms
from aae_lightning.hardware import check_precision, hardware_settings, processes, sync_batchnorm
from aae_lightning.run_folder import checkpoint_callbacks, keep_csv_history, resolve_run, resumed_epoch, wandb_run_id
from datamodules import DataError, MNISTDataModule
from datamodules.mnist import check_global_batch_sizes

if TYPE_CHECKING:  # for annotations; the functions import what they use where they need it, as the rest of this file
    import pytorch_lightning as pl


def train(args: argparse.Namespace) -> dict[str, Any]:
    """Train the variant of the flags; returns (and prints) the best checkpoint's validation and test metrics."""
    import pytorch_lightning as pl
    from pytorch_lightning.callbacks import ProgressBar

    from callbacks.parzen import ParzenLikelihood
    from callbacks.weight_averaging import weight_averaging

    cls = get_variant(args.variant)
    hparams = cli.model_hparams(args)
    hardware = hardware_settings(args)
    # checked before Lightning starts the other processes, so the user sees the message once
    check_global_batch_sizes(processes(hardware), args.batch_size, args.labeled_batch_size)
    pl.seed_everything(args.seed, workers=True, verbose=False)
    model = cls(**hparams)
    cli.check_parzen_flags(args, ParzenLikelihood.unsupported(model))
    cli.check_averaging_flags(args)
    check_precision(args.precision, model.config.optimizer)
    hardware["sync_batchnorm"] = sync_batchnorm(model, hardware)
    datamodule = MNISTDataModule(
        data_dir=args.data_dir,
        num_labels=cli.split_labels(args),
        val_size=args.val_size,
        batch_size=args.batch_size,
        labeled_batch_size=args.labeled_batch_size,
        seed=args.seed,
        download=args.download,
        train_streams=cls.train_streams,
    )
    run_dir, ckpt_path = resolve_run(args)
    averaging = cli.averaging_settings(args)
    resumed = resumed_epoch(ckpt_path, run_dir, args.variant, dict(model.hparams), dict(datamodule.hparams), averaging)
    if "LOCAL_RANK" not in os.environ and "SLURM_PROCID" not in os.environ:
        # Bad data or split settings end here in one line, before Lightning prints its banner. Only a process no
        # launcher started: Lightning's DDP launcher starts the other ranks later, once the files are in place.
        datamodule.prepare_data()
        datamodule.setup("fit")
    monitor, mode = (ParzenLikelihood.metric, "max") if args.parzen_every_n_epochs else cls.monitor
    best, last = checkpoint_callbacks(run_dir, monitor, mode, every_n_epochs=args.parzen_every_n_epochs or 1)
    # the average after the observers: Lightning calls the callbacks in order, and the images and the Parzen
    # estimate at the end of validation must see the weights validated, before the average swaps them back out
    callbacks = [best, *observers(args), *weight_averaging(averaging), last]
    trainer = pl.Trainer(
        **hardware,
        max_epochs=args.max_epochs,
        logger=make_logger(args, run_dir, {"variant": args.variant, **hparams, **datamodule.hparams}, resumed),
        callbacks=callbacks,
        plugins=[AtomicCheckpointIO()],
        default_root_dir=run_dir,
        fast_dev_run=args.fast_dev_run,
        log_every_n_steps=args.log_every_n_batches,
        enable_progress_bar=any(isinstance(callback, ProgressBar) for callback in callbacks),
    )
    trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path and str(ckpt_path))
    best_path = best.best_model_path or None
    results: dict[str, Any] = {
        "variant": args.variant,
        "run_dir": str(run_dir),
        "best_checkpoint": best_path,
        "weights": weights_held_at(best_path),  # the trained ones, or the average --average-weights validated
        "epochs": trainer.current_epoch,
        "split": datamodule.split.summary(),
        "val": scalars(
            without_loggers(trainer, trainer.validate, model, datamodule=datamodule, ckpt_path=best_path, verbose=False)
        ),
    }
    if args.test:
        results["test"] = scalars(trainer.test(model, datamodule=datamodule, ckpt_path=best_path, verbose=False))
    if trainer.is_global_zero:
        print(json.dumps(results, indent=2))
        if args.results_json is not None:
            args.results_json.parent.mkdir(parents=True, exist_ok=True)
            args.results_json.write_text(json.dumps(results, indent=2) + "\n")
    return results


def observers(args: argparse.Namespace) -> list[pl.Callback]:
    """The callbacks beside the checkpoints: the run config and W&B axis, the images (unless
    --image-every-n-epochs 0), the Parzen estimate (with --parzen-every-n-epochs) and those of --progress.
    Imported here: matplotlib is not needed before training starts."""
    from callbacks.images import image_callbacks
    from callbacks.parzen import ParzenLikelihood
    from callbacks.progress import progress_callbacks
    from callbacks.run_config import LogRunConfig
    from callbacks.wandb_setup import WandbEpochAxis

    parzen = []
    if args.parzen_every_n_epochs:
        parzen.append(
            ParzenLikelihood(
                args.parzen_every_n_epochs,
                seed=args.seed,
                samples=args.parzen_samples,
                sigma_images=args.parzen_val_size,
                scored_images=args.parzen_score_size,
            )
        )
    return [
        LogRunConfig(),
        WandbEpochAxis(),
        *image_callbacks(args.image_every_n_epochs, seed=args.seed),
        *parzen,
        *progress_callbacks(args.progress),
    ]


def make_logger(args: argparse.Namespace, run_dir: Path, config: dict[str, Any], resumed: int | None) -> Any:
    """--logger's logger, writing into the run folder. `resumed`: the last epoch the checkpoint this run resumes in
    its own folder finished (None: a new run)."""
    if args.logger == "none":
        return False
    if args.logger == "csv":
        from pytorch_lightning.loggers import CSVLogger

        logger = CSVLogger(run_dir, name="", version="")
        if resumed is not None:
            keep_csv_history(logger, resumed)
        return logger
    if args.logger == "tensorboard":
        from pytorch_lightning.loggers import TensorBoardLogger

        return TensorBoardLogger(run_dir, name="", version="")
    from callbacks.wandb_setup import make_wandb_logger

    run_id = wandb_run_id(run_dir, resuming=resumed is not None)
    return make_wandb_logger(project=args.project, name=run_dir.name, save_dir=run_dir, config=config, run_id=run_id)


def without_loggers(trainer: pl.Trainer, run: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """`run(*args, **kwargs)` with the trainer's loggers detached. The best checkpoint's validation metrics were
    logged at its epoch during training; logging them again would add a second point, at the number of trained
    epochs, to every logger's validation curves."""
    loggers, trainer.loggers = trainer.loggers, []
    try:
        return run(*args, **kwargs)
    finally:
        trainer.loggers = loggers


def scalars(outputs: list[dict[str, float]]) -> dict[str, float]:
    return {name: float(value) for output in outputs for name, value in output.items()}


def main(argv: list[str] | None = None) -> int:
    quiet_console()
    args = cli.parse_args(argv)
    try:
        with run_folder.run_name_scope():
            train(args)
    except (UserError, DataError, NonFiniteLossError) as error:
        from pytorch_lightning.utilities import rank_zero_only

        if rank_zero_only.rank == 0:  # every DDP process finds the same problem; say it once
            print(f"error: {in_flag_terms(error) if isinstance(error, DataError) else error}", file=sys.stderr)
        return cli.EXIT_DIVERGED if isinstance(error, NonFiniteLossError) else cli.EXIT_USER_ERROR
    finally:
        leave_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
