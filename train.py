"""Train an adversarial autoencoder variant on MNIST.

    python train.py --variant semi --labels 100 --gpus 1
    python train.py --variant aae --prior mixture --data-dir ../shared/data --gpus 0 --logger csv

Every bad flag or file ends with one line on stderr and exit code 2; a NaN or infinite loss with one line
naming the phase, epoch and batch, and exit code 3.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import sys
import time
import typing
import uuid
import warnings
from collections.abc import Callable
from dataclasses import MISSING, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import torch

from aae_lightning import VARIANTS, AutoencoderBase, NonFiniteLossError, get_variant
from aae_lightning.base import AutoencoderHparams
from aae_lightning.checkpoint_io import AtomicCheckpointIO, check_resumable, read_checkpoint
from aae_lightning.console import quiet_console
from aae_lightning.distributed import leave_process_group
from aae_lightning.errors import UserError
from aae_lightning.hparams import Accepts, declarations, flag

if TYPE_CHECKING:  # for annotations; the functions import what they use where they need it, as the rest of this file
    import pytorch_lightning as pl

LOGGERS = ("wandb", "tensorboard", "csv", "none")
PROGRESS = ("auto", "bar", "lines", "none")
PRESET_DIR = Path(__file__).resolve().parent / "presets"
ALL_LABELS = "all"
EXIT_USER_ERROR = 2
#: a NaN or infinite loss stopped training (the last checkpoint is the last good state)
EXIT_DIVERGED = 3
#: the file in a run folder that holds its W&B run id
WANDB_RUN_ID_FILE = "wandb_run_id"
#: the Trainer arguments Lightning checks, each set by the flag of its name, in the order its checks are asked for
LIGHTNING_ARGUMENTS = ("accelerator", "devices", "num_nodes", "strategy", "precision")


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is a single line (the full usage is one `--help` away)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or a positive integer, got {text}")
    return value


def label_count(text: str) -> int | None:
    """A number of labeled images, or 'all'."""
    if text == ALL_LABELS:
        return None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number or '{ALL_LABELS}', got {text!r}") from None


def _hparam_fields() -> dict[str, tuple[Any, str, dict[str, Any], dict[str, Accepts]]]:
    """Every hyperparameter of every variant: name -> (type, help, {variant: default}, {variant: what it accepts})."""
    merged: dict[str, tuple[Any, str, dict[str, Any], dict[str, Accepts]]] = {}
    for variant, cls in sorted(VARIANTS.items()):
        hints = typing.get_type_hints(cls.Hparams)
        accepts = declarations(cls.Hparams)
        for field in fields(cls.Hparams):
            if field.name == "seed":  # the top-level --seed sets it
                continue
            default = field.default if field.default is not MISSING else field.default_factory()
            _, _, defaults, allowed = merged.setdefault(field.name, (hints[field.name], field.metadata["help"], {}, {}))
            defaults[variant] = default
            allowed[variant] = accepts[field.name]
    return merged


def _describe_defaults(defaults: dict[str, Any]) -> str:
    shown = {
        variant: " ".join(map(str, value)) if isinstance(value, tuple) else str(value)
        for variant, value in defaults.items()
    }
    return "default " + _per_variant({variant: text or "none" for variant, text in shown.items()})


def _per_variant(texts: dict[str, str]) -> str:
    """The one text every variant has, or each text followed by the variants it belongs to."""
    by_text: dict[str, list[str]] = {}
    for variant, text in texts.items():
        by_text.setdefault(text, []).append(variant)
    if len(by_text) == 1:
        return next(iter(by_text))
    return "; ".join(f"{text} for {', '.join(variants)}" for text, variants in by_text.items())


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        description="Train an adversarial autoencoder (Makhzani et al., 2015) on MNIST with PyTorch Lightning.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    run = parser.add_argument_group("run")
    run.add_argument(
        "--preset",
        default=None,
        help=f"a paper experiment's settings: a YAML file or a name from presets/ "
        f"({', '.join(preset_names()) or 'none yet'}); flags given explicitly win",
    )
    run.add_argument(
        "--variant", choices=sorted(VARIANTS), default=None, help="which model to train (required, or from --preset)"
    )
    run.add_argument("--max-epochs", type=positive_int, default=20, help="epochs to train")
    run.add_argument(
        "--labels",
        type=label_count,
        default=1000,
        help="labeled training images, a multiple of 10 drawn evenly per digit, or 'all' "
        "(the supervised variant always uses all; variants that train without labels ignore it)",
    )
    run.add_argument("--val-size", type=positive_int, default=10_000, help="training images held out for validation")
    run.add_argument("--data-dir", default="data", help="folder with MNIST/raw/ in torchvision's layout")
    run.add_argument(
        "--download",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="download MNIST into --data-dir if it is not there (files present: no network)",
    )
    run.add_argument(
        "--batch-size",
        type=positive_int,
        default=100,
        help="global batch size, split evenly over all devices (so it must divide by their number)",
    )
    run.add_argument(
        "--labeled-batch-size",
        type=positive_int,
        default=None,
        help="global batch size of the labeled stream (default: --batch-size)",
    )
    run.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seeds the split, the initialisation and the prior samples; "
        f"allowed: {declarations(AutoencoderHparams)['seed'].describe()}",
    )
    run.add_argument(
        "--fast-dev-run", action="store_true", help="one batch of training, validation (and test) as a smoke test"
    )
    run.add_argument(
        "--ckpt-path", default=None, help="resume from this checkpoint (or 'last': the newest last.ckpt of --run-name)"
    )
    run.add_argument("--test", action="store_true", help="after training, evaluate the best checkpoint on the test set")
    run.add_argument(
        "--results-json",
        type=Path,
        default=None,
        help="write validation and test metrics, the best checkpoint and the run folder here",
    )

    output = parser.add_argument_group("logging and outputs")
    output.add_argument(
        "--logger",
        choices=LOGGERS,
        default="wandb",
        help="where metrics go; wandb falls back to offline mode without credentials or network",
    )
    output.add_argument("--project", default="aae-lightning", help="W&B project")
    output.add_argument("--output-dir", type=Path, default=Path("runs"), help="each run gets a folder in here")
    output.add_argument(
        "--run-name", default=None, help="the run folder's name (default: variant, labels, seed and the start time)"
    )
    output.add_argument(
        "--log-every-n-batches",
        type=positive_int,
        default=50,
        help="log the training losses of every Nth batch (epoch means are always logged; "
        "Lightning's log_every_n_steps, which counts batches, not optimizer steps)",
    )
    output.add_argument(
        "--image-every-n-epochs",
        type=non_negative_int,
        default=1,
        help="draw latent grid, style grid, samples, reconstructions, latent scatter and confusion "
        "matrix every N epochs and after the last (PNGs in RUN_FOLDER/images/, and to the "
        "logger); 0: never",
    )
    output.add_argument(
        "--progress",
        choices=PROGRESS,
        default="auto",
        help="bar: Lightning's progress bar, with the main validation metric and the reconstruction "
        "loss; lines: one line per epoch on stdout (epoch, seconds, training losses, validation "
        "metrics, time left), for log files; auto: bar when stdout is a terminal, else lines; "
        "none: neither",
    )

    parzen = parser.add_argument_group(
        "Parzen log-likelihood on validation (variants with a prior): the kernel width is chosen on the first "
        "--parzen-val-size validation images, the next --parzen-score-size are scored"
    )
    parzen.add_argument(
        "--parzen-every-n-epochs",
        type=non_negative_int,
        default=0,
        help="every N epochs log val/parzen_ll, the Parzen window log-likelihood of validation images "
        "under decoder samples from the prior (as evaluate.py's test/parzen_ll), and choose the "
        "best checkpoint by it instead of the variant's own metric; --max-epochs must be a "
        "multiple of N; 0: never",
    )
    parzen.add_argument(
        "--parzen-samples",
        type=positive_int,
        default=10_000,
        help="decoder samples from the prior, the same codes at every estimate (seeded by --seed)",
    )
    parzen.add_argument(
        "--parzen-val-size",
        type=positive_int,
        default=1_000,
        help="validation images that choose the kernel width: the first ones of the validation set, "
        "as evaluate.py's --parzen-val-size",
    )
    parzen.add_argument(
        "--parzen-score-size",
        type=positive_int,
        default=2_000,
        help="the next validation images, scored with that width: val/parzen_ll is their mean",
    )

    hardware = parser.add_argument_group("hardware (Lightning Trainer arguments)")
    hardware.add_argument(
        "--gpus",
        type=int,
        default=None,
        help="number of CUDA devices; 0 trains on the CPU (default: one GPU if there is one, else CPU)",
    )
    hardware.add_argument("--accelerator", default=None, help="cpu, gpu, ...; overrides --gpus")
    hardware.add_argument("--devices", type=positive_int, default=None, help="devices per node; overrides --gpus")
    hardware.add_argument("--num-nodes", type=positive_int, default=1, help="machines, each with --devices devices")
    hardware.add_argument(
        "--strategy",
        default=None,
        help="Lightning strategy (default with several devices: DDP that tolerates parameters a phase leaves unused)",
    )
    hardware.add_argument("--precision", default="32-true", help="Lightning precision, e.g. 32-true, bf16-mixed")

    model = parser.add_argument_group(
        "model hyperparameters (each variant's defaults; each variant takes the ones it has)"
    )
    for name, (hint, help_text, defaults, accepts) in _hparam_fields().items():
        spelled = flag(name)
        if hint is not bool:  # a switch's range is its two spellings
            help_text += f"; allowed: {_per_variant({variant: a.describe() for variant, a in accepts.items()})}"
        help_text = f"{help_text} ({_describe_defaults(defaults)}; variants: {', '.join(defaults)})"
        origin = typing.get_origin(hint)
        if origin is tuple:
            model.add_argument(spelled, type=typing.get_args(hint)[0], nargs="*", default=None, help=help_text)
        elif hint is bool:  # type=bool would read "False" as True
            model.add_argument(spelled, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        else:
            model.add_argument(spelled, type=hint, default=None, help=help_text)
    return parser


def preset_names() -> list[str]:
    return sorted(path.stem for path in PRESET_DIR.glob("*.yaml"))


def load_preset(name: str, _extending: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A preset's flag values, keyed like argparse destinations (`max_epochs`, `reconstruction_lr`).

    A preset may name another as `base`: it then holds only what differs from that one (a CPU-budget version
    of a paper preset says only what it changes), and its own values win.
    """
    import yaml

    path = Path(name) if name.endswith((".yaml", ".yml")) else PRESET_DIR / f"{name}.yaml"
    if not path.is_file():
        raise UserError(f"unknown --preset {name!r}; choose from {', '.join(preset_names())} or give a YAML file")
    resolved = path.resolve()
    if resolved in _extending:
        chain = " -> ".join(seen.stem for seen in (*_extending, resolved))
        raise UserError(f"--preset {path} is its own base ({chain})")
    try:
        values = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise UserError(f"--preset {path} is not valid YAML ({str(error).splitlines()[0]})") from None
    if not isinstance(values, dict):
        raise UserError(f"--preset {path} must be a mapping of flag names to values")
    values = {key.replace("-", "_"): value for key, value in values.items()}
    base = values.pop("base", None)
    if base is None:
        return values
    if not isinstance(base, str):
        raise UserError(f"--preset {path}: base must be a preset's name, not {base!r}")
    # a base given as a file is found beside the preset that names it
    base_name = str(path.parent / base) if base.endswith((".yaml", ".yml")) else base
    try:
        base_values = load_preset(base_name, (*_extending, resolved))
    except UserError as error:
        raise UserError(f"{error} (the base of --preset {path})") from None
    return {**base_values, **values}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line; a preset's values become defaults, so explicit flags override them."""
    parser = build_parser()
    preset_parser = argparse.ArgumentParser(add_help=False)
    preset_parser.add_argument("--preset")
    known, _ = preset_parser.parse_known_args(argv)
    if known.preset is not None:
        try:
            preset = load_preset(known.preset)
        except UserError as error:
            parser.error(str(error))
        unknown = sorted(set(preset) - {action.dest for action in parser._actions})
        if unknown:
            parser.error(f"--preset {known.preset} sets unknown flags: {', '.join(unknown)}")
        parser.set_defaults(**preset)
    args = parser.parse_args(argv)
    if args.variant is None:
        parser.error("the following arguments are required: --variant")
    return args


