"""Callbacks that draw what researchers look at: latent grids, style grids, prior samples, reconstructions and
latent scatter plots, at the end of validation every N epochs.

Each callback draws on rank 0 only (under DDP the other ranks go on) with the model in evaluation mode, from
fixed inputs: the validation images it shows and the noise it decodes are drawn from a private
`torch.Generator` seeded with `seed` afresh every time, so the same inputs appear at every epoch, before and
after a resume, and the global random stream that training draws from is never touched.

A callback says in its docstring what it needs of the module and lists the declared capabilities it needs
(callbacks/needs.py); on a variant that lacks one, it draws nothing and says so once, in one line on the console
(Lightning's info log, not a warning: nothing is wrong with the run).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import ClassVar

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_info
from torch import Tensor

from aae_lightning.base import AutoencoderBase
from callbacks.needs import PRIOR, Need, unmet
from callbacks.publish import image_due, publish
from callbacks.rendering import principal_axes, scatter_codes, tile
from datamodules import IMAGE_SIZE, NUM_CLASSES


@contextmanager
def evaluation_mode(module: torch.nn.Module) -> Iterator[None]:
    """Dropout and input noise off while drawing (they would also draw from the global RNG), restored after."""
    modes = {submodule: submodule.training for submodule in module.modules()}
    module.eval()
    try:
        yield
    finally:
        for submodule, training in modes.items():
            submodule.training = training


class EpochImageCallback(pl.Callback):
    """Draws one image per due epoch and publishes it (PNG in the run folder + the active logger).

    Subclasses set `name`, list the declared capabilities they need of the module in `needs`, and implement
    `draw`. `needs_validation_data` means the datamodule must offer `validation_data() -> (images, labels)`.
    """

    name: ClassVar[str]
    needs: ClassVar[tuple[Need, ...]] = ()
    needs_validation_data: ClassVar[bool] = False

    def __init__(self, every_n_epochs: int = 1, seed: int = 0) -> None:
        if every_n_epochs < 1:
            raise ValueError(f"every_n_epochs must be at least 1, got {every_n_epochs}")
        self.every_n_epochs, self.seed = every_n_epochs, seed
        self._told = False

    # ----- what a subclass describes ------------------------------------------------------------------------
    def missing(self, pl_module: AutoencoderBase) -> str | None:
        """Why this module cannot be drawn beyond the capabilities in `needs` it lacks; None if it can."""
        return None

    def draw(self, trainer: pl.Trainer, pl_module: AutoencoderBase) -> tuple[np.ndarray, str]:
        """The image (height, width, 3, uint8) and its caption."""
        raise NotImplementedError

    # ----- shared machinery ---------------------------------------------------------------------------------
    def generator(self) -> torch.Generator:
        return torch.Generator().manual_seed(self.seed)

    def unsupported(self, trainer: pl.Trainer, pl_module: AutoencoderBase) -> str | None:
        lacking = unmet(self.needs, pl_module)
        if lacking is not None:
            return lacking
        if self.needs_validation_data and not callable(getattr(trainer.datamodule, "validation_data", None)):
            return "the datamodule has no validation_data()"
        return self.missing(pl_module)

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero or not image_due(trainer, self.every_n_epochs):
            return
        reason = self.unsupported(trainer, pl_module)
        if reason is not None:
            if not self._told:
                rank_zero_info(f"{type(self).__name__} draws nothing: {reason}")
                self._told = True
            return
        with evaluation_mode(pl_module), torch.no_grad():
            image, caption = self.draw(trainer, pl_module)
        publish(trainer, self.name, image, f"{caption} (epoch {trainer.current_epoch})")

    def validation_subset(self, trainer: pl.Trainer, count: int) -> tuple[Tensor, Tensor]:
        """The same `count` validation images (and labels) every time."""
        images, labels = trainer.datamodule.validation_data()
        chosen = torch.randperm(len(images), generator=self.generator())[:count]
        return images[chosen], labels[chosen]


def to_module(pl_module: pl.LightningModule, tensor: Tensor) -> Tensor:
    """A float input on the module's device and in its dtype (bf16-true modules have bf16 weights)."""
    return tensor.to(device=pl_module.device, dtype=pl_module.dtype)


def class_labels(pl_module: AutoencoderBase, labels: Tensor) -> Tensor | None:
    """The labels a conditioned decoder needs, or None for a decoder of z alone."""
    return labels.to(pl_module.device) if pl_module.num_classes else None


def class_names(classes: int) -> str:
    """How a caption names a conditioned decoder's classes: the digits, or the categories of a clustering."""
    return "digits 0-9" if classes == NUM_CLASSES else f"categories 0-{classes - 1}"


