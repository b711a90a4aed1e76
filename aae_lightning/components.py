"""Networks shared by every variant, kept apart from the LightningModules that train them."""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise
from typing import Any

import torch
from torch import Tensor, nn


def mlp(
    sizes: Sequence[int],
    dropout: float = 0.0,
    input_noise: float = 0.0,
    hidden_dropout: float = 0.0,
    input_dropout: float = 0.0,
    batchnorm: bool = False,
) -> nn.Sequential:
    """Linear layers with ReLU between them and a linear last layer (callers apply their own output function).
    `input_dropout` drops the input alone, before `input_noise` corrupts it; `dropout` drops the input of every
    linear layer, `hidden_dropout` the output of every hidden ReLU; `batchnorm` normalizes the output of every
    linear layer, the last one included."""
    layers: list[nn.Module] = [nn.Dropout(input_dropout)] if input_dropout > 0 else []
    if input_noise > 0:
        layers.append(GaussianNoise(input_noise))
    for index, (fan_in, fan_out) in enumerate(pairwise(sizes)):
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        layers.append(nn.Linear(fan_in, fan_out))
        if batchnorm:
            layers.append(nn.BatchNorm1d(fan_out))
        if index < len(sizes) - 2:
            layers.extend(hidden_activation(hidden_dropout))
    return nn.Sequential(*layers)


def hidden_activation(hidden_dropout: float) -> list[nn.Module]:
    """A hidden layer's ReLU, and the dropout of its output when asked for."""
    return [nn.ReLU(), nn.Dropout(hidden_dropout)] if hidden_dropout > 0 else [nn.ReLU()]


class GaussianNoise(nn.Module):
    """Adds N(0, std^2) noise in training mode only: the paper's input corruption for semi-supervised MNIST."""

    def __init__(self, std: float) -> None:
        super().__init__()
        self.std = std

    def forward(self, x: Tensor) -> Tensor:
        return x + self.std * torch.randn_like(x) if self.training else x


class Encoder(nn.Module):
    """q(z|x): an MLP from images to one or more code heads sharing the hidden layers.

    `heads` maps a head's name to its width, e.g. {"z": 2} or {"y": 10, "z": 10}; `forward` returns the raw
    (pre-activation) outputs in a dict of the same names. The regularizers are `mlp`'s; `batchnorm` normalizes
    every hidden layer and `head_batchnorm` every head's output too (the paper's clustering encoder).
    """

    def __init__(
        self,
        input_dim: int,
        hidden: Sequence[int],
        heads: dict[str, int],
        dropout: float = 0.0,
        input_noise: float = 0.0,
        hidden_dropout: float = 0.0,
        input_dropout: float = 0.0,
        batchnorm: bool = False,
        head_batchnorm: bool = False,
    ) -> None:
        super().__init__()
        self.trunk = mlp(
            [input_dim, *hidden],
            dropout=dropout,
            input_noise=input_noise,
            hidden_dropout=hidden_dropout,
            input_dropout=input_dropout,
            batchnorm=batchnorm,
        )
        self.trunk.extend(hidden_activation(hidden_dropout))
        self.heads = nn.ModuleDict(
            {name: code_head(hidden[-1], width, head_batchnorm) for name, width in heads.items()}
        )

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        features = self.trunk(x)
        return {name: head(features) for name, head in self.heads.items()}


def code_head(fan_in: int, width: int, batchnorm: bool) -> nn.Module:
    """An encoder head: a linear layer, followed by a BatchNorm1d of its output when asked for."""
    layer = nn.Linear(fan_in, width)
    return nn.Sequential(layer, nn.BatchNorm1d(width)) if batchnorm else layer


class GaussianPosteriorEncoder(Encoder):
    """q(z|x) = N(mu(x), diag(sigma(x)^2)), the paper's second choice of posterior (section 2): each head has a
    mean and a log-variance of its own. In training mode `forward` returns a reparameterised sample of every head,
    so the decoder and the discriminators see codes drawn from the posterior; in eval mode it returns the means."""

    def __init__(self, input_dim: int, hidden: Sequence[int], heads: dict[str, int], **options: Any) -> None:
        log_variances = {f"{name}_logvar": width for name, width in heads.items()}
        super().__init__(input_dim, hidden, {**heads, **log_variances}, **options)
        self.sampled_heads = tuple(heads)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        outputs = super().forward(x)
        if not self.training:
            return {name: outputs[name] for name in self.sampled_heads}
        return {
            name: outputs[name] + (0.5 * outputs[f"{name}_logvar"]).exp() * torch.randn_like(outputs[name])
            for name in self.sampled_heads
        }


class Decoder(nn.Module):
    """p(x|code): an MLP from a code to pixel logits; `decode` in the modules applies the sigmoid."""

    def __init__(
        self, code_dim: int, hidden: Sequence[int], output_dim: int, dropout: float = 0.0, hidden_dropout: float = 0.0
    ) -> None:
        super().__init__()
        self.net = mlp([code_dim, *reversed(hidden), output_dim], dropout=dropout, hidden_dropout=hidden_dropout)

    def forward(self, code: Tensor) -> Tensor:
        return self.net(code)


class Discriminator(nn.Module):
    """Tells prior samples (target 1) from encoder codes (target 0); returns one logit per row."""

    def __init__(
        self, input_dim: int, hidden: Sequence[int], dropout: float = 0.0, hidden_dropout: float = 0.0
    ) -> None:
        super().__init__()
        self.net = mlp([input_dim, *hidden, 1], dropout=dropout, hidden_dropout=hidden_dropout)

    def forward(self, code: Tensor) -> Tensor:
        return self.net(code).squeeze(-1)