def model_hparams(args: argparse.Namespace) -> dict[str, Any]:
    """The hyperparameters given on the command line, checked against the chosen variant."""
    cls = get_variant(args.variant)
    own = {field.name for field in fields(cls.Hparams)}
    chosen = {"seed": args.seed}
    for name in _hparam_fields():
        value = getattr(args, name)
        if value is None:
            continue
        if name not in own:
            raise UserError(f"{flag(name)} is not a hyperparameter of --variant {args.variant}")
        chosen[name] = tuple(value) if isinstance(value, list) else value
    cls.Hparams(**chosen)  # each value against its declaration (an HparamError), before any data is read
    return chosen


def check_parzen_flags(args: argparse.Namespace, model: AutoencoderBase) -> None:
    """What --parzen-every-n-epochs needs of the variant and the other flags, refused before any data is read."""
    every = args.parzen_every_n_epochs
    if not every:
        return
    from callbacks.parzen import ParzenLikelihood

    reason = ParzenLikelihood.unsupported(model)
    if reason is not None:
        raise UserError(
            f"--parzen-every-n-epochs needs a variant that decodes samples of a prior; --variant "
            f"{args.variant} has none ({reason})"
        )
    if args.max_epochs % every:
        # the best checkpoint is compared every N epochs only (ModelCheckpoint refuses an epoch without its
        # metric), so a last epoch off that rhythm would be estimated but could never be chosen
        raise UserError(
            f"--max-epochs {args.max_epochs} is not a multiple of --parzen-every-n-epochs {every}; "
            "the last epoch must be one of those the best checkpoint is chosen among"
        )
    needed = args.parzen_val_size + args.parzen_score_size
    if needed > args.val_size:
        raise UserError(
            f"--parzen-val-size {args.parzen_val_size} and --parzen-score-size {args.parzen_score_size} "
            f"take {needed} distinct validation images, more than --val-size {args.val_size}"
        )


