"""What more than one test file needs, other than fixtures (those are in conftest.py): the repository's paths, tiny
MNIST files, a quiet trainer, train.py run from the outside and in this process, the check of a one-line user error,
a checkpoint file's contents, the benchmark scripts as modules, the hyperparameter declarations the generated
range checks are made from, and what a run wrote (its W&B records, its saved images)."""

from __future__ import annotations

import importlib.util
import json
import os
import struct
import subprocess
import sys
import tempfile
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from PIL import Image

from aae_lightning import VARIANTS, AutoencoderBase, get_variant
from aae_lightning.errors import shown
from aae_lightning.hparams import Accepts, declarations

REPO_ROOT = Path(__file__).resolve().parents[1]
IDX_TYPE_UBYTE = 0x08


# ----- tiny MNIST files ---------------------------------------------------------------------------------------------
def write_idx(path: Path, array: np.ndarray) -> None:
    """Write a uint8 array in the IDX format MNIST ships in (magic, dimensions, raw bytes)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = struct.pack(">HBB", 0, IDX_TYPE_UBYTE, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def make_fake_mnist(root: Path, train_per_class: int = 60, test_per_class: int = 10, seed: int = 0) -> Path:
    """A small MNIST look-alike in torchvision's layout under `root/MNIST/raw`: each digit is a bright bar at
    its own position plus noise, so models can learn something from it in a few steps."""
    rng = np.random.default_rng(seed)
    raw = root / "MNIST" / "raw"
    for prefix, per_class in (("train", train_per_class), ("t10k", test_per_class)):
        labels = np.repeat(np.arange(10), per_class)
        rng.shuffle(labels)
        images = rng.integers(0, 60, size=(len(labels), 28, 28))
        for index, digit in enumerate(labels):
            images[index, 2 + 2 * digit : 4 + 2 * digit, 4:24] = 255
        write_idx(raw / f"{prefix}-images-idx3-ubyte", images)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels)
    return root


# ----- training in process ------------------------------------------------------------------------------------------
#: small networks: a model builds in milliseconds and trains a batch of the tiny MNIST in a few
SMALL_NETWORKS = {"hidden_sizes": (32, 32), "disc_hidden_sizes": (16,)}


def small_model(variant: str, **hparams: Any) -> AutoencoderBase:
    """`variant` with small networks; `hparams` override those and set others. A name the variant does not take
    is dropped, so one set of settings serves every variant."""
    cls = get_variant(variant)
    known = cls.Hparams.__dataclass_fields__
    return cls(**{name: value for name, value in {**SMALL_NETWORKS, **hparams}.items() if name in known})


def tiny_datamodule(data_dir: Path, model: AutoencoderBase, batch_size: int = 20) -> Any:
    """The tiny MNIST of `tiny_mnist_dir` with 100 labels and 100 validation images, the streams `model` trains on."""
    from datamodules.mnist import MNISTDataModule

    return MNISTDataModule(
        str(data_dir),
        num_labels=100,
        val_size=100,
        batch_size=batch_size,
        download=False,
        train_streams=model.train_streams,
    )


def make_trainer(
    batches: int | None, epochs: int = 1, callbacks: list[pl.Callback] | None = None, **kwargs: Any
) -> pl.Trainer:
    """A quiet single-device trainer, on the CPU unless `kwargs` say otherwise, with no logger, checkpoints,
    progress bar, model summary or validation, so a test times and sees nothing but training: `epochs` epochs of
    `batches` batches each (None: whole epochs); `kwargs` override any setting."""
    settings: dict[str, Any] = dict(
        accelerator="cpu",
        devices=1,  # "auto" would be every GPU of the machine, and DDP
        max_epochs=epochs,
        limit_train_batches=batches,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=callbacks or [],
    )
    return pl.Trainer(**{**settings, **kwargs})


def phase_momenta(model: AutoencoderBase) -> dict[str, float]:
    """Each phase's momentum, as its optimizer holds it (SGD's momentum, or Adam's beta1)."""
    momenta = {}
    for phase, optimizer in zip(model.phases, model.configure_optimizers(), strict=True):
        group = optimizer.param_groups[0]
        momenta[phase] = group["betas"][0] if "betas" in group else group["momentum"]
    return momenta


# ----- train.py from the outside ------------------------------------------------------------------------------------
#: the validation and batch sizes a run on the tiny MNIST files needs
TINY = ["--val-size", "100", "--batch-size", "50"]

#: train.py flags for a one-epoch run of a tiny model on the tiny MNIST files (100 labels, 100 validation images),
#: without logger or images: what a test needs to get a real checkpoint fast
TINY_FLAGS = [
    "--hidden-sizes",
    "32",
    "32",
    "--disc-hidden-sizes",
    "16",
    *TINY,
    "--labels",
    "100",
    "--max-epochs",
    "1",
    "--logger",
    "none",
    "--gpus",
    "0",
    "--image-every-n-epochs",
    "0",
]


