"""The command line of train.py, and the flags evaluate.py shares with it: the parser (its model flags generated
from every variant's hyperparameter declarations, a preset's values as its defaults), and what the flags ask of
the model, the Parzen estimate and the split."""

from __future__ import annotations

import argparse
import typing
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any, NoReturn, Protocol

from aae_lightning import VARIANTS, get_variant
from aae_lightning.base import AutoencoderHparams
from aae_lightning.checkpoint_io import NO_AVERAGING
from aae_lightning.errors import UserError, flag, flag_words, shown
from aae_lightning.hparams import Accepts, Range, declarations
from aae_lightning.presets import load_preset, preset_names

LOGGERS = ("wandb", "tensorboard", "csv", "none")
PROGRESS = ("auto", "bar", "lines", "none")
ALL_LABELS = "all"
#: a bad flag or file (and argparse's usage errors)
EXIT_USER_ERROR = 2
#: a NaN or infinite loss stopped training (the last checkpoint is the last good state)
EXIT_DIVERGED = 3
#: --average-weights: none, torch's equal average (SWA) or its exponential moving average (EMA)
AVERAGING = ("none", "swa", "ema")
DEFAULT_EMA_DECAY = 0.999
#: 0 would keep the latest weights only, 1 the first ones forever
EMA_DECAY = Range(float, 0, 1, low_open=True, high_open=True)
#: precisions that train 16-bit weights, in which the average is kept too: an EMA step of (1 - decay) and a late
#: SWA step of 1/n are below their resolution
HALF_WEIGHT_PRECISIONS = ("16-true", "bf16-true", "transformer-engine", "transformer-engine-float16")


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is a single line (the full usage is one `--help` away)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USER_ERROR, f"{self.prog}: error: {message} (see --help)\n")


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Each flag's default after its help, except None: such a flag's help says in words what leaving it out
    does (a preset's value or another flag's), which "(default: None)" would contradict."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None:
            return action.help
        return super()._get_help_string(action)


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


def ema_decay(text: str) -> float:
    value = float(text)
    if not EMA_DECAY.allows(value):
        raise argparse.ArgumentTypeError(f"must be {EMA_DECAY.describe()}, got {text}")
    return value


def label_count(text: str) -> int | None:
    """A number of labeled images, or 'all'."""
    if text == ALL_LABELS:
        return None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number or '{ALL_LABELS}', got {text!r}") from None


class Flags(Protocol):
    """Where flags are added: an argparse parser, or a group of one."""

    def add_argument(self, *names: str, **options: Any) -> argparse.Action: ...


