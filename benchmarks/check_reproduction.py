"""Rerun the first epochs of each README results command and compare their validation numbers, epoch by epoch,
with the row's CSV in docs/results/; exit 1 on any difference beyond the tolerance.

    python benchmarks/check_reproduction.py                       # every row, 12-16 min on a 2-core CPU
    python benchmarks/check_reproduction.py --rows semi-100 parzen --epochs 5
    python benchmarks/check_reproduction.py --rows semi-1000 -- --precision bf16-mixed   # how far bf16 moves it
    python benchmarks/check_reproduction.py --dry-run             # the commands and expected values, no training

Each row is a fresh `train.py --preset P --seed S ... --max-epochs K` process (the row table, ROWS, holds each
README row's preset, seed, CSV, metric and default K), with OMP_NUM_THREADS set to the thread count its reported
run used (`--threads` for another). The presets' learning-rate schedules depend on the epoch only, so the first
K epochs of such a run are those of the full run, whose validation by epoch the CSV holds. Accuracies are
compared as fractions, with an absolute tolerance of 0.0005 (0.05 points: the semi-100 command rerun on this
project's machine gave 74.35 % against the CSV's 74.36 % after its first epoch); the Parzen estimate in nats,
with a tolerance of 3.2 (two standard errors of its +-1.6). Runs on another thread count, CPU or library build do
not repeat bit for bit: they differ in the last digit, and by more as epochs go on. Anything after `--` is
appended to every train.py command (the last of a repeated flag wins).

Duration with the default epochs (2 each, Parzen 5) on an idle 2-core CPU: an epoch of semi-100, semi-1000 or
dimreduction takes about 35 s on two threads, semi-all 40 s, clustering 25 s (the rows reported on one thread
take longer), an aae epoch of the Parzen row 20 s and its estimate 30 s; 12-16 minutes in all, with the
start of each process. Exit codes: 0 every epoch within tolerance, 1 a difference beyond it or a missing epoch
(a failed run), 2 bad flags.

benchmarks/reproduce_semi.py answers another question: it trains the semi-supervised presets for their whole
schedule (hours on a CPU; the paper's 5000 epochs are for a GPU) and scores the best checkpoint once on the test
set. This script trains a few epochs of every README row and reads validation only: it checks that today's code
still gives the numbers the README's runs logged, not how good they are.
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run as a script from anywhere


# NamedTuples rather than dataclasses: tests load this script with importlib, without a sys.modules entry, which
# dataclasses need to resolve postponed annotations.
class ReportedRun(NamedTuple):
    """A README results row: the command of its reported run and the CSV of that run's validation by epoch."""

    name: str
    preset: str
    seed: int
    csv: str  # relative to the repository
    metric: str  # the column of train.py's metrics.csv; the docs CSV names it with "_" for "/"
    epochs: int  # checked by default; the last one must be in the CSV (Parzen: every 5th epoch only)
    threads: int  # OMP_NUM_THREADS of the reported run, from docs/*.md


# The README's results table (Parzen last, the longest run). clustering-16, clustering-30 and dimreduction were
# reported on one thread (docs/clustering.md, docs/dimreduction.md); clustering-16's reported run is seed 1.
ROWS: tuple[ReportedRun, ...] = (
    ReportedRun("semi-100", "fast-semi-100", 0, "docs/results/semi-100.csv", "val/acc", 2, 2),
    ReportedRun("semi-1000", "fast-semi-1000", 0, "docs/results/semi-1000.csv", "val/acc", 2, 2),
    ReportedRun("semi-all", "fast-semi-all", 0, "docs/results/semi-all.csv", "val/acc", 2, 2),
    ReportedRun(
        "clustering-16", "fast-clustering-16", 1, "docs/results/clustering-16.csv", "val/cluster_acc_majority", 2, 1
    ),
    ReportedRun(
        "clustering-30", "fast-clustering-30", 0, "docs/results/clustering-30.csv", "val/cluster_acc_majority", 2, 1
    ),
    ReportedRun("dimreduction", "fast-dimreduction-1000", 0, "docs/results/dimreduction-1000.csv", "val/acc", 2, 1),
    ReportedRun(
        "parzen", "fast-parzen-aae", 0, "docs/results/parzen-hidden-dropout-lr85-seed0.csv", "val/parzen_ll", 5, 2
    ),
)
ROW_BY_NAME = {row.name: row for row in ROWS}
PARZEN_METRIC = "val/parzen_ll"


