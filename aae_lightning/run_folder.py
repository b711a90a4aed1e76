"""A run's folder, `--output-dir/RUN_NAME`: its name, the checkpoint a run starts from, the checkpoints it writes
to `checkpoints/`, and what its loggers keep there across a resumption (the W&B run id, the CSV history)."""

from __future__ import annotations

import argparse
import csv
import os
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from aae_lightning.checkpoint_io import check_averaging_resumable, check_resumable, read_checkpoint
from aae_lightning.cli import ALL_LABELS, split_labels, uses_labels
from aae_lightning.errors import UserError

#: the file in a run folder that holds its W&B run id
WANDB_RUN_ID_FILE = "wandb_run_id"


#: the environment variable through which the ranks a DDP launcher starts learn the first process's run name
RUN_NAME_VARIABLE = "AAE_RUN_NAME"


def run_name(args: argparse.Namespace) -> str:
    """The same on every process of a run: DDP launchers start the other ranks later, so a clock reading taken
    there would differ. The first process records it in the environment the others inherit (`run_name_scope`)."""
    if args.run_name:
        return args.run_name
    if RUN_NAME_VARIABLE not in os.environ:
        labels = split_labels(args)
        labels_part = f"-{ALL_LABELS if labels is None else labels}labels" if uses_labels(args) else ""
        job = os.environ.get("SLURM_JOB_ID") or os.environ.get("TORCHELASTIC_RUN_ID")
        stamp = job if job and job != "none" else time.strftime("%Y%m%d-%H%M%S")
        os.environ[RUN_NAME_VARIABLE] = f"{args.variant}{labels_part}-seed{args.seed}-{stamp}"
    return os.environ[RUN_NAME_VARIABLE]


@contextmanager
def run_name_scope() -> Iterator[None]:
    """One run: the name `run_name` records for the other ranks lasts until the run ends, so that the next run
    in the same process (a notebook, a sweep) gets a name and a folder of its own. A name inherited from a
    launcher stays."""
    inherited = RUN_NAME_VARIABLE in os.environ
    try:
        yield
    finally:
        if not inherited:
            os.environ.pop(RUN_NAME_VARIABLE, None)


def resolve_run(args: argparse.Namespace) -> tuple[Path, Path | None]:
    """The run folder and the checkpoint to start from. `--ckpt-path last` is the last.ckpt of the run named by
    --run-name; a checkpoint inside a run folder (RUN/checkpoints/x.ckpt) continues that run in its own folder,
    unless --run-name names another one."""
    if args.ckpt_path is None:
        return args.output_dir / run_name(args), None
    if args.ckpt_path == "last":
        if not args.run_name:
            raise UserError(
                "--ckpt-path last resumes the run named by --run-name (its folder in --output-dir); give --run-name"
            )
        run_dir = args.output_dir / args.run_name
        return run_dir, run_dir / "checkpoints" / "last.ckpt"
    path = Path(args.ckpt_path)
    if path.parent.name == "checkpoints" and not args.run_name:
        return path.parent.parent, path
    return args.output_dir / run_name(args), path


def resumed_epoch(
    ckpt_path: Path | None,
    run_dir: Path,
    variant: str,
    hparams: dict[str, Any],
    datamodule_hparams: dict[str, Any],
    averaging: dict[str, Any],
) -> int | None:
    """The last epoch the checkpoint to start from finished, if it continues the run in `run_dir`'s own
    checkpoints (None: a new run in the folder). Checked here, before the data is read (a bad path is a quick
    answer), because Lightning would fail on a bad file with a traceback from deep inside its restore logic.
    `averaging`: the weight averaging of the flags (`cli.averaging_settings`)."""
    if ckpt_path is None:
        return None
    start = read_checkpoint(ckpt_path)
    check_resumable(start, ckpt_path, variant, hparams, datamodule_hparams)
    check_averaging_resumable(start, ckpt_path, averaging)
    return start["epoch"] if ckpt_path.resolve().parent == (run_dir / "checkpoints").resolve() else None


