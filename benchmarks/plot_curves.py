"""Validation error against epoch for finished runs, with the paper's numbers as horizontal lines.

    python benchmarks/plot_curves.py --run 100=~/aae-runs/semi-100 --run 1000=~/aae-runs/semi-1000 \\
        --out docs/semi-supervised-curves.png --csv-dir docs/results --csv-prefix semi

Each `--run LABEL=RUN_FOLDER` reads RUN_FOLDER/metrics.csv (train.py's CSV logger). `LABEL` names the curve
(for `semi` the number of labels: 100, 1000, all) and picks the paper's number for it. With `--csv-dir` each
run's per-epoch validation accuracy is also written to CSV_DIR/PREFIX-LABEL.csv (columns epoch, val_acc), the
file the README's results point to, so that a rerun of its command can be compared epoch by epoch.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on a cluster node or in CI
import matplotlib.pyplot as plt
from matplotlib.ticker import FuncFormatter

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from anywhere
from aae_lightning.paper import SEMI_TEST_ERROR  # noqa: E402


def read_curve(run_dir: Path, metric: str) -> list[tuple[int, float]]:
    """(epoch, value) of every trained epoch's validation of `metric`, in epoch order.

    Only epochs that logged training means count: runs written before train.py stopped logging its final
    validation of the best checkpoint hold one more row of that checkpoint's value, at the number of trained
    epochs (one past the last). A resumed run that validated an epoch twice keeps the first value."""
    path = run_dir / "metrics.csv"
    if not path.is_file():
        raise SystemExit(f"plot_curves.py: no metrics.csv in {run_dir}")
    values: dict[int, float] = {}
    trained: set[int] = set()
    with path.open() as file:
        for row in csv.DictReader(file):
            epoch = int(row["epoch"])
            if any(value and name.startswith("train/") and name.endswith("_epoch") for name, value in row.items()):
                trained.add(epoch)
            if row.get(metric) and epoch not in values:
                values[epoch] = float(row[metric])
    curve = sorted((epoch, value) for epoch, value in values.items() if epoch in trained)
    if not curve:
        raise SystemExit(f"plot_curves.py: {path} holds no {metric} values of trained epochs")
    return curve


def write_curve_csv(path: Path, curve: list[tuple[int, float]], column: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["epoch", column])
        writer.writerows((epoch, f"{value:.4f}") for epoch, value in curve)


def plot(curves: dict[str, list[tuple[int, float]]], out: Path, title: str) -> None:
    figure, axes = plt.subplots(figsize=(6.4, 4.8), dpi=100)
    for label, curve in curves.items():
        epochs = [epoch + 1 for epoch, _ in curve]  # epoch k's validation comes after k + 1 epochs of training
        line, = axes.plot(epochs, [100 * (1 - value) for _, value in curve], label=f"ours, {label} labels")
        if label in SEMI_TEST_ERROR:
            error, _ = SEMI_TEST_ERROR[label]
            axes.axhline(error, color=line.get_color(), linestyle="--", linewidth=1,
                         label=f"paper, {label} labels ({error:.2f} % test error, 5000 epochs)")
    axes.set_yscale("log")
    plain = FuncFormatter(lambda value, _: f"{value:g}")  # 2, 5, 10 rather than 2x10^0
    axes.yaxis.set_major_formatter(plain)
    axes.yaxis.set_minor_formatter(plain)
    axes.set_xlabel("epoch")
    axes.set_ylabel("validation error (%)")
    axes.set_title(title)
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize=8, ncol=2, loc="upper center", bbox_to_anchor=(0.5, -0.16))  # below: never over a curve
    figure.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, bbox_inches="tight")  # the legend sits below the axes
    plt.close(figure)


def parse_run(text: str) -> tuple[str, Path]:
    label, sep, folder = text.partition("=")
    if not sep or not label or not folder:
        raise argparse.ArgumentTypeError(f"expected LABEL=RUN_FOLDER, got {text!r}")
    return label, Path(folder).expanduser()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=parse_run, action="append", required=True, metavar="LABEL=RUN_FOLDER",
                        help="a run folder and the label count it was trained with (repeatable)")
    parser.add_argument("--metric", default="val/acc", help="the accuracy column of metrics.csv to plot as error")
    parser.add_argument("--out", type=Path, default=Path("docs/semi-supervised-curves.png"), help="the PNG to write")
    parser.add_argument("--title", default="Semi-supervised MNIST (semi)", help="the plot's title")
    parser.add_argument("--csv-dir", type=Path, default=None, help="also write each curve as PREFIX-LABEL.csv here")
    parser.add_argument("--csv-prefix", default="semi", help="file name prefix of those CSVs")
    args = parser.parse_args(argv)

    curves = {label: read_curve(folder, args.metric) for label, folder in args.run}
    plot(curves, args.out, args.title)
    print(f"wrote {args.out} ({args.out.stat().st_size // 1024} KB)")
    for label, curve in curves.items():
        best_epoch, best = max(curve, key=lambda item: item[1])
        print(f"{label:>5} labels: {len(curve)} epochs, last {args.metric} {100 * curve[-1][1]:.2f} %, "
              f"best {100 * best:.2f} % (epoch {best_epoch})")
        if args.csv_dir is not None:
            path = args.csv_dir / f"{args.csv_prefix}-{label}.csv"
            write_curve_csv(path, curve, args.metric.replace("/", "_"))
            print(f"wrote {path}")


if __name__ == "__main__":
    main()
