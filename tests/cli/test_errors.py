"""Every way train.py refuses what it is given, as a user sees it: one line on stderr and exit code 2, never a
traceback, before a run starts; and the one bad flag that only shows during training, a learning rate that makes a
loss NaN: one line naming the phase, epoch and batch, exit code 3, and the last checkpoint from before.

Starting Python with torch and Lightning costs seconds, so the cases of every section share one child process that
calls `train.main` once per case (`tests.helpers.run_cases`) with stderr (the file descriptor, so Lightning's log
lines count too) sent to a file, started at module setup; a few go through `python train.py` itself. The values
just outside each hyperparameter's declaration call `train.main` in this process (a few milliseconds each).
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import train
from aae_lightning import cli
from aae_lightning.errors import flag, flag_words, shown
from tests.helpers import (
    REPO_ROOT,
    TINY,
    Declaration,
    Launched,
    assert_one_line_error,
    case_results,
    declaration_cases,
    run_main,
    start,
    start_cases,
    train_py,
    write_idx,
)

# ----- the command line and the data ------------------------------------------------------------------------------
# name -> (argv, what the one-line message must say). Placeholders: {tiny} the tiny MNIST, {empty} a folder
# without it, {truncated} the tiny MNIST with a truncated image file, {runs} a scratch output folder.
ON_TINY = ["--data-dir", "{tiny}", *TINY, "--logger", "none", "--output-dir", "{runs}"]
ERROR_CASES: dict[str, tuple[list[str], list[str]]] = {
    "missing_variant": (["--max-epochs", "1"], ["--variant"]),
    "unknown_variant": (["--variant", "vae"], ["--variant", "vae"]),
    "no_cuda": (["--variant", "ae", "--gpus", "1"], ["--gpus 1", "CUDA", "--gpus 0"]),
    "labels_not_multiple_of_10": (["--variant", "semi", "--labels", "15", *ON_TINY], ["--labels", "15"]),
    "labels_beyond_a_digit": (["--variant", "semi", "--labels", "100000", *ON_TINY], ["--labels 100000", "digit"]),
    "val_size_too_large": (["--variant", "ae", *ON_TINY, "--val-size", "70000"], ["--val-size", "70000"]),
    "zero_epochs": (["--variant", "ae", "--max-epochs", "0"], ["--max-epochs", "0"]),
    "zero_batch": (["--variant", "ae", "--batch-size", "0"], ["--batch-size", "0"]),
    "empty_data_dir": (
        ["--variant", "ae", "--data-dir", "{empty}", "--no-download", "--output-dir", "{runs}"],
        ["{empty}/MNIST/raw", "train-images-idx3-ubyte", "t10k-labels-idx1-ubyte"],
    ),
    "truncated_file": (
        ["--variant", "ae", *ON_TINY, "--data-dir", "{truncated}"],
        ["truncated or corrupt", "{truncated}"],
    ),
    "flag_of_another_variant": (["--variant", "ae", "--prior", "mixture"], ["--prior", "--variant ae"]),
    "unknown_preset": (["--preset", "no-such-preset"], ["no-such-preset"]),
}


def fill(texts: list[str], places: dict[str, str]) -> list[str]:
    """`texts` with their placeholders ({tiny}, {empty}, ...) filled in."""
    return [text.format(**places) for text in texts]


@pytest.fixture(scope="module")
def refusals(tiny_mnist_dir: Path, semi_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """Every case of the three sections below through `train.main` in one child process (`tests.helpers.run_cases`),
    and the few that go through `python train.py` itself, all started at once: they spend most of their time
    importing. Each section's cases have a folder of their own. Gives each section's results by case name."""
    cli_work = tmp_path_factory.mktemp("cli")
    places = {
        "tiny": str(tiny_mnist_dir),
        "empty": str(cli_work / "empty"),
        "truncated": str(cli_work / "truncated"),
        "runs": str(cli_work / "runs"),
    }
    (cli_work / "empty").mkdir()
    shutil.copytree(tiny_mnist_dir / "MNIST", cli_work / "truncated" / "MNIST")
    images = cli_work / "truncated" / "MNIST" / "raw" / "train-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:1000])
    bad_input_work = tmp_path_factory.mktemp("bad_input")
    bad_input = error_cases(tiny_mnist_dir, bad_input_work, semi_checkpoint)
    examples_work = tmp_path_factory.mktemp("hparam_examples")
    examples = examples_argv(tiny_mnist_dir, examples_work)
    sections = {
        "cli": {name: fill(argv, places) for name, (argv, _) in ERROR_CASES.items()},
        "bad_input": {name: argv for name, (argv, _) in bad_input.items()}
        | {"nan": nan_run(tiny_mnist_dir, bad_input_work)},
        "examples": examples,
    }
    work = tmp_path_factory.mktemp("cases")
    everything = {f"{section}/{name}": argv for section, cases in sections.items() for name, argv in cases.items()}
    run = Launched(work, {"cases": start_cases(everything, work)})
    # the acceptance check, through the real entry point
    run.processes["no_cuda"] = start(train_py("--variant", "ae", "--gpus", "1"), cwd=REPO_ROOT)
    run.processes |= {name: start(train_py(*examples[name]), cwd=REPO_ROOT) for name in THROUGH_THE_SCRIPT}
    try:
        scripts = {name: run.finish(name) for name in run.processes}
        code, _, stderr = scripts.pop("cases")
        assert code == 0, stderr
        results = case_results(work)
        yield {
            "places": places,
            "results": {
                section: {name: results[f"{section}/{name}"] for name in cases} for section, cases in sections.items()
            },
            "scripts": scripts,
            "bad_input": {"work": bad_input_work, "cases": bad_input},
            "examples_work": examples_work,
        }
    finally:
        run.stop()


@pytest.mark.parametrize("name", sorted(ERROR_CASES))
def test_user_error_is_one_line_and_exit_code_2(refusals: dict, name: str) -> None:
    result = refusals["results"]["cli"][name]
    fragments = fill(ERROR_CASES[name][1], refusals["places"])
    assert_one_line_error(result["code"], result["stderr"], fragments)


def test_gpus_without_cuda_through_the_script(refusals: dict) -> None:
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is visible")
    code, stdout, stderr = refusals["scripts"]["no_cuda"]
    assert_one_line_error(code, stderr, ["--gpus 1", "--gpus 0"])
    assert stdout == ""


# ----- bad files and checkpoints ----------------------------------------------------------------------------------
# Beyond the cases above: priors, label counts and batch sizes they do not try, MNIST files that are complete but
# corrupt, and every kind of bad `--ckpt-path` (another variant's checkpoint, other settings, random bytes, text, a
# truncated checkpoint, ...); and the run whose loss turns NaN.
SMALL = ["--hidden-sizes", "16", "--gpus", "0", "--image-every-n-epochs", "0", "--logger", "none"]
#: for the variants with discriminators
SMALL_DISC = ["--disc-hidden-sizes", "8"]


def corrupt_copies(tiny: Path, work: Path) -> dict[str, Path]:
    """Copies of the tiny MNIST, each broken in one way that keeps every file complete."""
    made = {}
    for name in ("partial", "bad_magic", "label_12", "counts_differ"):
        made[name] = work / name
        shutil.copytree(tiny / "MNIST", made[name] / "MNIST")
    raw = {name: folder / "MNIST" / "raw" for name, folder in made.items()}
    for stem in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (raw["partial"] / stem).unlink()
    images = raw["bad_magic"] / "train-images-idx3-ubyte"
    images.write_bytes(b"\xde\xad\xbe\xef" + images.read_bytes()[4:])  # same length, not an IDX header
    labels = np.frombuffer((raw["label_12"] / "train-labels-idx1-ubyte").read_bytes()[8:], dtype=np.uint8).copy()
    labels[5] = 12
    write_idx(raw["label_12"] / "train-labels-idx1-ubyte", labels)
    shutil.copy(raw["counts_differ"] / "t10k-labels-idx1-ubyte", raw["counts_differ"] / "train-labels-idx1-ubyte")
    return made


def bad_checkpoints(semi: Path, work: Path) -> dict[str, Path]:
    """Files given as --ckpt-path that are not checkpoints train.py can resume."""
    folder = work / "bad_checkpoints"
    folder.mkdir()
    files = {name: folder / f"{name}.ckpt" for name in ("random", "text", "empty", "truncated", "tensor", "foreign")}
    files["random"].write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    files["text"].write_text("epoch: 3\nthis is a text file, not a checkpoint\n")
    files["empty"].write_bytes(b"")
    files["truncated"].write_bytes(semi.read_bytes()[: semi.stat().st_size // 2])
    torch.save(torch.zeros(3), files["tensor"])
    torch.save({"state_dict": {}, "epoch": 0}, files["foreign"])  # a dict, but not train.py's
    return files


def error_cases(tiny: Path, work: Path, semi: Path) -> dict[str, tuple[list[str], list[str]]]:
    """name -> (argv, fragments the one-line message must contain)."""
    data = corrupt_copies(tiny, work)
    files = bad_checkpoints(semi, work)
    on_tiny = [
        "--data-dir",
        str(tiny),
        "--val-size",
        "100",
        "--batch-size",
        "50",
        "--output-dir",
        str(work / "runs"),
        *SMALL,
    ]
    semi_on_tiny = ["--variant", "semi", "--labels", "100", *on_tiny, *SMALL_DISC]
    missing = work / "no-such.ckpt"

    def ckpt(path: Path) -> list[str]:
        return [*semi_on_tiny, "--ckpt-path", str(path)]

    def data_dir(name: str) -> list[str]:
        return ["--variant", "ae", *on_tiny, "--data-dir", str(data[name]), "--no-download"]

    return {
        "unknown_prior": (
            ["--variant", "aae", "--prior", "banana", *on_tiny, *SMALL_DISC],
            ["--prior", "banana", "gaussian"],
        ),
        "2d_prior_on_3d_latent": (
            ["--variant", "aae", "--prior", "mixture", "--latent-dim", "3", *on_tiny, *SMALL_DISC],
            ["--prior mixture", "2-D", "--latent-dim is 3"],
        ),
        "negative_epochs": (["--variant", "ae", "--max-epochs", "-3"], ["--max-epochs", "-3"]),
        "zero_labeled_batch": (["--variant", "semi", "--labeled-batch-size", "0"], ["--labeled-batch-size", "0"]),
        "labels_not_a_number": (["--variant", "semi", "--labels", "many"], ["--labels", "many"]),
        "negative_labels": (
            ["--variant", "semi", *on_tiny, *SMALL_DISC, "--labels", "-10"],
            ["--labels", "-10", "multiple of 10"],
        ),
        "batch_larger_than_the_data": (
            ["--variant", "ae", *on_tiny, "--batch-size", "1000"],
            ["--batch-size 1000", "500 training images"],
        ),
        "test_files_missing": (
            data_dir("partial"),
            ["t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte", str(data["partial"])],
        ),
        "not_an_idx_header": (data_dir("bad_magic"), ["truncated or corrupt", str(data["bad_magic"])]),
        "label_outside_0_to_9": (data_dir("label_12"), ["labels", "outside 0-9"]),
        "image_and_label_counts_differ": (data_dir("counts_differ"), ["corrupt", "(600, 28, 28)", "(100,)"]),
        "checkpoint_of_another_variant": (
            ["--variant", "aae", *on_tiny, *SMALL_DISC, "--ckpt-path", str(semi)],
            ["--variant semi, not aae", str(semi)],
        ),
        "checkpoint_with_other_settings": (
            [*ckpt(semi), "--hidden-sizes", "32"],
            ["--hidden-sizes 16 (now 32)", "flags it was trained with"],
        ),
        "checkpoint_of_another_split": ([*ckpt(semi), "--labels", "200"], ["--labels 100 (now 200)"]),
        "random_bytes": (ckpt(files["random"]), ["not a readable checkpoint", str(files["random"])]),
        "text_file": (ckpt(files["text"]), ["not a readable checkpoint", str(files["text"])]),
        "empty_file": (ckpt(files["empty"]), ["not a readable checkpoint", str(files["empty"])]),
        "truncated_checkpoint": (ckpt(files["truncated"]), ["not a readable checkpoint", str(files["truncated"])]),
        "a_saved_tensor": (ckpt(files["tensor"]), ["not a checkpoint of train.py", "Tensor"]),
        "another_programs_checkpoint": (ckpt(files["foreign"]), ["not a checkpoint of train.py", "aae_variant"]),
        "missing_checkpoint": (ckpt(missing), [str(missing), "does not exist"]),
        "folder_as_checkpoint": (ckpt(work), [str(work), "folder"]),
        "last_without_run_name": (
            ["--variant", "ae", *on_tiny, "--ckpt-path", "last"],
            ["--ckpt-path last", "--run-name"],
        ),
        "last_of_a_run_that_never_was": (
            ["--variant", "ae", *on_tiny, "--ckpt-path", "last", "--run-name", "never"],
            [str(work / "runs" / "never" / "checkpoints" / "last.ckpt"), "does not exist"],
        ),
    }


def nan_run(tiny: Path, work: Path) -> list[str]:
    """A run whose learning rate is multiplied by 1e30 after its first epoch: epoch 0 trains and is checkpointed,
    epoch 1 produces a non-finite loss at once."""
    return [
        "--variant",
        "aae",
        "--data-dir",
        str(tiny),
        "--val-size",
        "100",
        "--batch-size",
        "50",
        *SMALL,
        *SMALL_DISC,
        "--max-epochs",
        "3",
        "--lr-milestones",
        "1",
        "--lr-gamma",
        "1e30",
        "--output-dir",
        str(work / "runs"),
        "--run-name",
        "nan",
    ]


@pytest.fixture(scope="module")
def semi_checkpoint(tiny_mnist_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real checkpoint of the semi-supervised variant: one epoch through `train.main`, in this process."""
    output = tmp_path_factory.mktemp("semi")
    assert (
        train.main(
            [
                "--variant",
                "semi",
                "--labels",
                "100",
                "--data-dir",
                str(tiny_mnist_dir),
                "--val-size",
                "100",
                "--batch-size",
                "50",
                *SMALL,
                *SMALL_DISC,
                "--max-epochs",
                "1",
                "--output-dir",
                str(output),
                "--run-name",
                "semi",
            ]
        )
        == 0
    )
    return output / "semi" / "checkpoints" / "last.ckpt"


