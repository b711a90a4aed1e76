"""train.py from the outside: every user error ends with exit code 2 and one line on stderr, and short runs on
tiny data write a checkpoint and the results JSON.

Starting Python with torch and Lightning costs seconds, so the error cases share one process that calls
`train.main` once per case with stderr (the file descriptor, so Lightning's log lines count too) sent to a
file; a few runs go through `python train.py` itself. All of them start together, at module setup.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
TINY = ["--val-size", "100", "--batch-size", "50"]


def run_cases(cases_file: str, results_file: str) -> None:
    """In a child process: `train.main(argv)` for each case, recording its exit code and everything written to
    file descriptor 2 (an escaping exception is printed there as a traceback, as Python would)."""
    sys.path.insert(0, str(REPO_ROOT))
    import train

    results = {}
    for name, argv in json.loads(Path(cases_file).read_text()).items():
        os.environ.pop("AAE_RUN_NAME", None)
        with tempfile.TemporaryFile("w+") as captured:
            sys.stderr.flush()
            saved = os.dup(2)
            os.dup2(captured.fileno(), 2)
            try:
                code = train.main(argv)
            except SystemExit as exit_:
                code = exit_.code
            except Exception:  # anything else escaping main is the traceback a user would see
                traceback.print_exc()
                code = 1
            finally:
                sys.stderr.flush()
                os.dup2(saved, 2)
                os.close(saved)
            captured.seek(0)
            results[name] = {"code": code, "stderr": captured.read()}
    Path(results_file).write_text(json.dumps(results))


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


@dataclass
class Launched:
    """The processes started at module setup, and where they write."""

    work: Path
    places: dict[str, str]
    processes: dict[str, subprocess.Popen]

    def finish(self, name: str) -> tuple[int, str, str]:
        stdout, stderr = self.processes[name].communicate(timeout=900)
        return self.processes[name].returncode, stdout, stderr

    def fill(self, texts: list[str]) -> list[str]:
        return [text.format(**self.places) for text in texts]


def start(argv: list[str], cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "PYTHONPATH": str(REPO_ROOT / "tests")}
    env.pop("AAE_RUN_NAME", None)
    return subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def train_py(*args: str) -> list[str]:
    return [sys.executable, str(REPO_ROOT / "train.py"), *args]


@pytest.fixture(scope="module")
def launched(tiny_mnist_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Launched]:
    """Starts every process at once: they spend most of their time importing."""
    work = tmp_path_factory.mktemp("cli")
    places = {
        "tiny": str(tiny_mnist_dir),
        "empty": str(work / "empty"),
        "truncated": str(work / "truncated"),
        "runs": str(work / "runs"),
    }
    (work / "empty").mkdir()
    shutil.copytree(tiny_mnist_dir / "MNIST", work / "truncated" / "MNIST")
    images = work / "truncated" / "MNIST" / "raw" / "train-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:1000])
    run = Launched(work, places, {})
    (work / "cases.json").write_text(json.dumps({name: run.fill(argv) for name, (argv, _) in ERROR_CASES.items()}))
    on_tiny = ["--data-dir", str(tiny_mnist_dir), *TINY, "--output-dir", str(work / "runs")]
    run.processes = {
        "errors": start(
            [
                sys.executable,
                "-c",
                f"import test_cli; test_cli.run_cases({str(work / 'cases.json')!r}, {str(work / 'errors.json')!r})",
            ],
            cwd=work,
        ),
        # the acceptance check, through the real entry point
        "no_cuda": start(train_py("--variant", "ae", "--gpus", "1"), cwd=REPO_ROOT),
        "end_to_end": start(
            train_py(
                "--variant",
                "ae",
                *on_tiny,
                "--max-epochs",
                "1",
                "--logger",
                "csv",
                "--test",
                "--results-json",
                str(work / "r.json"),
            ),
            cwd=REPO_ROOT,
        ),
        "fast_dev_run": start(
            train_py(
                "--variant",
                "semi",
                "--labels",
                "100",
                *on_tiny,
                "--fast-dev-run",
                "--logger",
                "none",
                "--test",
                "--results-json",
                str(work / "fast.json"),
            ),
            cwd=REPO_ROOT,
        ),
    }
    yield run
    for process in run.processes.values():  # a failed test may leave one running
        if process.poll() is None:
            process.kill()
            process.communicate()


@pytest.fixture(scope="module")
def error_results(launched: Launched) -> dict[str, dict[str, object]]:
    code, _, stderr = launched.finish("errors")
    assert code == 0, stderr
    return json.loads((launched.work / "errors.json").read_text())


def assert_one_line_error(code: int, stderr: str, fragments: list[str]) -> None:
    assert "Traceback" not in stderr, stderr
    assert code == 2, stderr
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    for fragment in fragments:
        assert fragment in lines[0]


@pytest.mark.parametrize("name", sorted(ERROR_CASES))
def test_user_error_is_one_line_and_exit_code_2(launched: Launched, error_results: dict, name: str) -> None:
    result = error_results[name]
    assert_one_line_error(result["code"], result["stderr"], launched.fill(ERROR_CASES[name][1]))


def test_gpus_without_cuda_through_the_script(launched: Launched) -> None:
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is visible")
    code, stdout, stderr = launched.finish("no_cuda")
    assert_one_line_error(code, stderr, ["--gpus 1", "--gpus 0"])
    assert stdout == ""


def test_end_to_end_on_tiny_data(launched: Launched) -> None:
    code, _, stderr = launched.finish("end_to_end")
    assert code == 0, stderr[-3000:]
    results = json.loads((launched.work / "r.json").read_text())
    run_dir = Path(results["run_dir"])
    assert run_dir.parent == launched.work / "runs"
    assert run_dir.name.startswith("ae-seed0-")  # the plain autoencoder uses no labels: none in the name
    best = Path(results["best_checkpoint"])
    assert best.parent == run_dir / "checkpoints" and best.is_file()
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert (run_dir / "metrics.csv").is_file()
    for metric in ("val/recon_loss", "test/recon_loss"):
        value = {**results["val"], **results["test"]}[metric]
        assert math.isfinite(value) and value > 0
    checkpoint = torch.load(best, map_location="cpu", weights_only=False)
    assert checkpoint["MNISTDataModule"] == results["split"]
    assert checkpoint["datamodule_hyper_parameters"]["val_size"] == 100


def test_fast_dev_run_with_the_labeled_stream(launched: Launched) -> None:
    code, _, stderr = launched.finish("fast_dev_run")
    assert code == 0, stderr[-3000:]
    results = json.loads((launched.work / "fast.json").read_text())
    assert Path(results["run_dir"]).name.startswith("semi-100labels-seed0-")
    assert results["split"]["num_labels"] == 100
    assert {"val/recon_loss", "val/acc"} <= set(results["val"])
    assert {"test/recon_loss", "test/acc"} <= set(results["test"])
