"""Run by tests/distributed/test_ddp.py as its own program (DDP re-runs the launching script): validate a checkpoint on
`--devices` CPU processes and print the validation metrics as one JSON line from rank 0."""

from __future__ import annotations

import argparse
import json

import pytorch_lightning as pl
import torch

from aae_lightning import get_variant
from aae_lightning.distributed import leave_process_group
from datamodules import MNISTDataModule


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--ckpt", required=True)
    parser.add_argument("--devices", type=int, required=True)
    parser.add_argument("--batch-size", type=int, default=50)
    args = parser.parse_args()
    checkpoint = torch.load(args.ckpt, map_location="cpu", weights_only=False)
    cls = get_variant(checkpoint["aae_variant"])
    model = cls.load_from_checkpoint(args.ckpt, map_location="cpu")
    split = checkpoint["datamodule_hyper_parameters"]
    datamodule = MNISTDataModule(**{**split, "batch_size": args.batch_size})
    trainer = pl.Trainer(
        accelerator="cpu", devices=args.devices, logger=False, enable_progress_bar=False, enable_model_summary=False
    )
    metrics = trainer.validate(model, datamodule=datamodule, verbose=False)[0]
    if trainer.is_global_zero:
        print(json.dumps({"devices": args.devices, **{k: float(v) for k, v in metrics.items()}}), flush=True)
    leave_process_group()


if __name__ == "__main__":
    main()