class EpochCheck(NamedTuple):
    epoch: int
    expected: float
    got: float | None  # None: the run logged no value for this epoch
    difference: float | None
    verdict: str  # "ok", "DIFFERS" or "MISSING"

    @property
    def passed(self) -> bool:
        return self.verdict == "ok"


def docs_column(metric: str) -> str:
    """The docs CSV's name for a metrics.csv column, as benchmarks/plot_curves.py writes it."""
    return metric.replace("/", "_")


def read_expected(path: Path, column: str) -> dict[int, float]:
    """A docs/results CSV (columns `epoch`, 0-based, and the metric) as {epoch: value}."""
    with path.open(newline="") as file:
        reader = csv.DictReader(file)
        if column not in (reader.fieldnames or []):
            raise ValueError(f"{path} has no column {column!r} (it has {', '.join(reader.fieldnames or [])})")
        return {int(row["epoch"]): float(row[column]) for row in reader if row[column]}


def compare(expected: dict[int, float], got: dict[int, float], tolerance: float) -> list[EpochCheck]:
    """One check per expected epoch, in epoch order; epochs only `got` has are not looked at."""
    checks = []
    for epoch in sorted(expected):
        value = got.get(epoch)
        if value is None:
            checks.append(EpochCheck(epoch, expected[epoch], None, None, "MISSING"))
            continue
        difference = value - expected[epoch]
        # The CSVs hold 4 decimals, so a difference of exactly the tolerance is common and must not fail on the
        # float representation of its decimals.
        within = abs(difference) <= tolerance or math.isclose(abs(difference), tolerance)
        checks.append(EpochCheck(epoch, expected[epoch], value, difference, "ok" if within else "DIFFERS"))
    return checks


def expected_values(row: ReportedRun, epochs: int) -> dict[int, float]:
    """The CSV's values of the first `epochs` epochs. Refuses an `epochs` whose last epoch the CSV lacks: one
    beyond the reported run, or (Parzen) one that is not a multiple of the estimate's period, which train.py
    refuses too."""
    expected = read_expected(REPO / row.csv, docs_column(row.metric))
    if epochs - 1 not in expected:
        listed = sorted(expected)
        shown = ", ".join(str(epoch) for epoch in listed[:5]) + (f", ... {listed[-1]}" if len(listed) > 5 else "")
        raise ValueError(
            f"--epochs {epochs} for row {row.name}: {row.csv} has no value for its last epoch, {epochs - 1} "
            f"(0-based); it has epochs {shown}"
        )
    return {epoch: value for epoch, value in expected.items() if epoch < epochs}


def train_command(row: ReportedRun, epochs: int, data_dir: str, output_dir: Path, extra: list[str]) -> list[str]:
    return [
        sys.executable,
        str(REPO / "train.py"),
        "--preset",
        row.preset,
        "--seed",
        str(row.seed),
        "--data-dir",
        data_dir,
        "--gpus",
        "0",
        "--logger",
        "csv",
        "--output-dir",
        str(output_dir),
        "--run-name",
        row.name,
        "--max-epochs",
        str(epochs),
        # images come from private generators and never change training; they only cost time
        "--image-every-n-epochs",
        "0",
        *extra,
    ]


def format_table(checks: list[tuple[str, EpochCheck]]) -> str:
    lines = [
        "| row | epoch (0-based) | expected | got | difference | verdict |",
        "|---|---|---|---|---|---|",
    ]
    for name, check in checks:
        # one decimal more than the CSVs hold, so that a difference inside their rounding still shows
        got = "-" if check.got is None else f"{check.got:.5f}"
        difference = "-" if check.difference is None else f"{check.difference:+.5f}"
        lines.append(f"| {name} | {check.epoch} | {check.expected:.4f} | {got} | {difference} | {check.verdict} |")
    return "\n".join(lines)


