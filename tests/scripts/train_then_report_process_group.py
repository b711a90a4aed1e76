"""Run by tests/distributed/test_ddp.py as its own program (DDP re-runs the launching script for rank 1):
train.py's main() with this script's arguments, then one JSON line per rank saying whether the process still holds
its process group, which torch would otherwise tear down at interpreter shutdown, where it can abort the process."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # train.py is a script at the repository root

import train  # noqa: E402

if __name__ == "__main__":
    code = train.main(sys.argv[1:])
    from pytorch_lightning.utilities import rank_zero_only

    sys.stdout.write(
        json.dumps({"rank": rank_zero_only.rank, "exit_code": code, "holds_process_group": dist.is_initialized()})
        + "\n"
    )
    sys.stdout.flush()
