"""The presets (presets/*.yaml, aae_lightning/presets.py): each names only hyperparameters its variant accepts, a
preset holds what differs from its base, the semi-supervised ones build the paper's model (Table 2), and the CPU
budget ones depart from the paper's preset only in their budget."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import yaml

from aae_lightning import cli, get_variant
from aae_lightning.errors import UserError
from aae_lightning.presets import PRESET_DIR, load_preset, preset_names
from tests.helpers import phase_momenta


@pytest.mark.parametrize(
    "preset", [f"{schedule}-semi-{labels}" for schedule in ("paper", "fast") for labels in ("100", "1000", "all")]
)
def test_semi_presets_build_the_papers_model(preset: str) -> None:
    args = cli.parse_args(["--preset", preset])
    model = get_variant(args.variant)(**cli.model_hparams(args))
    assert args.variant == "semi" and args.labels == cli.label_count(preset.rsplit("-", 1)[1])
    defaults = get_variant("semi").Hparams()
    # one recipe: a preset differs from semi's defaults at most in its schedule
    assert {
        name for name in dataclasses.asdict(defaults) if getattr(model.config, name) != getattr(defaults, name)
    } <= {"lr_milestones"}
    assert model.config.init_std == 0.01
    assert phase_momenta(model) == {
        "reconstruction": 0.9,
        "regularization": 0.1,
        "generator": 0.1,
        "classification": 0.9,
    }
    assert model.config.input_noise == 0.3 and model.config.reconstruction_loss == "half_sse"
    assert model.config.latent_dim == 10 and model.priors["z"].std == 1.0
    assert [group["lr"] for optimizer in model.configure_optimizers() for group in optimizer.param_groups] == [
        0.01,
        0.1,
        0.1,
        0.1,
    ]


@pytest.mark.parametrize("preset", preset_names())
def test_every_preset_names_only_hyperparameters_its_variant_accepts(preset: str) -> None:
    args = cli.parse_args(["--preset", preset])
    assert cli.model_hparams(args)  # raises on a flag the variant lacks or a value its declaration refuses


def test_a_preset_holds_what_differs_from_its_base_and_its_own_values_win(tmp_path) -> None:
    (tmp_path / "narrow.yaml").write_text("base: paper-clustering-30\nhidden_sizes: [100, 100]\nmax_epochs: 3\n")
    (tmp_path / "narrower.yaml").write_text("base: narrow.yaml\nmax_epochs: 2\n")
    paper = load_preset("paper-clustering-30")
    narrower = load_preset(str(tmp_path / "narrower.yaml"))
    assert "base" not in narrower
    assert narrower == {**paper, "hidden_sizes": [100, 100], "max_epochs": 2}
    # through the command line a flag still wins over both
    args = cli.parse_args(["--preset", str(tmp_path / "narrower.yaml"), "--max-epochs", "7"])
    assert (args.max_epochs, args.hidden_sizes, args.num_clusters) == (7, [100, 100], 30)


@pytest.mark.parametrize(
    "files, message",
    [
        ({"loop.yaml": "base: loop.yaml\n"}, "its own base"),
        ({"a.yaml": "base: b.yaml\n", "b.yaml": "base: a.yaml\nmax_epochs: 1\n"}, "its own base"),
        ({"a.yaml": "base: no-such-preset\n"}, "no-such-preset"),
        ({"a.yaml": "base: [paper-semi-100]\n"}, "base must be a preset's name"),
    ],
)
def test_a_preset_base_that_cannot_be_resolved_is_refused(tmp_path, files: dict[str, str], message: str) -> None:
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    with pytest.raises(UserError, match=message):
        load_preset(str(tmp_path / next(iter(files))))


#: name -> (what a preset sets, what the one-line refusal must say beside the preset's name): each value is refused
#: as the same value typed after its flag would be
REFUSED_VALUES: dict[str, tuple[dict[str, Any], list[str]]] = {
    "epochs_0": ({"max_epochs": 0}, ["--max-epochs", "positive integer, got 0"]),
    "epochs_text": ({"max_epochs": "ten"}, ["--max-epochs", "'ten'"]),
    "unknown_variant": ({"variant": "vae"}, ["--variant", "'vae'"]),
    "labels_text": ({"labels": "some"}, ["--labels", "'all'", "'some'"]),
    "list_of_text": ({"hidden_sizes": [1000, "wide"]}, ["--hidden-sizes", "'wide'"]),
    "switch_given_a_number": ({"download": 1}, ["--download", "ignored explicit argument"]),
    "no_value": ({"max_epochs": None}, ["--max-epochs has no value"]),
    "switch_for_a_number": ({"max_epochs": True}, ["--max-epochs", "expected one argument"]),
    "unknown_flag": ({"epochs": 3}, ["unknown flags: epochs"]),
    "unknown_averaging": ({"average_weights": "mean"}, ["--average-weights", "'mean'"]),
    "ema_decay_1": ({"average_weights": "ema", "ema_decay": 1}, ["--ema-decay", "(0, 1), got 1"]),
    "ema_decay_0": ({"average_weights": "ema", "ema_decay": 0.0}, ["--ema-decay", "(0, 1), got 0.0"]),
    # 0 is refused, not taken for "not given" (epoch 1)
    "average_from_epoch_0": ({"average_weights": "swa", "average_from_epoch": 0}, ["--average-from-epoch", "got 0"]),
    "average_from_epoch_fraction": (
        {"average_weights": "swa", "average_from_epoch": 1.5},
        ["--average-from-epoch", "'1.5'"],
    ),
}


@pytest.mark.parametrize("name", sorted(REFUSED_VALUES))
def test_a_presets_values_are_checked_as_the_flags_are(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    values, fragments = REFUSED_VALUES[name]
    preset = tmp_path / "preset.yaml"
    preset.write_text(yaml.safe_dump({"variant": "aae", **values}))
    with pytest.raises(SystemExit) as refusal:
        cli.parse_args(["--preset", str(preset)])
    assert refusal.value.code == cli.EXIT_USER_ERROR
    stderr = capsys.readouterr().err
    assert len(stderr.splitlines()) == 1 and f"--preset {preset}" in stderr, stderr
    for fragment in fragments:
        assert fragment in stderr, stderr


def test_a_presets_values_are_converted_as_the_flags_are(tmp_path: Path) -> None:
    preset = tmp_path / "preset.yaml"
    preset.write_text(
        "variant: semi\nlabels: all\ninit_std: 1e-2\nhidden_sizes: [500, 500]\ndownload: false\ntest: true\n"
        "fast_dev_run: false\n"
    )
    from_preset = cli.parse_args(["--preset", str(preset)])
    typed = cli.parse_args(
        ["--variant", "semi", "--labels", "all", "--init-std", "1e-2", "--hidden-sizes", "500", "500", "--no-download"]
        + ["--test", "--no-fast-dev-run"]
    )
    assert vars(from_preset) == {**vars(typed), "preset": str(preset)}


def test_a_null_in_a_preset_undoes_what_its_base_gives(tmp_path: Path) -> None:
    (tmp_path / "base.yaml").write_text("variant: semi\naverage_weights: ema\nema_decay: 0.99\ninit_std: 0.05\n")
    (tmp_path / "child.yaml").write_text("base: base.yaml\naverage_weights: swa\nema_decay: null\ninit_std: null\n")
    args = cli.parse_args(["--preset", str(tmp_path / "child.yaml")])
    assert (args.average_weights, args.ema_decay, args.init_std) == ("swa", None, None)


def own_settings(preset: str) -> dict:
    """What a preset's own file sets, before its base is merged in."""
    return yaml.safe_load((PRESET_DIR / f"{preset}.yaml").read_text())


@pytest.mark.parametrize("preset", [name for name in preset_names() if name.startswith("fast-")])
def test_every_cpu_budget_preset_names_the_paper_preset_it_departs_from(preset: str) -> None:
    own = own_settings(preset)
    assert own["base"] == "paper-" + preset.removeprefix("fast-")
    assert "variant" not in own  # the experiment is the paper's; only the budget differs


@pytest.mark.parametrize(
    "preset",
    [name for name in preset_names() if name.startswith("fast-") and "lr_milestones" in own_settings(name)],
)
def test_a_cpu_budget_schedule_drops_its_rates_before_it_ends(preset: str) -> None:
    """A budget preset that sets its own milestones compresses the paper's schedule: a milestone at or past its
    last epoch would leave a drop that never happens (the paper's 50 and 1000 inherited into 60 epochs, say)."""
    own = own_settings(preset)
    resolved = load_preset(preset)
    assert resolved["lr_milestones"] == own["lr_milestones"]
    assert all(0 < milestone < resolved["max_epochs"] for milestone in resolved["lr_milestones"])
