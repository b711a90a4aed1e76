"""The paper's training options, shared by every variant: half squared-error reconstruction, a momentum of its
own for the adversarial phases; and the presets that reproduce Table 2."""

from __future__ import annotations

import pytest
import torch

import train
from aae_lightning import get_variant
from aae_lightning.errors import UserError

TINY = {"hidden_sizes": (16, 16), "disc_hidden_sizes": (8,)}


def tiny(variant: str, **hparams):
    """`variant` with tiny networks (the plain autoencoder has no discriminator to size)."""
    sizes = {key: value for key, value in TINY.items() if key in get_variant(variant).Hparams.__dataclass_fields__}
    return get_variant(variant)(**sizes, **hparams)


def phase_momenta(model) -> dict[str, float]:
    momenta = {}
    for phase, optimizer in zip(model.phases, model.configure_optimizers()):
        group = optimizer.param_groups[0]
        momenta[phase] = group["betas"][0] if "betas" in group else group["momentum"]
    return momenta


ADVERSARIAL_PHASES = ("regularization", "generator")


@pytest.mark.parametrize("variant", ["aae", "supervised", "clustering", "semi"])
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_adversarial_momentum_applies_to_the_adversarial_phases_only(variant: str, optimizer: str) -> None:
    model = tiny(variant, optimizer=optimizer, momentum=0.9, adversarial_momentum=0.1)
    assert phase_momenta(model) == {phase: 0.1 if phase in ADVERSARIAL_PHASES else 0.9 for phase in model.phases}


def test_a_negative_adversarial_momentum_means_the_common_one() -> None:
    model = tiny("semi", optimizer="sgd", momentum=0.7)
    assert set(phase_momenta(model).values()) == {0.7}


@pytest.mark.parametrize("variant", ["ae", "clustering", "semi"])
def test_half_sse_is_half_the_squared_error_of_the_sigmoid_output_summed_over_pixels(variant: str) -> None:
    torch.manual_seed(0)
    model = tiny(variant, reconstruction_loss="half_sse")
    images = torch.rand(5, 784)
    loss, logs = model.reconstruction_phase({"x": images})
    model.eval()  # no input noise: the same reconstruction as the loss saw (the tiny model has none anyway)
    expected = 0.5 * ((model.reconstruct(images) - images) ** 2).sum(dim=1).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert logs["recon_loss"] is loss
    # per image, not per pixel: the scale the paper's SGD learning rates were chosen for
    bce, _ = tiny(variant).reconstruction_phase({"x": images})
    assert loss.item() > 10 * bce.item()


@pytest.mark.parametrize("variant", ["ae", "semi"])
def test_an_unknown_reconstruction_loss_is_a_user_error(variant: str) -> None:
    with pytest.raises(UserError, match="--reconstruction-loss 'l1'"):
        tiny(variant, reconstruction_loss="l1")


@pytest.mark.parametrize("preset", ["paper-semi-100", "paper-semi-1000", "fast-semi-100", "fast-semi-1000"])
def test_semi_presets_build_the_papers_model(preset: str) -> None:
    args = train.parse_args(["--preset", preset])
    model = get_variant(args.variant)(**train.model_hparams(args))
    assert args.variant == "semi" and args.labels == int(preset.rsplit("-", 1)[1])
    assert phase_momenta(model) == {
        "reconstruction": 0.9, "regularization": 0.1, "generator": 0.1, "classification": 0.9,
    }
    assert model.config.input_noise == 0.3 and model.config.reconstruction_loss == "half_sse"
    assert model.config.latent_dim == 10 and model.priors["z"].std == 1.0
    assert [group["lr"] for optimizer in model.configure_optimizers() for group in optimizer.param_groups] == [
        0.01, 0.1, 0.1, 0.1,
    ]
