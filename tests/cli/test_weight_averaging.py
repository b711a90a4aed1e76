"""train.py's weight averaging flags as a user gives them: their defaults, what they refuse (one line, exit code 2,
before any data is read), on the command line or in a preset, what a run logs and reports of its averaging, a run
stopped after its first epoch and resumed with `--ckpt-path last` that ends with the average of the same run in one
piece, the checkpoints a resumption refuses, and evaluate.py scoring the average a run validated. What the average
is, batch by batch: tests/callback_checks/test_weight_averaging.py.

The runs call `train.main` in this process, on the tiny MNIST files, with the clustering model, batch normalization
in its encoder (buffers averaged too) and input dropout (training draws random numbers).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from pytorch_lightning.core.saving import load_hparams_from_yaml

import evaluate
import train
from aae_lightning.checkpoint_io import AVERAGING_KEY, load_trained, weights_held
from aae_lightning.cli import averaging_settings, check_averaging_flags, parse_args
from tests.helpers import TINY_FLAGS, assert_one_line_error, assert_same_tensors, load_checkpoint, run_main

EPOCHS = 3
CLUSTERING = ["--variant", "clustering", *TINY_FLAGS, "--encoder-batchnorm", "--input-dropout", "0.2"]
#: the averaging of each resumed run: swa over every batch (the run stops in the middle of its average), and ema
#: from epoch 2 (the run stops before its average begins, and resumes a checkpoint written without averaging)
AVERAGING = {
    "swa": ["--average-weights", "swa", "--average-from-epoch", "1"],
    "ema": ["--average-weights", "ema", "--average-from-epoch", "2", "--ema-decay", "0.9"],
}


# ----- the flags --------------------------------------------------------------------------------------------------
def test_averaging_is_off_unless_asked_for() -> None:
    args = parse_args(["--variant", "ae"])
    assert averaging_settings(args) == {"average_weights": "none", "average_from_epoch": None, "ema_decay": None}


def test_averaging_settings_fill_in_their_defaults() -> None:
    assert averaging_settings(parse_args(["--variant", "ae", "--average-weights", "swa"])) == {
        "average_weights": "swa",
        "average_from_epoch": 1,
        "ema_decay": None,
    }
    assert averaging_settings(parse_args(["--variant", "ae", "--average-weights", "ema"])) == {
        "average_weights": "ema",
        "average_from_epoch": 1,
        "ema_decay": 0.999,
    }
    given = ["--average-weights", "ema", "--average-from-epoch", "5", "--ema-decay", "0.99"]
    assert averaging_settings(parse_args(["--variant", "ae", *given])) == {
        "average_weights": "ema",
        "average_from_epoch": 5,
        "ema_decay": 0.99,
    }


#: name -> (flags, what the one line must say)
REFUSED: dict[str, tuple[list[str], list[str]]] = {
    "ema_decay_with_swa": (["--average-weights", "swa", "--ema-decay", "0.9"], ["--ema-decay", "ema only", "swa"]),
    "ema_decay_without_averaging": (["--ema-decay", "0.9"], ["--ema-decay", "ema only", "none"]),
    "from_epoch_without_averaging": (["--average-from-epoch", "2"], ["--average-from-epoch", "swa or ema"]),
    "from_epoch_after_the_last": (
        ["--average-weights", "swa", "--average-from-epoch", "4", "--max-epochs", "3"],
        ["--average-from-epoch 4", "--max-epochs 3"],
    ),
    "from_epoch_0": (["--average-weights", "swa", "--average-from-epoch", "0"], ["--average-from-epoch", "0"]),
    "decay_0": (["--average-weights", "ema", "--ema-decay", "0"], ["--ema-decay", "a float in (0, 1)"]),
    "decay_1": (["--average-weights", "ema", "--ema-decay", "1"], ["--ema-decay", "a float in (0, 1)"]),
    "decay_nan": (["--average-weights", "ema", "--ema-decay", "nan"], ["--ema-decay", "a float in (0, 1)"]),
    "decay_not_a_number": (["--average-weights", "ema", "--ema-decay", "high"], ["--ema-decay", "high"]),
    "unknown_kind": (["--average-weights", "mean"], ["--average-weights", "mean"]),
    "16_bit_weights": (
        ["--average-weights", "ema", "--precision", "bf16-true"],
        ["--average-weights ema", "--precision bf16-true"],
    ),
    "16_bit_float_weights": (
        ["--average-weights", "swa", "--precision", "16-true"],
        ["--average-weights swa", "--precision 16-true"],
    ),
}


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_meaningless_averaging_flags_are_one_line_and_exit_code_2(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """On a folder without MNIST: a combination that got past the check would end there, in another one-line
    error, instead of training."""
    flags, fragments = REFUSED[name]
    code, stderr = run_main([*CLUSTERING, *without_data(tmp_path), *flags], capsys)
    assert_one_line_error(code, stderr, fragments)
    assert not (tmp_path / "runs").exists()


def without_data(folder: Path) -> list[str]:
    return ["--data-dir", str(folder), "--no-download", "--output-dir", str(folder / "runs")]


def write_preset(folder: Path, values: dict[str, Any]) -> Path:
    path = folder / "preset.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


def test_a_presets_averaging_is_taken_as_the_flags_are(tmp_path: Path) -> None:
    preset = write_preset(tmp_path, {"average_weights": "ema", "average_from_epoch": 2, "ema_decay": 0.9})
    from_preset = parse_args(["--preset", str(preset), "--variant", "ae"])
    check_averaging_flags(from_preset)
    from_flags = parse_args(
        ["--variant", "ae", "--average-weights", "ema", "--average-from-epoch", "2", "--ema-decay", "0.9"]
    )
    assert averaging_settings(from_preset) == averaging_settings(from_flags)


# ----- resuming ---------------------------------------------------------------------------------------------------
def train_run(data_dir: Path, output: Path, name: str, *flags: str) -> None:
    argv = [
        *CLUSTERING,
        "--data-dir",
        str(data_dir),
        "--output-dir",
        str(output),
        "--run-name",
        name,
        "--results-json",
        str(output / f"{name}.json"),
        *flags,
    ]
    assert train.main(argv) == 0, name


@pytest.fixture(scope="module")
def runs(tiny_mnist_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """For each averaging: the run in one piece (`whole-KIND`, logging to CSV), and the same run stopped after its
    first epoch and resumed with `--ckpt-path last` (`split-KIND`); the checkpoints they stopped at are kept as
    `KIND-epoch1.ckpt`. The ema run's first piece trains without averaging. `lightning-epoch1.ckpt`: the swa one as
    Lightning's own `WeightAveraging` would have written it."""
    output = tmp_path_factory.mktemp("averaging")
    for kind, flags in AVERAGING.items():
        train_run(tiny_mnist_dir, output, f"whole-{kind}", "--max-epochs", str(EPOCHS), *flags, "--logger", "csv")
        first_piece = flags if kind == "swa" else []
        train_run(tiny_mnist_dir, output, f"split-{kind}", "--max-epochs", "1", *first_piece)
        shutil.copy(output / f"split-{kind}" / "checkpoints" / "last.ckpt", output / f"{kind}-epoch1.ckpt")
        train_run(tiny_mnist_dir, output, f"split-{kind}", "--max-epochs", str(EPOCHS), *flags, "--ckpt-path", "last")
    # as Lightning's own WeightAveraging writes it, in a Python user's Trainer: the average, without its settings
    lightnings = load_checkpoint(output / "swa-epoch1.ckpt")
    del lightnings[AVERAGING_KEY]
    torch.save(lightnings, output / "lightning-epoch1.ckpt")
    return output