def split_extra(argv: list[str]) -> tuple[list[str], list[str]]:
    """This script's own flags, and what follows the first `--` (for train.py)."""
    if "--" not in argv:
        return argv, []
    at = argv.index("--")
    return argv[:at], argv[at + 1 :]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        usage="%(prog)s [options] [-- TRAIN.PY FLAGS ...]",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--rows",
        nargs="+",
        choices=list(ROW_BY_NAME),
        default=list(ROW_BY_NAME),
        metavar="ROW",
        help=f"rows to check, of {', '.join(ROW_BY_NAME)} (default: all)",
    )
    parser.add_argument(
        "--epochs",
        type=int,
        default=None,
        help="epochs to train and compare for every row (default: each row's own, "
        + ", ".join(f"{row.name} {row.epochs}" for row in ROWS)
        + "); the Parzen row's must be a multiple of 5, the epochs of its estimate",
    )
    parser.add_argument(
        "--data-dir", default="../shared/data", help="the folder that holds MNIST/raw/ (default: %(default)s)"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="OMP_NUM_THREADS for every run (default: the reported run's, "
        + ", ".join(f"{row.name} {row.threads}" for row in ROWS)
        + "); runs on other thread counts or machines differ in the last digit",
    )
    parser.add_argument(
        "--acc-tolerance",
        type=float,
        default=0.0005,
        help="largest absolute difference of an accuracy, a fraction (default: %(default)s)",
    )
    parser.add_argument(
        "--parzen-tolerance",
        type=float,
        default=3.2,
        help="largest absolute difference of the Parzen estimate in nats (default: %(default)s)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the run folders (their path is printed)")
    parser.add_argument("--dry-run", action="store_true", help="print the commands and expected values; train nothing")
    return parser


def run_and_compare(
    row: ReportedRun,
    epochs: int,
    expected: dict[int, float],
    args: argparse.Namespace,
    output_dir: Path,
    extra: list[str],
) -> tuple[list[EpochCheck], int]:
    """Train the row's first `epochs` epochs in a fresh process; its checks and train.py's exit code."""
    threads = args.threads or row.threads
    command = train_command(row, epochs, args.data_dir, output_dir, extra)
    print(f"\n$ OMP_NUM_THREADS={threads} {shlex.join(command)}", flush=True)
    if args.dry_run:
        shown = ", ".join(f"epoch {epoch}: {value:.4f}" for epoch, value in expected.items())
        print(f"  expects {docs_column(row.metric)} {shown} ({row.csv})")
        return [], 0
    started = time.perf_counter()
    exit_code = subprocess.run(command, env={**os.environ, "OMP_NUM_THREADS": str(threads)}).returncode
    print(f"{row.name}: {epochs} epochs, {time.perf_counter() - started:.0f} s, exit code {exit_code}", flush=True)
    tolerance = args.parzen_tolerance if row.metric == PARZEN_METRIC else args.acc_tolerance
    # imported here: the package loads torch, which --help and --dry-run can do without (seconds)
    from aae_lightning.run_folder import read_logged

    got = read_logged(output_dir / row.name / "metrics.csv", row.metric)
    return compare(expected, got, tolerance), exit_code


def main(argv: list[str] | None = None) -> int:
    own, extra = split_extra(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(own)
    for flag, value in (("--threads", args.threads), ("--epochs", args.epochs)):
        if value is not None and value < 1:
            parser.error(f"{flag} must be at least 1, got {value}")
    plans = []
    for name in args.rows:
        row = ROW_BY_NAME[name]
        epochs = row.epochs if args.epochs is None else args.epochs
        try:
            plans.append((row, epochs, expected_values(row, epochs)))
        except (OSError, ValueError) as error:  # checked before any run, not after minutes of training
            parser.error(str(error))

    output_dir = Path(tempfile.mkdtemp(prefix="check-reproduction-"))
    checks: list[tuple[str, EpochCheck]] = []
    failed_runs: list[str] = []
    started = time.perf_counter()
    try:
        for row, epochs, expected in plans:
            row_checks, exit_code = run_and_compare(row, epochs, expected, args, output_dir, extra)
            checks += [(row.name, check) for check in row_checks]
            if exit_code != 0:
                failed_runs.append(f"{row.name} (exit code {exit_code})")
    finally:
        if args.keep:
            print(f"\nrun folders kept in {output_dir}")
        else:
            shutil.rmtree(output_dir, ignore_errors=True)
    if args.dry_run:
        return 0

    print(f"\n{format_table(checks)}\n")
    if failed_runs:
        print(f"failed runs: {', '.join(failed_runs)}")
    print(
        f"total wall time {(time.perf_counter() - started) / 60:.1f} min; tolerances {args.acc_tolerance} "
        f"(accuracy) and {args.parzen_tolerance} nats (Parzen)"
    )
    return 0 if all(check.passed for _, check in checks) and not failed_runs else 1


if __name__ == "__main__":
    sys.exit(main())
