"""Which classes a classifier's checkpoints confuse, on the validation set only (never the test set, so that it can
judge paired runs):

    python benchmarks/confusion.py RUN_A/checkpoints/last.ckpt RUN_B/checkpoints/last.ckpt --data-dir ../shared/data

One block per checkpoint: validation accuracy, the most frequent confusions (true -> predicted: count) and how many
validation images each class receives against how many it holds (the categorical prior asks for equal shares).
This is how docs/semi-supervised.md counts the nines read as fours. Works for every variant that predicts the 10
digits and picks its checkpoint by `val/acc` (`semi`, `dimreduction`, `label_regularized`), with the split the run
trained on.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch import Tensor
from torchmetrics.functional.classification import multiclass_confusion_matrix

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from anywhere
from aae_lightning.checkpoint_io import load_trained  # noqa: E402
from aae_lightning.cli import DefaultsHelpFormatter  # noqa: E402
from aae_lightning.console import quiet_console  # noqa: E402
from aae_lightning.errors import UserError  # noqa: E402
from datamodules import NUM_CLASSES  # noqa: E402


def top_confusions(counts: Tensor, most: int) -> list[tuple[int, int, int]]:
    """The `most` largest off-diagonal cells as (true, predicted, count): largest first, ties in class order."""
    cells = [
        (int(counts[t, p]), t, p) for t in range(len(counts)) for p in range(len(counts)) if t != p and counts[t, p] > 0
    ]
    return [(t, p, n) for n, t, p in sorted(cells, key=lambda cell: (-cell[0], cell[1], cell[2]))[:most]]


def report(counts: Tensor, most: int) -> str:
    total = int(counts.sum())
    correct = int(counts.trace())
    confusions = ", ".join(f"{true}->{predicted}: {count}" for true, predicted, count in top_confusions(counts, most))
    received = " ".join(
        f"{k}:{int(n)}/{int(h)}" for k, (n, h) in enumerate(zip(counts.sum(0), counts.sum(1), strict=True))
    )
    return (
        f"  validation accuracy {100 * correct / total:.2f} % ({total - correct} errors of {total})\n"
        f"  top confusions (true->predicted): {confusions or 'none'}\n"
        f"  images received / held per class: {received}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=DefaultsHelpFormatter)
    parser.add_argument("checkpoints", nargs="+", help="checkpoints written by train.py")
    parser.add_argument("--data-dir", help="folder with MNIST/raw/ (default: the one the run trained on)")
    parser.add_argument("--most", type=int, default=5, help="how many confusions to list")
    parser.add_argument("--batch-size", type=int, default=1000)
    args = parser.parse_args(argv)
    quiet_console()
    try:
        for path in args.checkpoints:
            print(path)
            print(report(validation_confusion(path, args.data_dir, args.batch_size), args.most))
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


def validation_confusion(path: str, data_dir: str | None, batch_size: int) -> Tensor:
    model, datamodule = load_trained(path, data_dir)
    if model.monitor[0] != "val/acc":
        raise UserError(f"{path} is not a digit classifier (its checkpoint is chosen by {model.monitor[0]})")
    images, labels = datamodule.validation_data()
    predictions = torch.cat([model.classify(batch).argmax(1) for batch in images.split(batch_size)])
    return multiclass_confusion_matrix(predictions, labels, NUM_CLASSES)  # counts[true, predicted], as the callback's


if __name__ == "__main__":
    sys.exit(main())
