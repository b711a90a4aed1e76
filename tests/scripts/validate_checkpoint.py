"""Run by tests/distributed/test_ddp.py as its own program (DDP re-runs the launching script): validate a checkpoint on
2 CPU processes and print the validation metrics as one JSON line from rank 0. The tests validate on one device
in their own process (`validation_metrics`)."""

from __future__ import annotations

import argparse
import json

import pytorch_lightning as pl
import torch

from aae_lightning import get_variant
from aae_lightning.distributed import leave_process_group
from datamodules import MNISTDataModule


def validation_metrics(ckpt: str, devices: int, batch_size: int) -> tuple[dict[str, float], pl.Trainer]:
    """The checkpoint's model validated on its own split, in batches of `batch_size`, on `devices` CPU processes."""
    checkpoint = torch.load(ckpt, map_location="cpu", weights_only=False)
    model = get_variant(checkpoint["aae_variant"]).load_from_checkpoint(ckpt, map_location="cpu")
    split = checkpoint["datamodule_hyper_parameters"]
    datamodule = MNISTDataModule(**{**split, "batch_size": batch_size})
    trainer = pl.Trainer(
        accelerator="cpu", devices=devices, logger=False, enable_progress_bar=False, enable_model_summary=False
    )
    metrics = trainer.validate(model, datamodule=datamodule, verbose=False)[0]
    return {name: float(value) for name, value in metrics.items()}, trainer


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--ckpt", required=True)
    parser.add_argument("--batch-size", type=int, default=50)
    args = parser.parse_args()
    metrics, trainer = validation_metrics(args.ckpt, devices=2, batch_size=args.batch_size)
    if trainer.is_global_zero:
        print(json.dumps(metrics), flush=True)
    leave_process_group()


if __name__ == "__main__":
    main()
