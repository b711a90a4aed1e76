"""Each variant's model, built and trained in this process: the clustering, dimensionality-reduction and
label-regularized variants train a few batches on tiny MNIST files with every phase moving its own networks; and
the paper's training options every variant shares (half squared-error reconstruction, a momentum of its own for
the adversarial phases, init_std, noise on the discriminators' input, labeled reconstruction, class balance, a
Gaussian posterior) act where they should, seen through a model's phases on a batch of random images."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from aae_lightning import AutoencoderBase, get_variant
from aae_lightning.errors import UserError
from aae_lightning.label_regularized import UNLABELED, nearest_component
from aae_lightning.semi import class_imbalance
from datamodules import MNISTDataModule
from tests.helpers import phase_momenta

#: the networks of the variants trained a few batches
SMALL = {"hidden_sizes": (32, 32), "disc_hidden_sizes": (16,)}
NEW_VARIANTS = ("clustering", "dimreduction", "label_regularized")
#: the networks of the models the options are checked on, which only step a phase or two
TINY = {"hidden_sizes": (16, 16), "disc_hidden_sizes": (8,)}


def tiny(variant: str, **hparams):
    """`variant` with tiny networks (the plain autoencoder has no discriminator to size)."""
    sizes = {key: value for key, value in TINY.items() if key in get_variant(variant).Hparams.__dataclass_fields__}
    return get_variant(variant)(**sizes, **hparams)


# ----- the clustering, dimensionality-reduction and label-regularized variants -------------------------------------
def fit_a_few_batches(model: AutoencoderBase, data_dir: Path, batches: int = 3) -> pl.Trainer:
    datamodule = MNISTDataModule(
        data_dir=str(data_dir),
        num_labels=100,
        val_size=100,
        batch_size=50,
        download=False,
        train_streams=model.train_streams,
    )
    trainer = pl.Trainer(
        accelerator="cpu",
        max_epochs=1,
        limit_train_batches=batches,
        limit_val_batches=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, datamodule=datamodule)
    return trainer


@pytest.mark.parametrize(
    ("variant", "options"),
    [
        *((variant, {}) for variant in NEW_VARIANTS),
        # the paper's semi-supervised training scheme, which the dimensionality-reduction preset uses
        ("dimreduction", {"reconstruction_loss": "half_sse", "optimizer": "sgd", "adversarial_momentum": 0.1}),
    ],
    ids=[*NEW_VARIANTS, "dimreduction-paper-sgd"],
)
def test_variant_trains_and_every_phase_moves_its_own_networks(
    variant: str, options: dict, tiny_mnist_dir: Path
) -> None:
    torch.manual_seed(0)
    model = get_variant(variant)(**SMALL, **options)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    trainer = fit_a_few_batches(model, tiny_mnist_dir)
    changed = {name.split(".")[0] for name, p in model.named_parameters() if not torch.equal(p, before[name])}
    owners = {module for phase in model.phases for module in model.phase_modules[phase]}
    assert changed == owners
    metrics = trainer.callback_metrics
    assert model.monitor[0] in metrics
    assert all(torch.isfinite(value) for name, value in metrics.items() if name.startswith(("train/", "val/")))


def test_clustering_has_k_clusters_and_never_sees_a_label(tiny_mnist_dir: Path) -> None:
    model = get_variant("clustering")(num_clusters=30, **SMALL)
    assert model.phases == ("reconstruction", "regularization", "generator")
    assert model.train_streams == ("unlabeled",)
    assert "acc" not in model.monitor[0] and "cluster" not in model.monitor[0]
    assert model.encoder.heads["y"].out_features == 30 and model.priors["y"].dim == 30
    # every phase runs on a batch without labels
    batch = {"x": torch.rand(8, 784)}
    for phase in model.phases:
        loss, _ = getattr(model, f"{phase}_phase")(batch)
        assert torch.isfinite(loss)


@pytest.mark.parametrize(("variant", "metric"), [("clustering", "val/cluster_acc"), ("semi", "val/acc")])
def test_the_papers_clustering_encoder_extras_train(tiny_mnist_dir: Path, variant: str, metric: str) -> None:
    model = get_variant(variant)(input_dropout=0.2, encoder_batchnorm=True, **SMALL)
    kinds = [type(layer).__name__ for layer in model.encoder.trunk]
    assert kinds[0] == "Dropout" and kinds.count("BatchNorm1d") == 2
    assert all(type(head[-1]).__name__ == "BatchNorm1d" for head in model.encoder.heads.values())
    trainer = fit_a_few_batches(model, tiny_mnist_dir)
    assert 0 <= trainer.callback_metrics[metric] <= 1


def test_no_head_batchnorm_normalizes_the_trunk_alone() -> None:
    model = get_variant("clustering")(encoder_batchnorm=True, head_batchnorm=False, **SMALL)
    assert [type(layer).__name__ for layer in model.encoder.trunk].count("BatchNorm1d") == 2
    assert all(type(head).__name__ == "Linear" for head in model.encoder.heads.values())


def test_dimreduction_decodes_from_cluster_head_plus_style() -> None:
    model = get_variant("dimreduction")(**SMALL)
    assert model.decoder.net[0].in_features == 2
    codes = {"y": torch.tensor([[50.0] + [0.0] * 9]), "z": torch.tensor([[0.5, -1.0]])}
    # a confident class-0 code lands on head 0, shifted by the style
    expected = model.cluster_heads.weight[:, 0] + codes["z"][0]
    torch.testing.assert_close(model.decoder_input(codes, None)[0], expected, atol=1e-6, rtol=0)
    # a given label selects its head exactly
    torch.testing.assert_close(
        model.decoder_input({"z": torch.zeros(1, 2)}, torch.tensor([3]))[0], model.cluster_heads.weight[:, 3]
    )


def test_dimreduction_head_penalty_is_the_hinge_on_pairwise_distances() -> None:
    model = get_variant("dimreduction")(head_distance=2.0, **SMALL)
    with torch.no_grad():
        model.cluster_heads.weight.copy_(torch.stack([torch.arange(10.0) * 10, torch.zeros(10)]))
        model.cluster_heads.weight[:, 1] = torch.tensor([0.5, 0.0])  # 0.5 from head 0, 9.5 from head 2
    assert model.head_penalty().item() == pytest.approx(2.0 - 0.5)
    model.head_penalty().backward()
    grad = model.cluster_heads.weight.grad
    # descending the gradient pushes heads 0 and 1 apart along x, and leaves the others alone
    assert grad[0, 0] > 0 and grad[0, 1] < 0
    assert torch.count_nonzero(grad[:, 2:]) == 0


@pytest.mark.parametrize("head_gradient", ["reconstruction", "penalty"])
def test_dimreduction_heads_take_the_reconstruction_gradient_only_when_asked(head_gradient: str) -> None:
    model = get_variant("dimreduction")(head_gradient=head_gradient, **SMALL)
    batch = {"x": torch.rand(8, 784)}
    loss, _ = model.reconstruction_phase(batch)
    loss.backward()
    whole = model.cluster_heads.weight.grad.clone()
    model.zero_grad()
    (model.config.head_penalty * model.head_penalty()).backward()
    penalty_only = model.cluster_heads.weight.grad
    if head_gradient == "penalty":
        torch.testing.assert_close(whole, penalty_only)
    else:
        assert not torch.allclose(whole, penalty_only)


def test_label_regularized_pairs_codes_and_prior_samples_with_label_slots() -> None:
    model = get_variant("label_regularized")(**SMALL)
    model.prior_generator.manual_seed(0)
    labels = torch.arange(10).repeat(20)
    batch = {"x": torch.rand(50, 784), "labeled_x": torch.rand(200, 784), "labeled_y": labels}
    fakes = model.regularized_codes(batch)["z"]
    reals = model.prior_samples(batch, {"z": fakes})["z"]
    assert fakes.shape == reals.shape == (250, 13)
    for codes in (fakes, reals):
        slots = codes[:, 2:].argmax(dim=1)
        assert (slots[:50] == UNLABELED).all() and torch.equal(slots[50:], labels)
        assert torch.equal(codes[:, 2:].sum(dim=1), torch.ones(250))
    # a labeled image's real sample comes from its digit's component; unlabeled ones from all of them
    # (near the origin the petals meet, so a sample there may point to a neighbour)
    assert (nearest_component(reals[50:, :2]) == labels).float().mean() > 0.97
    assert len(nearest_component(reals[:50, :2]).unique()) > 5


def test_nearest_component_reads_the_digit_off_the_angle() -> None:
    angles = 2 * math.pi * torch.arange(10) / 10 + 0.2
    z = 3 * torch.stack([torch.cos(angles), torch.sin(angles)], dim=1)
    assert torch.equal(nearest_component(z), torch.arange(10))


# ----- the paper's training options ---------------------------------------------------------------------------------
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