class LatentGrid(EpochImageCallback):
    """An n x n grid of images decoded from z on a regular lattice over the prior's `plot_range` (e.g. -10..10
    for a Gaussian of std 5), over latent dimensions `dims` with every other dimension fixed at 0. Up is the
    second dimension growing, as in the latent scatter plot. Decoders conditioned on a class decode class
    `digit` (a category, for the clustering model).

    Needs `decode(z, labels)`, `latent_prior` (its `plot_range`; the plain autoencoder has none) and a latent
    of at least two dimensions.
    """

    name = "latent_grid"
    needs = (PRIOR,)

    def __init__(
        self, every_n_epochs: int = 1, seed: int = 0, size: int = 20, dims: tuple[int, int] = (0, 1), digit: int = 0
    ) -> None:
        super().__init__(every_n_epochs, seed)
        self.size, self.dims, self.digit = size, dims, digit

    def missing(self, pl_module: AutoencoderBase) -> str | None:
        dim = pl_module.latent_prior.dim
        if max(self.dims) >= dim or self.dims[0] == self.dims[1]:
            return f"dims {self.dims} are not two distinct dimensions of the {dim}-d latent"
        return None

    def draw(self, trainer: pl.Trainer, pl_module: AutoencoderBase) -> tuple[np.ndarray, str]:
        prior = pl_module.latent_prior
        low, high = prior.plot_range
        ticks = torch.linspace(low, high, self.size)
        # rows from the top: the second dimension decreases down the image, the first grows to the right
        vertical, horizontal = torch.meshgrid(ticks.flip(0), ticks, indexing="ij")
        z = torch.zeros(self.size * self.size, prior.dim)
        z[:, self.dims[0]], z[:, self.dims[1]] = horizontal.flatten(), vertical.flatten()
        labels = class_labels(pl_module, torch.full((len(z),), self.digit))
        images = pl_module.decode(to_module(pl_module, z), labels)
        caption = f"decoded z over [{low:g}, {high:g}] on dims {self.dims[0]} (right) and {self.dims[1]} (up)"
        if prior.dim > 2:
            caption += ", others 0"
        if labels is not None:
            caption += f", class {self.digit}"
        return tile(images, self.size), caption


class StyleGrid(EpochImageCallback):
    """One row per style: the first column is a fixed validation image (one of each digit), then a blank, then
    its style code z decoded with each class (digits 0-9; the categories, for the clustering model). A good
    model keeps slant and stroke across a row.

    Needs a class-conditioned decoder (`num_classes` > 0, `decode(z, labels)`), `encode(x) -> z` and the
    datamodule's `validation_data()`.
    """

    name = "style_grid"
    needs_validation_data = True

    def missing(self, pl_module: AutoencoderBase) -> str | None:
        if not pl_module.num_classes:
            return "its decoder is not conditioned on a class (num_classes is 0)"
        return None

    def draw(self, trainer: pl.Trainer, pl_module: AutoencoderBase) -> tuple[np.ndarray, str]:
        images, labels = trainer.datamodule.validation_data()
        order = torch.randperm(len(images), generator=self.generator())
        # the first image of each digit in a fixed shuffled order: one row per digit present
        firsts = [order[labels[order] == digit][:1] for digit in range(NUM_CLASSES)]
        sources = images[torch.cat(firsts)]
        classes = pl_module.num_classes
        z = pl_module.encode(to_module(pl_module, sources))
        decoded = pl_module.decode(
            z.repeat_interleave(classes, dim=0), torch.arange(classes, device=pl_module.device).repeat(len(sources))
        )
        rows = torch.cat(
            [
                sources.unsqueeze(1),
                torch.zeros(len(sources), 1, IMAGE_SIZE),
                decoded.float().cpu().view(len(sources), classes, -1),
            ],
            dim=1,
        )
        caption = f"left: validation image; right: its style z decoded as {class_names(classes)}"
        return tile(rows.flatten(0, 1), classes + 2), caption


class PriorSamples(EpochImageCallback):
    """`rows` rows of fixed samples from the prior, decoded: ten to a row, or for class-conditioned decoders one
    column per class, column k decoding class k.

    Needs `decode(z, labels)` and `latent_prior` (its `sample(n, generator)`).
    """

    name = "samples"
    needs = (PRIOR,)

    def __init__(self, every_n_epochs: int = 1, seed: int = 0, rows: int = 10) -> None:
        super().__init__(every_n_epochs, seed)
        self.rows = rows

    def draw(self, trainer: pl.Trainer, pl_module: AutoencoderBase) -> tuple[np.ndarray, str]:
        columns = pl_module.num_classes or NUM_CLASSES
        count = self.rows * columns
        z = pl_module.latent_prior.sample(count, generator=self.generator())
        labels = class_labels(pl_module, torch.arange(count) % columns)
        images = pl_module.decode(to_module(pl_module, z), labels)
        caption = "decoded prior samples"
        if labels is not None:
            caption += f", column k decodes class k ({class_names(columns)})"
        return tile(images, columns), caption


