"""The Parzen estimate during training (callbacks/parzen.py, train.py --parzen-every-n-epochs): `val/parzen_ll` is
logged every N epochs and after the last, the best checkpoint is the epoch it rates highest, a run ends with the
same weights with or without it, and the flags it cannot work with are refused in one line.

Tiny data, small networks and a few hundred prior samples: seconds. Dropout and input noise are on, so training
draws from the global random stream, and an estimate that touched that stream would change the weights. What
the callback computes on a module on a GPU is checked on every `device` (conftest.py).
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from pytorch_lightning.loggers import CSVLogger

import train
from aae_lightning import cli, get_variant
from aae_lightning.evaluation import default_sigma_grid
from callbacks.parzen import ParzenLikelihood
from datamodules import MNISTDataModule
from tests.helpers import assert_one_line_error, make_trainer

EPOCHS, EVERY = 4, 2
VAL_SIZE = 100
#: the callback's sizes, and the same as train.py flags
SMALL = {"samples": 200, "sigma_images": 30, "scored_images": 50}
PARZEN = [
    "--parzen-every-n-epochs",
    str(EVERY),
    "--parzen-samples",
    "200",
    "--parzen-val-size",
    "30",
    "--parzen-score-size",
    "50",
]
GRID = [pytest.approx(float(sigma)) for sigma in default_sigma_grid()]


def run_argv(data_dir: Path, output_dir: Path, run_name: str, *extra: str, variant: str = "aae") -> list[str]:
    """An `EPOCHS`-epoch run on the tiny data with small networks, dropout and input noise, logging to CSV."""
    adversarial = [] if variant == "ae" else ["--disc-hidden-sizes", "16"]
    return [
        "--variant",
        variant,
        "--data-dir",
        str(data_dir),
        "--no-download",
        "--val-size",
        str(VAL_SIZE),
        "--batch-size",
        "50",
        "--hidden-sizes",
        "32",
        *adversarial,
        "--latent-dim",
        "4",
        "--dropout",
        "0.1",
        "--input-noise",
        "0.1",
        "--max-epochs",
        str(EPOCHS),
        "--seed",
        "2",
        "--gpus",
        "0",
        "--image-every-n-epochs",
        "0",
        "--progress",
        "none",
        "--logger",
        "csv",
        "--output-dir",
        str(output_dir),
        "--run-name",
        run_name,
        *extra,
    ]


def logged(metrics_csv: Path, name: str) -> dict[int, float]:
    """epoch -> value of `name` in a CSVLogger's metrics.csv, for the epochs that logged it."""
    with metrics_csv.open(newline="") as file:
        return {int(float(row["epoch"])): float(row[name]) for row in csv.DictReader(file) if row.get(name)}