@pytest.fixture(scope="module")
def cases(refusals: dict) -> dict:
    return {**refusals["bad_input"], "results": refusals["results"]["bad_input"]}


CASE_NAMES = [
    "unknown_prior",
    "2d_prior_on_3d_latent",
    "negative_epochs",
    "zero_labeled_batch",
    "labels_not_a_number",
    "negative_labels",
    "batch_larger_than_the_data",
    "test_files_missing",
    "not_an_idx_header",
    "label_outside_0_to_9",
    "image_and_label_counts_differ",
    "checkpoint_of_another_variant",
    "checkpoint_with_other_settings",
    "checkpoint_of_another_split",
    "random_bytes",
    "text_file",
    "empty_file",
    "truncated_checkpoint",
    "a_saved_tensor",
    "another_programs_checkpoint",
    "missing_checkpoint",
    "folder_as_checkpoint",
    "last_without_run_name",
    "last_of_a_run_that_never_was",
]


@pytest.mark.parametrize("name", CASE_NAMES)
def test_bad_input_is_one_line_and_exit_code_2(cases: dict, name: str) -> None:
    _, fragments = cases["cases"][name]
    result = cases["results"][name]
    assert_one_line_error(result["code"], result["stderr"], fragments)


def test_every_case_is_checked(cases: dict) -> None:
    assert sorted(cases["cases"]) == sorted(CASE_NAMES)