@pytest.mark.parametrize("kind", sorted(AVERAGING))
def test_a_run_logs_its_averaging_and_reports_which_weights_its_best_checkpoint_holds(runs: Path, kind: str) -> None:
    """The whole runs log to CSV: hparams.yaml holds what every logger is given."""
    logged = load_hparams_from_yaml(runs / f"whole-{kind}" / "hparams.yaml", use_omegaconf=False)
    asked = averaging_settings(parse_args([*CLUSTERING, *AVERAGING[kind]]))
    assert {name: logged[name] for name in asked} == asked
    results = json.loads((runs / f"whole-{kind}.json").read_text())
    assert results["weights"] == weights_held(load_checkpoint(results["best_checkpoint"]))
    if kind == "swa":  # averaged from the first epoch: every checkpoint holds the average
        assert results["weights"].startswith("swa average of ")


def test_the_first_pieces_stopped_in_and_before_the_average(runs: Path) -> None:
    swa, ema = load_checkpoint(runs / "swa-epoch1.ckpt"), load_checkpoint(runs / "ema-epoch1.ckpt")
    assert swa["epoch"] == ema["epoch"] == 0
    assert int(swa["averaging_state"]["n_averaged"]) == 10  # the 10 batches of the first epoch
    assert "averaging_state" not in ema and AVERAGING_KEY not in ema


@pytest.mark.parametrize("kind", sorted(AVERAGING))
def test_a_resumed_run_ends_with_the_average_of_the_run_in_one_piece(runs: Path, kind: str) -> None:
    whole = load_checkpoint(runs / f"whole-{kind}" / "checkpoints" / "last.ckpt")
    resumed = load_checkpoint(runs / f"split-{kind}" / "checkpoints" / "last.ckpt")
    assert (resumed["epoch"], resumed["global_step"]) == (whole["epoch"], whole["global_step"]) == (EPOCHS - 1, 90)
    for key in ("state_dict", "current_model_state", "averaging_state", "optimizer_states", "aae_rng"):
        assert_same_tensors(whole[key], resumed[key], key)
    assert whole[AVERAGING_KEY] == resumed[AVERAGING_KEY]
    assert whole["callbacks"]["AverageWeights"] == resumed["callbacks"]["AverageWeights"]
    whole_results = json.loads((runs / f"whole-{kind}.json").read_text())
    resumed_results = json.loads((runs / f"split-{kind}.json").read_text())
    assert resumed_results["val"] == whole_results["val"]
    assert Path(resumed_results["best_checkpoint"]).name == Path(whole_results["best_checkpoint"]).name


