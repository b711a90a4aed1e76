"""Ending a DDP process cleanly."""

from __future__ import annotations

import torch.distributed as dist


def leave_process_group() -> None:
    """Destroy the default process group if this process joined one (no-op otherwise). Lightning never does:
    torch then leaves a gloo group to interpreter shutdown, where its threads can abort a process whose work is
    done ("terminate called without an active exception", exit code -6), at random, on some runs only."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
