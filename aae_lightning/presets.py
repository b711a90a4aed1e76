"""Presets: a paper experiment's flag values in a YAML file of the repository's `presets/` folder (or any YAML file),
which `train.py --preset` makes the defaults of its flags."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aae_lightning.errors import UserError, first_line

PRESET_DIR = Path(__file__).resolve().parent.parent / "presets"


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
        raise UserError(f"--preset {path} is not valid YAML ({first_line(error)})") from None
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
