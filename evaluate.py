"""Evaluate a trained checkpoint of any variant on the MNIST test set.

    python evaluate.py --ckpt runs/RUN/checkpoints/last.ckpt --data-dir ../shared/data --json eval.json

Reports every test metric the variant logs (reconstruction loss; accuracy for classifying variants), the
clustering error with the paper's protocol (cluster labels chosen on the validation set, error measured on the
test set), and the Parzen window log-likelihood of the test set under decoder samples from the prior, with the
kernel width chosen on validation images (Goodfellow et al.'s parzen_ll.py, as the paper). The split is rebuilt
from the checkpoint and checked against its fingerprint. Checkpoints are unpickled: evaluate trusted files only.
A checkpoint that cannot be evaluated ends with one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from aae_lightning import AutoencoderBase, get_variant
from aae_lightning.checkpoint_io import load_trained, read_checkpoint, weights_held
from aae_lightning.cli import EXIT_USER_ERROR, DefaultsHelpFormatter, OneLineParser, add_parzen_flags, positive_int
from aae_lightning.console import quiet_console
from aae_lightning.errors import UserError, first_line
from aae_lightning.evaluation import default_sigma_grid, parzen_estimate, prior_images
from datamodules import MNISTDataModule

EVAL_BATCH = 1000


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(description=__doc__.split("\n\n")[0], formatter_class=DefaultsHelpFormatter)
    parser.add_argument("--ckpt", required=True, type=Path, help="a checkpoint written by train.py")
    parser.add_argument("--data-dir", default=None, help="folder with MNIST/raw/ (default: the one the run trained on)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results to this JSON file")
    parser.add_argument(
        "--parzen",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="estimate the Parzen window log-likelihood (variants with a prior)",
    )
    add_parzen_flags(parser)
    parser.add_argument(
        "--parzen-test-size",
        type=positive_int,
        default=None,
        help="score only the first N test images (default: all 10,000)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seeds the prior samples")
    parser.add_argument(
        "--validation-only",
        action="store_true",
        help="score the validation set only, no test metric and no Parzen estimate: for choosing between "
        "checkpoints or weights, which must not look at the test set",
    )
    parser.add_argument(
        "--weights",
        choices=("saved", "trained"),
        default="saved",
        help="saved: the checkpoint's weights, for a run with --average-weights the average it validated; trained: "
        "the latest weights the run trained, kept beside that average (the saved ones for a run without it)",
    )
    return parser


@torch.no_grad()
def stage_metrics(model: AutoencoderBase, stage: str, images: Tensor, labels: Tensor) -> dict[str, float]:
    """Every metric the variant logs for `stage`, over the whole set."""
    metrics = model.metrics[stage]
    for metric in metrics.values():
        metric.reset()
    for start in range(0, len(images), EVAL_BATCH):
        model.update_metrics(metrics, images[start : start + EVAL_BATCH], labels[start : start + EVAL_BATCH])
    return {f"{stage}/{name}": float(metric.compute()) for name, metric in metrics.items()}


def parzen(model: AutoencoderBase, datamodule: MNISTDataModule, args: argparse.Namespace) -> dict[str, Any]:
    started = time.perf_counter()
    samples = prior_images(model, args.parzen_samples, torch.Generator().manual_seed(args.seed))
    validation = datamodule.validation_data()[0][: args.parzen_val_size]
    test = datamodule.test_data()[0][: args.parzen_test_size]
    estimate = parzen_estimate(samples, validation, test, default_sigma_grid())
    return {
        "test/parzen_ll": estimate.mean,
        "test/parzen_ll_stderr": estimate.stderr,
        "parzen_sigma": estimate.sigma,
        "parzen_sigma_at_grid_edge": estimate.sigma_at_grid_edge,
        "parzen_val_ll_by_sigma": {
            f"{float(s):.4f}": float(v) for s, v in zip(estimate.sigmas, estimate.validation_means, strict=True)
        },
        "parzen_samples": len(samples),
        "parzen_val_images": len(validation),
        "parzen_test_images": len(test),
        "parzen_seconds": round(time.perf_counter() - started, 1),
    }


def evaluate(args: argparse.Namespace) -> dict[str, Any]:
    checkpoint = read_checkpoint(args.ckpt)
    cls = get_variant(checkpoint["aae_variant"])
    try:
        model, datamodule = load_trained(args.ckpt, args.data_dir, checkpoint=checkpoint)
    except (TypeError, RuntimeError) as error:  # hyperparameters or weight shapes this code's variant does not have
        raise UserError(
            f"the checkpoint does not fit variant {cls.variant_name!r} of this code ({first_line(error)})"
        ) from None
    if args.weights == "trained" and "current_model_state" in checkpoint:
        # one run gives both sides of the comparison: the average of its last epochs and its last epoch's weights
        model.load_state_dict(checkpoint["current_model_state"])
    results: dict[str, Any] = {
        "checkpoint": str(args.ckpt),
        "variant": model.variant_name,
        # Lightning stores the epoch the checkpoint was written in, before its counter moves on
        "epochs_trained": checkpoint["epoch"] + 1 if "epoch" in checkpoint else None,
        # the checkpoint's state_dict: a run with --average-weights validated and saved its average there
        "weights": weights_held(checkpoint) if args.weights == "saved" else "trained",
        "split": datamodule.split.summary(),
    }
    results.update(stage_metrics(model, "val", *datamodule.validation_data()))
    if args.validation_only:
        return results
    results.update(stage_metrics(model, "test", *datamodule.test_data()))
    if "acc" in model.metrics["test"]:
        results["test/error"] = 1 - results["test/acc"]
    if "cluster_acc" in model.metrics["test"]:
        # the paper's protocol: each cluster's label comes from the validation set, the error from the test set
        assignment = model.metrics["val"]["cluster_acc"].assignment()
        results["test/cluster_error"] = float(1 - model.metrics["test"]["cluster_acc"].accuracy(assignment))
        results["cluster_labels"] = assignment.tolist()
    if args.parzen and model.latent_prior is not None:
        results.update(parzen(model, datamodule, args))
    return results


def print_table(results: dict[str, Any]) -> None:
    rows = [
        (key, f"{value:.4f}" if isinstance(value, float) else str(value))
        for key, value in results.items()
        if not isinstance(value, (dict, list))
    ]
    width = max(len(key) for key, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")


def main(argv: list[str] | None = None) -> int:
    quiet_console()
    args = build_parser().parse_args(argv)
    try:
        results = evaluate(args)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USER_ERROR
    print_table(results)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
