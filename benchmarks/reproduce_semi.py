"""Reproduce the paper's semi-supervised MNIST rows (Table 2): train `semi` with 100 and/or 1,000 labels
through train.py, evaluate the best checkpoint by validation accuracy on the test set once, print a table.

    python benchmarks/reproduce_semi.py --data-dir ../shared/data --preset paper-semi --gpus 1
    python benchmarks/reproduce_semi.py --data-dir ../shared/data --preset fast-semi --labels 1000 --gpus 0

`--preset PREFIX` picks `presets/PREFIX-<labels>.yaml` for each label count (100, 1000, all). Every run is a separate
train.py process, so what this prints is exactly what the printed command gives; anything after `--` goes to train.py
unchanged (for instance `-- --max-epochs 100`).
"""

from __future__ import annotations

import argparse
import json
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
    print("\n| labels | seed | epochs | best val acc | test error % | paper % | wall time |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        test_error = 100 * (1 - row["test"]["test/acc"])
        print(
            f"| {row['labels']} | {row['seed']} | {row['epochs']} | {row['val']['val/acc']:.4f} | {test_error:.2f} "
            f"| {'{:.2f} +- {:.2f}'.format(*SEMI_TEST_ERROR[row['labels']])} | {row['wall_seconds'] / 60:.0f} min |"
        )


if __name__ == "__main__":
    main()
