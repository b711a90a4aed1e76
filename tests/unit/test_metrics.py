"""The metrics evaluate.py and the Parzen callback use (aae_lightning/evaluation.py), on numbers worked out by
hand: cluster accuracy by the paper's rule and by majority, merged across ranks as DDP's sync does, and the Parzen
window estimate, its kernel width and its summary."""

from __future__ import annotations

import math

import pytest
import torch

from aae_lightning.evaluation import (
    ClusterAccuracy,
    default_sigma_grid,
    parzen_log_densities,
    parzen_summary,
    select_parzen_sigma,
    softmax_log_odds,
)

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
