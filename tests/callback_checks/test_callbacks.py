"""The image callbacks and the W&B run set-up, end to end through train.py on tiny data.

W&B runs are real offline runs, read back by `tests.helpers.wandb_records`. What the callbacks draw from a module on a
GPU is checked on every `device` (conftest.py); the loggers they publish to, on the CPU. Under DDP:
tests/distributed/test_ddp.py.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

import train
from aae_lightning import VARIANTS, cli
from aae_lightning.errors import UserError
from aae_lightning.run_folder import run_name
from callbacks.wandb_setup import make_wandb_logger
from tests.helpers import (
    SEMI_IMAGES,
    assert_wandb_images_logged_once_per_epoch,
    expected_pngs,
    gpus_flag,
    history_rows,
    image_rows,
    offline_run,
    png_files,
    run_config,
    wandb_records,
)

EPOCHS = 2
VAL_SIZE = 100


def train_argv(
    data_dir: Path, output_dir: Path, variant: str = "semi", logger: str = "none", *extra: str, device: str = "cpu"
) -> list[str]:
    """A two-epoch run (unless `extra` says otherwise) on the tiny data with small networks, drawing every epoch."""
    adversarial = [] if variant == "ae" else ["--disc-hidden-sizes", "32", "32"]
    return [
        "--variant",
        variant,
        "--data-dir",
        str(data_dir),
        "--no-download",
        "--labels",
        "100",
        "--val-size",
        str(VAL_SIZE),
        "--batch-size",
        "50",
        "--max-epochs",
        str(EPOCHS),
        *gpus_flag(device),
        "--hidden-sizes",
        "64",
        "64",
        *adversarial,
        "--logger",
        logger,
        "--output-dir",
        str(output_dir),
        "--run-name",
        f"{variant}-run",
        "--image-every-n-epochs",
        "1",
        *extra,
    ]


def run_in_process(argv: list[str]) -> dict[str, Any]:
    results = train.train(cli.parse_args(argv))
    import wandb

    # train.py leaves the W&B run open for the interpreter's exit to close; this process goes on. `finish` can
    # return before the W&B service has flushed the run's .wandb file (seen: 7 bytes of 17 KB); `teardown`
    # waits for the service to exit, and with it for every file to be closed.
    wandb.finish()
    wandb.teardown()
    return results


# ----- the tests ------------------------------------------------------------------------------------------------
def test_wandb_offline_run_holds_every_image_accuracy_and_config(tiny_mnist_dir: Path, tmp_path: Path) -> None:
    results = run_in_process(train_argv(tiny_mnist_dir, tmp_path, "semi", "wandb"))
    run_dir = tmp_path / "semi-run"
    records = wandb_records(next(offline_run(run_dir).glob("*.wandb")))
    rows = history_rows(records)

    assert png_files(run_dir) == expected_pngs(SEMI_IMAGES, EPOCHS)
    assert_wandb_images_logged_once_per_epoch(run_dir, rows, EPOCHS)
    confusion = image_rows(rows, "confusion_matrix")[-1]["images/confusion_matrix"]["caption"]
    assert f"{VAL_SIZE} images" in confusion

    accuracy = [row for row in rows if "val/acc" in row]
    # one point per epoch: train.py's final validation of the best checkpoint is not logged a second time
    assert [row["epoch"] for row in accuracy] == list(range(EPOCHS))
    assert all(0 <= row["val/acc"] <= 1 for row in accuracy)
    assert max(row["val/acc"] for row in accuracy) == pytest.approx(results["val"]["val/acc"])

    definitions = {
        record.metric.name: record.metric
        for record in records
        if record.WhichOneof("record_type") == "metric" and record.metric.name
    }
    for key in ("val/acc", "val/recon_loss", "train/recon_loss_epoch", "train/class_loss_epoch"):
        assert definitions[key].step_metric == "epoch", (key, definitions.get(key))
    assert (
        definitions.get("train/recon_loss_step") is None or definitions["train/recon_loss_step"].step_metric != "epoch"
    )

    config = run_config(records)
    assert config["split_fingerprint"] == results["split"]["split_fingerprint"]
    assert config["split_seed"] == 0 and config["num_labels"] == 100 and config["val_size"] == VAL_SIZE
    assert config["variant"] == "semi" and config["latent_dim"] == 10 and config["hidden_sizes"] == [64, 64]
    assert config["max_epochs"] == EPOCHS and config["world_size"] == 1
    names = [record.run.display_name for record in records if record.WhichOneof("record_type") == "run"]
    assert names == ["semi-run"]


def test_default_run_name_carries_variant_and_label_count(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AAE_RUN_NAME", raising=False)
    name = run_name(cli.parse_args(["--variant", "semi", "--labels", "100"]))
    assert name.startswith("semi-100labels-seed0-")


def test_wandb_logger_without_the_wandb_package_is_one_user_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setitem(sys.modules, "wandb", None)  # how an install without the [wandb] extra looks to importlib
    with pytest.raises(UserError, match=r"^--logger wandb needs the wandb package .*--logger csv"):
        make_wandb_logger(project="p", name="r", save_dir=tmp_path, config={})


def test_tensorboard_event_files_hold_every_image(tiny_mnist_dir: Path, tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import IMAGES, SCALARS, EventAccumulator

    run_in_process(train_argv(tiny_mnist_dir, tmp_path, "semi", "tensorboard"))
    run_dir = tmp_path / "semi-run"
    events = EventAccumulator(str(run_dir), size_guidance={IMAGES: 0, SCALARS: 0})
    events.Reload()
    assert sorted(events.Tags()[IMAGES]) == sorted(f"images/{name}" for name in SEMI_IMAGES)
    for name in SEMI_IMAGES:
        logged = events.Images(f"images/{name}")
        assert [event.step for event in logged] == list(range(EPOCHS)), name
        with Image.open(run_dir / "images" / name / f"epoch_{EPOCHS - 1:03d}.png") as saved:
            assert (logged[-1].width, logged[-1].height) == saved.size
    assert len(events.Scalars("val/acc")) >= EPOCHS


@pytest.fixture(scope="module")
def semi_without_logger(device: str, tiny_mnist_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    output = tmp_path_factory.mktemp("no_logger")
    train.train(cli.parse_args(train_argv(tiny_mnist_dir, output, "semi", "none", device=device)))
    return output / "semi-run"


def test_without_a_logger_the_images_are_pngs_in_the_run_folder(semi_without_logger: Path) -> None:
    assert png_files(semi_without_logger) == expected_pngs(SEMI_IMAGES, EPOCHS)
    sizes = {
        "latent_grid": (20 * 30 + 2,) * 2,
        "samples": (10 * 30 + 2,) * 2,
        "style_grid": (12 * 30 + 2, 10 * 30 + 2),
        "reconstructions": (10 * 30 + 2, 8 * 30 + 2),
    }
    for name, size in sizes.items():
        with Image.open(semi_without_logger / "images" / name / "epoch_001.png") as image:
            assert image.size == size, name
            assert np.asarray(image).std() > 0, f"{name} is a blank image"


def test_images_leave_training_untouched(
    semi_without_logger: Path, device: str, tiny_mnist_dir: Path, tmp_path: Path
) -> None:
    """Drawing every epoch consumes no global random numbers: the run ends exactly as one that never draws."""
    train.train(
        cli.parse_args(
            train_argv(tiny_mnist_dir, tmp_path, "semi", "none", "--image-every-n-epochs", "0", device=device)
        )
    )
    assert not (tmp_path / "semi-run" / "images").exists()
    drawn, plain = (
        torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
        for run in (semi_without_logger, tmp_path / "semi-run")
    )
    assert drawn["state_dict"].keys() == plain["state_dict"].keys()
    for key, value in drawn["state_dict"].items():
        assert torch.equal(value, plain["state_dict"][key]), key
    assert torch.equal(drawn["aae_rng"]["ranks"][0]["torch"], plain["aae_rng"]["ranks"][0]["torch"])


def test_variant_without_prior_or_classes_says_so_once_in_one_line_each(
    tiny_mnist_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Lightning's info log, which reaches the console as the bare message: nothing is wrong, so no warning."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train.train(cli.parse_args(train_argv(tiny_mnist_dir, tmp_path, "ae", "none")))
    said = [message for message in caplog.messages if " draws nothing: " in message]
    assert sorted(message.split(" draws nothing: ")[0] for message in said) == [
        "ConfusionMatrix",
        "LatentGrid",
        "PriorSamples",
        "StyleGrid",
    ]  # once each, over two epochs
    assert not any("\n" in message for message in said)
    assert not [warning for warning in caught if " draws nothing: " in str(warning.message)]
    assert png_files(tmp_path / "ae-run") == expected_pngs(("reconstructions", "latent_scatter"), EPOCHS)


#: what each variant can show: no prior (ae) means no grid or samples; no class-conditioned decoder, no style
#: grid; no classify, no confusion matrix
VARIANT_IMAGES = {
    "ae": ("reconstructions", "latent_scatter"),
    "aae": ("latent_grid", "samples", "reconstructions", "latent_scatter"),
    "supervised": ("latent_grid", "style_grid", "samples", "reconstructions", "latent_scatter"),
    "semi": SEMI_IMAGES,
    "dimreduction": SEMI_IMAGES,
    "clustering": SEMI_IMAGES,
    "label_regularized": ("latent_grid", "samples", "reconstructions", "latent_scatter", "confusion_matrix"),
}


def test_every_variant_is_covered() -> None:
    assert set(VARIANT_IMAGES) == set(VARIANTS)


@pytest.mark.parametrize("variant", sorted(VARIANT_IMAGES))
def test_each_variant_draws_what_it_can(variant: str, device: str, tiny_mnist_dir: Path, tmp_path: Path) -> None:
    train.train(
        cli.parse_args(train_argv(tiny_mnist_dir, tmp_path, variant, "none", "--max-epochs", "1", device=device))
    )
    assert png_files(tmp_path / f"{variant}-run") == expected_pngs(VARIANT_IMAGES[variant], epochs=1)