def resume_refusals(runs: Path) -> dict[str, tuple[list[str], list[str]]]:
    """name -> (flags, what the one line must say): the checkpoints the first pieces stopped at, and the one of
    Lightning's own callback, resumed under averaging that cannot continue them."""
    swa, plain, lightnings = (str(runs / f"{name}-epoch1.ckpt") for name in ("swa", "ema", "lightning"))
    return {
        # its weights are the average: trained on from them, the run would not be the one it was
        "averaged_checkpoint_without_averaging": (
            ["--ckpt-path", swa],
            ["--average-weights swa --average-from-epoch 1", "(now --average-weights none)", "flags it was trained"],
        ),
        "averaged_checkpoint_with_another_average": (
            ["--ckpt-path", swa, "--average-weights", "ema", "--average-from-epoch", "1"],
            ["--average-weights swa", "(now --average-weights ema --average-from-epoch 1 --ema-decay 0.999)"],
        ),
        # the average would lack the batches of the epoch the checkpoint trained
        "average_that_should_have_begun": (
            ["--ckpt-path", plain, "--average-weights", "swa", "--average-from-epoch", "1"],
            [plain, "no averaged weights of its 1 epoch(s)", "--average-from-epoch 2 on (now 1)"],
        ),
        # which averaging made it is not recorded: none can be known to continue it
        "lightnings_own_average": (
            ["--ckpt-path", lightnings, "--average-weights", "swa", "--average-from-epoch", "1"],
            [lightnings, "Lightning's WeightAveraging without its settings", "the Trainer callback that wrote it"],
        ),
    }


@pytest.mark.parametrize(
    "name",
    [
        "averaged_checkpoint_without_averaging",
        "averaged_checkpoint_with_another_average",
        "average_that_should_have_begun",
        "lightnings_own_average",
    ],
)
def test_a_checkpoint_resumed_under_other_averaging_is_one_line_and_exit_code_2(
    runs: Path, tiny_mnist_dir: Path, tmp_path: Path, name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    flags, fragments = resume_refusals(runs)[name]
    places = ["--data-dir", str(tiny_mnist_dir), "--output-dir", str(tmp_path), "--run-name", "refused"]
    code, stderr = run_main([*CLUSTERING, *places, "--max-epochs", str(EPOCHS), *flags], capsys)
    assert_one_line_error(code, stderr, fragments)
    assert not (tmp_path / "refused").exists()


def test_evaluate_scores_the_average_the_run_validated(runs: Path, tmp_path: Path) -> None:
    """Against the score the best checkpoint was chosen by, which its epoch's validation logged while training
    (ModelCheckpoint's state in the checkpoint): not a second scoring of the checkpoint after training."""
    results = json.loads((runs / "whole-swa.json").read_text())
    best = Path(results["best_checkpoint"])
    checkpoint = load_checkpoint(best)
    out = tmp_path / "eval.json"
    assert evaluate.main(["--ckpt", str(best), "--no-parzen", "--json", str(out)]) == 0
    evaluated = json.loads(out.read_text())
    assert evaluated["weights"] == f"swa average of {10 * (checkpoint['epoch'] + 1)} batches from epoch 1"
    (validated,) = [
        float(state["best_model_score"])
        for state in checkpoint["callbacks"].values()
        if state.get("monitor") == "val/recon_loss" and state.get("best_model_path") == str(best)
    ]
    assert evaluated["val/recon_loss"] == pytest.approx(validated, rel=1e-5)
    assert results["val"]["val/recon_loss"] == pytest.approx(validated, rel=1e-5)
    # the trained weights beside the average in the same checkpoint score otherwise, and --weights trained scores them
    model, datamodule = load_trained(best)
    model.load_state_dict(checkpoint["current_model_state"])
    trained = evaluate.stage_metrics(model, "val", *datamodule.validation_data())["val/recon_loss"]
    assert trained != pytest.approx(validated, rel=1e-3)
    assert evaluate.main(["--ckpt", str(best), "--no-parzen", "--weights", "trained", "--json", str(out)]) == 0
    evaluated_trained = json.loads(out.read_text())
    assert evaluated_trained["weights"] == "trained"
    assert evaluated_trained["val/recon_loss"] == pytest.approx(trained, rel=1e-6)
    # the comparison a user makes to choose between the two, without the test set
    assert evaluate.main(["--ckpt", str(best), "--weights", "trained", "--validation-only", "--json", str(out)]) == 0
    validation_only = json.loads(out.read_text())
    assert validation_only["val/recon_loss"] == evaluated_trained["val/recon_loss"]
    assert not [key for key in validation_only if key.startswith(("test", "parzen"))], validation_only
