"""Run by tests/distributed/test_ddp.py as its own program, because Lightning's DDP launcher starts the other ranks
by re-running the launching script: it must never be pytest itself.

For each variant named on the command line: train a few batches on 2 CPU processes, then check on every rank
that DDP kept the replicas identical and that training moved them. Rank 0 prints one JSON line per
variant. Then, with `--poisoned VARIANT`, that variant trains with rank `--poison-rank`'s decoder turned NaN before
the second batch, and every rank prints the error training stopped with. One launch serves several tests: each
starts two interpreters, which spend most of their time importing. The tests build the same run on one device in
their own process (`build`).
"""

from __future__ import annotations

import argparse
import json
import sys

import pytorch_lightning as pl
import torch
import torch.distributed as dist

from aae_lightning import NonFiniteLossError, get_variant
from aae_lightning.base import AutoencoderBase
from aae_lightning.distributed import leave_process_group
from datamodules import MNISTDataModule

SMALL_NETWORKS = {"hidden_sizes": (64, 64), "disc_hidden_sizes": (32,)}


def parameter_vector(module: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in module.parameters()])


class PoisonDecoder(pl.Callback):
    """Makes one rank's decoder output NaN from the second batch on: a divergence only that rank sees."""

    def __init__(self, rank: int) -> None:
        self.rank = rank

    def on_train_batch_start(
        self, trainer: pl.Trainer, module: pl.LightningModule, batch: object, batch_idx: int
    ) -> None:
        if batch_idx == 1 and trainer.global_rank == self.rank:
            with torch.no_grad():
                next(module.decoder.parameters()).fill_(float("nan"))


def build(
    name: str, data_dir: str, devices: int, batches: int = 3, callbacks: list[pl.Callback] | None = None
) -> tuple[AutoencoderBase, MNISTDataModule, pl.Trainer]:
    """`name` with small networks from seed 0, and a trainer for `batches` batches of one epoch on `devices` CPU
    processes: DDP as users type it (no search for unused parameters) on more than one, this process alone on one."""
    cls = get_variant(name)
    hparams = {key: value for key, value in SMALL_NETWORKS.items() if key in cls.Hparams.__dataclass_fields__}
    pl.seed_everything(0, verbose=False)
    model = cls(**hparams)
    datamodule = MNISTDataModule(
        data_dir, num_labels=100, val_size=100, batch_size=50, download=False, train_streams=cls.train_streams
    )
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=devices,
        strategy="ddp" if devices > 1 else "auto",
        max_epochs=1,
        limit_train_batches=batches,
        limit_val_batches=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=callbacks or [],
    )
    return model, datamodule, trainer


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--batches", type=int, default=3)
    parser.add_argument("--save-params", default=None, help="folder for each variant's final parameters (rank 0)")
    parser.add_argument("--poisoned", default=None, help="a variant to train last, with one rank's decoder NaN")
    parser.add_argument("--poison-rank", type=int, default=1, help="the rank whose decoder turns NaN at batch 1")
    parser.add_argument("variants", nargs="*")
    args = parser.parse_args()
    runs = [(name, None) for name in args.variants]
    if args.poisoned is not None:
        runs.append((args.poisoned, args.poison_rank))
    for name, poison_rank in runs:
        callbacks = [] if poison_rank is None else [PoisonDecoder(poison_rank)]
        model, datamodule, trainer = build(name, args.data_dir, devices=2, batches=args.batches, callbacks=callbacks)
        initial = parameter_vector(model).clone()
        if poison_rank is not None:
            try:
                trainer.fit(model, datamodule=datamodule)
                error = None
            except NonFiniteLossError as raised:
                error = str(raised)
            # both ranks report into one pipe: one write per line (print writes the text and its newline
            # separately, so two ranks' lines could run together)
            sys.stdout.write(json.dumps({"variant": name, "rank": trainer.global_rank, "error": error}) + "\n")
            sys.stdout.flush()
            continue
        trainer.fit(model, datamodule=datamodule)
        final = parameter_vector(model)
        gathered = [torch.zeros_like(final) for _ in range(dist.get_world_size())]
        dist.all_gather(gathered, final)
        prior_draw = model.sample_prior(next(iter(model.priors)), 4) if model.priors else torch.zeros(4, 1)
        prior_draws = [torch.zeros_like(prior_draw) for _ in range(dist.get_world_size())]
        dist.all_gather(prior_draws, prior_draw)
        fingerprints = [None] * dist.get_world_size()
        dist.all_gather_object(fingerprints, datamodule.split.fingerprint)
        if trainer.is_global_zero:
            if args.save_params:
                torch.save(final, f"{args.save_params}/{name}.pt")
            print(
                json.dumps(
                    {
                        "variant": name,
                        "world_size": dist.get_world_size(),
                        "replicas_identical": all(torch.equal(gathered[0], other) for other in gathered[1:]),
                        "parameters_moved": not torch.equal(initial, final),
                        "prior_samples_differ": not torch.equal(prior_draws[0], prior_draws[1])
                        if model.priors
                        else None,
                        "same_split_fingerprint": len(set(fingerprints)) == 1,
                        "global_step": trainer.global_step,
                        "phases": list(model.phases),
                        "val_metrics": {
                            k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")
                        },
                    }
                ),
                flush=True,
            )
    leave_process_group()


if __name__ == "__main__":
    main()
