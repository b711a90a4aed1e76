"""What each hyperparameter accepts (aae_lightning/hparams.py), tested from the declarations themselves: for every
field of every variant's `Hparams`, the values just outside what it declares are refused, from Python (an
`HparamError`) and through train.py (one line, exit code 2, before any data is read), and the values at its edges
are accepted. Then the relations between fields, Lightning's own arguments, and the issue's examples through a
child process and the real script.

The generated cases call `train.main` in this process (a few milliseconds each); only the examples at the end
start processes, all at once.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import torch
from test_cli import REPO_ROOT, TINY, assert_one_line_error, start, train_py

import train
from aae_lightning import VARIANTS, AutoencoderBase, get_variant
from aae_lightning.base import AutoencoderHparams
from aae_lightning.errors import HparamError
from aae_lightning.hparams import Accepts, declarations, flag, shown

#: small networks, so that building a model for an accepted value costs milliseconds
SMALL = {"hidden_sizes": (8,), "disc_hidden_sizes": (8,)}


def small(variant: str, **hparams: Any) -> AutoencoderBase:
    cls = get_variant(variant)
    sizes = {name: value for name, value in SMALL.items() if name in cls.Hparams.__dataclass_fields__}
    return cls(**{**sizes, **hparams})


def declared(variant: str) -> dict[str, Accepts]:
    """The declarations of a variant's fields; a field without one is left to the test that looks for them."""
    return {
        item.name: item.metadata["accepts"]
        for item in fields(get_variant(variant).Hparams)
        if "accepts" in item.metadata
    }


def generated(values: Callable[[Accepts], list[Any]]) -> list[Any]:
    """(variant, field, value) for every field of every variant and each value `values` gives for its declaration."""
    return [
        pytest.param(variant, name, value, id=f"{variant}-{name}-{shown(value)}")
        for variant in sorted(VARIANTS)
        for name, accepts in declared(variant).items()
        for value in values(accepts)
    ]


OUTSIDE = generated(lambda accepts: accepts.outside())
EDGES = generated(lambda accepts: accepts.edges())
FIELDS = [
    pytest.param(variant, name, id=f"{variant}-{name}") for variant in sorted(VARIANTS) for name in declared(variant)
]


def cli(name: str, value: Any) -> list[str]:
    """`value` as train.py's words for the field `name`: a list's items as words of their own, a switch by its
    spelling, anything else after '=' (so that '-inf' or '' is read as the value, not as a flag)."""
    if isinstance(value, tuple):
        return [flag(name), *map(str, value)]
    if isinstance(value, bool):
        return [flag(name) if value else "--no-" + flag(name)[2:]]
    return [f"{flag(name)}={value}"]


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


