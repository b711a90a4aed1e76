"""What a callback may need of a trained module beyond the API every variant has (`encode`, `decode`,
`reconstruct`, `represent`, `num_classes`): the capabilities `AutoencoderBase` declares, read from those
declarations. Each callback lists its needs; on a module that lacks one it does nothing and says which."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from aae_lightning.base import AutoencoderBase


@dataclass(frozen=True)
class Need:
    """A capability a module declares: `name` is how messages call it, `met` reads the declaration."""

    name: str
    met: Callable[[AutoencoderBase], bool]


#: a prior on z to decode samples of: every variant but the plain autoencoder
PRIOR = Need("latent_prior", lambda module: module.latent_prior is not None)
#: class scores from `classify`
CLASSIFIER = Need("classify", lambda module: module.classifies)


def unmet(needs: Sequence[Need], module: AutoencoderBase) -> str | None:
    """Why `module` cannot serve a callback with these needs (which of them it lacks), or None if it can."""
    absent = [need.name for need in needs if not need.met(module)]
    return f"{type(module).__name__} has no {', '.join(absent)}" if absent else None
