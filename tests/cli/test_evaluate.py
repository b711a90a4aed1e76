"""evaluate.py on tiny checkpoints written by train.py, and the checkpoints it refuses."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import evaluate
import train
from tests.helpers import REPO_ROOT, TINY_FLAGS, make_fake_mnist

PARZEN_FLAGS = ["--parzen-samples", "300", "--parzen-val-size", "40", "--parzen-test-size", "60"]


@pytest.fixture(scope="module")
def checkpoints(tiny_mnist_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A one-epoch last.ckpt of a clustering and a semi-supervised model, trained by train.py in-process."""
    out = tmp_path_factory.mktemp("runs")
    paths = {}
    for variant in ("clustering", "semi"):
        code = train.main(
            [
                "--variant",
                variant,
                "--data-dir",
                str(tiny_mnist_dir),
                "--output-dir",
                str(out),
                "--run-name",
                variant,
                *TINY_FLAGS,
            ]
        )
        assert code == 0
        paths[variant] = out / variant / "checkpoints" / "last.ckpt"
    return paths


def test_evaluate_cli_reports_clustering_error_parzen_and_reconstruction(
    checkpoints: dict[str, Path], tiny_mnist_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "eval.json"
    result = subprocess.run(
        [
            sys.executable,
            "evaluate.py",
            "--ckpt",
            str(checkpoints["clustering"]),
            "--data-dir",
            str(tiny_mnist_dir),
            "--json",
            str(out),
            *PARZEN_FLAGS,
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    results = json.loads(out.read_text())
    assert results["variant"] == "clustering"
    assert 0 <= results["test/cluster_error"] <= 1 and len(results["cluster_labels"]) == 16
    assert results["test/recon_loss"] > 0
    assert results["parzen_samples"] == 300 and results["parzen_test_images"] == 60
    assert results["parzen_sigma"] in [pytest.approx(float(s)) for s in evaluate.default_sigma_grid()]
    assert results["test/parzen_ll_stderr"] > 0
    # the printed table shows the headline numbers
    assert "test/cluster_error" in result.stdout and "test/parzen_ll" in result.stdout


def test_evaluate_reports_test_accuracy_of_a_classifier(
    checkpoints: dict[str, Path], tiny_mnist_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "eval.json"
    assert (
        evaluate.main(
            ["--ckpt", str(checkpoints["semi"]), "--data-dir", str(tiny_mnist_dir), "--json", str(out), "--no-parzen"]
        )
        == 0
    )
    results = json.loads(out.read_text())
    assert results["test/error"] == pytest.approx(1 - results["test/acc"])
    assert "test/parzen_ll" not in results and "test/cluster_error" not in results
    # the same numbers as the model's own test loop in train.py would log: all 100 tiny test images count
    assert results["split"]["num_labels"] == 100


def test_a_gaussian_posterior_aae_trains_and_is_scored_by_its_parzen_estimate(
    tiny_mnist_dir: Path, tmp_path: Path
) -> None:
    assert (
        train.main(
            [
                "--variant",
                "aae",
                "--latent-dim",
                "8",
                "--posterior",
                "gaussian",
                "--data-dir",
                str(tiny_mnist_dir),
                "--output-dir",
                str(tmp_path),
                "--run-name",
                "gauss",
                *TINY_FLAGS,
            ]
        )
        == 0
    )
    checkpoint = tmp_path / "gauss" / "checkpoints" / "last.ckpt"
    assert "encoder.heads.z_logvar.weight" in torch.load(checkpoint, weights_only=False)["state_dict"]
    out = tmp_path / "eval.json"
    assert (
        evaluate.main(["--ckpt", str(checkpoint), "--data-dir", str(tiny_mnist_dir), "--json", str(out), *PARZEN_FLAGS])
        == 0
    )
    results = json.loads(out.read_text())
    assert results["variant"] == "aae" and torch.isfinite(torch.tensor(results["test/parzen_ll"]))


def refused(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    assert evaluate.main(argv) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and error.startswith("error: ")
    return error


def test_refuses_a_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert "does not exist" in refused(["--ckpt", str(tmp_path / "nope.ckpt")], capsys)


def test_refuses_a_file_that_is_not_a_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"this is not a checkpoint\n" * 10)
    assert "not a readable checkpoint" in refused(["--ckpt", str(garbage)], capsys)


def test_refuses_a_truncated_checkpoint(
    checkpoints: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(checkpoints["semi"].read_bytes()[:5000])
    assert "not a readable checkpoint" in refused(["--ckpt", str(truncated)], capsys)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda ckpt: ckpt.update(aae_variant="vae"), "unknown variant 'vae'"),
        (lambda ckpt: ckpt.pop("datamodule_hyper_parameters"), "lacks datamodule_hyper_parameters"),
        (lambda ckpt: ckpt["hyper_parameters"].update(latent_dim=3), "does not fit variant 'semi'"),
    ],
    ids=["unknown-variant", "missing-field", "wrong-shapes"],
)
def test_refuses_a_checkpoint_it_cannot_evaluate(
    edit, message: str, checkpoints: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    checkpoint = torch.load(checkpoints["semi"], map_location="cpu", weights_only=False)
    edit(checkpoint)
    path = tmp_path / "edited.ckpt"
    torch.save(checkpoint, path)
    assert message in refused(["--ckpt", str(path)], capsys)


def test_refuses_data_that_does_not_give_the_checkpoints_split(
    checkpoints: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = make_fake_mnist(tmp_path / "other", seed=1)  # other labels: the balanced labeled draw differs
    assert "different split" in refused(["--ckpt", str(checkpoints["semi"]), "--data-dir", str(other)], capsys)