def hardware_settings(args: argparse.Namespace) -> dict[str, Any]:
    """Lightning 2 has no `gpus` argument: map --gpus (and the pass-through flags) to accelerator/devices."""
    accelerator, devices = args.accelerator, args.devices
    if args.gpus is not None and accelerator is None:
        if args.gpus < 0:
            raise UserError(f"--gpus must be 0 (CPU) or a positive number of CUDA devices, got {args.gpus}")
        visible = torch.cuda.device_count()
        if args.gpus > visible:
            raise UserError(
                f"--gpus {args.gpus} asks for {args.gpus} CUDA device(s) but {visible} visible; "
                "use --gpus 0 to train on the CPU"
            )
        accelerator = "gpu" if args.gpus > 0 else "cpu"
        devices = devices or max(args.gpus, 1)
    accelerator = accelerator or "auto"
    devices = devices or 1
    check_lightning_flags(
        {
            "accelerator": accelerator,
            "devices": devices,
            "num_nodes": args.num_nodes,
            "strategy": args.strategy or "auto",
            "precision": args.precision,
        }
    )
    from datamodules.mnist import check_global_batch_sizes

    # checked before Lightning starts the other processes, so the user sees the message once
    check_global_batch_sizes(devices * args.num_nodes, args.batch_size, args.labeled_batch_size)
    strategy: Any = args.strategy
    if strategy is None and devices * args.num_nodes > 1:
        from pytorch_lightning.strategies import DDPStrategy

        # Each phase updates only some networks, so every backward pass leaves parameters without gradients;
        # plain DDP waits for them forever. Finding them costs one graph walk per backward pass, which
        # benchmarks/ddp_overhead.py could not tell from noise on these MLPs.
        strategy = DDPStrategy(find_unused_parameters=True)
    return {
        "accelerator": accelerator,
        "devices": devices,
        "num_nodes": args.num_nodes,
        "strategy": strategy or "auto",
        "precision": args.precision,
    }