def gpus_flag(device: str) -> list[str]:
    """train.py's flag for a test's `device` ("cpu" or "cuda"), as a user asks for it."""
    return ["--gpus", "0" if device == "cpu" else "1"]


def train_py(*args: str) -> list[str]:
    """The command line of `python train.py args...`."""
    return [sys.executable, str(REPO_ROOT / "train.py"), *args]


def start(argv: list[str], cwd: Path) -> subprocess.Popen:
    """Start `argv` as a user would, with W&B offline and silent and no run name inherited from the environment."""
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "PYTHONPATH": str(REPO_ROOT)}
    env.pop("AAE_RUN_NAME", None)
    return subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


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


def start_cases(argv_by_name: dict[str, list[str]], work: Path) -> subprocess.Popen:
    """`run_cases` over `argv_by_name` in one child process: starting Python with torch and Lightning costs
    seconds, calling `train.main` once more a few milliseconds. Its results are `case_results(work)` once it ended
    with exit code 0."""
    cases, results = work / "cases.json", work / "results.json"
    cases.write_text(json.dumps(argv_by_name))
    call = f"from tests.helpers import run_cases; run_cases({str(cases)!r}, {str(results)!r})"
    return start([sys.executable, "-c", call], cwd=work)


def case_results(work: Path) -> dict[str, dict[str, Any]]:
    """name -> {"code": exit code, "stderr": what it wrote there}, from the child `start_cases` started in `work`."""
    return json.loads((work / "results.json").read_text())


@dataclass
class Launched:
    """Processes started together at module setup (they spend most of their time importing), and where they
    write."""

    work: Path
    processes: dict[str, subprocess.Popen]

    def finish(self, name: str) -> tuple[int, str, str]:
        stdout, stderr = self.processes[name].communicate(timeout=900)
        return self.processes[name].returncode, stdout, stderr

    def stop(self) -> None:
        """Kill what is still running: a failed test may leave a process behind."""
        for process in self.processes.values():
            if process.poll() is None:
                process.kill()
                process.communicate()


