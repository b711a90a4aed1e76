"""Training throughput of each variant through Lightning against a plain PyTorch loop of the same networks.

    python benchmarks/throughput.py --data-dir ../shared/data
    python benchmarks/throughput.py --data-dir ../shared/data --accelerator gpu
    python benchmarks/throughput.py --data-dir ../shared/data --variants semi --precision 32-true bf16-mixed

The plain loop is what a straightforward implementation looks like: one default (unfused) optimizer of the
variant's kind (`--optimizer`: Adam, or SGD for `semi`) per phase,
codes recomputed in every phase, `.detach()` on the codes the discriminator judges, no freezing of the critic in
the generator phase. A third, bare loop runs this module's own phases and optimizers without Lightning: it
splits the ratio into what the module's arithmetic gains (bare / plain) and what Lightning costs
(Lightning / bare). All three read the same batches from the same in-memory datamodule, so the ratios measure
the training step alone. A "step" here is one batch (all of a variant's phases); Lightning's `global_step` would
count one per phase. Runs alternate between the three loops and the best of `--repeats` is kept, because other
processes on a shared machine only ever make a run slower. `--accelerator` and `--devices` choose the one device
all three loops run on, as Lightning reads them (the CPU unless asked otherwise); each loop moves its batches
there inside the timed span, as Lightning does.

`--precision` takes one or more of Lightning's precisions: the Lightning loop runs under each (alternating with
the others, so that they share the machine's conditions) and a second table gives each precision's rate against
the first one's. The bare and plain loops, which have no precision plugin, always run in float32.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.utilities import move_data_to_device
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aae_lightning import get_variant  # noqa: E402
from aae_lightning.base import AutoencoderBase  # noqa: E402
from aae_lightning.errors import UserError  # noqa: E402
from aae_lightning.hardware import check_precision  # noqa: E402
from datamodules.mnist import MNISTDataModule  # noqa: E402

PAPER_VARIANTS = ("ae", "aae", "supervised", "semi")
ACCELERATORS = ("cpu", "gpu", "cuda", "auto")


def synchronize(device: torch.device) -> None:
    """Wait for the work queued on `device`: CUDA runs kernels asynchronously, so a timer read without waiting
    would stop while the timed batches are still running."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class StepTimer(pl.Callback):
    """Wall and CPU time from the first batch after the warm-up to the end of the last one."""

    def __init__(self, warmup: int, batches: int) -> None:
        self.warmup, self.last = warmup, warmup + batches - 1
        self.start: tuple[float, float] = (0.0, 0.0)
        self.elapsed: tuple[float, float] = (0.0, 0.0)

    def on_train_batch_start(self, trainer: pl.Trainer, module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        if batch_idx == self.warmup:
            synchronize(module.device)
            self.start = (time.perf_counter(), time.process_time())

    def on_train_batch_end(
        self, trainer: pl.Trainer, module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        # at the last batch only: waiting for the device after every batch would slow Lightning's loop alone
        if batch_idx == self.last:
            synchronize(module.device)
            self.elapsed = (time.perf_counter() - self.start[0], time.process_time() - self.start[1])


def lightning_devices(device: torch.device) -> int | list[int]:
    """Lightning's `devices` for exactly this device: its index where it has one (cuda:1 is [1])."""
    return 1 if device.index is None else [device.index]


def lightning_seconds(
    cls: type[AutoencoderBase],
    datamodule: MNISTDataModule,
    device: torch.device,
    warmup: int,
    batches: int,
    precision: str = "32-true",
) -> tuple[float, float]:
    timer = StepTimer(warmup, batches)
    trainer = pl.Trainer(
        precision=precision,
        accelerator=device.type,
        devices=lightning_devices(device),
        max_epochs=1,
        limit_train_batches=warmup + batches,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[timer],
    )
    trainer.fit(cls(), datamodule)
    return timer.elapsed


def training_model(cls: type[AutoencoderBase], device: torch.device) -> AutoencoderBase:
    """A fresh module on `device` in training mode, drawing its prior samples there as Lightning's `setup` has it
    do, for the loops that run without Lightning."""
    model = cls().to(device)
    model.place_prior_generator(device)
    return model.train()


def plain_phases(model: AutoencoderBase) -> dict[str, Callable[[dict[str, Tensor]], Tensor]]:
    """Each phase's loss written out the plain way; the variant's own hooks supply only what differs between
    variants (which images, what the decoder gets, which codes are regularized)."""

    def reconstruction(batch: dict[str, Tensor]) -> Tensor:
        images = model.training_images(batch)
        logits = model.decoder(model.decoder_input(model.encoder(images), batch.get("labeled_y")))
        return F.binary_cross_entropy_with_logits(logits, images)

    def regularization(batch: dict[str, Tensor]) -> Tensor:
        fakes = {name: code.detach() for name, code in model.regularized_codes(batch).items()}
        reals = model.prior_samples(batch, fakes)
        loss = torch.zeros((), device=model.device)
        for name, discriminator in model.discriminators.items():
            real_logits, fake_logits = discriminator(reals[name]), discriminator(fakes[name])
            loss = loss + F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits))
            loss = loss + F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits))
        return loss

    def generator(batch: dict[str, Tensor]) -> Tensor:
        fakes = model.regularized_codes(batch)
        loss = torch.zeros((), device=model.device)
        for name, discriminator in model.discriminators.items():
            logits = discriminator(fakes[name])
            loss = loss + F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits))
        return loss

    shared = {"reconstruction": reconstruction, "regularization": regularization, "generator": generator}
    # a variant's own extra phases (semi's classification) are already a plain cross-entropy
    return {
        phase: shared.get(phase, lambda batch, phase=phase: getattr(model, f"{phase}_phase")(batch)[0])
        for phase in model.phases
    }