def check_lightning_flags(settings: dict[str, Any]) -> None:
    """What Lightning refuses of these Trainer arguments (`LIGHTNING_ARGUMENTS`) is a `UserError` naming the flag.
    Lightning itself would refuse only once the Trainer is built, after the data is read, and with a traceback. Its
    own connector answers here, asked with one more argument each time, so that a refusal is the last one's. It
    builds the accelerator, strategy and precision objects only: nothing is launched."""
    from pytorch_lightning.trainer.connectors.accelerator_connector import _AcceleratorConnector

    asked: dict[str, Any] = {}
    disabled = logging.root.manager.disable
    # what Lightning would say here ("Using bfloat16 ...", a fallback's warning) the real Trainer says later
    logging.disable(logging.INFO)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for name in LIGHTNING_ARGUMENTS:
                asked[name] = settings[name]
                try:
                    _AcceleratorConnector(**asked)
                except Exception as error:  # ValueError, MisconfigurationException, ...: Lightning's choice  # noqa: BLE001
                    reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
                    raise UserError(f"{flag(name)} {settings[name]} is refused by Lightning: {reason}") from None
    finally:
        logging.disable(disabled)


def uses_labels(args: argparse.Namespace) -> bool:
    return "labeled" in get_variant(args.variant).train_streams


