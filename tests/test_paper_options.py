"""The paper's training options, shared by every variant: half squared-error reconstruction, a momentum of its
own for the adversarial phases; and the presets that reproduce Table 2."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

import train
from aae_lightning import get_variant
from aae_lightning.errors import UserError
from aae_lightning.semi import class_imbalance

TINY = {"hidden_sizes": (16, 16), "disc_hidden_sizes": (8,)}


def tiny(variant: str, **hparams):
    """`variant` with tiny networks (the plain autoencoder has no discriminator to size)."""
    sizes = {key: value for key, value in TINY.items() if key in get_variant(variant).Hparams.__dataclass_fields__}
    return get_variant(variant)(**sizes, **hparams)


def phase_momenta(model) -> dict[str, float]:
    momenta = {}
    for phase, optimizer in zip(model.phases, model.configure_optimizers(), strict=True):
        group = optimizer.param_groups[0]
        momenta[phase] = group["betas"][0] if "betas" in group else group["momentum"]
    return momenta


ADVERSARIAL_PHASES = ("regularization", "generator")


@pytest.mark.parametrize("variant", ["aae", "supervised", "clustering", "semi"])
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_adversarial_momentum_applies_to_the_adversarial_phases_only(variant: str, optimizer: str) -> None:
    model = tiny(variant, optimizer=optimizer, momentum=0.9, adversarial_momentum=0.1)
    assert phase_momenta(model) == {phase: 0.1 if phase in ADVERSARIAL_PHASES else 0.9 for phase in model.phases}


def test_an_adversarial_momentum_of_minus_one_means_the_common_one() -> None:
    model = tiny("semi", optimizer="sgd", momentum=0.7, adversarial_momentum=-1)
    assert set(phase_momenta(model).values()) == {0.7}


@pytest.mark.parametrize("variant", ["ae", "clustering", "semi"])
def test_half_sse_is_half_the_squared_error_of_the_sigmoid_output_summed_over_pixels(variant: str) -> None:
    torch.manual_seed(0)
    model = tiny(variant, reconstruction_loss="half_sse", input_noise=0.0)
    images = torch.rand(5, 784)
    loss, logs = model.reconstruction_phase({"x": images})
    model.eval()
    expected = 0.5 * ((model.reconstruct(images) - images) ** 2).sum(dim=1).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert logs["recon_loss"] is loss
    # per image, not per pixel: the scale the paper's SGD learning rates were chosen for
    bce, _ = tiny(variant, reconstruction_loss="bce", input_noise=0.0).reconstruction_phase({"x": images})
    assert loss.item() > 10 * bce.item()


@pytest.mark.parametrize("variant", ["ae", "semi"])
def test_an_unknown_reconstruction_loss_is_a_user_error(variant: str) -> None:
    with pytest.raises(UserError, match="--reconstruction-loss 'l1'"):
        tiny(variant, reconstruction_loss="l1")


@pytest.mark.parametrize(
    "preset", [f"{schedule}-semi-{labels}" for schedule in ("paper", "fast") for labels in ("100", "1000", "all")]
)
def test_semi_presets_build_the_papers_model(preset: str) -> None:
    args = train.parse_args(["--preset", preset])
    model = get_variant(args.variant)(**train.model_hparams(args))
    assert args.variant == "semi" and args.labels == train.label_count(preset.rsplit("-", 1)[1])
    defaults = get_variant("semi").Hparams()
    # one recipe: a preset differs from semi's defaults at most in its schedule
    assert {
        name for name in dataclasses.asdict(defaults) if getattr(model.config, name) != getattr(defaults, name)
    } <= {"lr_milestones"}
    assert model.config.init_std == 0.01
    assert phase_momenta(model) == {
        "reconstruction": 0.9,
        "regularization": 0.1,
        "generator": 0.1,
        "classification": 0.9,
    }
    assert model.config.input_noise == 0.3 and model.config.reconstruction_loss == "half_sse"
    assert model.config.latent_dim == 10 and model.priors["z"].std == 1.0
    assert [group["lr"] for optimizer in model.configure_optimizers() for group in optimizer.param_groups] == [
        0.01,
        0.1,
        0.1,
        0.1,
    ]


def linear_layers(*networks: torch.nn.Module) -> list[torch.nn.Linear]:
    return [layer for network in networks for layer in network.modules() if isinstance(layer, torch.nn.Linear)]


@pytest.mark.parametrize("variant", ["ae", "aae", "semi", "dimreduction"])
def test_init_std_draws_every_network_weight_from_the_papers_gaussian(variant: str) -> None:
    torch.manual_seed(0)
    model = tiny(variant, init_std=0.05)
    layers = linear_layers(model.encoder, model.decoder, *model.discriminators.values())
    weights = torch.cat([layer.weight.flatten() for layer in layers])
    assert weights.std().item() == pytest.approx(0.05, rel=0.05) and abs(weights.mean().item()) < 0.005
    assert not any(layer.bias.any() for layer in layers)
    if variant == "dimreduction":  # the cluster heads keep their own spread (--head-distance), not the networks'
        assert model.cluster_heads.weight.std().item() > 1


def test_init_std_zero_keeps_pytorchs_initialisation() -> None:
    torch.manual_seed(0)
    default = tiny("semi", init_std=0.0)
    torch.manual_seed(0)
    paper = tiny("semi", init_std=0.01)
    assert all(layer.bias.any() for layer in linear_layers(default.encoder, default.decoder))
    assert default.encoder.trunk[-2].weight.std() > 3 * paper.encoder.trunk[-2].weight.std()


def discriminator_inputs(model: torch.nn.Module) -> list[torch.Tensor]:
    """Records what the discriminators are given, call by call."""
    seen: list[torch.Tensor] = []
    for discriminator in model.discriminators.values():
        discriminator.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach().clone()))
    return seen


@pytest.mark.parametrize("noise", [0.0, 0.5])
def test_disc_input_noise_reaches_both_adversarial_phases(noise: float) -> None:
    torch.manual_seed(0)
    model = tiny("aae", disc_input_noise=noise)
    seen = discriminator_inputs(model)
    batch = {"x": torch.rand(6, 784)}
    codes = model.adversarial_codes(batch)["z"].detach()
    model.regularization_phase(batch)
    model.generator_phase(batch)
    judged_fakes, generated = seen[0][len(codes) :], seen[1]  # regularization: reals then fakes, in one pass
    for judged in (judged_fakes, generated):
        spread = (judged - codes).std().item()
        assert spread == pytest.approx(noise, rel=0.5) if noise else spread == 0


def test_labeled_reconstruction_decodes_the_labeled_batch_from_its_true_label() -> None:
    torch.manual_seed(0)
    model = tiny("semi", labeled_reconstruction=True, input_noise=0.0)
    labels = torch.arange(4)
    batch = {"x": torch.rand(4, 784), "labeled_x": torch.rand(4, 784), "labeled_y": labels}
    loss, logs = model.reconstruction_phase(batch)
    styles = model.encoder(batch["labeled_x"])["z"]
    decoded = model.decoder(torch.cat([torch.nn.functional.one_hot(labels, 10).float(), styles], dim=1))
    expected = model.reconstruction_error(decoded, batch["labeled_x"])
    assert logs["labeled_recon_loss"].item() == pytest.approx(expected.item(), rel=1e-6)
    assert loss.item() == pytest.approx(logs["recon_loss"].item() + expected.item(), rel=1e-6)
    assert "labeled_recon_loss" not in tiny("semi").reconstruction_phase(batch)[1]


def test_class_imbalance_is_zero_for_equal_usage_and_log_k_for_one_class() -> None:
    assert class_imbalance(torch.full((8, 10), 0.1)).item() == pytest.approx(0.0, abs=1e-7)
    assert class_imbalance(torch.eye(10)[[3] * 5]).item() == pytest.approx(torch.log(torch.tensor(10.0)).item())
    # one-hot codes that use every class equally are balanced: the term does not ask for soft codes
    assert class_imbalance(torch.eye(10).repeat(2, 1)).item() == pytest.approx(0.0, abs=1e-7)


@pytest.mark.parametrize("variant", ["semi", "clustering", "dimreduction"])
def test_class_balance_adds_the_weighted_imbalance_to_the_generator_loss(variant: str) -> None:
    torch.manual_seed(0)
    batch = {"x": torch.rand(6, 784)}
    plain, weighted = tiny(variant, input_noise=0.0), tiny(variant, input_noise=0.0, class_balance=2.0)
    weighted.load_state_dict(plain.state_dict())
    loss, logs = plain.generator_phase(batch)
    weighted_loss, weighted_logs = weighted.generator_phase(batch)
    imbalance = class_imbalance(weighted.adversarial_codes(batch)["y"]).item()
    assert imbalance > 0 and "class_imbalance" not in logs
    assert weighted_logs["class_imbalance"].item() == pytest.approx(imbalance, rel=1e-6)
    assert weighted_loss.item() == pytest.approx(loss.item() + 2.0 * imbalance, rel=1e-5)
    # the term reaches the encoder's class head, and only the encoder
    weighted.zero_grad()
    weighted_logs["class_imbalance"].backward()
    assert weighted.encoder.heads["y"].weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in weighted.discriminators.parameters())


@pytest.mark.parametrize("variant", ["aae", "supervised", "label_regularized"])
def test_class_balance_belongs_to_the_models_with_a_categorical_code_only(variant: str) -> None:
    with pytest.raises(TypeError):
        tiny(variant, class_balance=1.0)


def test_a_gaussian_posterior_samples_codes_in_training_and_gives_its_mean_otherwise() -> None:
    torch.manual_seed(0)
    model = tiny("aae", posterior="gaussian", latent_dim=3)
    log_variance = model.encoder.heads["z_logvar"]
    torch.nn.init.zeros_(log_variance.weight)
    torch.nn.init.constant_(log_variance.bias, math.log(4.0))  # sigma(x) = 2 for every image
    image = torch.rand(1, 784).expand(4000, 784)
    mean = model.encoder.heads["z"](model.encoder.trunk(image[:1])).detach()
    model.train()
    draws = model.adversarial_codes({"x": image})["z"].detach()
    assert draws.mean(dim=0) == pytest.approx(mean[0].tolist(), abs=0.15)
    assert draws.std(dim=0).tolist() == pytest.approx([2.0] * 3, rel=0.05)
    # the sample is what the discriminator judges and the decoder rebuilds from: both phases backpropagate into
    # the log-variance head, which the deterministic encoder does not have
    model.generator_phase({"x": image})[0].backward()
    assert log_variance.weight.grad.abs().sum() > 0
    assert "z_logvar" not in tiny("aae").encoder.heads
    model.eval()
    assert torch.equal(model.encode(image[:2]), mean.expand(2, 3))


def test_a_gaussian_posterior_is_an_option_of_the_unsupervised_aae_only() -> None:
    with pytest.raises(TypeError):
        tiny("semi", posterior="gaussian")
    with pytest.raises(UserError, match="posterior"):
        tiny("aae", posterior="universal")


@pytest.mark.parametrize("preset", train.preset_names())
def test_every_preset_names_only_hyperparameters_its_variant_accepts(preset: str) -> None:
    args = train.parse_args(["--preset", preset])
    assert train.model_hparams(args)  # raises on a flag the variant lacks or a value its declaration refuses


def test_a_preset_holds_what_differs_from_its_base_and_its_own_values_win(tmp_path) -> None:
    (tmp_path / "narrow.yaml").write_text("base: paper-clustering-30\nhidden_sizes: [100, 100]\nmax_epochs: 3\n")
    (tmp_path / "narrower.yaml").write_text("base: narrow.yaml\nmax_epochs: 2\n")
    paper = train.load_preset("paper-clustering-30")
    narrower = train.load_preset(str(tmp_path / "narrower.yaml"))
    assert "base" not in narrower
    assert narrower == {**paper, "hidden_sizes": [100, 100], "max_epochs": 2}
    # through the command line a flag still wins over both
    args = train.parse_args(["--preset", str(tmp_path / "narrower.yaml"), "--max-epochs", "7"])
    assert (args.max_epochs, args.hidden_sizes, args.num_clusters) == (7, [100, 100], 30)


@pytest.mark.parametrize(
    "files, message",
    [
        ({"loop.yaml": "base: loop.yaml\n"}, "its own base"),
        ({"a.yaml": "base: b.yaml\n", "b.yaml": "base: a.yaml\nmax_epochs: 1\n"}, "its own base"),
        ({"a.yaml": "base: no-such-preset\n"}, "no-such-preset"),
        ({"a.yaml": "base: [paper-semi-100]\n"}, "base must be a preset's name"),
    ],
)
def test_a_preset_base_that_cannot_be_resolved_is_refused(tmp_path, files: dict[str, str], message: str) -> None:
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    with pytest.raises(UserError, match=message):
        train.load_preset(str(tmp_path / next(iter(files))))


def own_settings(preset: str) -> dict:
    """What a preset's own file sets, before its base is merged in."""
    import yaml

    return yaml.safe_load((train.PRESET_DIR / f"{preset}.yaml").read_text())


@pytest.mark.parametrize("preset", [name for name in train.preset_names() if name.startswith("fast-")])
def test_every_cpu_budget_preset_names_the_paper_preset_it_departs_from(preset: str) -> None:
    own = own_settings(preset)
    assert own["base"] == "paper-" + preset.removeprefix("fast-")
    assert "variant" not in own  # the experiment is the paper's; only the budget differs


@pytest.mark.parametrize(
    "preset",
    [name for name in train.preset_names() if name.startswith("fast-") and "lr_milestones" in own_settings(name)],
)
def test_a_cpu_budget_schedule_drops_its_rates_before_it_ends(preset: str) -> None:
    """A budget preset that sets its own milestones compresses the paper's schedule: a milestone at or past its
    last epoch would leave a drop that never happens (the paper's 50 and 1000 inherited into 60 epochs, say)."""
    own = own_settings(preset)
    resolved = train.load_preset(preset)
    assert resolved["lr_milestones"] == own["lr_milestones"]
    assert all(0 < milestone < resolved["max_epochs"] for milestone in resolved["lr_milestones"])
