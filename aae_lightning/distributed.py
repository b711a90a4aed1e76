"""Training on several processes: which strategies this codebase trains with, and ending a process cleanly.

Every variant trains with DDP whatever its flags say about unused parameters: the module switches DDP's own
gradient synchronisation off and each phase averages its own optimizer's gradients in one all-reduce
(`AutoencoderBase._reduce_gradients`), so the parameters a phase leaves unused never hold DDP up.
"""

from __future__ import annotations

import torch.distributed as dist

from aae_lightning.errors import UserError

#: strategies whose one model replica per process and per-optimizer steps the training step is written for
SUPPORTED_STRATEGIES = "auto, ddp, ddp_spawn, ddp_fork, ddp_notebook (and their find_unused_parameters forms)"


def training_strategy(name: str | None, processes: int) -> str:
    """The Lightning strategy for `--strategy name` (None: not given) on `processes` processes in all; a strategy
    that shards the model or drives the optimizers itself (FSDP, DeepSpeed, ...) is a `UserError`."""
    if name is None:
        return "ddp" if processes > 1 else "auto"
    if name == "auto":
        return name
    from pytorch_lightning.strategies import DDPStrategy, SingleDeviceStrategy, StrategyRegistry

    # the classes themselves: DeepSpeed's and XLA's strategies derive from these but run the model their own way
    if name in StrategyRegistry and StrategyRegistry[name]["strategy"] in (DDPStrategy, SingleDeviceStrategy):
        return name
    raise UserError(
        f"--strategy {name} is not one this codebase trains with: its phases step one optimizer each on a whole "
        f"model replica per process; use one of {SUPPORTED_STRATEGIES}"
    )


def check_batchnorm(has_batchnorm: bool, accelerator: str, processes: int) -> bool:
    """Whether the Trainer must synchronise batch-norm statistics over the processes (`sync_batchnorm`): yes on
    several GPUs when the model normalizes; on several CPU processes such a model is a `UserError`, because
    torch's SyncBatchNorm runs on GPUs only and statistics per process would train another model."""
    if not has_batchnorm or processes == 1:
        return False
    if accelerator == "cpu":
        raise UserError(
            "--encoder-batchnorm on several CPU processes: batch statistics are synchronised across processes on "
            "GPUs only (torch's SyncBatchNorm); train it on one process or on GPUs"
        )
    return True


def leave_process_group() -> None:
    """Destroy the default process group if this process joined one (no-op otherwise). Lightning never does:
    torch then leaves a gloo group to interpreter shutdown, where its threads can abort a process whose work is
    done ("terminate called without an active exception", exit code -6), at random, on some runs only."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
