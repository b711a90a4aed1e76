"""DDP on 2 CPU processes (gloo). Lightning starts the extra ranks by re-running the launching script, so every
multi-process run here is a subprocess running a script (never pytest itself). Each launch starts two interpreters,
which spend most of their time importing, so a few launches serve many tests (the module-scoped fixtures); the
randomness of each rank, and resuming it, are checked here too."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from aae_lightning import VARIANTS
from aae_lightning.base import rank_seed
from datamodules.mnist import _EpochBatches
from tests.helpers import (
    REPO_ROOT,
    SEMI_IMAGES,
    assert_same_tensors,
    assert_wandb_images_logged_once_per_epoch,
    expected_pngs,
    history_rows,
    image_rows,
    json_lines,
    load_checkpoint,
    offline_run,
    png_files,
    run_config,
    wandb_records,
)
from tests.scripts import ddp_variants, validate_checkpoint

#: the programs the DDP runs start (Lightning re-runs the launching script for rank 1)
SCRIPTS = REPO_ROOT / "tests" / "scripts"


def run(args: list[str], expect_code: int = 0, timeout: float = 600) -> subprocess.CompletedProcess:
    process = subprocess.run([sys.executable, *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout)
    assert process.returncode == expect_code, process.stderr[-4000:]
    return process


@pytest.fixture(scope="module")
def variants_on_two_processes(tiny_mnist_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Every variant trained a few batches on 2 processes, then `aae` with rank 1 diverging: one launch (two
    interpreters) for the three tests below. Rank 0's JSON line per variant, each rank's error line, and the
    parameters each variant ended with."""
    params = tmp_path_factory.mktemp("ddp_params")
    process = run(
        [
            str(SCRIPTS / "ddp_variants.py"),
            "--data-dir",
            str(tiny_mnist_dir),
            "--save-params",
            str(params),
            "--poisoned",
            "aae",
            *sorted(VARIANTS),
        ],
        timeout=900,
    )
    lines = json_lines(process.stdout)
    return {
        "results": [line for line in lines if "error" not in line],
        "errors": sorted((line for line in lines if "error" in line), key=lambda line: line["rank"]),
        "params": params,
    }


def test_every_variant_trains_under_ddp_with_replicas_in_sync(variants_on_two_processes: dict[str, Any]) -> None:
    results = variants_on_two_processes["results"]
    assert [result["variant"] for result in results] == sorted(VARIANTS)
    for result in results:
        assert result["world_size"] == 2
        # ranks saw different halves of each batch: identical replicas prove the gradients were averaged
        assert result["replicas_identical"], result
        assert result["parameters_moved"], result
        assert result["same_split_fingerprint"], result
        if result["prior_samples_differ"] is not None:
            assert result["prior_samples_differ"], result
        assert result["val_metrics"], result


def test_a_nan_on_one_rank_stops_every_rank_with_the_same_error(variants_on_two_processes: dict[str, Any]) -> None:
    """Only rank 1 diverges. Were it to stop alone, rank 0 would wait in the next gradient all-reduce for a peer
    that is gone (with NCCL, until the collective timeout)."""
    errors = variants_on_two_processes["errors"]
    assert [(error["variant"], error["rank"]) for error in errors] == [("aae", 0), ("aae", 1)], errors
    # the flag travels with the gradients: every rank knows, and says the same
    for error in errors:
        assert error["error"].startswith("reconstruction loss is not finite at epoch 0, batch 1;"), errors


def test_two_processes_train_like_one_with_the_same_global_batch(
    variants_on_two_processes: dict[str, Any], tiny_mnist_dir: Path
) -> None:
    """Batch sizes are global and each rank takes its slice of the same global batch, so DDP on 2 processes
    follows the single-process run, here in this process (the plain autoencoder has no per-rank randomness)."""
    model, datamodule, trainer = ddp_variants.build("ae", str(tiny_mnist_dir), devices=1)
    trainer.fit(model, datamodule=datamodule)
    one, two = ddp_variants.parameter_vector(model), torch.load(variants_on_two_processes["params"] / "ae.pt")
    assert torch.allclose(one, two, atol=1e-5), (one - two).abs().max()


#: 99 validation images leave the ranks unequal shares (49 and 50): nothing may be padded or counted twice
ODD_VAL_SIZE = 99