def checkpoint_callbacks(run_dir: Path, monitor: str, mode: str, every_n_epochs: int) -> tuple[Any, Any]:
    """The callbacks that write `checkpoints/`: the best checkpoint by `monitor`, compared every `every_n_epochs`
    epochs, and `last.ckpt`."""
    from pytorch_lightning.callbacks import ModelCheckpoint

    best = ModelCheckpoint(
        dirpath=run_dir / "checkpoints",
        filename="best-epoch{epoch:03d}",
        auto_insert_metric_name=False,
        monitor=monitor,
        mode=mode,
        save_top_k=1,
        # With the Parzen estimate, compared only at the epochs it logs its metric: at any other epoch
        # ModelCheckpoint would raise (before the first estimate) or compare again a value kept from an earlier one
        every_n_epochs=every_n_epochs,
    )
    # Lightning's save_last rewrites last.ckpt only when a best checkpoint is written; resuming needs the latest
    # epoch, so a second callback writes it after every validation (after the best one: it carries its state)
    last = ModelCheckpoint(dirpath=run_dir / "checkpoints", filename="last", enable_version_counter=False)
    return best, last


def wandb_run_id(run_dir: Path, resuming: bool) -> str | None:
    """The W&B run id, kept in the run folder: a resumed run goes on logging into the same W&B run, a new run in
    the folder gets a new id. Only rank 0 logs to W&B, so only rank 0 needs (and writes) it."""
    from pytorch_lightning.utilities import rank_zero_only

    if rank_zero_only.rank != 0:
        return None
    path = run_dir / WANDB_RUN_ID_FILE
    if resuming and path.is_file():
        return path.read_text().strip()
    run_id = uuid.uuid4().hex[:12]  # W&B takes any id of letters and digits
    run_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(run_id + "\n")
    return run_id


def keep_csv_history(logger: Any, last_epoch: int) -> None:
    """Lightning's CSV writer deletes an existing metrics.csv when it starts; a resumed run keeps the rows of
    the epochs its checkpoint had finished (later rows of the interrupted run are logged again) and writes them
    back at once, so a second interruption cannot lose them."""
    from pytorch_lightning.utilities import rank_zero_only

    path = Path(logger.log_dir) / "metrics.csv"
    if rank_zero_only.rank != 0 or not path.is_file():
        return
    with path.open(newline="") as file:
        rows = [row for row in csv.DictReader(file) if row.get("epoch") and csv_epoch(row) <= last_epoch]
    writer = logger.experiment  # deletes the file
    writer.metrics.extend(rows)
    writer.save()


def csv_epoch(row: dict[str, str]) -> int:
    """The epoch of a row of Lightning's CSVLogger metrics.csv, which may be written as "1.0"."""
    return int(float(row["epoch"]))


def read_logged(path: Path, metric: str, trained_only: bool = False) -> dict[int, float]:
    """{epoch: value} of `metric` in a metrics.csv of Lightning's CSVLogger, whose rows each hold one logging
    call's columns (training steps, validation, training epoch means) and leave the others empty. An epoch
    validated twice (a resumed run) keeps its first value. A missing file (a run that failed before logging) gives
    no values.

    `trained_only`: only epochs that logged training means; runs written before train.py stopped logging its final
    validation of the best checkpoint hold one more row of that checkpoint's value, one past the last epoch."""
    if not path.is_file():
        return {}
    values: dict[int, float] = {}
    trained: set[int] = set()
    with path.open(newline="") as file:
        for row in csv.DictReader(file):
            epoch = csv_epoch(row)
            if any(value and name.startswith("train/") and name.endswith("_epoch") for name, value in row.items()):
                trained.add(epoch)
            if row.get(metric):
                values.setdefault(epoch, float(row[metric]))
    return {epoch: value for epoch, value in values.items() if epoch in trained or not trained_only}