class Reconstructions(EpochImageCallback):
    """Fixed validation images and their reconstructions in pairs of rows: originals above, reconstructions
    directly below. Class-conditioned decoders get the true labels.

    Needs `reconstruct(x, labels)` and the datamodule's `validation_data()`.
    """

    name = "reconstructions"
    needs_validation_data = True

    def __init__(self, every_n_epochs: int = 1, seed: int = 0, row_pairs: int = 4) -> None:
        super().__init__(every_n_epochs, seed)
        self.row_pairs = row_pairs

    def draw(self, trainer: pl.Trainer, pl_module: AutoencoderBase) -> tuple[np.ndarray, str]:
        images, labels = self.validation_subset(trainer, self.row_pairs * NUM_CLASSES)
        pairs = len(images) // NUM_CLASSES  # a validation set smaller than asked for shows fewer pairs
        images, labels = images[: pairs * NUM_CLASSES], labels[: pairs * NUM_CLASSES]
        rebuilt = pl_module.reconstruct(to_module(pl_module, images), labels.to(pl_module.device))
        rows = torch.stack(
            [images.view(pairs, NUM_CLASSES, -1), rebuilt.float().cpu().view(pairs, NUM_CLASSES, -1)], dim=1
        )
        return tile(rows.flatten(0, 2), NUM_CLASSES), "odd rows: validation images; even rows: their reconstructions"


class LatentScatter(EpochImageCallback):
    """Codes z of `count` fixed validation images coloured by digit, with `prior_count` prior samples faint and
    grey behind them when the module has a prior. A 2-d z is plotted as is; a wider one is projected on the
    two leading principal components of the plotted codes (the axes say so). A module whose `represent(x)` is
    not z (`represents_z` False: the dimensionality-reduction model's W_c y + z) is plotted in that
    representation, without the prior, which is a distribution of z alone.

    Needs `represent(x)`, `config.latent_dim` >= 2 and the datamodule's `validation_data()`; uses
    `latent_prior` when there is one.
    """

    name = "latent_scatter"
    needs_validation_data = True

    def __init__(self, every_n_epochs: int = 1, seed: int = 0, count: int = 5000, prior_count: int = 2000) -> None:
        super().__init__(every_n_epochs, seed)
        self.count, self.prior_count = count, prior_count

    def missing(self, pl_module: AutoencoderBase) -> str | None:
        if pl_module.config.latent_dim < 2:
            return f"its latent is {pl_module.config.latent_dim}-d; a scatter plot needs two dimensions"
        return None

    def draw(self, trainer: pl.Trainer, pl_module: AutoencoderBase) -> tuple[np.ndarray, str]:
        images, labels = self.validation_subset(trainer, self.count)
        codes = pl_module.represent(to_module(pl_module, images)).float().cpu()
        in_z = pl_module.represents_z
        prior = pl_module.latent_prior if in_z else None
        # seeded apart from the image choice, so the prior cloud does not depend on how many images there are
        samples = (
            prior.sample(self.prior_count, generator=torch.Generator().manual_seed(self.seed + 1)) if prior else None
        )
        width = codes.shape[1]
        name = "z" if in_z else "represent(x)"
        if width == 2:
            axis_labels = [f"{name}[0]", f"{name}[1]"]
            title = f"{len(codes)} validation codes" + ("" if in_z else f", {name}")
        else:
            mean, directions, shares = principal_axes(codes)
            codes = (codes - mean) @ directions
            samples = (samples - mean) @ directions if samples is not None else None
            axis_labels = [f"PC {k + 1} ({share:.0%} of variance)" for k, share in enumerate(shares.tolist())]
            title = f"{len(codes)} validation codes, PCA of the {width}-d {name}"
        if samples is not None:
            title += ", prior samples in grey"
        return scatter_codes(codes, labels, samples, title, axis_labels), title


def image_callbacks(every_n_epochs: int, seed: int = 0) -> list[pl.Callback]:
    """Every image callback with its defaults (the confusion matrix included); none when `every_n_epochs` is 0."""
    from callbacks.confusion import ConfusionMatrix

    if every_n_epochs == 0:
        return []
    kinds = (LatentGrid, StyleGrid, PriorSamples, Reconstructions, LatentScatter, ConfusionMatrix)
    return [kind(every_n_epochs=every_n_epochs, seed=seed) for kind in kinds]
