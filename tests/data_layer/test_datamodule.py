"""The MNIST datamodule: the split on the real data, training batches (also sharded as under DDP), evaluation
shards, the split fingerprint in checkpoints, and the one-line errors for bad data or settings."""

from __future__ import annotations

import shutil
import socket
import threading
from collections.abc import Callable, Iterable
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from torch import Tensor

from datamodules import DataError, MNISTDataModule, make_split, mnist
from datamodules.mnist import MNIST_RAW_FILES, _EpochBatches, _EvalBatches, load_mnist

TINY_VAL = 100  # of the 600 tiny training images; 500 stay for training


# ---------------------------------------------------------------------------------------------- real data


@pytest.fixture(scope="module")
def real_targets(mnist_dir: Path) -> Tensor:
    return load_mnist(mnist_dir, train=True, download=False)[1]


@pytest.mark.parametrize("num_labels", [100, 1000])
def test_real_split_sizes_and_balance(real_targets: Tensor, num_labels: int) -> None:
    split = make_split(real_targets, seed=0, num_labels=num_labels, val_size=10_000)
    assert len(split.validation) == 10_000
    assert len(split.labeled) == num_labels == split.num_labels
    assert len(split.unlabeled) == 50_000
    for indices in (split.validation, split.labeled, split.unlabeled):
        assert len(indices.unique()) == len(indices)
        assert 0 <= int(indices.min()) and int(indices.max()) < 60_000
    assert torch.bincount(real_targets[split.labeled], minlength=10).tolist() == [num_labels // 10] * 10


def test_real_split_validation_is_disjoint_from_training(real_targets: Tensor) -> None:
    split = make_split(real_targets, seed=0, num_labels=1000, val_size=10_000)
    validation, labeled, unlabeled = (
        set(indices.tolist()) for indices in (split.validation, split.labeled, split.unlabeled)
    )
    assert not validation & unlabeled
    assert not validation & labeled
    assert labeled <= unlabeled  # the paper's unlabeled set includes the labeled images
    assert validation | unlabeled == set(range(60_000))


def test_real_split_is_a_function_of_the_seed(real_targets: Tensor) -> None:
    first = make_split(real_targets, seed=0, num_labels=1000, val_size=10_000)
    again = make_split(real_targets, seed=0, num_labels=1000, val_size=10_000)
    other = make_split(real_targets, seed=1, num_labels=1000, val_size=10_000)
    for name in ("validation", "labeled", "unlabeled"):
        assert torch.equal(getattr(first, name), getattr(again, name))
    assert first.fingerprint == again.fingerprint
    assert not torch.equal(first.validation, other.validation)
    assert not torch.equal(first.labeled, other.labeled)
    assert first.fingerprint != other.fingerprint


def test_real_split_with_all_labels_labels_every_training_image(real_targets: Tensor) -> None:
    split = make_split(real_targets, seed=0, num_labels=None, val_size=10_000)
    assert torch.equal(split.labeled, split.unlabeled)
    assert split.summary()["num_labels"] == 50_000


def test_real_test_set_is_the_official_one(mnist_dir: Path) -> None:
    images, labels = load_mnist(mnist_dir, train=False, download=False)
    assert images.shape == (10_000, 784) and labels.shape == (10_000,)
    assert images.dtype == torch.float32 and 0 <= float(images.min()) and float(images.max()) <= 1


# ---------------------------------------------------------------------------------------------- tiny data


def tiny_datamodule(data_dir: Path, **settings) -> MNISTDataModule:
    settings = {"num_labels": 20, "val_size": TINY_VAL, "batch_size": 50, "download": False, **settings}
    datamodule = MNISTDataModule(data_dir=str(data_dir), **settings)
    datamodule.prepare_data()
    datamodule.setup("fit")
    return datamodule


def row_index(images: Tensor) -> dict[bytes, int]:
    """Which row an image is, by its bytes: the tiny images are noise, so no two are equal."""
    index = {row.numpy().tobytes(): position for position, row in enumerate(images)}
    assert len(index) == len(images)
    return index


def rows_of(batch_images: Tensor, index: dict[bytes, int]) -> list[int]:
    return [index[row.numpy().tobytes()] for row in batch_images]


@pytest.fixture(scope="module")
def tiny_train(tiny_mnist_dir: Path) -> tuple[Tensor, Tensor]:
    return load_mnist(tiny_mnist_dir, train=True, download=False)


@pytest.mark.parametrize(
    ("streams", "keys"),
    [
        (("unlabeled",), {"x"}),
        (("labeled",), {"labeled_x", "labeled_y"}),
        (("unlabeled", "labeled"), {"x", "labeled_x", "labeled_y"}),
    ],
)
def test_training_batch_keys_follow_the_streams(tiny_mnist_dir: Path, streams: tuple[str, ...], keys: set[str]) -> None:
    datamodule = tiny_datamodule(tiny_mnist_dir, train_streams=streams, labeled_batch_size=10)
    batch = next(iter(datamodule.train_dataloader()))
    assert set(batch) == keys
    if "x" in keys:
        assert batch["x"].shape == (50, 784)
    if "labeled_x" in keys:
        assert batch["labeled_x"].shape == (10, 784) and batch["labeled_y"].shape == (10,)


def test_one_epoch_serves_exactly_the_unlabeled_images(tiny_mnist_dir: Path, tiny_train: tuple[Tensor, Tensor]) -> None:
    """Neither validation nor test images reach training: the epoch's rows are the unlabeled split, each once."""
    datamodule = tiny_datamodule(tiny_mnist_dir, train_streams=("unlabeled",))
    images, _ = tiny_train
    index = row_index(torch.cat([images, datamodule.test_data()[0]]))
    served = [row for batch in datamodule.train_dataloader() for row in rows_of(batch["x"], index)]
    assert sorted(served) == datamodule.split.unlabeled.tolist()


def test_labeled_stream_cycles_through_every_labeled_image(
    tiny_mnist_dir: Path, tiny_train: tuple[Tensor, Tensor]
) -> None:
    # 20 labeled images in batches of 15 beside 10 unlabeled batches: several passes, one batch straddling two
    datamodule = tiny_datamodule(tiny_mnist_dir, labeled_batch_size=15)
    images, labels = tiny_train
    index = row_index(images)
    batches = list(datamodule.train_dataloader())
    assert len(batches) == 500 // 50
    served = [rows_of(batch["labeled_x"], index) for batch in batches]
    assert set().union(*served) == set(datamodule.split.labeled.tolist())
    for batch, rows in zip(batches, served, strict=True):
        assert len(set(rows)) == len(rows)  # not even the batch that straddles two passes repeats an image
        assert torch.equal(batch["labeled_y"], labels[rows])


def epoch_batches(datamodule: MNISTDataModule, rank: int, world_size: int, epoch: int = 0) -> _EpochBatches:
    """What `train_dataloader` builds on one rank of a `world_size`-device run."""
    split = datamodule.split
    return _EpochBatches(
        *datamodule._train,
        streams={"unlabeled": split.unlabeled, "labeled": split.labeled},
        batch_sizes={"unlabeled": datamodule.hparams.batch_size, "labeled": datamodule.labeled_batch_size},
        seed=datamodule.hparams.seed,
        epoch=lambda: epoch,
        rank=rank,
        world_size=world_size,
    )


@pytest.mark.parametrize("labeled_batch_size", [10, 16])  # 16: batches straddle passes over the 20 labeled images
def test_two_ranks_split_each_global_batch(tiny_mnist_dir: Path, labeled_batch_size: int) -> None:
    datamodule = tiny_datamodule(tiny_mnist_dir, labeled_batch_size=labeled_batch_size)
    single, rank0, rank1 = (
        list(epoch_batches(datamodule, rank, world_size)) for rank, world_size in ((0, 1), (0, 2), (1, 2))
    )
    assert len(single) == len(rank0) == len(rank1) == 10  # DDP needs the same number of steps on every rank
    index = row_index(datamodule._train[0])
    labeled_seen: set[int] = set()
    for whole, first, second in zip(single, rank0, rank1, strict=True):
        for key in whole:
            assert torch.equal(torch.cat([first[key], second[key]]), whole[key])
        for key in ("x", "labeled_x"):
            assert not set(rows_of(first[key], index)) & set(rows_of(second[key], index))
        labeled_seen |= set(rows_of(whole["labeled_x"], index))
    assert labeled_seen == set(datamodule.split.labeled.tolist())


def as_tuples(batches: Iterable[dict[str, Tensor]]) -> list[tuple[Tensor, ...]]:
    return [tuple(batch[key] for key in sorted(batch)) for batch in batches]


def same_batches(first: Iterable[dict[str, Tensor]], second: Iterable[dict[str, Tensor]]) -> bool:
    pairs = list(zip(as_tuples(first), as_tuples(second), strict=True))
    return all(torch.equal(a, b) for left, right in pairs for a, b in zip(left, right, strict=True))


def test_epoch_reshuffles_and_the_same_epoch_repeats(tiny_mnist_dir: Path) -> None:
    datamodule = tiny_datamodule(tiny_mnist_dir)
    assert same_batches(epoch_batches(datamodule, 0, 1, epoch=3), epoch_batches(datamodule, 0, 1, epoch=3))
    assert not same_batches(epoch_batches(datamodule, 0, 1, epoch=3), epoch_batches(datamodule, 0, 1, epoch=4))


@pytest.mark.parametrize("stage", ["validation", "test"])
def test_evaluation_shards_cover_every_image_once(tiny_mnist_dir: Path, stage: str) -> None:
    datamodule = tiny_datamodule(tiny_mnist_dir, val_size=99, batch_size=32)
    if stage == "validation":
        (images, labels), loader = datamodule.validation_data(), datamodule.val_dataloader()
    else:
        (images, labels), loader = datamodule.test_data(), datamodule.test_dataloader()
    assert len(images) == (99 if stage == "validation" else 100)
    shards = [list(_EvalBatches(images, labels, batch_size=16, rank=rank, world_size=2)) for rank in (0, 1)]
    for batches in (*shards, list(loader)):
        assert all(len(batch_images) == len(batch_labels) for batch_images, batch_labels in batches)
    served = [batch for shard in shards for batch in shard]
    assert torch.equal(torch.cat([images for images, _ in served]), images)
    assert torch.equal(torch.cat([labels for _, labels in served]), labels)
    sizes = [sum(len(labels) for _, labels in shard) for shard in shards]
    assert max(sizes) - min(sizes) <= 1  # no padding, and no rank idles
    single = list(loader)
    assert torch.equal(torch.cat([images for images, _ in single]), images)


# ------------------------------------------------------------------------------------------- checkpoints


def test_split_summary_travels_with_the_checkpoint(tiny_mnist_dir: Path) -> None:
    saved = tiny_datamodule(tiny_mnist_dir, seed=0).state_dict()
    assert saved == {
        "split_seed": 0,
        "num_labels": 20,
        "val_size": TINY_VAL,
        "split_fingerprint": saved["split_fingerprint"],
    }
    assert len(saved["split_fingerprint"]) == 16
    tiny_datamodule(tiny_mnist_dir, seed=0).load_state_dict(saved)  # same split: accepted
    restored_first = MNISTDataModule(
        data_dir=str(tiny_mnist_dir), num_labels=20, val_size=TINY_VAL, seed=0, download=False
    )
    restored_first.load_state_dict(saved)  # evaluate.py restores before setup
    restored_first.setup("test")


@pytest.mark.parametrize("change", [{"seed": 1}, {"num_labels": 30}, {"val_size": 101}])
def test_a_checkpoint_of_another_split_is_refused(tiny_mnist_dir: Path, change: dict[str, int]) -> None:
    saved = tiny_datamodule(tiny_mnist_dir, seed=0).state_dict()
    assert_one_line(lambda: tiny_datamodule(tiny_mnist_dir, **change).load_state_dict(saved), "different split")
    settings = {"num_labels": 20, "val_size": TINY_VAL, "seed": 0, "download": False, **change}
    restored_first = MNISTDataModule(data_dir=str(tiny_mnist_dir), **settings)
    restored_first.load_state_dict(saved)
    assert_one_line(lambda: restored_first.setup("test"), "different split", "seed, num_labels and val_size")


# ------------------------------------------------------------------------------------------------ errors


def assert_one_line(call: Callable[[], object], *fragments: str) -> None:
    """The call fails with a one-line DataError (which the CLI shows with its flags for the argument names) that says
    each fragment."""
    with pytest.raises(DataError) as caught:
        call()
    message = str(caught.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message


def test_folder_without_mnist_names_the_folder_and_the_files(tmp_path: Path) -> None:
    assert_one_line(lambda: tiny_datamodule(tmp_path), str(tmp_path / "MNIST" / "raw"), *MNIST_RAW_FILES)


def test_labels_must_be_a_multiple_of_ten(tiny_mnist_dir: Path) -> None:
    assert_one_line(lambda: tiny_datamodule(tiny_mnist_dir, num_labels=15), "num_labels", "15", "multiple of 10")


def test_labels_beyond_a_digits_images(tiny_mnist_dir: Path) -> None:
    assert_one_line(
        lambda: tiny_datamodule(tiny_mnist_dir, num_labels=1000), "num_labels 1000", "100 images of each digit"
    )


@pytest.mark.parametrize("val_size", [0, 600, 70_000])
def test_val_size_must_leave_training_images(tiny_mnist_dir: Path, val_size: int) -> None:
    assert_one_line(lambda: tiny_datamodule(tiny_mnist_dir, val_size=val_size), "val_size", "599", str(val_size))


def test_global_batch_must_divide_by_the_devices(tiny_mnist_dir: Path) -> None:
    datamodule = MNISTDataModule(
        data_dir=str(tiny_mnist_dir), num_labels=20, val_size=TINY_VAL, batch_size=25, download=False
    )
    # a real two-process DDP trainer, not launched: setup() only asks it for the world size
    datamodule.trainer = pl.Trainer(
        accelerator="cpu", devices=2, strategy="ddp", logger=False, enable_checkpointing=False
    )
    assert_one_line(lambda: datamodule.setup("fit"), "batch_size 25", "multiple of 2")


@pytest.mark.parametrize("name", MNIST_RAW_FILES)
def test_truncated_file_is_reported_as_corrupt(tiny_mnist_dir: Path, tmp_path: Path, name: str) -> None:
    shutil.copytree(tiny_mnist_dir / "MNIST", tmp_path / "MNIST")
    path = tmp_path / "MNIST" / "raw" / name
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    assert_one_line(lambda: tiny_datamodule(tmp_path), "truncated or corrupt", str(tmp_path / "MNIST" / "raw"))
    # downloading is allowed but must not be attempted: the files are there, only broken
    assert_one_line(lambda: tiny_datamodule(tmp_path, download=True), "truncated or corrupt")


def test_a_file_the_parser_asserts_on_is_named_by_the_exception_type(tiny_mnist_dir: Path, tmp_path: Path) -> None:
    """A header of zeros fails torchvision's parser on an `assert` with no message: the line says what failed."""
    shutil.copytree(tiny_mnist_dir / "MNIST", tmp_path / "MNIST")
    (tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte").write_bytes(bytes(16))
    with pytest.raises(DataError) as caught:
        tiny_datamodule(tmp_path)
    assert "truncated or corrupt (AssertionError)" in str(caught.value), caught.value


@pytest.mark.parametrize(
    "streams, batch_sizes, argument",
    [
        (("unlabeled",), {"batch_size": 600}, "batch_size"),
        (("labeled",), {"batch_size": 600}, "batch_size"),
        (("labeled",), {"batch_size": 50, "labeled_batch_size": 600}, "labeled_batch_size"),
    ],
)
def test_a_batch_larger_than_its_stream_names_its_own_size(
    tiny_mnist_dir: Path, streams: tuple[str, ...], batch_sizes: dict[str, int], argument: str
) -> None:
    """The stream that sets an epoch's length holds 500 tiny images here: the error names the size it drew with."""
    with pytest.raises(DataError) as caught:
        tiny_datamodule(tiny_mnist_dir, num_labels=None, train_streams=streams, **batch_sizes)
    assert str(caught.value).startswith(f"{argument} 600 is larger than the 500 training images")
    assert caught.value.arguments == (argument,)


def test_a_mirror_that_never_answers_fails_the_download_instead_of_hanging(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real local server accepts the connection and then says nothing."""
    from torchvision.datasets import MNIST

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen()
    try:
        monkeypatch.setattr(MNIST, "mirrors", [f"http://127.0.0.1:{silent.getsockname()[1]}/"])
        monkeypatch.setattr(mnist, "DOWNLOAD_TIMEOUT", 0.5)
        outcome: dict[str, BaseException] = {}

        def download() -> None:
            try:
                tiny_datamodule(tmp_path, download=True)
            except BaseException as error:  # handed to the test's thread to judge
                outcome["error"] = error

        worker = threading.Thread(target=download, daemon=True)  # a hang must fail the test, not stall the suite
        worker.start()
        worker.join(timeout=60)
        assert not worker.is_alive(), "the download is still waiting for the silent mirror"
    finally:
        silent.close()
    error = outcome.get("error")
    assert isinstance(error, DataError) and "\n" not in str(error), error
    assert "download failed" in str(error) and "timed out" in str(error), error
    assert socket.getdefaulttimeout() is None  # the process-wide default is restored