def split_labels(args: argparse.Namespace) -> int | None:
    """The labeled images to draw (None: all). A variant that trains without labels takes none of --labels:
    a count would only constrain the split, and fail on data with fewer images of a digit."""
    return args.labels if uses_labels(args) and args.variant != "supervised" else None


def run_name(args: argparse.Namespace) -> str:
    """The same on every process of a run: DDP launchers start the other ranks later, so a clock reading taken
    there would differ. The first process records it in the environment the others inherit."""
    if args.run_name:
        return args.run_name
    if "AAE_RUN_NAME" not in os.environ:
        labels = split_labels(args)
        labels_part = f"-{ALL_LABELS if labels is None else labels}labels" if uses_labels(args) else ""
        job = os.environ.get("SLURM_JOB_ID") or os.environ.get("TORCHELASTIC_RUN_ID")
        stamp = job if job and job != "none" else time.strftime("%Y%m%d-%H%M%S")
        os.environ["AAE_RUN_NAME"] = f"{args.variant}{labels_part}-seed{args.seed}-{stamp}"
    return os.environ["AAE_RUN_NAME"]


def make_logger(args: argparse.Namespace, run_dir: Path, config: dict[str, Any], resumed_epoch: int | None):
    """`resumed_epoch`: the last epoch the checkpoint this run resumes in its own folder finished (None: a new run)."""
    if args.logger == "none":
        return False
    if args.logger == "csv":
        from pytorch_lightning.loggers import CSVLogger

        logger = CSVLogger(run_dir, name="", version="")
        if resumed_epoch is not None:
            keep_csv_history(logger, resumed_epoch)
        return logger
    if args.logger == "tensorboard":
        from pytorch_lightning.loggers import TensorBoardLogger

        return TensorBoardLogger(run_dir, name="", version="")
    from callbacks.wandb_setup import make_wandb_logger

    return make_wandb_logger(
        project=args.project,
        name=run_dir.name,
        save_dir=run_dir,
        config=config,
        run_id=wandb_run_id(run_dir, resuming=resumed_epoch is not None),
    )


def build_callbacks(args: argparse.Namespace, checkpoint: Any) -> list[Any]:
    """The checkpoint, the run-config and W&B-axis callbacks, the image callbacks (unless
    --image-every-n-epochs 0), the Parzen estimate (with --parzen-every-n-epochs) and those of --progress.
    Imported here: matplotlib is not needed before training starts."""
    from callbacks.images import image_callbacks
    from callbacks.parzen import ParzenLikelihood
    from callbacks.progress import progress_callbacks
    from callbacks.run_config import LogRunConfig
    from callbacks.wandb_setup import WandbEpochAxis

    parzen = []
    if args.parzen_every_n_epochs:
        parzen.append(
            ParzenLikelihood(
                args.parzen_every_n_epochs,
                seed=args.seed,
                samples=args.parzen_samples,
                sigma_images=args.parzen_val_size,
                scored_images=args.parzen_score_size,
            )
        )
    return [
        checkpoint,
        LogRunConfig(),
        WandbEpochAxis(),
        *image_callbacks(args.image_every_n_epochs, seed=args.seed),
        *parzen,
        *progress_callbacks(args.progress),
    ]