def time_batches(
    datamodule: MNISTDataModule,
    device: torch.device,
    warmup: int,
    batches: int,
    train_on: Callable[[dict[str, Tensor]], None],
) -> tuple[float, float]:
    """Wall and CPU seconds of `batches` calls of `train_on` on batches moved to `device`, after `warmup` untimed
    ones."""
    start = (0.0, 0.0)
    for index, batch in enumerate(datamodule.train_dataloader()):
        if index == warmup:
            synchronize(device)
            start = (time.perf_counter(), time.process_time())
        if index == warmup + batches:
            break
        train_on(move_data_to_device(batch, device))
    synchronize(device)
    return time.perf_counter() - start[0], time.process_time() - start[1]


def plain_optimizer(model: AutoencoderBase, phase: str) -> torch.optim.Optimizer:
    """The optimizer kind the module uses (Adam or SGD), with PyTorch's default per-tensor implementation."""
    params = [p for name in model.phase_modules[phase] for p in getattr(model, name).parameters()]
    lr = getattr(model.config, f"{phase}_lr")
    if model.config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=model.config.momentum)
    return torch.optim.Adam(params, lr=lr)


def plain_seconds(
    cls: type[AutoencoderBase], datamodule: MNISTDataModule, device: torch.device, warmup: int, batches: int
) -> tuple[float, float]:
    model = training_model(cls, device)
    losses = plain_phases(model)
    optimizers = {phase: plain_optimizer(model, phase) for phase in model.phases}

    def train_on(batch: dict[str, Tensor]) -> None:
        for phase in model.phases:
            optimizers[phase].zero_grad()
            losses[phase](batch).backward()
            optimizers[phase].step()

    return time_batches(datamodule, device, warmup, batches, train_on)


def bare_seconds(
    cls: type[AutoencoderBase], datamodule: MNISTDataModule, device: torch.device, warmup: int, batches: int
) -> tuple[float, float]:
    """This module's own phases, optimizers and freezing, driven by a bare loop: the speed Lightning could reach
    if its bookkeeping cost nothing, so Lightning / bare is Lightning's own cost and bare / plain the ceiling."""
    model = training_model(cls, device)
    optimizers = model.configure_optimizers()
    owned = [{id(p) for group in optimizer.param_groups for p in group["params"]} for optimizer in optimizers]

    def train_on(batch: dict[str, Tensor]) -> None:
        for phase, optimizer, mine in zip(model.phases, optimizers, owned, strict=True):
            if phase == "regularization":
                model.adversarial_codes(batch)  # before freezing, as training_step does
            for parameter in model.parameters():
                parameter.requires_grad_(id(parameter) in mine)
            optimizer.zero_grad(set_to_none=True)
            getattr(model, f"{phase}_phase")(batch)[0].backward()
            optimizer.step()

    return time_batches(datamodule, device, warmup, batches, train_on)


LOOPS = {"lightning": lightning_seconds, "bare": bare_seconds, "plain": plain_seconds}


