"""What DDP costs this codebase's training step, on CPU processes (gloo): bytes all-reduced and batches per second.

    OMP_NUM_THREADS=1 python benchmarks/ddp_overhead.py --data-dir ../shared/data [--devices 2] [--batches 30]

Two ways to average the gradients, same model and batches:

- per phase (this codebase): each phase's backward pass runs with DDP's hooks blocked, then the phase's own
  optimizer's gradients (and one element, the non-finite flag) are averaged in one all-reduce;
- DDP's hooks: DDP with `find_unused_parameters=True` all-reduces every gradient bucket after each of the
  phases' backward passes (zeros for the parameters a phase leaves unused). The benchmark gets it by a subclass of
  the variant that lets DDP's hooks run and skips its own reduction.

Bytes are counted where they leave, by wrapping `torch.distributed.all_reduce` in this process: this codebase calls
it, and DDP's buckets go through it by way of a communication hook (`register_comm_hook`) that does DDP's default
all-reduce. Lightning starts the other
ranks by re-running this script, so it is a program of its own.
"""

from __future__ import annotations

import argparse
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch.distributed as dist
from pytorch_lightning.strategies import DDPStrategy
from torch import Tensor
from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aae_lightning import get_variant  # noqa: E402
from aae_lightning.base import AutoencoderBase  # noqa: E402
from datamodules import MNISTDataModule  # noqa: E402

WARMUP_BATCHES = 5


class Traffic:
    """Bytes all-reduced by this process, counted at both exits: DDP's buckets and torch.distributed.all_reduce."""

    def __init__(self) -> None:
        self.bytes = 0
        self.counting = False
        self.original_all_reduce = dist.all_reduce

    # unannotated: DDP checks a hook's annotations against the classes, and in this file annotations are strings
    def ddp_hook(self, state, bucket):
        """DDP's own all-reduce, made through `torch.distributed.all_reduce`, where `all_reduce` counts it."""
        return allreduce_hook(state, bucket)

    def all_reduce(self, tensor: Tensor, *args: Any, **kwargs: Any) -> Any:
        if self.counting:
            self.bytes += tensor.numel() * tensor.element_size()
        return self.original_all_reduce(tensor, *args, **kwargs)


class Timing(pl.Callback):
    """Wall time and traffic of the training batches after a warm-up."""

    def __init__(self, traffic: Traffic) -> None:
        self.traffic = traffic
        self.started = 0.0
        self.batches = 0

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Lightning registers a strategy's `ddp_comm_hook` on CUDA devices only
        trainer.strategy.model.register_comm_hook(state=None, hook=self.traffic.ddp_hook)

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, idx: int) -> None:
        if idx == WARMUP_BATCHES:
            self.started = time.perf_counter()
            self.traffic.counting = True

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        if self.traffic.counting:
            self.batches += 1


def with_ddp_hooks(cls: type[AutoencoderBase]) -> type[AutoencoderBase]:
    """The variant with DDP's own gradient synchronisation after every backward pass instead of its own."""

    class WithDDPHooks(cls):  # type: ignore[misc, valid-type]
        def _without_ddp_gradient_sync(self) -> Any:
            return nullcontext()

        def _reduce_gradients(self, optimizer: Any, nonfinite: Tensor) -> Tensor:
            return nonfinite

    return WithDDPHooks


def measure(variant: str, data_dir: str, devices: int, batches: int, ddp_hooks: bool) -> tuple[float, float]:
    """(batches per second, bytes all-reduced per batch by one process)."""
    cls = get_variant(variant)
    pl.seed_everything(0, verbose=False)
    model = (with_ddp_hooks(cls) if ddp_hooks else cls)()
    datamodule = MNISTDataModule(data_dir, download=False, train_streams=cls.train_streams)
    traffic = Traffic()
    dist.all_reduce = traffic.all_reduce
    timing = Timing(traffic)
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=devices,
        strategy=DDPStrategy(find_unused_parameters=ddp_hooks),
        max_epochs=1,
        limit_train_batches=WARMUP_BATCHES + batches,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[timing],
    )
    try:
        trainer.fit(model, datamodule=datamodule)
    finally:
        dist.all_reduce = traffic.original_all_reduce
    return timing.batches / (time.perf_counter() - timing.started), traffic.bytes / timing.batches


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default="../shared/data")
    parser.add_argument("--devices", type=int, default=2)
    parser.add_argument("--batches", type=int, default=30, help="timed batches per configuration")
    parser.add_argument("--variants", nargs="+", default=["aae", "semi"])
    args = parser.parse_args()
    results = [
        (variant, label, *measure(variant, args.data_dir, args.devices, args.batches, ddp_hooks))
        for variant in args.variants
        for label, ddp_hooks in (("DDP's hooks, every backward", True), ("per phase (this codebase)", False))
    ]
    if dist.get_rank() == 0:
        print(f"\n{args.devices} CPU processes (gloo), global batch 100, {args.batches} timed batches each")
        print("| variant | gradients averaged by | parameters | MB all-reduced per batch | batches/s |")
        print("|---|---|---:|---:|---:|")
        for variant, label, rate, traffic in results:
            parameters = sum(p.numel() for p in get_variant(variant)().parameters())
            print(f"| {variant} | {label} | {parameters / 1e6:.2f} M | {traffic / 1e6:.1f} | {rate:.2f} |")


if __name__ == "__main__":
    main()
