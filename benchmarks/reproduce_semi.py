"""Reproduce the paper's semi-supervised MNIST rows (Table 2): train `semi` with 100, 1,000 and/or all labels
through train.py, evaluate the best checkpoint by validation accuracy on the test set once, print a table.

    python benchmarks/reproduce_semi.py --data-dir ../shared/data --preset paper-semi --gpus 1
    python benchmarks/reproduce_semi.py --data-dir ../shared/data --preset fast-semi --labels 1000 --gpus 0

`--preset PREFIX` picks `presets/PREFIX-<labels>.yaml` for each label count (100, 1000, all). Every run is a separate
train.py process, so what this prints is exactly what the printed command gives; anything after `--` goes to train.py
unchanged (for instance `-- --max-epochs 100`). With several `--seeds` it also prints each label count's test error
as the paper reports it: the mean ± the standard deviation over the seeds (the sample's, n - 1 in the denominator).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run as a script from anywhere: the project's packages sit beside this folder
from aae_lightning.paper import SEMI_TEST_ERROR  # noqa: E402


def run(labels: str, seed: int, args: argparse.Namespace, extra: list[str]) -> dict:
    name = f"{args.preset}-{labels}-seed{seed}"
    results_json = args.output_dir / f"{name}.json"
    command = [
        sys.executable,
        str(REPO / "train.py"),
        "--preset",
        f"{args.preset}-{labels}",
        "--labels",
        str(labels),
        "--seed",
        str(seed),
        "--data-dir",
        args.data_dir,
        "--output-dir",
        str(args.output_dir),
        "--run-name",
        name,
        "--logger",
        args.logger,
        "--test",
        "--results-json",
        str(results_json),
    ]
    if args.gpus is not None:
        command += ["--gpus", str(args.gpus)]
    command += extra
    print("$", " ".join(command), flush=True)
    started = time.perf_counter()
    subprocess.run(command, check=True, cwd=REPO)
    results = json.loads(results_json.read_text())
    results["wall_seconds"] = time.perf_counter() - started
    results["labels"], results["seed"] = labels, seed
    return results


def percent_test_error(row: dict) -> float:
    """A run's test error in %, from train.py's results JSON."""
    return 100 * (1 - row["test"]["test/acc"])


def paper_error(labels: str) -> str:
    return "{:.2f} +- {:.2f}".format(*SEMI_TEST_ERROR[labels])


def table(rows: list[dict]) -> list[str]:
    """One line per run; then, for each label count run on two seeds or more, the mean +- std over its seeds."""
    lines = ["| labels | seed | epochs | best val acc | test error % | paper % | wall time |", "|---" * 7 + "|"]
    lines += [
        f"| {row['labels']} | {row['seed']} | {row['epochs']} | {row['val']['val/acc']:.4f} "
        f"| {percent_test_error(row):.2f} | {paper_error(row['labels'])} | {row['wall_seconds'] / 60:.0f} min |"
        for row in rows
    ]
    by_labels: dict[str, list[float]] = {}
    for row in rows:
        by_labels.setdefault(row["labels"], []).append(percent_test_error(row))
    summaries = {labels: errors for labels, errors in by_labels.items() if len(errors) > 1}
    if summaries:
        lines += ["", "| labels | seeds | test error % (mean +- std) | paper % |", "|---|---|---|---|"]
        lines += [
            f"| {labels} | {len(errors)} | {statistics.mean(errors):.2f} +- {statistics.stdev(errors):.2f} "
            f"| {paper_error(labels)} |"
            for labels, errors in summaries.items()
        ]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--preset", default="paper-semi", help="preset prefix: PREFIX-<labels> must exist for each label count"
    )
    parser.add_argument("--labels", nargs="+", default=["1000", "100"], choices=sorted(SEMI_TEST_ERROR))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--output-dir", type=Path, default=Path("runs"))
    parser.add_argument("--logger", default="csv")
    parser.add_argument("--gpus", type=int, default=None)
    args, extra = parser.parse_known_args()
    extra = [item for item in extra if item != "--"]
    args.output_dir.mkdir(parents=True, exist_ok=True)

    rows = [run(labels, seed, args, extra) for labels in args.labels for seed in args.seeds]
    print("\n" + "\n".join(table(rows)))


if __name__ == "__main__":
    main()