def run_main(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """`train.main(argv)` in this process: its exit code and what it wrote to stderr."""
    try:
        code = train.main(argv)
    except SystemExit as exit_:  # argparse's own refusals
        code = exit_.code
    return code, capsys.readouterr().err


# ----- the declarations ---------------------------------------------------------------------------------------------
def test_every_hyperparameter_declares_what_it_accepts() -> None:
    for variant, cls in sorted(VARIANTS.items()):
        undeclared = [
            item.name for item in fields(cls.Hparams) if not isinstance(item.metadata.get("accepts"), Accepts)
        ]
        assert not undeclared, f"{variant}: give {', '.join(undeclared)} a declaration: hparam(..., accepts=...)"
        assert set(declarations(cls.Hparams)) == {item.name for item in fields(cls.Hparams)}


def test_a_field_without_a_declaration_stops_its_dataclass_from_being_made() -> None:
    @dataclass
    class Undeclared(AutoencoderHparams):
        extra: int = 3

    with pytest.raises(TypeError, match="Undeclared.extra declares nothing"):
        Undeclared()


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_default_is_accepted(variant: str) -> None:
    get_variant(variant).Hparams()


# ----- generated from the declarations ------------------------------------------------------------------------------
@pytest.mark.parametrize(("variant", "name", "value"), OUTSIDE)
def test_a_value_just_outside_the_declaration_is_refused(variant: str, name: str, value: Any) -> None:
    with pytest.raises(HparamError) as caught:
        small(variant, **{name: value})
    message = str(caught.value)
    assert message == f"{flag(name)} {shown(value)} is not allowed: it must be {declared(variant)[name].describe()}"


@pytest.mark.parametrize(("variant", "name"), FIELDS)
def test_a_value_of_another_type_is_refused(variant: str, name: str) -> None:
    for value in (None, object()):
        with pytest.raises(HparamError, match=f"^{flag(name)} "):
            small(variant, **{name: value})


@pytest.mark.parametrize(("variant", "name", "value"), EDGES)
def test_a_value_at_the_edge_of_the_declaration_is_accepted(variant: str, name: str, value: Any) -> None:
    model = small(variant, **{name: value})
    assert getattr(model.config, name) == value
    model.configure_optimizers()  # torch takes the edge rates and momenta too


@pytest.mark.parametrize(("variant", "name", "value"), OUTSIDE)
def test_a_flag_just_outside_the_declaration_is_one_line_and_exit_code_2(
    variant: str, name: str, value: Any, no_data: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    code, stderr = run_main(["--variant", variant, *cli(name, value), *no_data], capsys)
    assert_one_line_error(
        code, stderr, [f"{flag(name)} {shown(value)} is not allowed", declared(variant)[name].describe()]
    )


@pytest.mark.parametrize(("variant", "name", "value"), EDGES)
def test_a_flag_at_the_edge_of_the_declaration_is_accepted(variant: str, name: str, value: Any) -> None:
    assert train.model_hparams(train.parse_args(["--variant", variant, *cli(name, value)]))[name] == value


# ----- relations, and the other ways a model is made ----------------------------------------------------------------
def test_a_2d_prior_on_a_code_of_another_width_is_refused() -> None:
    with pytest.raises(HparamError, match="--prior swiss_roll is 2-D only, but --latent-dim is 3"):
        get_variant("aae").Hparams(prior="swiss_roll", latent_dim=3)


def test_milestones_beyond_the_last_epoch_are_allowed() -> None:
    """A run may be resumed with more epochs."""
    args = train.parse_args(["--variant", "ae", "--max-epochs", "2", "--lr-milestones", "5", "10"])
    assert train.model_hparams(args)["lr_milestones"] == (5, 10)


def test_a_checkpoint_with_a_value_outside_its_declaration_is_refused_when_loaded(tmp_path: Path) -> None:
    model = small("semi")
    path = tmp_path / "edited.ckpt"
    torch.save(
        {
            "state_dict": model.state_dict(),
            "hyper_parameters": {**model.hparams, "dropout": 1.5},
            "pytorch-lightning_version": pl.__version__,
        },
        path,
    )
    with pytest.raises(HparamError, match=r"^--dropout 1\.5 is not allowed"):
        get_variant("semi").load_from_checkpoint(path, map_location="cpu", weights_only=False)


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


@pytest.mark.parametrize(
    "settings",
    [
        {"accelerator": "cpu", "devices": 1, "num_nodes": 1, "strategy": "auto", "precision": "32-true"},
        {"accelerator": "cpu", "devices": 2, "num_nodes": 2, "strategy": "ddp", "precision": "bf16-mixed"},
    ],
    ids=["single", "ddp"],
)
def test_lightning_flags_it_accepts_pass_without_a_word(
    settings: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    train.check_lightning_flags(settings)
    assert capsys.readouterr().err == ""


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


@pytest.fixture(scope="module")
def examples(tiny_mnist_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Every example through `train.main` in one child process (`test_cli.run_cases`), and a few through the script,
    all started at once, on data a run could train on: only the check stands between each of them and training."""
    work = tmp_path_factory.mktemp("hparam_examples")
    common = [
        "--data-dir",
        str(tiny_mnist_dir),
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
    argv = {name: ["--variant", variant, *flags, *common] for name, (variant, flags, _) in ISSUE_EXAMPLES.items()}
    (work / "cases.json").write_text(json.dumps(argv))
    processes = {
        "cases": start(
            [
                sys.executable,
                "-c",
                f"import test_cli; test_cli.run_cases({str(work / 'cases.json')!r}, {str(work / 'results.json')!r})",
            ],
            cwd=work,
        ),
        **{name: start(train_py(*argv[name]), cwd=REPO_ROOT) for name in THROUGH_THE_SCRIPT},
    }
    try:
        finished = {name: (process.communicate(timeout=600), process.returncode) for name, process in processes.items()}
        (_, stderr), code = finished.pop("cases")
        assert code == 0, stderr
        yield {"work": work, "results": json.loads((work / "results.json").read_text()), "scripts": finished}
    finally:
        for process in processes.values():  # a failed test may leave one running
            if process.poll() is None:
                process.kill()
                process.communicate()


@pytest.mark.parametrize("name", sorted(ISSUE_EXAMPLES))
def test_the_issues_example_is_one_line_and_exit_code_2(examples: dict[str, Any], name: str) -> None:
    result = examples["results"][name]
    assert_one_line_error(result["code"], result["stderr"], ISSUE_EXAMPLES[name][2])


@pytest.mark.parametrize("name", THROUGH_THE_SCRIPT)
def test_the_issues_example_through_the_script(examples: dict[str, Any], name: str) -> None:
    (stdout, stderr), code = examples["scripts"][name]
    assert_one_line_error(code, stderr, ISSUE_EXAMPLES[name][2])
    assert stdout == ""


def test_no_example_starts_a_run(examples: dict[str, Any]) -> None:
    assert not (examples["work"] / "runs").exists()
