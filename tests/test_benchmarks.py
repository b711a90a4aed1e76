"""The README's benchmark commands still run and print the table the README quotes (no timing is asserted)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]


def load_benchmark(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "benchmarks" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_throughput_prints_one_consistent_row_per_variant(mnist_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    throughput = load_benchmark("throughput")
    threads = torch.get_num_threads()
    try:
        throughput.main(["--data-dir", str(mnist_dir), "--variants", "ae", "semi", "--batches", "2", "--warmup", "1",
                         "--repeats", "1", "--threads", "1"])
    finally:
        torch.set_num_threads(threads)
    lines = capsys.readouterr().out.splitlines()
    header = next(line for line in lines if line.startswith("| variant"))
    assert [cell.strip() for cell in header.strip("|").split("|")][1:4] == [
        "Lightning steps/s", "bare loop steps/s", "plain loop steps/s"]
    rows = {cells[0]: cells[1:] for line in lines if line.startswith("| ") and not line.startswith("| variant")
            for cells in [[cell.strip() for cell in line.strip("|").split("|")]]}
    assert set(rows) == {"ae", "semi"}
    for cells in rows.values():
        lightning, bare, plain = (float(cell) for cell in cells[:3])
        assert min(lightning, bare, plain) > 0
        ratios = [float(cell.rstrip("x")) for cell in cells[3:]]
        # columns: Lightning / plain (wall), (CPU), bare / plain, Lightning / bare
        assert ratios[0] == pytest.approx(lightning / plain, abs=0.01)
        assert ratios[2] == pytest.approx(bare / plain, abs=0.01)
        assert ratios[3] == pytest.approx(lightning / bare, abs=0.01)