def add_parzen_flags(flags: Flags) -> None:
    """The Parzen estimate's flags train.py and evaluate.py share (each adds its own beside them)."""
    flags.add_argument(
        "--parzen-samples",
        type=positive_int,
        default=10_000,
        help="decoder samples from the prior, the kernel centres; their codes come from --seed, the same at every "
        "estimate",
    )
    flags.add_argument(
        "--parzen-val-size",
        type=positive_int,
        default=1_000,
        help="validation images that choose the kernel width: the first ones of the validation set "
        "(parzen_ll.py uses 1,000)",
    )


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
    return "default " + _per_variant({variant: shown(value) for variant, value in defaults.items()})


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
        formatter_class=DefaultsHelpFormatter,
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
        "--fast-dev-run",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="one batch of training, validation (and test) as a smoke test",
    )
    run.add_argument(
        "--ckpt-path", default=None, help="resume from this checkpoint (or 'last': the newest last.ckpt of --run-name)"
    )
    run.add_argument(
        "--test",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="after training, evaluate the best checkpoint on the test set",
    )
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
    add_parzen_flags(parzen)
    parzen.add_argument(
        "--parzen-score-size",
        type=positive_int,
        default=2_000,
        help="the next validation images, scored with that width: val/parzen_ll is their mean",
    )

    averaging = parser.add_argument_group(
        "weight averaging: validation, the checkpoints' weights and --test see an average of the weights after "
        "each batch instead of the latest ones; training itself is the same with or without it"
    )
    averaging.add_argument(
        "--average-weights",
        choices=AVERAGING,
        default="none",
        help="swa: the equal average of the weights after every batch from --average-from-epoch on; ema: their "
        "exponential moving average with --ema-decay, started there; none: the latest weights",
    )
    averaging.add_argument(
        "--average-from-epoch",
        type=positive_int,
        default=None,
        help="with --average-weights swa or ema, the first epoch (counted from 1, at most --max-epochs) whose "
        "batches are averaged; the epochs before it validate and save the latest weights (if not given: 1)",
    )
    averaging.add_argument(
        "--ema-decay",
        type=ema_decay,
        default=None,
        help=f"with --average-weights ema, the share of the average each batch keeps: average = decay * average + "
        f"(1 - decay) * weights; allowed: {EMA_DECAY.describe()} (if not given: {DEFAULT_EMA_DECAY})",
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
        help="Lightning strategy: ddp, ddp_spawn, ddp_fork, ... (default with several devices: ddp); strategies "
        "that shard the model or drive the optimizers themselves (fsdp, deepspeed) are refused",
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
        parser.set_defaults(**_read_as_flags(preset, known.preset))
    args = parser.parse_args(argv)
    if args.variant is None:
        parser.error("the following arguments are required: --variant")
    return args


def _read_as_flags(preset: dict[str, Any], name: str) -> dict[str, Any]:
    """A preset's values converted and checked by the parser, as if typed on the command line (a default that
    `set_defaults` gives argparse directly is checked against no `choices` and, unless it is text, converted by no
    `type`)."""
    reader = build_parser()
    reader.prog = f"{reader.prog} --preset {name}"
    # an empty command line sets every flag's destination (to its default)
    defaults = vars(reader.parse_args([]))
    unknown = sorted(set(preset) - set(defaults))
    if unknown:
        reader.error(f"sets unknown flags: {', '.join(unknown)}")
    given = {key: value for key, value in preset.items() if value is not None}
    for key in preset.keys() - given.keys():
        # null: the flag not given, which undoes what a base preset gives it; a flag with a value by default has no
        # such state
        if defaults[key] is not None:
            reader.error(f"{flag(key)} has no value")
    read = reader.parse_args([word for key, value in given.items() for word in flag_words(key, value)])
    return {key: getattr(read, key) if key in given else None for key in preset}


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


def check_parzen_flags(args: argparse.Namespace, model_lacks: str | None) -> None:
    """What --parzen-every-n-epochs needs of the variant (`model_lacks`: what its model lacks for the estimate, None
    if nothing) and of the other flags, refused before any data is read."""
    every = args.parzen_every_n_epochs
    if not every:
        return
    if model_lacks is not None:
        raise UserError(
            f"--parzen-every-n-epochs needs a variant that decodes samples of a prior; --variant "
            f"{args.variant} has none ({model_lacks})"
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


def averaging_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The weight averaging the flags ask for, every setting filled in (None where it does not apply), keyed by
    flag: what the averaging callback is built from, what the run's loggers record, and what a checkpoint records
    and a resumption is compared by (`checkpoint_io.check_averaging_resumable`)."""
    kind = args.average_weights
    if kind == "none":
        return dict(NO_AVERAGING)
    decay = DEFAULT_EMA_DECAY if args.ema_decay is None else args.ema_decay
    return {
        "average_weights": kind,
        "average_from_epoch": 1 if args.average_from_epoch is None else args.average_from_epoch,
        "ema_decay": decay if kind == "ema" else None,
    }


def check_averaging_flags(args: argparse.Namespace) -> None:
    """Weight-averaging flags that would have no effect, refused before any data is read."""
    kind = args.average_weights
    if args.ema_decay is not None and kind != "ema":
        raise UserError(f"--ema-decay applies to --average-weights ema only (now {kind})")
    if kind == "none":
        if args.average_from_epoch is not None:
            raise UserError("--average-from-epoch needs --average-weights swa or ema")
        return
    start = averaging_settings(args)["average_from_epoch"]
    if start > args.max_epochs:
        raise UserError(
            f"--average-from-epoch {start} is after --max-epochs {args.max_epochs}: no weights would be averaged"
        )
    if str(args.precision) in HALF_WEIGHT_PRECISIONS:
        raise UserError(
            f"--average-weights {kind} with --precision {args.precision}: the average is kept in the weights' 16 "
            "bits, too coarse for its small steps; use 32-true or a mixed precision"
        )


def uses_labels(args: argparse.Namespace) -> bool:
    return "labeled" in get_variant(args.variant).train_streams


def split_labels(args: argparse.Namespace) -> int | None:
    """The labeled images to draw (None: all). Only a variant that learns from unlabeled images beside labeled ones
    draws --labels of them: one that trains on labeled images alone takes them all, and one that trains without
    labels takes none of --labels (a count would only constrain the split, and fail on data with fewer images of a
    digit)."""
    streams = get_variant(args.variant).train_streams
    return args.labels if "labeled" in streams and "unlabeled" in streams else None
