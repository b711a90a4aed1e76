"""Priors p(z) that the adversarial phases match the codes to.

Each prior samples from a generator it is handed, on that generator's device (so that every DDP rank can draw its
own samples, a GPU draws them without a copy from the host, and a checkpoint can carry the generator's state),
always in float32 (the same numbers under every precision; the module casts them), and knows the box worth
plotting.
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
        """n samples, shape (n, dim), float32 on the device of `generator` (the CPU without one)."""

    @property
    @abstractmethod
    def plot_range(self) -> tuple[float, float]:
        """(low, high) per dimension: the square a latent grid or scatter plot should span."""


class GaussianPrior(Prior):
    def __init__(self, dim: int, std: float = 5.0) -> None:
        self.dim, self.std = dim, std

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        return self.std * torch.randn(n, self.dim, generator=generator, device=device_of(generator))

    @property
    def plot_range(self) -> tuple[float, float]:
        return (-2 * self.std, 2 * self.std)


class UniformPrior(Prior):
    def __init__(self, dim: int, low: float = -5.0, high: float = 5.0) -> None:
        self.dim, self.low, self.high = dim, low, high

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        unit = torch.rand(n, self.dim, generator=generator, device=device_of(generator))
        return self.low + (self.high - self.low) * unit

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
        device = device_of(generator)
        if components is None:
            components = torch.randint(self.num_components, (n,), generator=generator, device=device)
        angle = 2 * math.pi * components.to(device, torch.float32) / self.num_components
        radial = self.radius + self.radial_std * torch.randn(n, generator=generator, device=device)
        tangential = self.tangential_std * torch.randn(n, generator=generator, device=device)
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
        device = device_of(generator)
        position = torch.rand(n, generator=generator, device=device).sqrt()
        angle = 2 * math.pi * self.turns * position
        radius = self.max_radius * position + self.noise * torch.randn(n, generator=generator, device=device)
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
        classes = torch.randint(self.dim, (n,), generator=generator, device=device_of(generator))
        return torch.nn.functional.one_hot(classes, self.dim).float()

    @property
    def plot_range(self) -> tuple[float, float]:
        return (0.0, 1.0)


def device_of(generator: torch.Generator | None) -> torch.device:
    return generator.device if generator is not None else torch.device("cpu")


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
