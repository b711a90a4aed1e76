"""The networks, priors and the adversarial loss on their own, without any training; and the prior samples a module
on a device (conftest.py's `device`) hands its discriminators."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from aae_lightning import VARIANTS, get_variant
from aae_lightning.base import adversarial_loss
from aae_lightning.components import Decoder, Discriminator, Encoder, mlp
from aae_lightning.errors import UserError
from aae_lightning.priors import (
    CategoricalPrior,
    GaussianPrior,
    MixtureOfGaussiansPrior,
    Prior,
    SwissRollPrior,
    UniformPrior,
    make_prior,
)

PRIORS = {
    "gaussian-2d": GaussianPrior(2, std=5.0),
    "gaussian-8d": GaussianPrior(8, std=1.0),
    "uniform": UniformPrior(3, -2.0, 4.0),
    "mixture": MixtureOfGaussiansPrior(),
    "swiss_roll": SwissRollPrior(),
    "categorical": CategoricalPrior(10),
}


@pytest.mark.parametrize("prior", PRIORS.values(), ids=PRIORS.keys())
def test_prior_samples_have_the_right_shape_and_type(prior: Prior) -> None:
    samples = prior.sample(257, generator=torch.Generator().manual_seed(0))
    assert samples.shape == (257, prior.dim)
    assert samples.dtype == torch.float32 and samples.device.type == "cpu"


@pytest.mark.parametrize("prior", PRIORS.values(), ids=PRIORS.keys())
def test_prior_mostly_falls_inside_its_plot_range(prior: Prior) -> None:
    samples = prior.sample(20_000, generator=torch.Generator().manual_seed(1))
    low, high = prior.plot_range
    # per coordinate, as plots show one or two coordinates at a time: cutting off more than a few percent would
    # misrepresent the prior, and a mostly empty box too
    inside = ((samples >= low) & (samples <= high)).float().mean()
    assert inside > 0.9
    assert samples.amax() > low + 0.5 * (high - low) and samples.amin() < high - 0.5 * (high - low)


def test_gaussian_prior_has_the_requested_std() -> None:
    samples = GaussianPrior(2, std=5.0).sample(50_000, generator=torch.Generator().manual_seed(2))
    assert samples.mean(0).abs().max() < 0.15
    assert torch.allclose(samples.std(0), torch.full((2,), 5.0), atol=0.1)


def test_uniform_prior_stays_within_its_bounds() -> None:
    samples = UniformPrior(2, -2.0, 4.0).sample(10_000, generator=torch.Generator().manual_seed(3))
    assert samples.min() >= -2.0 and samples.max() <= 4.0
    assert samples.min() < -1.9 and samples.max() > 3.9


def test_mixture_draws_from_the_requested_components() -> None:
    prior = MixtureOfGaussiansPrior(num_components=10, radius=4.0, radial_std=0.1, tangential_std=0.1)
    components = torch.arange(10).repeat_interleave(100)
    samples = prior.sample(len(components), generator=torch.Generator().manual_seed(4), components=components)
    angles = torch.atan2(samples[:, 1], samples[:, 0])
    expected = 2 * math.pi * components.float() / 10
    # compare on the circle: the difference of angles wrapped into (-pi, pi]
    error = torch.remainder(angles - expected + math.pi, 2 * math.pi) - math.pi
    assert error.abs().max() < 0.2
    assert torch.allclose(samples.norm(dim=1), torch.full((len(samples),), 4.0), atol=0.6)


def test_mixture_without_components_uses_all_of_them() -> None:
    prior = MixtureOfGaussiansPrior(num_components=10, radial_std=0.1, tangential_std=0.1)
    samples = prior.sample(5_000, generator=torch.Generator().manual_seed(5))
    sector = torch.round(torch.remainder(torch.atan2(samples[:, 1], samples[:, 0]), 2 * math.pi) / (2 * math.pi / 10))
    counts = torch.bincount(sector.long() % 10, minlength=10)
    assert counts.min() > 350  # 500 expected per component


def test_categorical_prior_is_one_hot_and_covers_every_class() -> None:
    samples = CategoricalPrior(10).sample(2_000, generator=torch.Generator().manual_seed(6))
    assert set(samples.unique().tolist()) == {0.0, 1.0}
    assert torch.equal(samples.sum(dim=1), torch.ones(2_000))
    assert samples.sum(dim=0).min() > 150


@pytest.mark.parametrize("prior", PRIORS.values(), ids=PRIORS.keys())
def test_a_seeded_generator_makes_sampling_reproducible(prior: Prior) -> None:
    first = prior.sample(64, generator=torch.Generator().manual_seed(7))
    again = prior.sample(64, generator=torch.Generator().manual_seed(7))
    other = prior.sample(64, generator=torch.Generator().manual_seed(8))
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


#: every variant with a prior: all but the plain autoencoder
ADVERSARIAL_VARIANTS = sorted(set(VARIANTS) - {"ae"})


@pytest.mark.parametrize("variant", ADVERSARIAL_VARIANTS)
def test_a_modules_prior_samples_reach_its_device_and_do_not_depend_on_it(variant: str, device: str) -> None:
    """Outside training (no `setup` has put the generator on a device) priors sample on the CPU from the module's
    generator, so a notebook draws the same samples on any device; the module moves them to the codes' device (the
    label-regularized one pairs them with the batch's labels). In training they are drawn on the device itself
    (modules/test_gpu_step.py)."""
    batch = {"x": torch.rand(6, 784), "labeled_x": torch.rand(4, 784), "labeled_y": torch.arange(4)}

    def samples_on(where: str) -> dict[str, torch.Tensor]:
        model = get_variant(variant)(hidden_sizes=(16,), disc_hidden_sizes=(8,)).to(where)
        model.prior_generator.manual_seed(9)
        moved = {name: value.to(where) for name, value in batch.items()}
        return model.prior_samples(moved, model.regularized_codes(moved))

    on_device, on_cpu = samples_on(device), samples_on("cpu")
    assert on_device.keys() == on_cpu.keys() and on_device
    for name, samples in on_device.items():
        assert samples.device.type == device, name
        assert torch.equal(samples.cpu(), on_cpu[name]), name


def test_make_prior_rejects_bad_combinations() -> None:
    assert isinstance(make_prior("uniform", 3, std=2.0), UniformPrior)
    with pytest.raises(UserError, match="2-D only"):
        make_prior("mixture", 8)
    with pytest.raises(UserError, match="unknown --prior"):
        make_prior("laplace", 2)


def _linear_shapes(module: nn.Module) -> list[tuple[int, int]]:
    return [(layer.in_features, layer.out_features) for layer in module.modules() if isinstance(layer, nn.Linear)]


def test_mlp_has_the_requested_layers_and_a_linear_output() -> None:
    net = mlp([784, 1000, 1000, 2], dropout=0.2)
    assert _linear_shapes(net) == [(784, 1000), (1000, 1000), (1000, 2)]
    assert sum(isinstance(layer, nn.Dropout) for layer in net) == 3
    assert not isinstance(net[-1], nn.ReLU)
    assert sum(isinstance(layer, nn.ReLU) for layer in net) == 2


def test_hidden_dropout_drops_every_hidden_output_and_neither_pixels_nor_codes() -> None:
    net = mlp([784, 1000, 1000, 2], hidden_dropout=0.2)
    kinds = [type(layer).__name__ for layer in net]
    assert kinds == ["Linear", "ReLU", "Dropout", "Linear", "ReLU", "Dropout", "Linear"]
    encoder = Encoder(784, (32, 16), {"z": 2}, hidden_dropout=0.2)
    assert [type(layer).__name__ for layer in encoder.trunk][-2:] == ["ReLU", "Dropout"]  # its last hidden layer too
    assert sum(isinstance(layer, nn.Dropout) for layer in Decoder(2, (32, 16), 784, hidden_dropout=0.2).net) == 2
    assert sum(isinstance(layer, nn.Dropout) for layer in Discriminator(2, (32,), hidden_dropout=0.2).net) == 1
    assert not any(isinstance(layer, nn.Dropout) for layer in mlp([784, 1000, 2]))


@pytest.mark.parametrize("variant", ["aae", "semi", "clustering"])
def test_hidden_dropout_reaches_every_network_of_a_model(variant: str) -> None:
    model = get_variant(variant)(hidden_sizes=(16, 16), disc_hidden_sizes=(8,), hidden_dropout=0.3)
    for network in (model.encoder, model.decoder, *model.discriminators.values()):
        rates = {layer.p for layer in network.modules() if isinstance(layer, nn.Dropout)}
        assert rates == {0.3}


def test_encoder_decoder_and_discriminator_sizes() -> None:
    encoder = Encoder(784, (300, 200), {"y": 10, "z": 4})
    outputs = encoder(torch.rand(5, 784))
    assert {name: tuple(value.shape) for name, value in outputs.items()} == {"y": (5, 10), "z": (5, 4)}
    assert _linear_shapes(encoder) == [(784, 300), (300, 200), (200, 10), (200, 4)]
    decoder = Decoder(14, (300, 200), 784)
    assert _linear_shapes(decoder) == [(14, 200), (200, 300), (300, 784)]
    assert decoder(torch.rand(5, 14)).shape == (5, 784)
    discriminator = Discriminator(4, (50, 50))
    assert discriminator(torch.rand(5, 4)).shape == (5,)


def test_input_noise_acts_in_training_mode_only() -> None:
    encoder = Encoder(784, (32,), {"z": 2}, input_noise=0.3)
    images = torch.rand(4, 784)
    encoder.train()
    assert not torch.equal(encoder(images)["z"], encoder(images)["z"])
    encoder.eval()
    assert torch.equal(encoder(images)["z"], encoder(images)["z"])


@pytest.mark.parametrize("real", [True, False])
def test_adversarial_loss_is_finite_where_log_of_sigmoid_is_not(real: bool) -> None:
    logits = torch.tensor([1e4, -1e4, 0.0], requires_grad=True)
    loss = adversarial_loss(logits, real)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()
    # the confidently wrong logit costs about 1e4 (averaged over 3): the loss keeps its size instead of saturating
    assert loss.item() == pytest.approx((1e4 + math.log(2)) / 3, rel=1e-4)
    wrong = 1 if real else 0
    # and it still pulls that logit the right way, with the full gradient of BCE (sigmoid - target) / n
    assert logits.grad[wrong].item() == pytest.approx((-1 if real else 1) / 3, rel=1e-4)

    def naive(tiny: float) -> tuple[torch.Tensor, torch.Tensor]:
        x = logits.detach().clone().requires_grad_(True)
        probability = torch.sigmoid(x) if real else 1 - torch.sigmoid(x)
        value = -torch.log(probability + tiny).mean()
        value.backward()
        return value, x.grad

    assert not torch.isfinite(naive(0.0)[0])
    # with a tiny constant the loss is finite but flat: the wrong logit gets no gradient at all
    value, grad = naive(1e-8)
    assert torch.isfinite(value) and grad[wrong].item() == 0.0
