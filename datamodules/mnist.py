"""MNIST held in memory as one float tensor, split into validation, labeled, unlabeled and test sets.

Batches are cut from that tensor by index: going through torchvision's per-sample PIL conversion costs more
than the model itself on a CPU. The module also shards its own batches across DDP ranks (see `_EpochBatches`),
so it never depends on Lightning injecting a `DistributedSampler`. Its loaders are plain sized iterables of whole
batches, not `DataLoader`s: there is no work for worker processes, so nothing for Lightning to check or warn about
(a `DataLoader` over a sized `IterableDataset` draws its warning that workers could make the length wrong), and
starting an epoch draws from no random generator.
"""

from __future__ import annotations

import hashlib
import socket
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytorch_lightning as pl
import torch
from torch import Tensor

#: MNIST's facts: ten digits, images of 28 x 28 pixels (flattened to IMAGE_SIZE values everywhere in this project)
NUM_CLASSES = 10
IMAGE_SHAPE = (28, 28)
IMAGE_SIZE = IMAGE_SHAPE[0] * IMAGE_SHAPE[1]
MNIST_RAW_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
TRAIN_STREAMS = ("unlabeled", "labeled")


class DataError(ValueError):
    """Bad data or split settings; the message is one line, fit to show a user without a traceback. It names the
    settings it is about by their argument names (of `MNISTDataModule`, `make_split`), listed in `arguments`, so
    that a command line can put its own flags in their place."""

    def __init__(self, message: str, arguments: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.arguments = arguments


@dataclass(frozen=True)
class MNISTSplit:
    """Indices into the 60,000 official training images. A pure function of `(seed, num_labels, val_size)`."""

    seed: int
    num_labels: int
    val_size: int
    validation: Tensor
    labeled: Tensor
    unlabeled: Tensor

    @property
    def fingerprint(self) -> str:
        """A short hash of the validation and labeled indices: equal fingerprints mean the same split."""
        digest = hashlib.sha1()
        digest.update(self.validation.numpy().tobytes())
        digest.update(self.labeled.numpy().tobytes())
        return digest.hexdigest()[:16]

    def summary(self) -> dict[str, int | str]:
        return {
            "split_seed": self.seed,
            "num_labels": self.num_labels,
            "val_size": self.val_size,
            "split_fingerprint": self.fingerprint,
        }


def make_split(targets: Tensor, seed: int, num_labels: int | None, val_size: int) -> MNISTSplit:
    """Hold out `val_size` random images for validation, then draw `num_labels` balanced labeled images
    (`num_labels / 10` per class) from the rest. `num_labels=None` labels every non-validation image.
    The unlabeled set is every non-validation image, the labeled ones included (as in the paper)."""
    total = len(targets)
    if not 0 < val_size < total:
        raise DataError(
            f"val_size must be between 1 and {total - 1} (the training set has {total} images), got {val_size}",
            ("val_size",),
        )
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(total, generator=generator)
    validation, rest = order[:val_size], order[val_size:]
    if num_labels is None:
        labeled = rest
    else:
        if num_labels <= 0 or num_labels % NUM_CLASSES:
            raise DataError(
                f"num_labels must be a positive multiple of {NUM_CLASSES} (balanced classes), got {num_labels}",
                ("num_labels",),
            )
        per_class = num_labels // NUM_CLASSES
        rest_targets = targets[rest]
        chosen = []
        for digit in range(NUM_CLASSES):
            of_digit = rest[rest_targets == digit]
            if len(of_digit) < per_class:
                raise DataError(
                    f"num_labels {num_labels} needs {per_class} images of each digit, but digit {digit} has only "
                    f"{len(of_digit)} outside the validation split",
                    ("num_labels",),
                )
            chosen.append(of_digit[:per_class])
        labeled = torch.cat(chosen)
    return MNISTSplit(
        seed=seed,
        num_labels=len(labeled),
        val_size=val_size,
        validation=validation.sort().values,
        labeled=labeled.sort().values,
        unlabeled=rest.sort().values,
    )


def missing_files(data_dir: str | Path) -> list[str]:
    """The raw MNIST files not (yet) in `data_dir/MNIST/raw`."""
    return [name for name in MNIST_RAW_FILES if not (Path(data_dir) / "MNIST" / "raw" / name).is_file()]


#: seconds a download may wait for a mirror's answer (torchvision sets none, so a silent server would hang the run)
DOWNLOAD_TIMEOUT = 60.0


def load_mnist(data_dir: str | Path, train: bool, download: bool) -> tuple[Tensor, Tensor]:
    """Images as a float tensor (N, IMAGE_SIZE) in [0, 1] and labels (N,), read through torchvision."""
    from torchvision.datasets import MNIST  # deferred: importing torchvision costs seconds

    raw_dir = Path(data_dir) / "MNIST" / "raw"
    missing = missing_files(data_dir)
    if missing and not download:
        raise DataError(
            f"MNIST not found in {raw_dir} (missing {', '.join(missing)}); put the four files "
            f"{', '.join(MNIST_RAW_FILES)} there or allow the download"
        )
    previous_timeout = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT)  # urllib, which torchvision downloads with, uses the default
    try:
        dataset = MNIST(str(data_dir), train=train, download=download)
    # A failed download and a truncated file both surface as RuntimeError (the IDX parser's reshape fails), and
    # the parser also asserts or raises ValueError: whether the files are there tells the two apart.
    except (RuntimeError, OSError, AssertionError, ValueError) as error:
        # the parser's asserts carry no message: then the exception's type is all there is to say
        lines = [line for line in str(error).splitlines() if line.strip()] or [type(error).__name__]
        if missing_files(data_dir):
            reason = lines[0] if len(lines) == 1 else f"{lines[0]} {lines[-1]}"  # the file, the last mirror's error
            raise DataError(
                f"MNIST not found in {raw_dir} and the download failed ({reason}); "
                f"put the four files {', '.join(MNIST_RAW_FILES)} there"
            ) from error
        raise DataError(
            f"MNIST files in {raw_dir} are truncated or corrupt ({lines[0]}); delete them and download again"
        ) from error
    finally:
        socket.setdefaulttimeout(previous_timeout)
    images, targets = dataset.data, dataset.targets
    if images.dim() != 3 or images.shape[1:] != IMAGE_SHAPE or len(images) != len(targets) or len(images) == 0:
        raise DataError(
            f"MNIST files in {raw_dir} are corrupt: images {tuple(images.shape)} "
            f"do not match labels {tuple(targets.shape)}"
        )
    if targets.min() < 0 or targets.max() >= NUM_CLASSES:
        raise DataError(f"MNIST labels in {raw_dir} are corrupt: values outside 0-9")
    return images.reshape(len(images), IMAGE_SIZE).float().div_(255), targets.long()


