"""The devices a run trains on: train.py's hardware flags as Lightning's Trainer arguments, checked before any data
is read."""

from __future__ import annotations

import argparse
import logging
import warnings
from typing import Any

import torch
from torch import nn

from aae_lightning.distributed import check_batchnorm, training_strategy
from aae_lightning.errors import UserError, first_line, flag

#: the Trainer arguments Lightning checks, each set by the flag of its name, in the order its checks are asked for
LIGHTNING_ARGUMENTS = ("accelerator", "devices", "num_nodes", "strategy", "precision")


def hardware_settings(args: argparse.Namespace) -> dict[str, Any]:
    """Lightning 2 has no `gpus` argument: map --gpus (and the pass-through flags) to accelerator/devices."""
    accelerator, devices = args.accelerator, args.devices
    if args.gpus is not None and accelerator is None:
        if args.gpus < 0:
            raise UserError(f"--gpus must be 0 (CPU) or a positive number of CUDA devices, got {args.gpus}")
        visible = torch.cuda.device_count()
        if args.gpus > visible:
            raise UserError(
                f"--gpus {args.gpus} asks for {args.gpus} CUDA device(s) but {visible} visible; "
                "use --gpus 0 to train on the CPU"
            )
        accelerator = "gpu" if args.gpus > 0 else "cpu"
        devices = devices or max(args.gpus, 1)
    settings = {
        "accelerator": accelerator or "auto",
        "devices": devices or 1,
        "num_nodes": args.num_nodes,
        "strategy": args.strategy or "auto",
        "precision": args.precision,
    }
    check_lightning_flags(settings)
    return {**settings, "strategy": training_strategy(args.strategy, processes(settings))}


def check_precision(precision: str, optimizer: str) -> None:
    """A precision the optimizer cannot train in is a `UserError`: with float16 weights (16-true) Adam's eps
    (1e-8) rounds to 0, so a parameter whose gradient is tiny moves by the whole learning rate at every step (the
    small aae's weights went from 0.7 to 142 in two steps, the supervised one's to 746). bfloat16 keeps float32's
    exponent range and trains."""
    if str(precision) == "16-true" and optimizer == "adam":
        raise UserError(
            "--precision 16-true with --optimizer adam: Adam's eps (1e-8) is 0 in float16 and its steps blow the "
            "weights up; use bf16-true, bf16-mixed, or 16-mixed on a GPU"
        )


def sync_batchnorm(model: nn.Module, settings: dict[str, Any]) -> bool:
    """The Trainer's `sync_batchnorm` for `model` trained with these settings (see `check_batchnorm`)."""
    accelerator = settings["accelerator"]
    if accelerator == "auto":
        accelerator = "gpu" if torch.cuda.is_available() else "cpu"
    has_batchnorm = any(isinstance(module, nn.BatchNorm1d) for module in model.modules())
    return check_batchnorm(has_batchnorm, accelerator, processes(settings))


def processes(settings: dict[str, Any]) -> int:
    """How many processes train with these Trainer arguments: one per device on every node."""
    return settings["devices"] * settings["num_nodes"]


def check_lightning_flags(settings: dict[str, Any]) -> None:
    """What Lightning refuses of these Trainer arguments (`LIGHTNING_ARGUMENTS`) is a `UserError` naming the flag.
    Lightning itself would refuse only once the training Trainer is built, after the data is read, and with a
    traceback. A bare Trainer answers here, built with one more argument each time, so that a refusal is the last
    one's. Building a Trainer builds its accelerator, strategy and precision objects only: nothing is launched."""
    import pytorch_lightning as pl

    asked: dict[str, Any] = {}
    disabled = logging.root.manager.disable
    # what Lightning would say here ("Using bfloat16 ...", a fallback's warning) the real Trainer says later
    logging.disable(logging.INFO)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for name in LIGHTNING_ARGUMENTS:
                asked[name] = settings[name]
                try:
                    pl.Trainer(
                        **asked,
                        logger=False,
                        enable_checkpointing=False,
                        enable_progress_bar=False,
                        enable_model_summary=False,
                    )
                except Exception as error:  # ValueError, MisconfigurationException, ...: Lightning's choice  # noqa: BLE001
                    reason = first_line(error) or type(error).__name__
                    raise UserError(f"{flag(name)} {settings[name]} is refused by Lightning: {reason}") from None
    finally:
        logging.disable(disabled)