@pytest.fixture(scope="module")
def runs(tiny_mnist_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The same run through train.py with the estimate every `EVERY` epochs (and --test) and without it."""
    output = tmp_path_factory.mktemp("parzen")
    results = {
        name: train.train(cli.parse_args(run_argv(tiny_mnist_dir, output, name, *extra)))
        for name, extra in (("parzen", [*PARZEN, "--test"]), ("plain", []))
    }
    return {"output": output, **results}


def test_the_best_checkpoint_is_the_epoch_with_the_highest_validation_likelihood(runs: dict[str, Any]) -> None:
    run_dir = runs["output"] / "parzen"
    scores = logged(run_dir / "metrics.csv", ParzenLikelihood.metric)
    assert set(scores) == {1, 3}  # every EVERY epochs; the last one is among them
    assert all(math.isfinite(score) for score in scores.values())
    assert set(logged(run_dir / "metrics.csv", "val/recon_loss")) == set(range(EPOCHS))
    best_epoch = max(scores, key=scores.get)
    best = Path(runs["parzen"]["best_checkpoint"])
    assert best.name == f"best-epoch{best_epoch:03d}.ckpt"
    assert [path.name for path in (run_dir / "checkpoints").glob("best-*.ckpt")] == [best.name]
    assert torch.load(best, map_location="cpu", weights_only=False)["epoch"] == best_epoch
    # last.ckpt follows every epoch (resuming needs it) and carries the choice made so far
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert last["epoch"] == EPOCHS - 1
    state = next(state for key, state in last["callbacks"].items() if f"'monitor': '{ParzenLikelihood.metric}'" in key)
    assert float(state["best_model_score"]) == pytest.approx(scores[best_epoch])
    # train.py's validation of the best checkpoint estimates again, from the same codes and images
    assert runs["parzen"]["val"][ParzenLikelihood.metric] == pytest.approx(scores[best_epoch], rel=1e-6)
    assert runs["parzen"]["val"][ParzenLikelihood.sigma_metric] in GRID
    assert runs["parzen"]["test"]["test/recon_loss"] > 0


def test_training_ends_with_the_same_weights_with_or_without_the_estimate(runs: dict[str, Any]) -> None:
    scored, plain = (
        torch.load(runs["output"] / name / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
        for name in ("parzen", "plain")
    )
    assert scored["state_dict"].keys() == plain["state_dict"].keys()
    for key, value in scored["state_dict"].items():
        assert torch.equal(value, plain["state_dict"][key]), key
    for stream in ("torch", "prior_generator"):
        assert torch.equal(scored["aae_rng"]["ranks"][0][stream], plain["aae_rng"]["ranks"][0][stream]), stream
    assert not logged(runs["output"] / "plain" / "metrics.csv", ParzenLikelihood.metric)
    assert Path(runs["plain"]["best_checkpoint"]).is_file()  # chosen by the variant's own metric


@pytest.mark.parametrize("variant", ["aae", "semi"])  # semi: a decoder conditioned on a class as well
def test_logged_every_n_epochs_and_after_the_last(
    variant: str, device: str, tiny_mnist_dir: Path, tmp_path: Path
) -> None:
    cls = get_variant(variant)
    model = cls(hidden_sizes=(16,), disc_hidden_sizes=(8,), dropout=0.1)
    datamodule = MNISTDataModule(
        str(tiny_mnist_dir),
        num_labels=100 if "labeled" in cls.train_streams else None,
        val_size=VAL_SIZE,
        batch_size=50,
        download=False,
        train_streams=cls.train_streams,
    )
    trainer = make_trainer(
        2,
        epochs=3,
        callbacks=[ParzenLikelihood(EVERY, **SMALL)],
        accelerator="gpu" if device == "cuda" else "cpu",
        limit_val_batches=None,
        logger=CSVLogger(tmp_path, name="", version=""),
    )
    trainer.fit(model, datamodule=datamodule)
    scores = logged(tmp_path / "metrics.csv", ParzenLikelihood.metric)
    assert set(scores) == {1, 2}  # the second epoch, and the third because it is the last
    assert all(math.isfinite(score) for score in scores.values())
    sigmas = logged(tmp_path / "metrics.csv", ParzenLikelihood.sigma_metric)
    assert set(sigmas) == {1, 2} and all(sigma in GRID for sigma in sigmas.values())


#: name -> (variant, flags beyond the run's and PARZEN, what the one-line message must say)
REFUSED = {
    "variant_without_prior": ("ae", [], ["--parzen-every-n-epochs", "--variant ae", "latent_prior"]),
    "epochs_not_a_multiple": ("aae", ["--max-epochs", "3"], ["--max-epochs 3", f"--parzen-every-n-epochs {EVERY}"]),
    "too_few_validation_images": (
        "aae",
        ["--parzen-val-size", "60"],
        ["--parzen-val-size 60", f"--val-size {VAL_SIZE}"],
    ),
}


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_refused_in_one_line_before_training(
    name: str, tiny_mnist_dir: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    variant, extra, fragments = REFUSED[name]
    code = train.main([*run_argv(tiny_mnist_dir, tmp_path, name, variant=variant), *PARZEN, *extra])
    out, err = capfd.readouterr()
    assert_one_line_error(code, err, fragments)
    assert out == "" and not (tmp_path / name).exists()
