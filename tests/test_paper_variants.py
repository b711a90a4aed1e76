"""The clustering, dimensionality-reduction and label-regularized variants, and the metrics evaluate.py uses."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from aae_lightning import AutoencoderBase, get_variant
from aae_lightning.evaluation import (
    ClusterAccuracy,
    default_sigma_grid,
    parzen_log_densities,
    parzen_summary,
    select_parzen_sigma,
    softmax_log_odds,
)
from aae_lightning.label_regularized import UNLABELED, nearest_component
from datamodules import MNISTDataModule

TINY = {"hidden_sizes": (32, 32), "disc_hidden_sizes": (16,)}
NEW_VARIANTS = ("clustering", "dimreduction", "label_regularized")


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
    model = get_variant(variant)(**TINY, **options)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    trainer = fit_a_few_batches(model, tiny_mnist_dir)
    changed = {name.split(".")[0] for name, p in model.named_parameters() if not torch.equal(p, before[name])}
    owners = {module for phase in model.phases for module in model.phase_modules[phase]}
    assert changed == owners
    metrics = trainer.callback_metrics
    assert model.monitor[0] in metrics
    assert all(torch.isfinite(value) for name, value in metrics.items() if name.startswith(("train/", "val/")))


def test_clustering_has_k_clusters_and_never_sees_a_label(tiny_mnist_dir: Path) -> None:
    model = get_variant("clustering")(num_clusters=30, **TINY)
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
    model = get_variant(variant)(input_dropout=0.2, encoder_batchnorm=True, **TINY)
    kinds = [type(layer).__name__ for layer in model.encoder.trunk]
    assert kinds[0] == "Dropout" and kinds.count("BatchNorm1d") == 2
    assert all(type(head[-1]).__name__ == "BatchNorm1d" for head in model.encoder.heads.values())
    trainer = fit_a_few_batches(model, tiny_mnist_dir)
    assert 0 <= trainer.callback_metrics[metric] <= 1


def test_no_head_batchnorm_normalizes_the_trunk_alone() -> None:
    model = get_variant("clustering")(encoder_batchnorm=True, head_batchnorm=False, **TINY)
    assert [type(layer).__name__ for layer in model.encoder.trunk].count("BatchNorm1d") == 2
    assert all(type(head).__name__ == "Linear" for head in model.encoder.heads.values())


def test_dimreduction_decodes_from_cluster_head_plus_style() -> None:
    model = get_variant("dimreduction")(**TINY)
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
    model = get_variant("dimreduction")(head_distance=2.0, **TINY)
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
    model = get_variant("dimreduction")(head_gradient=head_gradient, **TINY)
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
    model = get_variant("label_regularized")(**TINY)
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


# ----- cluster accuracy ------------------------------------------------------------------------------------

# six images, three clusters; rows are q(y|x), labels their digits
PROBS = torch.tensor(
    [
        [0.90, 0.05, 0.05],  # cluster 0, digit 1 (the most confident cluster-0 image)
        [0.60, 0.30, 0.10],  # cluster 0, digit 7
        [0.50, 0.40, 0.10],  # cluster 0, digit 7
        [0.10, 0.80, 0.10],  # cluster 1, digit 2
        [0.05, 0.15, 0.80],  # cluster 2, digit 3
        [0.20, 0.20, 0.60],  # cluster 2, digit 3
    ]
)
LABELS = torch.tensor([1, 7, 7, 2, 3, 3])


def test_cluster_accuracy_paper_rule_labels_each_cluster_by_its_most_confident_image() -> None:
    metric = ClusterAccuracy(3, rule="paper")
    metric.update(PROBS.log(), LABELS)
    assert metric.assignment().tolist() == [1, 2, 3]
    assert metric.compute().item() == pytest.approx(4 / 6)  # the two 7s sit in the cluster labelled 1


def test_cluster_accuracy_majority_rule() -> None:
    metric = ClusterAccuracy(3, rule="majority")
    metric.update(PROBS.log(), LABELS)
    assert metric.assignment().tolist() == [7, 2, 3]
    assert metric.compute().item() == pytest.approx(5 / 6)


def test_cluster_accuracy_scores_a_set_with_labels_chosen_on_another() -> None:
    validation, test = ClusterAccuracy(3), ClusterAccuracy(3)
    validation.update(PROBS.log(), LABELS)
    test.update(torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8], [0.2, 0.7, 0.1]]).log(), torch.tensor([1, 5, 2]))
    assert test.accuracy(validation.assignment()).item() == pytest.approx(2 / 3)


def test_cluster_accuracy_paper_rule_finds_the_most_confident_image_where_float32_probabilities_round_to_1() -> None:
    # both images sit in cluster 0 with q > 1 - 1e-9, which float32 stores as 1.0; the digit-5 image is the surer
    logits = torch.tensor([[30.0, 0.0, 0.0], [40.0, 0.0, 0.0]])
    assert torch.equal(torch.softmax(logits, dim=1)[:, 0], torch.ones(2))
    metric = ClusterAccuracy(3, rule="paper")
    metric.update(logits, torch.tensor([0, 5]))
    assert metric.assignment()[0].item() == 5


def test_softmax_log_odds_are_log_q_over_one_minus_q() -> None:
    logits = torch.tensor([[1.0, 2.0, 0.5], [-3.0, 0.0, 4.0]], dtype=torch.float64)
    q = torch.softmax(logits, dim=1)
    assert torch.allclose(softmax_log_odds(logits), (q / (1 - q)).log())


@pytest.mark.parametrize("rule", ["paper", "majority"])
def test_cluster_accuracy_states_merged_across_ranks_equal_one_pass(rule: str) -> None:
    whole, rank0, rank1 = (ClusterAccuracy(3, rule=rule) for _ in range(3))
    whole.update(PROBS.log(), LABELS)
    # the split puts the most confident cluster-0 image on the second rank: the max reduction must find it
    rank0.update(PROBS[1:4].log(), LABELS[1:4])
    rank1.update(torch.cat([PROBS[:1], PROBS[4:]]).log(), torch.cat([LABELS[:1], LABELS[4:]]))
    rank0.merge_state(rank1)  # the reduction DDP's sync applies: sum of counts, max of top log-odds
    assert torch.equal(rank0.counts, whole.counts) and torch.equal(rank0.top_log_odds, whole.top_log_odds)
    assert rank0.compute() == whole.compute()


# ----- Parzen window ---------------------------------------------------------------------------------------


def test_parzen_of_the_samples_themselves_with_a_narrow_kernel_is_analytic() -> None:
    # samples far apart: at each sample only its own kernel counts, so log p = -log n - d log(sigma sqrt(2 pi))
    samples = 10 * torch.eye(5, 20)
    sigma = 0.1
    log_p = parzen_log_densities(samples, samples, torch.tensor([sigma]))[0]
    expected = -math.log(5) - 20 * math.log(sigma * math.sqrt(2 * math.pi))
    torch.testing.assert_close(log_p, torch.full((5,), expected, dtype=torch.float64))


def test_parzen_matches_a_direct_mixture_density() -> None:
    generator = torch.Generator().manual_seed(0)
    samples, points = torch.rand(30, 6, generator=generator), torch.rand(7, 6, generator=generator)
    sigmas = torch.tensor([0.2, 0.5], dtype=torch.float64)
    for sigma, log_p in zip(sigmas, parzen_log_densities(points, samples, sigmas, batch_size=3), strict=True):
        kernel = torch.distributions.Normal(samples.double(), sigma)
        direct = kernel.log_prob(points.double().unsqueeze(1)).sum(dim=2).logsumexp(dim=1) - math.log(30)
        torch.testing.assert_close(log_p, direct)


def test_parzen_sigma_selection_finds_the_noise_scale() -> None:
    generator = torch.Generator().manual_seed(1)
    samples = 20 * torch.rand(200, 8, generator=generator)
    validation = samples + 0.3 * torch.randn(200, 8, generator=generator)
    sigma, means = select_parzen_sigma(validation, samples, default_sigma_grid())
    assert 0.2 < sigma < 0.45
    assert len(means) == 10 and means.argmax() not in (0, 9)


def test_parzen_summary_is_mean_and_standard_error() -> None:
    mean, stderr = parzen_summary(torch.tensor([1.0, 2.0, 3.0, 4.0]))
    assert mean == pytest.approx(2.5) and stderr == pytest.approx(torch.tensor([1.0, 2, 3, 4]).std().item() / 2)


def test_boolean_hyperparameters_are_on_off_flags() -> None:
    import train

    for flag, expected in (("--encoder-batchnorm", True), ("--no-encoder-batchnorm", False)):
        args = train.parse_args(["--variant", "clustering", flag])
        assert train.model_hparams(args)["encoder_batchnorm"] is expected
    # a preset's value is a default that the flag overrides
    args = train.parse_args(["--preset", "paper-clustering-16", "--no-encoder-batchnorm"])
    assert train.model_hparams(args)["encoder_batchnorm"] is False
