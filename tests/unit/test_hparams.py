"""What each hyperparameter accepts (aae_lightning/hparams.py), tested from the declarations themselves: for every
distinct field declaration, the values just outside it and values of another type are refused with an
`HparamError`; every variant builds with each edge value of each of its fields. Then the relations between
fields, and a checkpoint edited to hold a refused value. The same declarations through train.py:
tests/cli/test_errors.py (refused) and tests/cli/test_flags.py (accepted).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import torch

from aae_lightning import VARIANTS, AutoencoderBase, get_variant
from aae_lightning.base import AutoencoderHparams
from aae_lightning.errors import HparamError, flag, shown
from aae_lightning.hparams import Accepts, declarations
from tests.helpers import Declaration, declaration_cases, distinct_declarations

#: small networks, so that building a model for an accepted value costs milliseconds
SMALL = {"hidden_sizes": (8,), "disc_hidden_sizes": (8,)}
DECLARATIONS = distinct_declarations()
OUTSIDE = declaration_cases(lambda accepts: accepts.outside())


def small(variant: str, **hparams: Any) -> AutoencoderBase:
    cls = get_variant(variant)
    sizes = {name: value for name, value in SMALL.items() if name in cls.Hparams.__dataclass_fields__}
    return cls(**{**sizes, **hparams})


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
@pytest.mark.parametrize(("declared", "value"), OUTSIDE)
def test_a_value_just_outside_the_declaration_is_refused(declared: Declaration, value: Any) -> None:
    with pytest.raises(HparamError) as caught:
        small(declared.variant, **{declared.name: value})
    message = str(caught.value)
    assert message == f"{flag(declared.name)} {shown(value)} is not allowed: it must be {declared.accepts.describe()}"


@pytest.mark.parametrize("declared", DECLARATIONS, ids=lambda declared: f"{declared.variant}-{declared.name}")
def test_a_value_of_another_type_is_refused(declared: Declaration) -> None:
    for value in (None, object()):
        with pytest.raises(HparamError, match=f"^{flag(declared.name)} "):
            small(declared.variant, **{declared.name: value})


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_the_variant_builds_with_each_edge_value_of_each_of_its_fields(variant: str) -> None:
    """Through the variant's own class, so that the relations it checks between its fields see every edge: one
    test per variant, naming each field and value it fails on."""
    failures = []
    for name, accepts in declarations(get_variant(variant).Hparams).items():
        for value in accepts.edges():
            try:
                model = small(variant, **{name: value})
                model.configure_optimizers()  # torch takes the edge rates and momenta too
            except Exception as error:  # every failure is listed, not only the first
                failures.append(f"{flag(name)} {shown(value)}: {type(error).__name__}: {error}")
                continue
            if getattr(model.config, name) != value:
                failures.append(f"{flag(name)} {shown(value)}: built with {shown(getattr(model.config, name))}")
    assert not failures, f"--variant {variant} refuses edge values:\n" + "\n".join(failures)


# ----- relations, and the other ways a model is made ----------------------------------------------------------------
def test_a_2d_prior_on_a_code_of_another_width_is_refused() -> None:
    with pytest.raises(HparamError, match="--prior swiss_roll is 2-D only, but --latent-dim is 3"):
        get_variant("aae").Hparams(prior="swiss_roll", latent_dim=3)


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
