"""Pure drawing functions: tensors in, RGB arrays (height, width, 3, uint8) out. No Lightning, no logger.

Matplotlib is driven through `Figure` and the Agg canvas directly rather than `pyplot`: no global figure
registry, no backend switch, nothing left open between epochs.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from torch import Tensor
from torchvision.utils import make_grid

from datamodules import IMAGE_SHAPE, NUM_CLASSES

DIGIT_COLOURS = "tab10"


def tile(images: Tensor, columns: int, padding: int = 2) -> np.ndarray:
    """Images (n, 784) in [0, 1] as one grid, row by row, `columns` to a row, on a grey frame."""
    pixels = images.detach().float().cpu().clamp(0, 1).reshape(-1, 1, *IMAGE_SHAPE)
    grid = make_grid(pixels, nrow=columns, padding=padding, pad_value=0.5)
    return to_uint8(grid.permute(1, 2, 0))


def to_uint8(image: Tensor) -> np.ndarray:
    return (image.numpy() * 255).round().astype(np.uint8)


def figure_to_array(figure: Figure) -> np.ndarray:
    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def principal_axes(codes: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Mean, the two leading principal directions (d, 2) and the share of variance each explains.

    An exact SVD rather than `torch.pca_lowrank`, which draws random numbers from the global generator."""
    mean = codes.mean(dim=0)
    _, singular, directions = torch.linalg.svd(codes - mean, full_matrices=False)
    variance = singular**2
    return mean, directions[:2].T, variance[:2] / variance.sum()


def scatter_codes(
    codes: Tensor,
    labels: Tensor,
    prior_samples: Tensor | None,
    title: str,
    axis_labels: Sequence[str],
) -> np.ndarray:
    """Codes (n, 2) coloured by digit, prior samples (m, 2) faint and grey behind them."""
    figure = Figure(figsize=(6.4, 6.0), dpi=100, layout="constrained")
    axes = figure.add_subplot()
    if prior_samples is not None:
        prior = prior_samples.cpu().numpy()
        axes.scatter(prior[:, 0], prior[:, 1], s=3, c="0.75", alpha=0.4, linewidths=0, zorder=1, label="prior")
    points, digits = codes.cpu().numpy(), labels.cpu().numpy()
    colours = axes.scatter(
        points[:, 0],
        points[:, 1],
        s=4,
        c=digits,
        cmap=DIGIT_COLOURS,
        vmin=-0.5,
        vmax=NUM_CLASSES - 0.5,
        linewidths=0,
        zorder=2,
    )
    bar = figure.colorbar(colours, ax=axes, ticks=range(NUM_CLASSES), fraction=0.05, pad=0.02)
    bar.set_label("digit")
    axes.set_xlabel(axis_labels[0])
    axes.set_ylabel(axis_labels[1])
    axes.set_title(title, fontsize=10)
    axes.set_aspect("equal", adjustable="datalim")
    if prior_samples is not None:
        axes.legend(loc="upper right", markerscale=3, fontsize=8)
    return figure_to_array(figure)


def confusion_matrix_image(matrix: Tensor, title: str, predicted_label: str = "predicted") -> np.ndarray:
    """Counts (true class x predicted class, not necessarily square) as a heat map normalised per true class,
    each cell annotated."""
    counts = matrix.cpu().long()
    rates = counts.float() / counts.sum(dim=1, keepdim=True).clamp(min=1)
    rows, columns = counts.shape
    figure = Figure(figsize=(6.4 * max(1.0, columns / rows), 6.0), dpi=100, layout="constrained")
    axes = figure.add_subplot()
    heat = axes.imshow(rates.numpy(), cmap="Blues", vmin=0, vmax=1)
    figure.colorbar(heat, ax=axes, fraction=0.05, pad=0.02).set_label("share of the true class")
    for true in range(rows):
        for predicted in range(columns):
            axes.text(
                predicted,
                true,
                str(int(counts[true, predicted])),
                ha="center",
                va="center",
                fontsize=7,
                color="white" if rates[true, predicted] > 0.5 else "black",
            )
    axes.set_xticks(range(columns))
    axes.set_yticks(range(rows))
    axes.set_xlabel(predicted_label)
    axes.set_ylabel("true digit")
    axes.set_title(title, fontsize=10)
    return figure_to_array(figure)