def semi_on_two_processes(data_dir: Path, output_dir: Path, run_name: str, epochs: int, *extra: str) -> list[str]:
    """train.py's flags for `semi` on 2 CPU processes: input noise, dropout and prior samples for two
    discriminators, each rank drawing its own, and the weights averaged from the first batch on (each rank keeps the
    average of its replica, the same on every rank): a run stopped after epoch 1 is stopped amid its average."""
    return [
        "--variant",
        "semi",
        "--data-dir",
        str(data_dir),
        "--no-download",
        "--labels",
        "100",
        "--val-size",
        str(ODD_VAL_SIZE),
        "--batch-size",
        "50",
        "--hidden-sizes",
        "64",
        "64",
        "--disc-hidden-sizes",
        "32",
        "--dropout",
        "0.1",
        "--accelerator",
        "cpu",
        "--devices",
        "2",
        "--strategy",
        "ddp",
        "--average-weights",
        "swa",
        "--output-dir",
        str(output_dir),
        "--run-name",
        run_name,
        "--max-epochs",
        str(epochs),
        "--image-every-n-epochs",
        "1",
        *extra,
    ]


@pytest.fixture(scope="module")
def semi_run(tiny_mnist_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One two-epoch run of train.py's `semi` on 2 processes, logging to W&B (offline) with every image each epoch,
    for the tests below: one launch (two interpreters, which spend most of their time importing). Run through
    `train_then_report_process_group.py`, which calls train.py's `main` and then says, per rank, whether the
    process group is still held."""
    output = tmp_path_factory.mktemp("ddp_semi")
    results = output / "results.json"
    argv = semi_on_two_processes(
        tiny_mnist_dir, output / "runs", "whole", 2, "--logger", "wandb", "--results-json", str(results)
    )
    process = run([str(SCRIPTS / "train_then_report_process_group.py"), *argv], timeout=900)
    return {"stdout": process.stdout, "results": json.loads(results.read_text()), "runs": output / "runs"}


def test_rank_zero_alone_writes_results_progress_and_checkpoints(semi_run: dict[str, Any]) -> None:
    stdout = semi_run["stdout"]
    assert stdout.count('"best_checkpoint"') == 1  # the results are printed (and written) by rank 0 only
    assert [line.split(" | ")[0] for line in stdout.splitlines() if line.startswith("epoch ")] == [
        "epoch 1/2",
        "epoch 2/2",
    ]
    assert [path.name for path in semi_run["runs"].iterdir()] == ["whole"]
    checkpoints = sorted(path.name for path in (semi_run["runs"] / "whole" / "checkpoints").iterdir())
    assert len(checkpoints) == 2 and "last.ckpt" in checkpoints, checkpoints


def test_each_image_is_logged_once_into_one_wandb_run(semi_run: dict[str, Any]) -> None:
    """Each rank validates part of the images: the confusion matrix counting all of them proves the counts were
    summed over the ranks."""
    run_dir = semi_run["runs"] / "whole"
    assert png_files(run_dir) == expected_pngs(SEMI_IMAGES, 2)
    records = wandb_records(next(offline_run(run_dir).glob("*.wandb")))
    rows = history_rows(records)
    assert_wandb_images_logged_once_per_epoch(run_dir, rows, 2)
    for row in image_rows(rows, "confusion_matrix"):
        assert f"{ODD_VAL_SIZE} images" in row["images/confusion_matrix"]["caption"]
    config = run_config(records)
    assert config["world_size"] == 2 and config["average_weights"] == "swa" and config["average_from_epoch"] == 1
    assert [row["epoch"] for row in rows if "val/acc" in row][:2] == [0, 1]


def test_validation_metrics_identical_on_one_and_two_processes(semi_run: dict[str, Any]) -> None:
    """Batches of 20 leave a short last batch on each rank (49 and 50 images) as well; one process is this one."""
    results = semi_run["results"]
    checkpoint = results["best_checkpoint"]
    one, _ = validate_checkpoint.validation_metrics(checkpoint, devices=1, batch_size=20)
    output = run([str(SCRIPTS / "validate_checkpoint.py"), "--ckpt", checkpoint, "--batch-size", "20"]).stdout
    (two,) = json_lines(output)
    assert one["val/acc"] == two["val/acc"] == pytest.approx(results["val"]["val/acc"], abs=0)
    assert one["val/recon_loss"] == pytest.approx(two["val/recon_loss"], rel=1e-6)


def test_train_py_leaves_the_process_group_before_it_returns(semi_run: dict[str, Any]) -> None:
    """Left to interpreter shutdown, the gloo group's threads can abort a finished run with exit code -6
    ("terminate called without an active exception"): on some runs only, so the check is on its cause."""
    # train.py's results, printed by rank 0, are indented JSON, whose lines do not start with this
    reports = sorted(json_lines(semi_run["stdout"], start='{"rank"'), key=lambda report: report["rank"])
    assert reports == [{"rank": rank, "exit_code": 0, "holds_process_group": False} for rank in (0, 1)], reports


def test_each_rank_has_its_own_streams_and_resuming_continues_them(
    semi_run: dict[str, Any], tiny_mnist_dir: Path, tmp_path: Path
) -> None:
    """The run above in two pieces: one epoch, then resumed to two. Every rank's noise, dropout and prior samples
    must continue as in one piece."""
    run(["train.py", *semi_on_two_processes(tiny_mnist_dir, tmp_path, "pieces", 1), "--logger", "none"])
    run(
        [
            "train.py",
            *semi_on_two_processes(tiny_mnist_dir, tmp_path, "pieces", 2),
            "--logger",
            "none",
            "--ckpt-path",
            "last",
        ]
    )
    whole, pieces = (
        load_checkpoint(folder / "checkpoints" / "last.ckpt")
        for folder in (semi_run["runs"] / "whole", tmp_path / "pieces")
    )
    assert whole["epoch"] == pieces["epoch"] == 1
    ranks = whole["aae_rng"]["ranks"]
    assert len(ranks) == 2
    for stream in ("torch", "prior_generator"):
        assert not torch.equal(ranks[0][stream], ranks[1][stream]), f"both ranks share the {stream} stream"
        for rank in (0, 1):
            assert torch.equal(ranks[rank][stream], pieces["aae_rng"]["ranks"][rank][stream]), (stream, rank)
    # the same weights in one piece and in two, averaged (`state_dict`) and trained
    assert_same_tensors(whole["state_dict"], pieces["state_dict"], "state_dict")
    assert_same_tensors(whole["current_model_state"], pieces["current_model_state"], "current_model_state")
    assert_same_tensors(whole["averaging_state"], pieces["averaging_state"], "averaging_state")
    trained = whole["current_model_state"]
    assert any(not torch.equal(whole["state_dict"][name], trained[name]) for name in trained)  # an average indeed


def test_batch_size_that_does_not_split_over_devices_is_refused_once(tiny_mnist_dir: Path) -> None:
    process = run(
        [
            "train.py",
            "--variant",
            "ae",
            "--data-dir",
            str(tiny_mnist_dir),
            "--accelerator",
            "cpu",
            "--devices",
            "2",
            "--batch-size",
            "51",
            "--logger",
            "none",
        ],
        expect_code=2,
    )
    lines = process.stderr.strip().splitlines()
    assert len(lines) == 1 and "--batch-size 51" in lines[0] and "Traceback" not in process.stderr


def test_labeled_set_on_eight_ranks_is_used_whole_and_not_repeated_across_ranks() -> None:
    """100 labels on 8 devices: each step the ranks take disjoint slices of one global labeled batch, and over
    a few steps every labeled image comes round."""
    images = torch.arange(1000, dtype=torch.float32).unsqueeze(1)
    labels = torch.zeros(1000, dtype=torch.long)
    labeled = torch.arange(0, 1000, 10)  # 100 labeled images
    streams = {"unlabeled": torch.arange(1000), "labeled": labeled}
    sizes = {"unlabeled": 96, "labeled": 48}
    ranks = [
        list(_EpochBatches(images, labels, streams, sizes, seed=3, epoch=lambda: 0, rank=rank, world_size=8))
        for rank in range(8)
    ]
    seen = set()
    for step in range(len(ranks[0])):
        per_rank = [set(ranks[rank][step]["labeled_x"].squeeze(1).long().tolist()) for rank in range(8)]
        assert all(len(batch) == 6 for batch in per_rank)
        assert len(set.union(*per_rank)) == 48  # no two ranks drew the same labeled image this step
        seen |= set.union(*per_rank)
    assert seen == set(labeled.tolist())


def test_rank_seeds_differ_for_every_seed_and_rank() -> None:
    seeds = {rank_seed(seed, rank) for seed in range(4) for rank in range(1, 9)}
    assert len(seeds) == 4 * 8
    assert all(0 <= seed < 2**64 for seed in seeds)
