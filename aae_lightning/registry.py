"""Variants by their `--variant` name."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from aae_lightning.base import AutoencoderBase
from aae_lightning.errors import UserError

VARIANTS: dict[str, type[AutoencoderBase]] = {}
Variant = TypeVar("Variant", bound=type[AutoencoderBase])


def register(name: str) -> Callable[[Variant], Variant]:
    def add(cls: Variant) -> Variant:
        if name in VARIANTS:
            raise ValueError(f"variant {name!r} is registered twice")
        cls.variant_name = name
        VARIANTS[name] = cls
        return cls

    return add


def get_variant(name: str) -> type[AutoencoderBase]:
    try:
        return VARIANTS[name]
    except KeyError:
        raise UserError(f"unknown variant {name!r}; choose from {', '.join(sorted(VARIANTS))}") from None
