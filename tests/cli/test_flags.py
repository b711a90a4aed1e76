"""How train.py reads its flags (no run starts): every edge value of every distinct hyperparameter declaration is
accepted as the user spells it, milestones may lie beyond the last epoch, switches have an on and an off spelling,
the Lightning settings it accepts pass without a word, and --help (evaluate.py's too) states each default once. What
it refuses: tests/cli/test_errors.py."""

from __future__ import annotations

import argparse
import re
from typing import Any

import pytest

import evaluate
from aae_lightning.cli import build_parser, model_hparams, parse_args
from aae_lightning.errors import flag_words
from aae_lightning.hardware import check_lightning_flags
from tests.helpers import Declaration, declaration_cases

#: (declaration, value) for every distinct declaration (tests.helpers.distinct_declarations) and each edge value;
#: that each variant builds with the edge values of its own fields: tests/unit/test_hparams.py
EDGES = declaration_cases(lambda accepts: accepts.edges())


@pytest.mark.parametrize(("declared", "value"), EDGES)
def test_a_flag_at_the_edge_of_the_declaration_is_accepted(declared: Declaration, value: Any) -> None:
    argv = ["--variant", declared.variant, *flag_words(declared.name, value)]
    assert model_hparams(parse_args(argv))[declared.name] == value


def test_milestones_beyond_the_last_epoch_are_allowed() -> None:
    """A run may be resumed with more epochs."""
    args = parse_args(["--variant", "ae", "--max-epochs", "2", "--lr-milestones", "5", "10"])
    assert model_hparams(args)["lr_milestones"] == (5, 10)


def test_boolean_hyperparameters_are_on_off_flags() -> None:
    for flag, expected in (("--encoder-batchnorm", True), ("--no-encoder-batchnorm", False)):
        args = parse_args(["--variant", "clustering", flag])
        assert model_hparams(args)["encoder_batchnorm"] is expected
    # a preset's value is a default that the flag overrides
    args = parse_args(["--preset", "paper-clustering-16", "--no-encoder-batchnorm"])
    assert model_hparams(args)["encoder_batchnorm"] is False


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
    check_lightning_flags(settings)
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("parser", [build_parser(), evaluate.build_parser()], ids=["train.py", "evaluate.py"])
def test_help_states_each_default_once(parser: argparse.ArgumentParser) -> None:
    """A flag whose help says its default in words must not get argparse's "(default: ...)" too, nor one whose
    default is None "(default: None)"."""
    # each option's entry starts on a line of its own; its help is wrapped over the lines that follow
    entries = [" ".join(entry.split()) for entry in re.split(r"\n(?=  -)", parser.format_help())[1:]]
    assert len(entries) > 10
    for entry in entries:
        assert "(default: None)" not in entry and entry.count("(default") <= 1, entry