def test_no_bad_checkpoint_starts_a_run(cases: dict) -> None:
    """Refused before anything is written: no run folder appears for a checkpoint that cannot be resumed."""
    runs = cases["work"] / "runs"
    assert not runs.exists() or sorted(p.name for p in runs.iterdir()) == ["nan"]


def test_a_nan_loss_ends_the_run_with_one_line_and_keeps_the_last_good_checkpoint(cases: dict) -> None:
    result = cases["results"]["nan"]
    assert "Traceback" not in result["stderr"], result["stderr"]
    assert result["code"] == cli.EXIT_DIVERGED, result["stderr"]
    last_line = result["stderr"].strip().splitlines()[-1]
    assert re.fullmatch(
        r"error: (reconstruction|regularization|generator) loss is not finite at epoch 1, batch \d+; its optimizer "
        r"step and any later one with a non-finite loss were skipped, training stopped and the last checkpoint is "
        r"untouched",
        last_line,
    ), last_line
    checkpoints = cases["work"] / "runs" / "nan" / "checkpoints"
    last = torch.load(checkpoints / "last.ckpt", map_location="cpu", weights_only=False)
    assert (last["epoch"], last["global_step"]) == (0, 10 * 3)  # the end of epoch 0: 10 batches, 3 phases
    assert all(torch.isfinite(value).all() for value in last["state_dict"].values())
    best = torch.load(checkpoints / "best-epoch000.ckpt", map_location="cpu", weights_only=False)
    assert all(torch.equal(best["state_dict"][name], value) for name, value in last["state_dict"].items())
    assert not list(checkpoints.glob(".*.tmp"))