def run_main(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """`train.main(argv)` in this process: its exit code and what it wrote to stderr (from the call on only)."""
    import train

    capsys.readouterr()
    try:
        code = train.main(argv)
    except SystemExit as exit_:  # argparse's own refusals
        code = exit_.code
    return code, capsys.readouterr().err


def load_checkpoint(path: Path | str) -> dict[str, Any]:
    """Everything a checkpoint file holds, on the CPU, as written (no checks: `read_checkpoint` is under test)."""
    return torch.load(path, map_location="cpu", weights_only=False)


def assert_one_line_error(code: int, stderr: str, fragments: list[str]) -> None:
    """A user error as train.py reports it: exit code 2 and one line on stderr that holds each of `fragments`."""
    assert "Traceback" not in stderr, stderr
    assert code == 2, stderr
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    for fragment in fragments:
        assert fragment in lines[0]


def assert_same_tensors(a: object, b: object, where: str) -> None:
    """Nested dicts/lists of tensors and plain values, compared exactly."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            assert_same_tensors(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for index, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same_tensors(x, y, f"{where}[{index}]")
    else:
        assert a == b, where


def json_lines(stdout: str, start: str = "{") -> list[dict]:
    """The lines of `stdout` that begin with `start`, each parsed as JSON."""
    return [json.loads(line) for line in stdout.splitlines() if line.startswith(start)]


def load_benchmark(name: str) -> ModuleType:
    """benchmarks/`name`.py as a module: the folder is no package, its scripts are run by path."""
    spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "benchmarks" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ----- the hyperparameter declarations ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Declaration:
    """What one field accepts, tested through `variant`, the first variant (by name) that has it."""

    variant: str
    name: str
    accepts: Accepts


def distinct_declarations() -> list[Declaration]:
    """Every distinct field declaration of every variant, once. A field a variant inherits, or re-declares with
    another default only (`redefault` keeps the `Accepts` object), is the declaration it came from; so is a field
    declared again with an equal `Accepts` (`latent_dim`'s `positive(int)`): whether a value is allowed, and the
    message that refuses it, depend on the field's name and its `Accepts` alone. How each variant builds with its
    fields' edge values is checked per variant."""
    distinct: dict[tuple[str, str], Declaration] = {}
    for variant in sorted(VARIANTS):
        for name, accepts in declarations(get_variant(variant).Hparams).items():
            # by repr, not ==: 1 == 1.0 would merge bounds that read differently in the message ('>= 1', '>= 1.0');
            # an `Either`, which has no repr of its own, is one declaration per object
            distinct.setdefault((name, repr(accepts)), Declaration(variant, name, accepts))
    return list(distinct.values())


def declaration_cases(values: Callable[[Accepts], list[Any]]) -> list[Any]:
    """(declaration, value) for every distinct declaration and each value `values` gives for it, named by the
    variant it is tested through, the field and the value."""
    return [
        pytest.param(declared, value, id=f"{declared.variant}-{declared.name}-{shown(value)}")
        for declared in distinct_declarations()
        for value in values(declared.accepts)
    ]


# ----- what a run wrote: W&B records, saved images ----------------------------------------------------------------
#: the images `semi` draws each epoch
SEMI_IMAGES = ("latent_grid", "style_grid", "samples", "reconstructions", "latent_scatter", "confusion_matrix")
#: a `.wandb` file's block size and chunk header size, and its chunk kinds
BLOCK_SIZE, CHUNK_HEADER = 32 * 1024, 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def wandb_records(path: Path) -> list[Any]:
    """The records of an offline W&B run file. wandb ships no Python reader for its `.wandb` files: the file is a
    LevelDB-style log (32 KiB blocks of chunks with a 7-byte header) of `wandb_internal_pb2.Record` protobufs, after
    a 7-byte ":W&B" file header."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B run file"
    records, pending, position = [], b"", CHUNK_HEADER
    while position + CHUNK_HEADER <= len(data):
        room = BLOCK_SIZE - position % BLOCK_SIZE
        if room < CHUNK_HEADER:  # a block's tail too short for a header is padding
            position += room
            continue
        _, length, kind = struct.unpack("<IHB", data[position : position + CHUNK_HEADER])
        if position + CHUNK_HEADER + length > len(data):  # cut short: the writer had not flushed it yet
            break
        if kind == 0:  # zero padding up to the end of the block
            position += room
            continue
        pending += data[position + CHUNK_HEADER : position + CHUNK_HEADER + length]
        position += CHUNK_HEADER + length
        if kind in (FULL, LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
        else:
            assert kind in (FIRST, MIDDLE), f"corrupt chunk type {kind} in {path}"
    # a finished run's log ends with its exit record; without it the file was read before W&B flushed it
    assert records and records[-1].WhichOneof("record_type") == "exit", f"{path} holds no finished run"
    return records


def history_rows(records: list[Any]) -> list[dict[str, Any]]:
    """Each logged row as {key: value}; a media value is a dict of its fields (path, caption, ...)."""
    rows = []
    for record in records:
        if record.WhichOneof("record_type") != "history":
            continue
        row: dict[str, Any] = {}
        for item in record.history.item:
            keys = list(item.nested_key) or [item.key]
            value = json.loads(item.value_json)
            if len(keys) == 1:
                row[keys[0]] = value
            else:
                row.setdefault(keys[0], {})[keys[1]] = value
        rows.append(row)
    # W&B numbers its rows 0, 1, 2, ...: a gap would mean the reader lost a record
    assert [row["_step"] for row in rows] == list(range(len(rows)))
    return rows


def run_config(records: list[Any]) -> dict[str, Any]:
    config = {}
    for record in records:
        kind = record.WhichOneof("record_type")
        updates = record.run.config.update if kind == "run" else record.config.update if kind == "config" else []
        for item in updates:
            config[item.key or item.nested_key[0]] = json.loads(item.value_json)
    return {key: value.get("value", value) if isinstance(value, dict) else value for key, value in config.items()}


def offline_run(run_dir: Path) -> Path:
    runs = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, runs
    return runs[0]


def image_rows(rows: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [row for row in rows if f"images/{name}" in row]


def png_files(run_dir: Path) -> dict[str, list[str]]:
    return {folder.name: sorted(path.name for path in folder.iterdir()) for folder in (run_dir / "images").iterdir()}


def expected_pngs(names: tuple[str, ...], epochs: int) -> dict[str, list[str]]:
    return {name: [f"epoch_{epoch:03d}.png" for epoch in range(epochs)] for name in names}


def assert_wandb_images_logged_once_per_epoch(run_dir: Path, rows: list[dict[str, Any]], epochs: int) -> None:
    """Each of `semi`'s images in the W&B run once per epoch, the very PNG the run saved, captioned with its epoch."""
    files = offline_run(run_dir) / "files"
    for name in SEMI_IMAGES:
        logged = image_rows(rows, name)
        assert [row["epoch"] for row in logged] == list(range(epochs)), (name, logged)
        for epoch, row in enumerate(logged):
            media = row[f"images/{name}"]
            with (
                Image.open(files / media["path"]) as uploaded,
                Image.open(run_dir / "images" / name / f"epoch_{epoch:03d}.png") as saved,
            ):
                assert np.array_equal(np.asarray(uploaded.convert("RGB")), np.asarray(saved.convert("RGB"))), name
            assert f"(epoch {epoch})" in media["caption"]
