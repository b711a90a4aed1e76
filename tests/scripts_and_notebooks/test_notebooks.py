"""The notebooks in notebooks/, executed top to bottom by a real Jupyter kernel (nbclient) against small checkpoints
trained here on the tiny MNIST files: an unsupervised `aae` (2-d z) and a `semi` (10-d style z, class code).
01 and 04 run on both, 02 and 03 on `semi`.

The first code cell of each notebook holds its parameters, `CKPT_PATH` and `DATA_DIR`; the test rewrites that
cell. The kernel is the `python3` spec, which jupyter_client starts with this interpreter (`sys.executable`): a
cell appended to each run prints the kernel's interpreter, and the test compares. The six runs execute once, at
module setup, one after the other in one kernel: a kernel spends seconds importing torch and Lightning, a notebook
about a second on the tiny checkpoints. A cell put before each run empties the kernel's namespace (`%reset -f`), so
a notebook that leans on a name another one defined fails as it would in a kernel of its own.
"""

from __future__ import annotations

import asyncio
import os
import re
import sys
from pathlib import Path

import nbformat
import pytest
from jupyter_client.manager import AsyncKernelManager
from nbclient import NotebookClient
from nbformat.v4 import new_code_cell
from torchmetrics.classification import MulticlassAccuracy

import train
from aae_lightning.checkpoint_io import load_trained
from tests.helpers import REPO_ROOT

NOTEBOOK_DIR = REPO_ROOT / "notebooks"
NOTEBOOKS = ("01_latent_space", "02_style_and_content", "03_semi_supervised", "04_generation_and_anomalies")
RUNS = [
    ("01_latent_space", "aae"),
    ("01_latent_space", "semi"),
    ("02_style_and_content", "semi"),
    ("03_semi_supervised", "semi"),
    ("04_generation_and_anomalies", "aae"),
    ("04_generation_and_anomalies", "semi"),
]
PARAMETERS = re.compile(r'CKPT_PATH = "[^"\n]*"\nDATA_DIR = [^\n]*')
INTERPRETER_CELL = "import sys\nprint(sys.executable)"
RESET_CELL = "%reset -f"


def read(name: str) -> nbformat.NotebookNode:
    return nbformat.read(NOTEBOOK_DIR / f"{name}.ipynb", as_version=4)


def code_cells(notebook: nbformat.NotebookNode) -> list[nbformat.NotebookNode]:
    return [cell for cell in notebook.cells if cell.cell_type == "code"]


def with_parameters(name: str, checkpoint: Path, data_dir: Path) -> nbformat.NotebookNode:
    notebook = read(name)
    code_cells(notebook)[0].source = f"CKPT_PATH = {str(checkpoint)!r}\nDATA_DIR = {str(data_dir)!r}"
    notebook.cells.insert(0, new_code_cell(RESET_CELL))
    notebook.cells.append(new_code_cell(INTERPRETER_CELL))
    return notebook