def check_global_batch_sizes(world_size: int, batch_size: int, labeled_batch_size: int | None = None) -> None:
    """Batch sizes are global: each of the `world_size` processes takes an equal share of every batch."""
    for name, size in (("batch_size", batch_size), ("labeled_batch_size", labeled_batch_size)):
        if size is not None and size % world_size:
            raise DataError(
                f"{name} {size} is global (split over all devices) and must divide evenly by the {world_size} "
                f"processes; use a multiple of {world_size}",
                (name,),
            )


def _shard(global_batch: Tensor, rank: int, world_size: int) -> Tensor:
    per_rank = len(global_batch) // world_size
    return global_batch[rank * per_rank : (rank + 1) * per_rank]


class _EpochBatches:
    """This rank's share of each training batch of one epoch.

    Every rank draws the same global batches (an epoch-seeded permutation) and keeps its own slice, so training
    on N devices sees exactly the batches one device would, and all ranks run the same number of steps (which
    DDP needs). The labeled stream, when present, cycles through the labeled set in reshuffled passes beside the
    unlabeled one: every labeled image is used, however few there are, and ranks never draw the same ones
    (unless a global labeled batch is larger than the labeled set).
    """

    def __init__(
        self,
        images: Tensor,
        labels: Tensor,
        streams: dict[str, Tensor],
        batch_sizes: dict[str, int],
        seed: int,
        epoch: Callable[[], int],
        rank: int,
        world_size: int,
    ) -> None:
        self.images, self.labels = images, labels
        self.streams, self.batch_sizes = streams, batch_sizes
        self.seed, self.epoch, self.rank, self.world_size = seed, epoch, rank, world_size
        self.primary = "unlabeled" if "unlabeled" in streams else "labeled"

    def __len__(self) -> int:
        return len(self.streams[self.primary]) // self.batch_sizes[self.primary]

    def _global_batches(self, stream: str, epoch: int) -> Iterator[Tensor]:
        indices, batch_size = self.streams[stream], self.batch_sizes[stream]
        # Seeded from numbers only: Python's str hash differs between processes, and all ranks must agree.
        generator = torch.Generator().manual_seed(
            (self.seed * 100_003 + epoch) * len(TRAIN_STREAMS) + TRAIN_STREAMS.index(stream)
        )
        buffer = indices[torch.randperm(len(indices), generator=generator)]
        while True:
            while len(buffer) < batch_size:  # a new pass over a small (labeled) set
                fresh = indices[torch.randperm(len(indices), generator=generator)]
                # The batch that straddles two passes must not hold an image twice (ranks would share it): the
                # images the old pass still holds go last in the new one.
                held = torch.isin(fresh, buffer)
                buffer = torch.cat([buffer, fresh[~held], fresh[held]])
            yield buffer[:batch_size]
            buffer = buffer[batch_size:]

    def __iter__(self) -> Iterator[dict[str, Tensor]]:
        epoch = self.epoch()
        batches = {stream: self._global_batches(stream, epoch) for stream in self.streams}
        for _ in range(len(self)):
            batch = {}
            for stream, global_batches in batches.items():
                local = _shard(next(global_batches), self.rank, self.world_size)
                if stream == "unlabeled":
                    batch["x"] = self.images[local]
                else:
                    batch["labeled_x"], batch["labeled_y"] = self.images[local], self.labels[local]
            yield batch


