"""benchmarks/check_reproduction.py: its CSV readers, its comparison, its choice of reference (CPU family or a saved
file), and its row table against the files it names. Nothing here trains: the runs themselves take minutes (the
script's docstring)."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import pytest

from aae_lightning.run_folder import read_logged
from tests.helpers import REPO_ROOT, load_benchmark


@pytest.fixture(scope="module")
def check() -> ModuleType:
    return load_benchmark("check_reproduction")


# Lightning's CSVLogger layout: one row per logging call, the columns of the others left empty; training steps,
# validation and the training epoch means interleave, and validation of epoch 2 never came (a run that stopped).
METRICS_CSV = """\
epoch,step,train/recon_loss_step,val/acc,val/recon_loss,train/recon_loss_epoch
0,49,0.2100,,,
0,99,0.1900,,,
0,99,,0.7435500025749207,0.1200,
0,99,,,,0.2000
1,149,0.1700,,,
1.0,199,0.1600,,,
1.0,199,,0.7702000141143799,0.1100,
1.0,199,,,,0.1650
2,249,0.1500,,,
"""

DOCS_CSV = """\
epoch,val_acc
0,0.7436
1,0.7690
2,0.7967
"""


def test_read_logged_takes_each_epochs_validation_from_the_interleaved_rows(tmp_path: Path) -> None:
    path = tmp_path / "metrics.csv"
    path.write_text(METRICS_CSV)
    assert read_logged(path, "val/acc") == pytest.approx({0: 0.74355, 1: 0.7702})
    assert read_logged(path, "val/parzen_ll") == {}
    assert read_logged(tmp_path / "absent" / "metrics.csv", "val/acc") == {}


def test_read_expected_reads_the_docs_csv_and_refuses_a_missing_column(check: ModuleType, tmp_path: Path) -> None:
    path = tmp_path / "semi.csv"
    path.write_text(DOCS_CSV)
    assert check.read_expected(path, "val_acc") == {0: 0.7436, 1: 0.7690, 2: 0.7967}
    with pytest.raises(ValueError, match="no column 'val_parzen_ll'"):
        check.read_expected(path, "val_parzen_ll")


def test_compare_passes_within_tolerance_and_fails_beyond_it_or_on_a_missing_epoch(
    check: ModuleType, tmp_path: Path
) -> None:
    (tmp_path / "metrics.csv").write_text(METRICS_CSV)
    (tmp_path / "docs.csv").write_text(DOCS_CSV)
    expected = check.read_expected(tmp_path / "docs.csv", "val_acc")
    got = read_logged(tmp_path / "metrics.csv", "val/acc")

    checks = check.compare(expected, got, 0.0005)
    assert [(c.epoch, c.verdict) for c in checks] == [(0, "ok"), (1, "DIFFERS"), (2, "MISSING")]
    # the logged values are float32 written out in full, hence the absolute tolerance
    assert checks[0].difference == pytest.approx(-0.00005, abs=1e-6)
    assert checks[1].difference == pytest.approx(0.0012, abs=1e-6)
    assert checks[2].got is None and checks[2].difference is None
    assert [c.passed for c in checks] == [True, False, False]

    table = check.format_table([("semi-100", c) for c in checks])
    assert "| semi-100 | 0 | 0.7436 | 0.74355 | -0.00005 | ok |" in table
    assert "| semi-100 | 1 | 0.7690 | 0.77020 | +0.00120 | DIFFERS |" in table
    assert "| semi-100 | 2 | 0.7967 | - | - | MISSING |" in table


def test_compare_accepts_a_difference_of_exactly_the_tolerance(check: ModuleType) -> None:
    # 0.9716 - 0.9711 is 0.000500000000000056 in floats: the 4-decimal CSVs make such ties common
    assert 0.9716 - 0.9711 > 0.0005
    assert [c.verdict for c in check.compare({1: 0.9711}, {1: 0.9716}, 0.0005)] == ["ok"]
    assert [c.verdict for c in check.compare({1: 0.9711}, {1: 0.9717}, 0.0005)] == ["DIFFERS"]
    assert [c.verdict for c in check.compare({4: 306.75}, {4: 303.0, 9: 1.0}, 3.2)] == ["DIFFERS"]


def test_every_row_names_an_existing_preset_and_a_csv_per_family_that_covers_its_default_epochs(
    check: ModuleType,
) -> None:
    assert len({row.name for row in check.ROWS}) == len(check.ROWS)
    families = set(check.CPU_FAMILIES.values())
    for row in check.ROWS:
        assert (REPO_ROOT / "presets" / f"{row.preset}.yaml").is_file(), row.preset
        assert set(row.csvs) == families, row.name
        for path in row.csvs.values():
            expected = check.read_expected(REPO_ROOT / path, check.docs_column(row.metric))
            assert row.epochs - 1 in expected, (row.name, path)


@pytest.mark.parametrize(
    ("cpuinfo", "family"),
    [
        ("processor\t: 0\nvendor_id\t: GenuineIntel\ncpu family\t: 6\n", "intel"),
        ("processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\n", "amd"),
        ("processor\t: 0\nvendor_id\t: HygonGenuine\n", None),
        ("processor\t: 0\nCPU implementer\t: 0x41\n", None),  # ARM names no vendor_id
    ],
)
def test_cpu_family_reads_the_vendor_of_proc_cpuinfo(
    check: ModuleType, tmp_path: Path, cpuinfo: str, family: str | None
) -> None:
    path = tmp_path / "cpuinfo"
    path.write_text(cpuinfo)
    assert check.cpu_family(path) == family
    assert check.cpu_family(tmp_path / "absent") is None


def test_a_parzen_epoch_count_without_an_estimate_is_refused_before_any_run(
    check: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        check.main(["--rows", "parzen", "--epochs", "3", "--dry-run", "--family", "intel"])
    assert exit_info.value.code == 2
    assert "has no value for its last epoch, 2" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("family", "expects"),
    [
        ("amd", "epoch 0: 0.7050, epoch 1: 0.7255 (docs/results/clustering-16.csv)"),
        ("intel", "epoch 0: 0.6912, epoch 1: 0.7139 (docs/results/clustering-16-intel.csv)"),
    ],
)
def test_dry_run_prints_each_command_with_the_extra_flags_and_its_familys_values_and_trains_nothing(
    check: ModuleType, capsys: pytest.CaptureFixture[str], family: str, expects: str
) -> None:
    argv = ["--rows", "clustering-16", "--dry-run", "--family", family, "--", "--precision", "bf16-mixed"]
    assert check.main(argv) == 0
    out = capsys.readouterr().out
    assert "OMP_NUM_THREADS=1 " in out
    assert "--preset fast-clustering-16 --seed 1 " in out
    assert out.count("--max-epochs 2 --image-every-n-epochs 0 --precision bf16-mixed") == 1
    assert f"expects val_cluster_acc_majority {expects}" in out


def test_a_cpu_without_csvs_is_refused_unless_it_saves_or_compares_with_a_saved_file(
    check: ModuleType, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(check, "cpu_family", lambda: None)
    with pytest.raises(SystemExit) as exit_info:
        check.main(["--rows", "semi-100", "--dry-run"])
    assert exit_info.value.code == 2
    assert "pass --save FILE before a change and --against FILE after it" in capsys.readouterr().err

    # saving only: the commands run, nothing is expected of them
    assert check.main(["--rows", "semi-100", "--dry-run", "--save", str(tmp_path / "before.json")]) == 0
    out = capsys.readouterr().out
    assert "--preset fast-semi-100 --seed 0 " in out
    assert "expects" not in out


def test_against_compares_with_the_values_save_wrote(
    check: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    saved = tmp_path / "before.json"
    check.write_saved(saved, {"semi-100": {0: 0.7436, 1: 0.7702, 2: 0.8}}, None, ["--precision", "bf16-mixed"])
    assert check.read_saved(saved) == {"semi-100": {0: 0.7436, 1: 0.7702, 2: 0.8}}

    assert check.main(["--rows", "semi-100", "--dry-run", "--against", str(saved)]) == 0
    assert f"expects val_acc epoch 0: 0.7436, epoch 1: 0.7702 ({saved})" in capsys.readouterr().out

    # a row the file lacks, or too few of its epochs, is refused before any run
    for argv, message in (
        (["--rows", "semi-1000"], f"{saved} has no row semi-1000 (it has semi-100)"),
        (["--rows", "semi-100", "--epochs", "4"], f"{saved} has no value for its last epoch, 3"),
    ):
        with pytest.raises(SystemExit) as exit_info:
            check.main([*argv, "--dry-run", "--against", str(saved)])
        assert exit_info.value.code == 2
        assert message in capsys.readouterr().err

    not_saved = tmp_path / "other.json"
    not_saved.write_text("{}")
    with pytest.raises(SystemExit):
        check.main(["--rows", "semi-100", "--dry-run", "--against", str(not_saved)])
    assert "is no file written by --save" in capsys.readouterr().err