def resolve_run(args: argparse.Namespace) -> tuple[Path, Path | None]:
    """The run folder and the checkpoint to start from. `--ckpt-path last` is the last.ckpt of the run named by
    --run-name; a checkpoint inside a run folder (RUN/checkpoints/x.ckpt) continues that run in its own folder,
    unless --run-name names another one."""
    if args.ckpt_path is None:
        return args.output_dir / run_name(args), None
    if args.ckpt_path == "last":
        if not args.run_name:
            raise UserError(
                "--ckpt-path last resumes the run named by --run-name (its folder in --output-dir); give --run-name"
            )
        run_dir = args.output_dir / args.run_name
        return run_dir, run_dir / "checkpoints" / "last.ckpt"
    path = Path(args.ckpt_path)
    if path.parent.name == "checkpoints" and not args.run_name:
        return path.parent.parent, path
    return args.output_dir / run_name(args), path


def wandb_run_id(run_dir: Path, resuming: bool) -> str | None:
    """The W&B run id, kept in the run folder: a resumed run goes on logging into the same W&B run, a new run in
    the folder gets a new id. Only rank 0 logs to W&B, so only rank 0 needs (and writes) it."""
    from pytorch_lightning.utilities import rank_zero_only

    if rank_zero_only.rank != 0:
        return None
    path = run_dir / WANDB_RUN_ID_FILE
    if resuming and path.is_file():
        return path.read_text().strip()
    run_id = uuid.uuid4().hex[:12]  # W&B takes any id of letters and digits
    run_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(run_id + "\n")
    return run_id


def keep_csv_history(logger: Any, last_epoch: int) -> None:
    """Lightning's CSV writer deletes an existing metrics.csv when it starts; a resumed run keeps the rows of
    the epochs its checkpoint had finished (later rows of the interrupted run are logged again) and writes them
    back at once, so a second interruption cannot lose them."""
    from pytorch_lightning.utilities import rank_zero_only

    path = Path(logger.log_dir) / "metrics.csv"
    if rank_zero_only.rank != 0 or not path.is_file():
        return
    with path.open(newline="") as file:
        rows = [row for row in csv.DictReader(file) if row.get("epoch") and int(float(row["epoch"])) <= last_epoch]
    writer = logger.experiment  # deletes the file
    writer.metrics.extend(rows)
    writer.save()


