"""What DDP with `find_unused_parameters=True` costs, on CPU processes (gloo).

    python benchmarks/ddp_overhead.py --data-dir ../shared/data [--devices 2] [--batches 60]

Each phase of an adversarial variant updates only some networks, so plain DDP (which waits for a gradient for
every parameter after each backward pass) cannot train them. `find_unused_parameters=True` makes DDP walk the
autograd graph after each backward pass to mark the unused ones. The plain autoencoder uses every parameter in
its one phase, so it can run both ways: the difference between the two is the price of the graph walk. Lightning
starts the other ranks by re-running this script, so it is a program of its own.
"""

from __future__ import annotations

import argparse
import time

import pytorch_lightning as pl
import torch
from pytorch_lightning.strategies import DDPStrategy

from aae_lightning import get_variant
from datamodules import MNISTDataModule

WARMUP_BATCHES = 10


class BatchTimer(pl.Callback):
    """Wall time of the training batches after a warm-up."""

    def __init__(self) -> None:
        self.started: float | None = None
        self.batches = 0

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch, batch_idx: int) -> None:
        if batch_idx == WARMUP_BATCHES:
            self.started = time.perf_counter()

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch, batch_idx: int
    ) -> None:
        if self.started is not None:
            self.batches += 1

    def batches_per_second(self) -> float:
        return self.batches / (time.perf_counter() - self.started)


def measure(variant: str, data_dir: str, devices: int, find_unused: bool | None, batches: int) -> float:
    cls = get_variant(variant)
    pl.seed_everything(0, verbose=False)
    datamodule = MNISTDataModule(data_dir, download=False, train_streams=cls.train_streams)
    timer = BatchTimer()
    strategy = "auto" if find_unused is None else DDPStrategy(find_unused_parameters=find_unused)
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=devices,
        strategy=strategy,
        max_epochs=1,
        limit_train_batches=WARMUP_BATCHES + batches,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[timer],
    )
    trainer.fit(cls(), datamodule=datamodule)
    return timer.batches_per_second()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default="../shared/data")
    parser.add_argument("--devices", type=int, default=2)
    parser.add_argument("--batches", type=int, default=60, help="timed batches per configuration")
    args = parser.parse_args()
    rows = [
        ("ae", "DDP, find_unused_parameters=False", False),
        ("ae", "DDP, find_unused_parameters=True", True),
        ("semi", "DDP, find_unused_parameters=True", True),
    ]
    results = [
        (variant, label, measure(variant, args.data_dir, args.devices, flag, args.batches))
        for variant, label, flag in rows
    ]
    if torch.distributed.get_rank() == 0:
        print(f"\n{args.devices} CPU processes, global batch 100, {args.batches} timed batches each")
        print(f"{'variant':<8} {'strategy':<36} {'batches/s':>10}")
        for variant, label, rate in results:
            print(f"{variant:<8} {label:<36} {rate:>10.2f}")
        plain, walked = results[0][2], results[1][2]
        print(f"graph walk overhead on ae: {100 * (plain / walked - 1):+.1f}% time per batch")


if __name__ == "__main__":
    main()
