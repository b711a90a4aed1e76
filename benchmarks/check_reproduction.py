"""Rerun the first epochs of each README results command and compare their validation numbers, epoch by epoch,
with a CSV of that command's run on this machine's CPU family; exit 1 on any difference beyond the tolerance.

    python benchmarks/check_reproduction.py                       # every row, 10-16 min on a 2-core CPU
    python benchmarks/check_reproduction.py --rows semi-100 parzen --epochs 5
    python benchmarks/check_reproduction.py --rows semi-1000 -- --precision bf16-mixed   # how far bf16 moves it
    python benchmarks/check_reproduction.py --dry-run             # the commands and expected values, no training
    python benchmarks/check_reproduction.py --save before.json    # another CPU: before a change ...
    python benchmarks/check_reproduction.py --against before.json #                ... and after it

Each row is a fresh `train.py --preset P --seed S ... --max-epochs K` process (the row table, ROWS, holds each
README row's preset, seed, CSVs, metric and default K), with OMP_NUM_THREADS set to the thread count its reported
run used (`--threads` for another). The presets' learning-rate schedules depend on the epoch only, so the first
K epochs of such a run are those of the full run, whose validation by epoch the CSV holds.

A run repeats to the digit only on the CPU family it was made on: Intel and AMD machines of this project's kind
round float32 differently, and the adversarial phases grow the last bits epoch by epoch (docs/evaluation.md). So
each row names one CSV per family, each a run of the row's command on that family, and the check compares with
the CSVs of this machine's family (the vendor in /proc/cpuinfo; `--family` for another). On a CPU of another
family the check has nothing to compare with: `--save FILE` before a change writes the values it got, and
`--against FILE` after the change compares with them instead of the CSVs.

Accuracies are compared as fractions, with an absolute tolerance of 0.0005 (0.05 points); the Parzen estimate in
nats, with a tolerance of 3.2 (two standard errors of its +-1.6), which the AMD family needs: its Parzen row has
no AMD run, and its first estimate there is 1.4 nats from the Intel CSV. On its own family every row has repeated
its CSV to the digit. Runs on another thread count or library build need not. Anything after `--` is appended to
every train.py command (the last of a repeated flag wins).

Duration with the default epochs (2 each, Parzen 5) on an idle 2-core CPU: 10-16 minutes in all, with the start
of each process (an epoch of semi-100, semi-1000 or dimreduction takes 20-35 s on two threads, semi-all 25-40 s,
clustering 25-40 s, the rows reported on one thread longer; an aae epoch of the Parzen row 20 s and its estimate
30 s). Exit codes: 0 every epoch within tolerance (or, with nothing to compare, every run finished), 1 a
difference beyond it or a missing epoch (a failed run), 2 bad flags or no reference for this CPU.

benchmarks/reproduce_semi.py answers another question: it trains the semi-supervised presets for their whole
schedule (hours on a CPU; the paper's 5000 epochs are for a GPU) and scores the best checkpoint once on the test
set. This script trains a few epochs of every README row and reads validation only: it checks that today's code
still gives the numbers the README's runs logged, not how good they are.
"""

from __future__ import annotations

import argparse
import csv
import json
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

# /proc/cpuinfo's vendor_id -> the family key of ReportedRun.csvs
CPU_FAMILIES = {"GenuineIntel": "intel", "AuthenticAMD": "amd"}


# NamedTuples rather than dataclasses: tests load this script with importlib, without a sys.modules entry, which
# dataclasses need to resolve postponed annotations.
class ReportedRun(NamedTuple):
    """A README results row: the command of its reported run and, per CPU family, the CSV of a run of that command
    there (validation by epoch)."""

    name: str
    preset: str
    seed: int
    csvs: dict[str, str]  # CPU family -> CSV, relative to the repository
    metric: str  # the column of train.py's metrics.csv; the docs CSV names it with "_" for "/"
    epochs: int  # checked by default; the last one must be in the CSVs (Parzen: every 5th epoch only)
    threads: int  # OMP_NUM_THREADS of the reported run, from docs/*.md


def csvs_by_family(intel: str, amd: str) -> dict[str, str]:
    return {"intel": f"docs/results/{intel}", "amd": f"docs/results/{amd}"}


