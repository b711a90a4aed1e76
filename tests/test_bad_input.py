"""Bad flags and files through train.py, beyond those tests/test_cli.py already checks: each ends with one line on
stderr and exit code 2, never a traceback. Covered here: priors, label counts and batch sizes test_cli does not
try, MNIST files that are complete but corrupt, and every kind of bad `--ckpt-path` (another variant's
checkpoint, other settings, random bytes, text, a truncated checkpoint, ...). And the one bad flag that only shows
during training: a learning rate that makes a loss NaN stops the run with one line naming the phase, epoch and
batch, exit code 3, and the last checkpoint from before.

As in test_cli.py, the cases share one child process that calls `train.main` once per case (`run_cases`).
"""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_idx
from test_cli import assert_one_line_error, start

import train

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
def cases(tiny_mnist_dir: Path, semi_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    work = tmp_path_factory.mktemp("bad_input")
    cases = error_cases(tiny_mnist_dir, work, semi_checkpoint)
    argv = {name: argv for name, (argv, _) in cases.items()} | {"nan": nan_run(tiny_mnist_dir, work)}
    (work / "cases.json").write_text(json.dumps(argv))
    child = start(
        [
            sys.executable,
            "-c",
            f"import test_cli; test_cli.run_cases({str(work / 'cases.json')!r}, {str(work / 'results.json')!r})",
        ],
        cwd=work,
    )
    _, stderr = child.communicate(timeout=600)
    assert child.returncode == 0, stderr
    return {"work": work, "cases": cases, "results": json.loads((work / "results.json").read_text())}


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
    assert result["code"] == train.EXIT_DIVERGED, result["stderr"]
    last_line = result["stderr"].strip().splitlines()[-1]
    assert re.fullmatch(
        r"error: (reconstruction|regularization|generator) loss is (nan|inf|-inf) at epoch 1, "
        r"batch \d+; training stopped and the last checkpoint is untouched",
        last_line,
    ), last_line
    checkpoints = cases["work"] / "runs" / "nan" / "checkpoints"
    last = torch.load(checkpoints / "last.ckpt", map_location="cpu", weights_only=False)
    assert (last["epoch"], last["global_step"]) == (0, 10 * 3)  # the end of epoch 0: 10 batches, 3 phases
    assert all(torch.isfinite(value).all() for value in last["state_dict"].values())
    best = torch.load(checkpoints / "best-epoch000.ckpt", map_location="cpu", weights_only=False)
    assert all(torch.equal(best["state_dict"][name], value) for name, value in last["state_dict"].items())
    assert not list(checkpoints.glob(".*.tmp"))