def timed_device(parser: argparse.ArgumentParser, accelerator: str, devices: str) -> torch.device:
    """The one device `--accelerator` and `--devices` come to, as Lightning resolves them. Asking for CUDA where
    there is none, or for several devices, ends with one line and exit code 2."""
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        parser.exit(
            2,
            f"{parser.prog}: error: --accelerator {accelerator} needs a CUDA device; "
            "torch.cuda.is_available() is False here\n",
        )
    trainer = pl.Trainer(accelerator=accelerator, devices=devices, logger=False)
    if trainer.num_devices != 1:
        # the bare and plain loops run in this one process: several devices would time Lightning alone on DDP
        parser.exit(
            2,
            f"{parser.prog}: error: --devices {devices} gives {trainer.num_devices} devices; the loops "
            "time one (a count of 1, or one index such as '1,' for the second GPU)\n",
        )
    return trainer.strategy.root_device


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else device.type


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    parser.add_argument("--variants", nargs="+", default=list(PAPER_VARIANTS))
    parser.add_argument("--batches", type=int, default=40, help="timed batches per run")
    parser.add_argument("--warmup", type=int, default=5, help="untimed batches before them")
    parser.add_argument("--repeats", type=int, default=3, help="alternating runs per loop; the best is kept")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch intra-op threads")
    parser.add_argument("--accelerator", choices=ACCELERATORS, default="cpu", help="Lightning's: where every loop runs")
    parser.add_argument(
        "--devices", default="1", help="Lightning's, naming one device: 1, or an index such as '1,' for the second GPU"
    )
    parser.add_argument(
        "--precision",
        nargs="+",
        default=["32-true"],
        help="Lightning precisions the Lightning loop runs under, alternating; the first is the reference",
    )
    args = parser.parse_args(argv)
    for name, precision in ((name, precision) for name in args.variants for precision in args.precision):
        try:  # what train.py refuses (16-true with Adam) is refused here before any timing, in one line
            check_precision(precision, get_variant(name).Hparams().optimizer)
        except UserError as error:
            parser.error(f"{name}: {error}")
    device = timed_device(parser, args.accelerator, args.devices)
    torch.set_num_threads(args.threads)
    pl.seed_everything(0, verbose=False)

    rows = []
    by_precision: dict[tuple[str, str], float] = {}  # best wall seconds of the Lightning loop
    for name in args.variants:
        cls = get_variant(name)
        # a variant trained on labels alone (supervised) gets all of them, as train.py gives it: a 1,000-image
        # labeled set would end its epoch after 10 batches, before the timed ones
        num_labels = 1000 if "unlabeled" in cls.train_streams else None
        datamodule = MNISTDataModule(
            args.data_dir, num_labels=num_labels, download=False, train_streams=cls.train_streams
        )
        datamodule.setup("fit")
        best = {loop: (float("inf"),) * 2 for loop in LOOPS}
        for _ in range(args.repeats):
            for loop, measure in LOOPS.items():
                settings = {"precision": args.precision[0]} if loop == "lightning" else {}
                wall, cpu = measure(cls, datamodule, device, args.warmup, args.batches, **settings)
                best[loop] = (min(best[loop][0], wall), min(best[loop][1], cpu))
            for precision in args.precision[1:]:
                wall, _ = lightning_seconds(cls, datamodule, device, args.warmup, args.batches, precision)
                by_precision[name, precision] = min(by_precision.get((name, precision), float("inf")), wall)
        by_precision[name, args.precision[0]] = best["lightning"][0]
        rows.append(
            (
                name,
                {loop: args.batches / wall for loop, (wall, _) in best.items()},
                {loop: args.batches / cpu for loop, (_, cpu) in best.items()},
            )
        )

    print(
        f"\n{args.batches} timed batches of 100 after {args.warmup} warm-up, best of {args.repeats}, "
        f"{args.threads} torch threads, on {device_name(device)}; steps = batches (all phases) per second; "
        f"the Lightning loop in {args.precision[0]}, the bare and plain loops in float32"
    )
    print(
        "| variant | Lightning steps/s | bare loop steps/s | plain loop steps/s | Lightning / plain (wall) "
        "| Lightning / plain (CPU time) | bare / plain | Lightning / bare |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, wall, cpu in rows:
        print(
            f"| {name} | {wall['lightning']:.2f} | {wall['bare']:.2f} | {wall['plain']:.2f} "
            f"| {wall['lightning'] / wall['plain']:.2f}x | {cpu['lightning'] / cpu['plain']:.2f}x "
            f"| {wall['bare'] / wall['plain']:.2f}x | {wall['lightning'] / wall['bare']:.2f}x |"
        )
    if len(args.precision) > 1:
        print(f"\nThe Lightning loop by precision (best of {args.repeats}, alternating):")
        print(f"| variant | precision | steps/s | against {args.precision[0]} |")
        print("|---|---|---:|---:|")
        for name in args.variants:
            reference = by_precision[name, args.precision[0]]
            for precision in args.precision:
                seconds = by_precision[name, precision]
                print(f"| {name} | {precision} | {args.batches / seconds:.2f} | {reference / seconds:.2f}x |")


if __name__ == "__main__":
    main()