@pytest.fixture(scope="module")
def checkpoints(tiny_mnist_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One epoch of each variant through `train.main`, in this process."""
    output = tmp_path_factory.mktemp("notebook_runs")
    common = [
        "--data-dir",
        str(tiny_mnist_dir),
        "--val-size",
        "100",
        "--batch-size",
        "50",
        "--hidden-sizes",
        "32",
        "--disc-hidden-sizes",
        "16",
        "--gpus",
        "0",
        "--logger",
        "none",
        "--image-every-n-epochs",
        "0",
        "--max-epochs",
        "1",
        "--output-dir",
        str(output),
    ]
    for variant in ("aae", "semi"):
        assert train.main(["--variant", variant, "--labels", "100", "--run-name", variant, *common]) == 0
    return {variant: output / variant / "checkpoints" / "last.ckpt" for variant in ("aae", "semi")}


@pytest.fixture(scope="module")
def moved_data(tiny_mnist_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny MNIST at another path, as if the files had moved since training: the notebooks get this one, so
    they must read DATA_DIR rather than the folder the run trained on."""
    moved = tmp_path_factory.mktemp("moved_mnist")
    (moved / "MNIST").symlink_to(tiny_mnist_dir / "MNIST", target_is_directory=True)
    return moved


async def execute_in_one_kernel(notebooks: list[nbformat.NotebookNode]) -> list[BaseException | None]:
    """Each notebook in turn in one kernel, started in the notebooks' folder; what each raised, or None."""
    kernel = AsyncKernelManager(kernel_name="python3")
    # one thread: the kernel shares the cores with the other pytest worker, where torch's default thread pool spins
    await kernel.start_kernel(cwd=str(NOTEBOOK_DIR), env={**os.environ, "OMP_NUM_THREADS": "1"})
    errors: list[BaseException | None] = []
    try:
        for notebook in notebooks:
            client = NotebookClient(notebook, km=kernel, timeout=300, interrupt_on_timeout=True)
            try:
                await client.async_execute()
            except Exception as error:  # noqa: BLE001 - reported by the test of that notebook
                errors.append(error)
            else:
                errors.append(None)
    finally:
        await kernel.shutdown_kernel(now=True)
    return errors


@pytest.fixture(scope="module")
def executed(
    checkpoints: dict[str, Path], moved_data: Path
) -> dict[tuple[str, str], tuple[nbformat.NotebookNode, BaseException | None]]:
    notebooks = {run: with_parameters(run[0], checkpoints[run[1]], moved_data) for run in RUNS}
    errors = asyncio.run(execute_in_one_kernel(list(notebooks.values())))
    return {run: (notebook, error) for (run, notebook), error in zip(notebooks.items(), errors, strict=True)}


def text_output(notebook: nbformat.NotebookNode) -> str:
    return "".join(
        output.get("text", "")
        for cell in code_cells(notebook)
        for output in cell.get("outputs", [])
        if output.output_type == "stream"
    )


def image_count(notebook: nbformat.NotebookNode) -> int:
    return sum(
        "image/png" in output.get("data", {}) for cell in code_cells(notebook) for output in cell.get("outputs", [])
    )


@pytest.mark.parametrize("run", RUNS, ids=[f"{name}-{variant}" for name, variant in RUNS])
def test_notebook_runs_to_the_end(executed: dict, run: tuple[str, str]) -> None:
    notebook, error = executed[run]
    assert error is None, str(error)[-3000:]
    # the appended cell ran last, in a kernel started with this very interpreter
    printed = code_cells(notebook)[-1].outputs[0]["text"].strip()
    assert Path(printed).resolve() == Path(sys.executable).resolve()


@pytest.mark.parametrize(
    "run, images, says",
    [
        (("01_latent_space", "aae"), 3, "2-d z, prior GaussianPrior"),
        (("01_latent_space", "semi"), 3, "10-d z, prior GaussianPrior"),
        (("02_style_and_content", "semi"), 2, "digit read back from the style z"),
        (("04_generation_and_anomalies", "aae"), 5, "non-digits among the 300 highest scores"),
        (("04_generation_and_anomalies", "semi"), 5, "discriminators on y, z"),
    ],
    ids=lambda value: "-".join(value) if isinstance(value, tuple) else None,
)
def test_notebook_draws_its_figures(executed: dict, run: tuple[str, str], images: int, says: str) -> None:
    notebook, _ = executed[run]
    assert image_count(notebook) == images
    assert says in text_output(notebook)


@pytest.mark.parametrize("variant", ["aae", "semi"])
def test_anomaly_notebook_reports_an_auroc_per_set_and_score(executed: dict, variant: str) -> None:
    notebook, _ = executed["04_generation_and_anomalies", variant]
    rows = {
        match[0]: [float(value) for value in match[1].split()]
        for match in re.findall(r"^(noise|letters|shapes) +([\d. ]+)$", text_output(notebook), re.MULTILINE)
    }
    assert sorted(rows) == ["letters", "noise", "shapes"]
    for values in rows.values():
        assert len(values) == 3 and all(0 <= value <= 1 for value in values)  # reconstruction, discriminator, combined


def test_semi_supervised_notebook_reports_the_models_accuracy(
    executed: dict, checkpoints: dict[str, Path], moved_data: Path
) -> None:
    notebook, _ = executed["03_semi_supervised", "semi"]
    model, datamodule = load_trained(checkpoints["semi"], moved_data)
    images, labels = datamodule.test_data()
    expected = MulticlassAccuracy(num_classes=10, average="micro")(model.classify(images), labels).item()
    reported = re.search(r"test: accuracy ([\d.]+)%", text_output(notebook))
    assert reported and float(reported[1]) == pytest.approx(100 * expected, abs=0.005)
    wrong = re.search(r"(\d+) of (\d+) test digits misclassified", text_output(notebook))
    assert wrong and int(wrong[2]) == len(labels) and int(wrong[1]) == round((1 - expected) * len(labels))
    # the confusion matrix, and the grid of confidently wrong digits when there are any
    assert image_count(notebook) == 1 + (int(wrong[1]) > 0)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_committed_notebook_has_no_outputs(name: str) -> None:
    for cell in code_cells(read(name)):
        assert cell.outputs == [] and cell.execution_count is None, cell.source[:80]


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_first_code_cell_holds_only_the_parameters(name: str) -> None:
    """Two assignments and nothing else, so that replacing the cell cannot drop anything the notebook needs."""
    source = "\n".join(line.split("  #")[0] for line in code_cells(read(name))[0].source.splitlines())
    assert PARAMETERS.fullmatch(source), source