class _EvalBatches:
    """This rank's contiguous, unpadded share of an evaluation split, so that metrics summed over ranks count
    every image exactly once (a `DistributedSampler` would pad with duplicates)."""

    def __init__(self, images: Tensor, labels: Tensor, batch_size: int, rank: int, world_size: int) -> None:
        bounds = [len(images) * r // world_size for r in range(world_size + 1)]
        self.images = images[bounds[rank] : bounds[rank + 1]]
        self.labels = labels[bounds[rank] : bounds[rank + 1]]
        self.batch_size = batch_size

    def __len__(self) -> int:
        return -(-len(self.images) // self.batch_size)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        for start in range(0, len(self.images), self.batch_size):
            yield self.images[start : start + self.batch_size], self.labels[start : start + self.batch_size]


class MNISTDataModule(pl.LightningDataModule):
    """MNIST with a seeded split: `val_size` validation images held out of the training set, `num_labels`
    balanced labeled images drawn from the rest (None: all of them), the rest served unlabeled (labeled ones
    included), and the official test set for `trainer.test` only.

    Training batches are dicts: `x` (unlabeled images) and/or `labeled_x`, `labeled_y`, depending on
    `train_streams`; a variant that needs no labels asks for `("unlabeled",)` and never pays for them.
    Validation and test batches are `(images, labels)` tuples. `batch_size` and `labeled_batch_size` are
    global: under DDP each of N ranks gets 1/N of every batch, so they must divide evenly.
    """

    def __init__(
        self,
        data_dir: str = "data",
        num_labels: int | None = 1000,
        val_size: int = 10_000,
        batch_size: int = 100,
        labeled_batch_size: int | None = None,
        seed: int = 0,
        download: bool = True,
        train_streams: Sequence[str] = TRAIN_STREAMS,
    ) -> None:
        super().__init__()
        unknown = set(train_streams) - set(TRAIN_STREAMS)
        if unknown or not train_streams:
            raise DataError(f"train_streams must be a non-empty subset of {TRAIN_STREAMS}, got {tuple(train_streams)}")
        if batch_size <= 0 or (labeled_batch_size is not None and labeled_batch_size <= 0):
            raise DataError(f"batch sizes must be positive, got {batch_size} and {labeled_batch_size}")
        self.save_hyperparameters()
        self.split: MNISTSplit | None = None
        self._train: tuple[Tensor, Tensor] | None = None
        self._test: tuple[Tensor, Tensor] | None = None
        self._expected_fingerprint: str | None = None

    @property
    def labeled_batch_size(self) -> int:
        if self.hparams.labeled_batch_size is not None:
            return self.hparams.labeled_batch_size
        return self.hparams.batch_size

    def prepare_data(self) -> None:
        # On one process per node. With the files there, nothing to do: setup() reads them (torchvision would parse
        # them here too, only to throw the result away).
        if self.hparams.download and missing_files(self.hparams.data_dir):
            for train in (True, False):
                load_mnist(self.hparams.data_dir, train=train, download=True)

    def setup(self, stage: str | None = None) -> None:
        if self._train is None:
            self._train = load_mnist(self.hparams.data_dir, train=True, download=False)
            self._test = load_mnist(self.hparams.data_dir, train=False, download=False)
            self.split = make_split(self._train[1], self.hparams.seed, self.hparams.num_labels, self.hparams.val_size)
        self._check_fingerprint()
        check_global_batch_sizes(self._world_size(), self.hparams.batch_size, self.labeled_batch_size)
        # the stream that sets the epoch's length: the unlabeled images, or the labeled ones for a variant that
        # trains on labeled images alone (its batch is labeled_batch_size where given, else batch_size)
        if "unlabeled" in self.hparams.train_streams:
            primary, name, primary_batch = self.split.unlabeled, "batch_size", self.hparams.batch_size
        elif self.hparams.labeled_batch_size is not None:
            primary, name, primary_batch = self.split.labeled, "labeled_batch_size", self.labeled_batch_size
        else:
            primary, name, primary_batch = self.split.labeled, "batch_size", self.hparams.batch_size
        if len(primary) < primary_batch:
            raise DataError(f"{name} {primary_batch} is larger than the {len(primary)} training images", (name,))

    def _world_size(self) -> int:
        return self.trainer.world_size if self.trainer is not None else 1

    def _rank(self) -> int:
        return self.trainer.global_rank if self.trainer is not None else 0

    def _current_epoch(self) -> int:
        return self.trainer.current_epoch if self.trainer is not None else 0

    def train_dataloader(self) -> _EpochBatches:
        images, labels = self._train
        streams = {"unlabeled": self.split.unlabeled, "labeled": self.split.labeled}
        sizes = {"unlabeled": self.hparams.batch_size, "labeled": self.labeled_batch_size}
        wanted = self.hparams.train_streams
        return _EpochBatches(
            images,
            labels,
            streams={name: streams[name] for name in wanted},
            batch_sizes={name: sizes[name] for name in wanted},
            seed=self.hparams.seed,
            epoch=self._current_epoch,
            rank=self._rank(),
            world_size=self._world_size(),
        )

    def _eval_loader(self, images: Tensor, labels: Tensor) -> _EvalBatches:
        per_rank_batch = max(1, self.hparams.batch_size // self._world_size())
        return _EvalBatches(images, labels, per_rank_batch, self._rank(), self._world_size())

    def val_dataloader(self) -> _EvalBatches:
        images, labels = self.validation_data()
        return self._eval_loader(images, labels)

    def test_dataloader(self) -> _EvalBatches:
        return self._eval_loader(*self._test)

    def validation_data(self) -> tuple[Tensor, Tensor]:
        """All validation images and labels (callbacks use them to draw codes and reconstructions)."""
        images, labels = self._train
        return images[self.split.validation], labels[self.split.validation]

    def test_data(self) -> tuple[Tensor, Tensor]:
        """All test images and labels."""
        return self._test

    def labeled_data(self) -> tuple[Tensor, Tensor]:
        """The labeled training images and their labels, all that a classifier may learn from on this split."""
        images, labels = self._train
        return images[self.split.labeled], labels[self.split.labeled]

    def state_dict(self) -> dict[str, int | str]:
        """Saved in every checkpoint, so that evaluating or resuming it later can prove it uses the same split."""
        return self.split.summary() if self.split is not None else {}

    def load_state_dict(self, state_dict: dict[str, int | str]) -> None:
        self._expected_fingerprint = state_dict.get("split_fingerprint")
        self._check_fingerprint()

    def _check_fingerprint(self) -> None:
        if self.split is not None and self._expected_fingerprint not in (None, self.split.fingerprint):
            raise DataError(
                f"this checkpoint was trained on a different split (fingerprint {self._expected_fingerprint}, now "
                f"{self.split.fingerprint}): use the same seed, num_labels and val_size",
                ("seed", "num_labels", "val_size"),
            )
