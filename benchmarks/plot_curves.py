"""A validation metric against epoch for finished runs, with the paper's numbers as horizontal lines.

    python benchmarks/plot_curves.py --run 100=~/aae-runs/semi-100 --run 1000=~/aae-runs/semi-1000 \\
        --out docs/semi-supervised-curves.png --csv-dir docs/results --csv-prefix semi
    python benchmarks/plot_curves.py --run 16=RUN16 --run 30=RUN30 --metric val/cluster_acc_majority \\
        --unit clusters --paper 16=9.55 --paper 30=4.10 --title "Clustering (clustering)" \\
        --out docs/clustering-curves.png

Each `--run LABEL=RUN_FOLDER` reads RUN_FOLDER/metrics.csv (train.py's CSV logger); `LABEL` and `--unit` name the
curve (for `semi` the number of labels: 100, 1000, all, whose paper numbers are known without `--paper`). An
accuracy (a metric whose name ends in `acc` or `acc_majority`) is drawn as error in %, on a log scale; any other
metric (`val/parzen_ll`) as it is. `--paper LABEL=VALUE` draws the paper's number for that curve, in the plotted
unit. With `--csv-dir` each run's per-epoch values are also written to CSV_DIR/PREFIX-LABEL.csv (columns epoch
and the metric), the file the README's results point to, so that a rerun of its command can be compared epoch by
epoch. Epochs without a value (a Parzen estimate every N epochs) are left out.
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
from aae_lightning.run_folder import read_logged  # noqa: E402


def read_curve(run_dir: Path, metric: str) -> list[tuple[int, float]]:
    """(epoch, value) of every trained epoch's validation of `metric`, in epoch order (`read_logged`)."""
    path = run_dir / "metrics.csv"
    if not path.is_file():
        raise SystemExit(f"plot_curves.py: no metrics.csv in {run_dir}")
    curve = sorted(read_logged(path, metric, trained_only=True).items())
    if not curve:
        raise SystemExit(f"plot_curves.py: {path} holds no {metric} values of trained epochs")
    return curve


def write_curve_csv(path: Path, curve: list[tuple[int, float]], column: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["epoch", column])
        writer.writerows((epoch, f"{value:.4f}") for epoch, value in curve)


def is_accuracy(metric: str) -> bool:
    return metric.endswith(("acc", "acc_majority"))


def plot(
    curves: dict[str, list[tuple[int, float]]],
    out: Path,
    title: str,
    metric: str = "val/acc",
    unit: str = "labels",
    paper: dict[str, float] | None = None,
) -> None:
    """One line per curve; `paper` maps a curve's label to the paper's number, in the plotted unit."""
    error = is_accuracy(metric)
    figure, axes = plt.subplots(figsize=(6.4, 4.8), dpi=100)
    for label, curve in curves.items():
        epochs = [epoch + 1 for epoch, _ in curve]  # epoch k's validation comes after k + 1 epochs of training
        values = [100 * (1 - value) if error else value for _, value in curve]
        name = f"{label} {unit}".strip()
        (line,) = axes.plot(epochs, values, marker="o" if len(curve) < 15 else None, label=f"ours, {name}")
        if paper and label in paper:
            axes.axhline(
                paper[label],
                color=line.get_color(),
                linestyle="--",
                linewidth=1,
                label=f"paper, {name}: {paper[label]:g}{' % test error' if error else ' (test)'}",
            )
    if error:
        axes.set_yscale("log")
        plain = FuncFormatter(lambda value, _: f"{value:g}")  # 2, 5, 10 rather than 2x10^0
        axes.yaxis.set_major_formatter(plain)
        axes.yaxis.set_minor_formatter(plain)
    axes.set_xlabel("epoch")
    axes.set_ylabel(f"validation error (%), from {metric}" if error else metric)
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


def parse_paper(text: str) -> tuple[str, float]:
    label, sep, value = text.partition("=")
    try:
        if sep and label:
            return label, float(value)
    except ValueError:
        pass
    raise argparse.ArgumentTypeError(f"expected LABEL=NUMBER, got {text!r}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--run",
        type=parse_run,
        action="append",
        required=True,
        metavar="LABEL=RUN_FOLDER",
        help="a run folder and what tells its curve apart, e.g. its label count (repeatable)",
    )
    parser.add_argument(
        "--metric",
        default="val/acc",
        help="the column of metrics.csv to plot: an accuracy as error in %%, anything else as it is",
    )
    parser.add_argument("--unit", default="labels", help="what a LABEL counts, shown after it in the legend")
    parser.add_argument(
        "--paper",
        type=parse_paper,
        action="append",
        default=[],
        metavar="LABEL=NUMBER",
        help="the paper's number for curve LABEL, in the plotted unit (default for val/acc: the "
        "paper's semi-supervised test error for 100, 1000 and all labels)",
    )
    parser.add_argument("--out", type=Path, default=Path("docs/semi-supervised-curves.png"), help="the PNG to write")
    parser.add_argument("--title", default="Semi-supervised MNIST (semi)", help="the plot's title")
    parser.add_argument("--csv-dir", type=Path, default=None, help="also write each curve as PREFIX-LABEL.csv here")
    parser.add_argument("--csv-prefix", default="semi", help="file name prefix of those CSVs")
    args = parser.parse_args(argv)

    curves = {label: read_curve(folder, args.metric) for label, folder in args.run}
    paper = {label: error for label, (error, _) in SEMI_TEST_ERROR.items()} if args.metric == "val/acc" else {}
    paper.update(args.paper)
    plot(curves, args.out, args.title, args.metric, args.unit, paper)
    print(f"wrote {args.out} ({args.out.stat().st_size // 1024} KB)")
    shown = (lambda value: f"{100 * value:.2f} %") if is_accuracy(args.metric) else (lambda value: f"{value:.2f}")
    for label, curve in curves.items():
        best_epoch, best = max(curve, key=lambda item: item[1])
        print(
            f"{label:>5} {args.unit}: {len(curve)} epochs, last {args.metric} {shown(curve[-1][1])}, "
            f"best {shown(best)} (epoch {best_epoch})"
        )
        if args.csv_dir is not None:
            path = args.csv_dir / f"{args.csv_prefix}-{label}.csv"
            write_curve_csv(path, curve, args.metric.replace("/", "_"))
            print(f"wrote {path}")


if __name__ == "__main__":
    main()