# The README's results table (Parzen last, the longest run). clustering-16, clustering-30 and dimreduction were
# reported on one thread (docs/clustering.md, docs/dimreduction.md); clustering-16's reported run is seed 1. The
# reported runs are the AMD CSVs, except Parzen's; the Intel CSVs are this project's first runs of the semi and
# clustering-30 commands (replaced by AMD re-runs at later code that trains the same) and, for clustering-16 and
# dimreduction, runs made to be this check's reference (docs/evaluation.md). Parzen has one run, on Intel.
ROWS: tuple[ReportedRun, ...] = (
    ReportedRun(
        "semi-100", "fast-semi-100", 0, csvs_by_family("semi-100-1da835f.csv", "semi-100.csv"), "val/acc", 2, 2
    ),
    ReportedRun(
        "semi-1000", "fast-semi-1000", 0, csvs_by_family("semi-1000-2a6993a.csv", "semi-1000.csv"), "val/acc", 2, 2
    ),
    ReportedRun(
        "semi-all", "fast-semi-all", 0, csvs_by_family("semi-all-2a6993a.csv", "semi-all.csv"), "val/acc", 2, 2
    ),
    ReportedRun(
        "clustering-16",
        "fast-clustering-16",
        1,
        csvs_by_family("clustering-16-intel.csv", "clustering-16.csv"),
        "val/cluster_acc_majority",
        2,
        1,
    ),
    ReportedRun(
        "clustering-30",
        "fast-clustering-30",
        0,
        csvs_by_family("clustering-30-0abb476.csv", "clustering-30.csv"),
        "val/cluster_acc_majority",
        2,
        1,
    ),
    ReportedRun(
        "dimreduction",
        "fast-dimreduction-1000",
        0,
        csvs_by_family("dimreduction-1000-intel.csv", "dimreduction-1000.csv"),
        "val/acc",
        2,
        1,
    ),
    ReportedRun(
        "parzen",
        "fast-parzen-aae",
        0,
        csvs_by_family("parzen-hidden-dropout-lr85-seed0.csv", "parzen-hidden-dropout-lr85-seed0.csv"),
        "val/parzen_ll",
        5,
        2,
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


def cpu_family(cpuinfo: Path = Path("/proc/cpuinfo")) -> str | None:
    """This machine's CPU family as a key of ReportedRun.csvs; None without /proc/cpuinfo (not Linux) or for
    another vendor."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "vendor_id":
            return CPU_FAMILIES.get(value.strip())
    return None


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


def read_saved(path: Path) -> dict[str, dict[int, float]]:
    """A file written by --save as {row name: {epoch: value}}."""
    record = json.loads(path.read_text())
    if "rows" not in record:
        raise ValueError(f"{path} is no file written by --save: it has no 'rows'")
    rows = record["rows"]
    return {name: {int(epoch): value for epoch, value in values.items()} for name, values in rows.items()}


def write_saved(path: Path, got: dict[str, dict[int, float]], family: str | None, extra: list[str]) -> None:
    """What --save writes: each row's values by epoch, and where they came from."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    except OSError:  # no git: a copy of the code without its history
        commit = ""
    record = {"commit": commit or None, "cpu_family": family, "train_py_extra": extra, "rows": got}
    path.write_text(json.dumps(record, indent=2) + "\n")


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


def first_epochs(values: dict[int, float], epochs: int, row: ReportedRun, source: str) -> dict[int, float]:
    """The values of the first `epochs` epochs. Refuses an `epochs` whose last epoch `source` lacks: one beyond its
    run, or (Parzen) one that is not a multiple of the estimate's period, which train.py refuses too."""
    if epochs - 1 not in values:
        listed = sorted(values)
        shown = ", ".join(str(epoch) for epoch in listed[:5]) + (f", ... {listed[-1]}" if len(listed) > 5 else "")
        raise ValueError(
            f"--epochs {epochs} for row {row.name}: {source} has no value for its last epoch, {epochs - 1} "
            f"(0-based); it has epochs {shown or 'none'}"
        )
    return {epoch: value for epoch, value in values.items() if epoch < epochs}


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
        + "); runs on other thread counts differ in the last digit",
    )
    parser.add_argument(
        "--family",
        choices=sorted(set(CPU_FAMILIES.values())),
        default=cpu_family(),
        help="compare with the CSVs of this CPU family (default: this machine's, from /proc/cpuinfo: "
        "%(default)s); another family's differ from the first epochs",
    )
    parser.add_argument(
        "--save",
        type=Path,
        metavar="FILE",
        help="write the values this check got (JSON), for --against after a change",
    )
    parser.add_argument(
        "--against",
        type=Path,
        metavar="FILE",
        help="compare with a file written by --save on this machine, not with the CSVs",
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


class Plan(NamedTuple):
    row: ReportedRun
    epochs: int
    expected: dict[int, float] | None  # None: nothing to compare with, the values are only saved
    source: str  # where `expected` comes from


def plan(args: argparse.Namespace) -> list[Plan]:
    """Each row to run, with the values expected of it: from --against's file, else from the CSVs of --family.
    Raises OSError or ValueError for a reference that lacks a row or an epoch, before any run."""
    saved = read_saved(args.against) if args.against else None
    plans = []
    for name in args.rows:
        row = ROW_BY_NAME[name]
        epochs = row.epochs if args.epochs is None else args.epochs
        if saved is not None:
            source = str(args.against)
            if name not in saved:
                raise ValueError(f"{source} has no row {name} (it has {', '.join(saved) or 'none'})")
            expected = first_epochs(saved[name], epochs, row, source)
        elif args.family is not None:
            source = row.csvs[args.family]
            expected = first_epochs(read_expected(REPO / source, docs_column(row.metric)), epochs, row, source)
        else:
            source, expected = "nothing", None
        plans.append(Plan(row, epochs, expected, source))
    return plans


def announce(
    row: ReportedRun, epochs: int, args: argparse.Namespace, output_dir: Path, extra: list[str]
) -> tuple[list[str], int]:
    """The row's train.py command and its OMP_NUM_THREADS, printed as the shell line that runs them."""
    threads = args.threads or row.threads
    command = train_command(row, epochs, args.data_dir, output_dir, extra)
    print(f"\n$ OMP_NUM_THREADS={threads} {shlex.join(command)}", flush=True)
    return command, threads


def run_row(
    row: ReportedRun, epochs: int, args: argparse.Namespace, output_dir: Path, extra: list[str]
) -> tuple[dict[int, float], int]:
    """Train the row's first `epochs` epochs in a fresh process; the values it logged by epoch and its exit code."""
    command, threads = announce(row, epochs, args, output_dir, extra)
    started = time.perf_counter()
    exit_code = subprocess.run(command, env={**os.environ, "OMP_NUM_THREADS": str(threads)}).returncode
    print(f"{row.name}: {epochs} epochs, {time.perf_counter() - started:.0f} s, exit code {exit_code}", flush=True)
    # imported here: the package loads torch, which --help and --dry-run can do without (seconds)
    from aae_lightning.run_folder import read_logged

    return read_logged(output_dir / row.name / "metrics.csv", row.metric), exit_code


def main(argv: list[str] | None = None) -> int:
    own, extra = split_extra(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(own)
    for flag, value in (("--threads", args.threads), ("--epochs", args.epochs)):
        if value is not None and value < 1:
            parser.error(f"{flag} must be at least 1, got {value}")
    if args.family is None and args.against is None and args.save is None:
        parser.error(
            "this machine's CPU family has no CSVs (its /proc/cpuinfo vendor is none of "
            f"{', '.join(CPU_FAMILIES)}): pass --save FILE before a change and --against FILE after it, or "
            "--family to compare with another family's CSVs, which differ"
        )
    try:  # checked before any run, not after minutes of training
        plans = plan(args)
    except (OSError, ValueError) as error:
        parser.error(str(error))
    if args.dry_run:
        for row, epochs, expected, source in plans:
            announce(row, epochs, args, Path("RUNS"), extra)
            if expected is not None:
                shown = ", ".join(f"epoch {epoch}: {value:.4f}" for epoch, value in expected.items())
                print(f"  expects {docs_column(row.metric)} {shown} ({source})")
        return 0

    output_dir = Path(tempfile.mkdtemp(prefix="check-reproduction-"))
    checks: list[tuple[str, EpochCheck]] = []
    got_by_row: dict[str, dict[int, float]] = {}
    failed_runs: list[str] = []
    started = time.perf_counter()
    try:
        for row, epochs, expected, _ in plans:
            got, exit_code = run_row(row, epochs, args, output_dir, extra)
            got_by_row[row.name] = got
            if expected is not None:
                tolerance = args.parzen_tolerance if row.metric == PARZEN_METRIC else args.acc_tolerance
                checks += [(row.name, check) for check in compare(expected, got, tolerance)]
            if exit_code != 0:
                failed_runs.append(f"{row.name} (exit code {exit_code})")
    finally:
        if args.keep:
            print(f"\nrun folders kept in {output_dir}")
        else:
            shutil.rmtree(output_dir, ignore_errors=True)
    if args.save:
        write_saved(args.save, got_by_row, args.family, extra)
        print(f"\nvalues saved to {args.save}")

    if checks:
        sources = ", ".join(dict.fromkeys(source for *_, source in plans))
        print(f"\ncompared with {sources}\n{format_table(checks)}\n")
    if failed_runs:
        print(f"failed runs: {', '.join(failed_runs)}")
    print(
        f"total wall time {(time.perf_counter() - started) / 60:.1f} min; tolerances {args.acc_tolerance} "
        f"(accuracy) and {args.parzen_tolerance} nats (Parzen)"
    )
    return 0 if all(check.passed for _, check in checks) and not failed_runs else 1


if __name__ == "__main__":
    sys.exit(main())