def train(args: argparse.Namespace) -> dict[str, Any]:
    import pytorch_lightning as pl
    from pytorch_lightning.callbacks import ModelCheckpoint, ProgressBar

    from datamodules import MNISTDataModule

    cls = get_variant(args.variant)
    hparams = model_hparams(args)
    hardware = hardware_settings(args)
    pl.seed_everything(args.seed, workers=True, verbose=False)
    model = cls(**hparams)
    check_parzen_flags(args, model)
    datamodule = MNISTDataModule(
        data_dir=args.data_dir,
        num_labels=split_labels(args),
        val_size=args.val_size,
        batch_size=args.batch_size,
        labeled_batch_size=args.labeled_batch_size,
        seed=args.seed,
        download=args.download,
        train_streams=cls.train_streams,
    )
    run_dir, ckpt_path = resolve_run(args)
    checkpoint_dir = run_dir / "checkpoints"
    resumed_epoch = None
    if ckpt_path is not None:
        # checked before reading the data (a bad path is a quick answer), and here because Lightning would fail
        # on a bad file with a traceback from deep inside its restore logic
        start = read_checkpoint(ckpt_path)
        check_resumable(start, ckpt_path, args.variant, dict(model.hparams), dict(datamodule.hparams))
        if ckpt_path.resolve().parent == checkpoint_dir.resolve():
            resumed_epoch = start["epoch"]
        del start  # its tensors would stay in memory for the whole run
    if "LOCAL_RANK" not in os.environ and "SLURM_PROCID" not in os.environ:
        # Bad data or split settings end here in one line, before Lightning prints its banner. Only a process no
        # launcher started: Lightning's DDP launcher starts the other ranks later, once the files are in place.
        datamodule.prepare_data()
        datamodule.setup("fit")
    monitor, mode = cls.monitor
    if args.parzen_every_n_epochs:
        from callbacks.parzen import ParzenLikelihood

        monitor, mode = ParzenLikelihood.metric, "max"
    checkpoint = ModelCheckpoint(
        dirpath=checkpoint_dir,
        filename="best-epoch{epoch:03d}",
        auto_insert_metric_name=False,
        monitor=monitor,
        mode=mode,
        save_top_k=1,
        # With the Parzen estimate, compared only at the epochs it logs its metric: at any other epoch
        # ModelCheckpoint would raise (before the first estimate) or compare again a value kept from an earlier one
        every_n_epochs=args.parzen_every_n_epochs or 1,
    )
    # Lightning's save_last rewrites last.ckpt only when a best checkpoint is written; resuming needs the latest
    # epoch, so a second callback writes it after every validation (after the best one: it carries its state)
    last_checkpoint = ModelCheckpoint(dirpath=checkpoint_dir, filename="last", enable_version_counter=False)
    config = {"variant": args.variant, **hparams, **datamodule.hparams}
    callbacks = [*build_callbacks(args, checkpoint), last_checkpoint]
    trainer = pl.Trainer(
        **hardware,
        max_epochs=args.max_epochs,
        logger=make_logger(args, run_dir, config, resumed_epoch),
        callbacks=callbacks,
        plugins=[AtomicCheckpointIO()],
        default_root_dir=run_dir,
        fast_dev_run=args.fast_dev_run,
        log_every_n_steps=args.log_every_n_batches,
        enable_progress_bar=any(isinstance(callback, ProgressBar) for callback in callbacks),
    )
    trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path and str(ckpt_path))
    best = checkpoint.best_model_path or None
    results: dict[str, Any] = {
        "variant": args.variant,
        "run_dir": str(run_dir),
        "best_checkpoint": best,
        "epochs": trainer.current_epoch,
        "split": datamodule.split.summary(),
        "val": _scalars(
            without_loggers(trainer, trainer.validate, model, datamodule=datamodule, ckpt_path=best, verbose=False)
        ),
    }
    if args.test:
        results["test"] = _scalars(trainer.test(model, datamodule=datamodule, ckpt_path=best, verbose=False))
    if trainer.is_global_zero:
        print(json.dumps(results, indent=2))
        if args.results_json is not None:
            args.results_json.parent.mkdir(parents=True, exist_ok=True)
            args.results_json.write_text(json.dumps(results, indent=2) + "\n")
    return results


def without_loggers(trainer: pl.Trainer, run: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """`run(*args, **kwargs)` with the trainer's loggers detached. The best checkpoint's validation metrics were
    logged at its epoch during training; logging them again would add a second point, at the number of trained
    epochs, to every logger's validation curves."""
    loggers, trainer.loggers = trainer.loggers, []
    try:
        return run(*args, **kwargs)
    finally:
        trainer.loggers = loggers


def _scalars(outputs: list[dict[str, float]]) -> dict[str, float]:
    return {name: float(value) for output in outputs for name, value in output.items()}


def main(argv: list[str] | None = None) -> int:
    quiet_console()
    args = parse_args(argv)
    try:
        train(args)
    except (UserError, NonFiniteLossError) as error:
        from pytorch_lightning.utilities import rank_zero_only

        if rank_zero_only.rank == 0:  # every DDP process finds the same problem; say it once
            print(f"error: {error}", file=sys.stderr)
        return EXIT_USER_ERROR if isinstance(error, UserError) else EXIT_DIVERGED
    finally:
        leave_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
