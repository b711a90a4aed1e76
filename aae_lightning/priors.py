"""Priors p(z) that the adversarial phases match the codes to.

Each prior samples on the CPU from a generator it is handed (so that every DDP rank can draw its own samples
and a checkpoint can carry the generator's state) and knows the box worth plotting.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod

import torch
from torch import Tensor

from aae_lightning.errors import HparamError, UserError


class Prior(ABC):
    dim: int

    @abstractmethod
    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """n samples, shape (n, dim), float32 on the CPU."""

    @property
    @abstractmethod
    def plot_range(self) -> tuple[float, float]:
        """(low, high) per dimension: the square a latent grid or scatter plot should span."""


class GaussianPrior(Prior):
    def __init__(self, dim: int, std: float = 5.0) -> None:
        self.dim, self.std = dim, std

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        return self.std * torch.randn(n, self.dim, generator=generator)

    @property
    def plot_range(self) -> tuple[float, float]:
        return (-2 * self.std, 2 * self.std)


class UniformPrior(Prior):
    def __init__(self, dim: int, low: float = -5.0, high: float = 5.0) -> None:
        self.dim, self.low, self.high = dim, low, high

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        return self.low + (self.high - self.low) * torch.rand(n, self.dim, generator=generator)

    @property
    def plot_range(self) -> tuple[float, float]:
        return (self.low, self.high)


class MixtureOfGaussiansPrior(Prior):
    """K 2-D Gaussians elongated along the tangent of a circle (the paper's Fig. 2 and 4).

    `sample(n, components=labels)` draws from the given components: the label-regularized variant ties each
    digit to its own component.
    """

    dim = 2

    def __init__(
        self, num_components: int = 10, radius: float = 4.0, radial_std: float = 0.5, tangential_std: float = 1.0
    ) -> None:
        self.num_components, self.radius = num_components, radius
        self.radial_std, self.tangential_std = radial_std, tangential_std

    def sample(self, n: int, generator: torch.Generator | None = None, components: Tensor | None = None) -> Tensor:
        if components is None:
            components = torch.randint(self.num_components, (n,), generator=generator)
        angle = 2 * math.pi * components.cpu().float() / self.num_components
        radial = self.radius + self.radial_std * torch.randn(n, generator=generator)
        tangential = self.tangential_std * torch.randn(n, generator=generator)
        cos, sin = torch.cos(angle), torch.sin(angle)
        return torch.stack([radial * cos - tangential * sin, radial * sin + tangential * cos], dim=1)

    @property
    def plot_range(self) -> tuple[float, float]:
        extent = self.radius + 3 * max(self.radial_std, self.tangential_std)
        return (-extent, extent)


class SwissRollPrior(Prior):
    """A 2-D swiss roll: points along an Archimedean spiral with a little radial noise."""

    dim = 2

    def __init__(self, turns: float = 1.5, max_radius: float = 8.0, noise: float = 0.3) -> None:
        self.turns, self.max_radius, self.noise = turns, max_radius, noise

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        # sqrt spreads points evenly along the arc rather than crowding them at the centre
        position = torch.rand(n, generator=generator).sqrt()
        angle = 2 * math.pi * self.turns * position
        radius = self.max_radius * position + self.noise * torch.randn(n, generator=generator)
        return torch.stack([radius * torch.cos(angle), radius * torch.sin(angle)], dim=1)

    @property
    def plot_range(self) -> tuple[float, float]:
        extent = self.max_radius + 3 * self.noise
        return (-extent, extent)


class CategoricalPrior(Prior):
    """One-hot vectors of a uniformly drawn class: the prior of the semi-supervised and clustering codes y."""

    def __init__(self, num_classes: int) -> None:
        self.dim = num_classes

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        classes = torch.randint(self.dim, (n,), generator=generator)
        return torch.nn.functional.one_hot(classes, self.dim).float()

    @property
    def plot_range(self) -> tuple[float, float]:
        return (0.0, 1.0)


def make_prior(name: str, dim: int, std: float = 5.0) -> Prior:
    """The continuous priors by their `--prior` name."""
    if name == "gaussian":
        return GaussianPrior(dim, std)
    if name == "uniform":
        return UniformPrior(dim, -std, std)
    check_prior_dim(name, dim)
    if name == "mixture":
        return MixtureOfGaussiansPrior()
    if name == "swiss_roll":
        return SwissRollPrior()
    raise UserError(f"unknown --prior {name!r}; choose from {', '.join(PRIOR_NAMES)}")


PRIOR_NAMES = ("gaussian", "mixture", "swiss_roll", "uniform")
#: the priors that only exist in two dimensions
TWO_D_PRIORS = ("mixture", "swiss_roll")


def check_prior_dim(name: str, dim: int) -> None:
    """A 2-D-only prior on a code of another width is an `HparamError`."""
    if name in TWO_D_PRIORS and dim != 2:
        raise HparamError(f"--prior {name} is 2-D only, but --latent-dim is {dim}")