# ----- hyperparameters outside their declarations, generated from them -------------------------------------------
#: (declaration, value) for every distinct declaration (tests.helpers.distinct_declarations) and each value just
#: outside it; that these are refused from Python as well: tests/unit/test_hparams.py
OUTSIDE = declaration_cases(lambda accepts: accepts.outside())


@pytest.fixture(scope="module")
def no_data(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """Flags pointing train.py at a folder without MNIST: a value that got past the check would end there, in a
    one-line error that names no hyperparameter, instead of training."""
    empty = tmp_path_factory.mktemp("no_mnist")
    return [
        "--data-dir",
        str(empty),
        "--no-download",
        "--gpus",
        "0",
        "--logger",
        "none",
        "--output-dir",
        str(empty / "runs"),
    ]


@pytest.mark.parametrize(("declared", "value"), OUTSIDE)
def test_a_flag_just_outside_the_declaration_is_one_line_and_exit_code_2(
    declared: Declaration, value: Any, no_data: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    code, stderr = run_main(["--variant", declared.variant, *flag_words(declared.name, value), *no_data], capsys)
    assert_one_line_error(
        code, stderr, [f"{flag(declared.name)} {shown(value)} is not allowed", declared.accepts.describe()]
    )


# ----- Lightning's arguments ----------------------------------------------------------------------------------------
LIGHTNING_CASES = {
    "unknown_accelerator": (["--accelerator", "bogus"], ["--accelerator bogus is refused by Lightning", "cpu"]),
    "unknown_strategy": (["--accelerator", "cpu", "--strategy", "bogus"], ["--strategy bogus is refused by Lightning"]),
    "unknown_precision": (
        ["--accelerator", "cpu", "--precision", "bogus"],
        ["--precision bogus is refused by Lightning", "bf16-mixed"],
    ),
    "strategy_for_another_accelerator": (
        ["--accelerator", "cpu", "--strategy", "fsdp"],
        ["--strategy fsdp is refused by Lightning", "GPU"],
    ),
}


@pytest.mark.parametrize("name", sorted(LIGHTNING_CASES))
def test_what_lightning_refuses_is_one_line_naming_the_flag(
    name: str, no_data: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    argv, fragments = LIGHTNING_CASES[name]
    code, stderr = run_main(["--variant", "ae", *no_data, *argv], capsys)
    assert_one_line_error(code, stderr, fragments)


# ----- the issue's examples, through a child process and the real script --------------------------------------------
#: name -> (variant, flags, what the one line must say)
ISSUE_EXAMPLES: dict[str, tuple[str, list[str], list[str]]] = {
    "one_cluster": ("clustering", ["--num-clusters", "1"], ["--num-clusters 1", "an int >= 2"]),
    "zero_prior_std": ("aae", ["--prior-std", "0"], ["--prior-std 0.0", "> 0"]),
    "negative_prior_std": ("supervised", ["--prior-std", "-3"], ["--prior-std -3.0", "> 0"]),
    "negative_input_noise": ("ae", ["--input-noise", "-1"], ["--input-noise -1.0", ">= 0"]),
    "negative_milestone": ("ae", ["--lr-milestones", "-5"], ["--lr-milestones -5", "ints >= 1"]),
    "negative_lr_gamma": ("ae", ["--lr-gamma", "-1"], ["--lr-gamma -1.0", "> 0"]),
    "zero_width_discriminator": ("aae", ["--disc-hidden-sizes", "0"], ["--disc-hidden-sizes 0", "ints >= 1"]),
    "zero_latent_dim": ("aae", ["--latent-dim", "0"], ["--latent-dim 0", "an int >= 1"]),
    "dropout_above_1": ("semi", ["--dropout", "1.5"], ["--dropout 1.5", "[0, 1)"]),
    "momentum_2": ("ae", ["--momentum", "2"], ["--momentum 2.0", "[0, 1)"]),
    "negative_learning_rate": ("ae", ["--reconstruction-lr", "-1"], ["--reconstruction-lr -1.0", ">= 0"]),
    "negative_latent_dim": ("semi", ["--latent-dim", "-2"], ["--latent-dim -2", "an int >= 1"]),
    "hidden_sizes_without_values": ("ae", ["--hidden-sizes"], ["--hidden-sizes (none)", "one or more ints >= 1"]),
    "unknown_precision": ("ae", ["--precision", "bogus"], ["--precision bogus", "Lightning"]),
    "unknown_strategy": ("ae", ["--strategy", "bogus"], ["--strategy bogus", "Lightning"]),
    "unknown_accelerator": ("ae", ["--accelerator", "bogus"], ["--accelerator bogus", "Lightning"]),
}
#: the examples also run as `python train.py ...`
THROUGH_THE_SCRIPT = ("dropout_above_1", "unknown_precision")


def examples_argv(tiny: Path, work: Path) -> dict[str, list[str]]:
    """Each example on data a run could train on: only the check stands between it and training."""
    common = [
        "--data-dir",
        str(tiny),
        *TINY,
        "--max-epochs",
        "1",
        "--gpus",
        "0",
        "--logger",
        "none",
        "--output-dir",
        str(work / "runs"),
    ]
    return {name: ["--variant", variant, *flags, *common] for name, (variant, flags, _) in ISSUE_EXAMPLES.items()}


@pytest.mark.parametrize("name", sorted(ISSUE_EXAMPLES))
def test_the_issues_example_is_one_line_and_exit_code_2(refusals: dict, name: str) -> None:
    result = refusals["results"]["examples"][name]
    assert_one_line_error(result["code"], result["stderr"], ISSUE_EXAMPLES[name][2])


@pytest.mark.parametrize("name", THROUGH_THE_SCRIPT)
def test_the_issues_example_through_the_script(refusals: dict, name: str) -> None:
    code, stdout, stderr = refusals["scripts"][name]
    assert_one_line_error(code, stderr, ISSUE_EXAMPLES[name][2])
    assert stdout == ""


def test_no_example_starts_a_run(refusals: dict) -> None:
    assert not (refusals["examples_work"] / "runs").exists()
