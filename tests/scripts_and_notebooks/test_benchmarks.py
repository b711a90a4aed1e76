"""The README's benchmark commands still run and print the table the README quotes (no timing is asserted), and the
GPU check refuses a machine without CUDA in one line."""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torchmetrics.functional.classification import multiclass_confusion_matrix

from tests.helpers import REPO_ROOT, TINY_FLAGS, load_benchmark


def test_throughput_prints_one_consistent_row_per_variant(mnist_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    throughput = load_benchmark("throughput")
    threads = torch.get_num_threads()
    try:
        throughput.main(
            [
                "--data-dir",
                str(mnist_dir),
                "--variants",
                "ae",
                "semi",
                "--batches",
                "2",
                "--warmup",
                "1",
                "--repeats",
                "1",
                "--threads",
                "1",
                "--precision",
                "32-true",
                "bf16-mixed",
            ]
        )
    finally:
        torch.set_num_threads(threads)
    lines = capsys.readouterr().out.splitlines()
    by_precision = lines.index(next(line for line in lines if line.startswith("The Lightning loop by precision")))
    lines, precision_lines = lines[:by_precision], lines[by_precision:]
    header = next(line for line in lines if line.startswith("| variant"))
    assert [cell.strip() for cell in header.strip("|").split("|")][1:4] == [
        "Lightning steps/s",
        "bare loop steps/s",
        "plain loop steps/s",
    ]
    rows = {
        cells[0]: cells[1:]
        for line in lines
        if line.startswith("| ") and not line.startswith("| variant")
        for cells in [[cell.strip() for cell in line.strip("|").split("|")]]
    }
    assert set(rows) == {"ae", "semi"}
    for cells in rows.values():
        lightning, bare, plain = (float(cell) for cell in cells[:3])
        assert min(lightning, bare, plain) > 0
        ratios = [float(cell.rstrip("x")) for cell in cells[3:]]
        # columns: Lightning / plain (wall), (CPU), bare / plain, Lightning / bare
        assert ratios[0] == pytest.approx(lightning / plain, abs=0.01)
        assert ratios[2] == pytest.approx(bare / plain, abs=0.01)
        assert ratios[3] == pytest.approx(lightning / bare, abs=0.01)
    # the Lightning loop once more per precision, the first one (32-true) the reference
    precision_rows = [
        [cell.strip() for cell in line.strip("|").split("|")]
        for line in precision_lines
        if line.startswith("| ") and not line.startswith("| variant")
    ]
    assert [(row[0], row[1]) for row in precision_rows] == [
        ("ae", "32-true"),
        ("ae", "bf16-mixed"),
        ("semi", "32-true"),
        ("semi", "bf16-mixed"),
    ]
    for variant, precision, rate, ratio in precision_rows:
        assert float(rate) > 0
        reference = next(float(row[2]) for row in precision_rows if row[0] == variant and row[1] == "32-true")
        assert float(ratio.rstrip("x")) == pytest.approx(float(rate) / reference, abs=0.02)
        if precision == "32-true":
            assert float(rate) == pytest.approx(float(rows[variant][0]), abs=0.01)


NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is visible")


@NO_CUDA
@pytest.mark.parametrize("accelerator", ["gpu", "cuda"])
def test_throughput_on_a_gpu_without_one_is_one_line_and_exit_2(
    accelerator: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as stopped:
        load_benchmark("throughput").main(["--accelerator", accelerator])
    assert stopped.value.code == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and f"--accelerator {accelerator} needs a CUDA device" in error, error


def gpu_check(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(REPO_ROOT / "benchmarks" / "gpu_check.sh"), *args],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHON": sys.executable},
        timeout=120,
    )


def test_gpu_check_needs_the_mnist_folder(tmp_path: Path) -> None:
    assert gpu_check().returncode == 2
    missing = gpu_check(str(tmp_path))
    assert missing.returncode == 2 and "train-images-idx3-ubyte (or train-images-idx3-ubyte.gz) is missing" in (
        missing.stderr
    )


@NO_CUDA
def test_gpu_check_unpacks_gzipped_mnist_then_needs_cuda(tiny_mnist_dir: Path, tmp_path: Path) -> None:
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for source in (tiny_mnist_dir / "MNIST" / "raw").iterdir():
        (raw / f"{source.name}.gz").write_bytes(gzip.compress(source.read_bytes()))
    result = gpu_check(str(tmp_path))
    assert result.returncode == 2
    assert result.stderr == "gpu_check.sh needs a CUDA device; torch.cuda.is_available() is False here\n"
    assert result.stdout == ""
    for source in (tiny_mnist_dir / "MNIST" / "raw").iterdir():
        assert (raw / source.name).read_bytes() == source.read_bytes()


PLOT_CASES = {
    # as train.py's CSV logger writes it: training means and validation in separate rows, and (runs written before
    # train.py stopped logging it) the best checkpoint's final validation again, at the number of trained epochs; the
    # CSV logger may write an epoch as "1.0"
    "an accuracy, drawn as error": (
        "epoch,step,train/recon_loss_epoch,val/acc\n"
        "0,99,,0.5\n0,99,30.0,\n1.0,199,,0.75\n1.0,199,25.0,\n2,299,,0.7\n2,299,24.0,\n3,299,,0.75\n",
        ["--run", "100={run}"],
        "semi-100.csv",
        ["epoch,val_acc", "0,0.5000", "1,0.7500", "2,0.7000"],
    ),
    # a Parzen estimate every other epoch: the epochs without one are left out
    "any other metric, with the paper's number from the command line": (
        "epoch,step,train/recon_loss_epoch,val/parzen_ll\n"
        "0,99,30.0,\n1,199,,290.5\n1,199,25.0,\n2,299,24.0,\n3,399,,301.25\n3,399,23.0,\n",
        [
            "--run",
            "seed0={run}",
            "--metric",
            "val/parzen_ll",
            "--unit",
            "",
            "--paper",
            "seed0=340",
            "--csv-prefix",
            "parzen",
        ],
        "parzen-seed0.csv",
        ["epoch,val_parzen_ll", "1,290.5000", "3,301.2500"],
    ),
}


@pytest.mark.parametrize("case", PLOT_CASES)
def test_plot_curves_draws_the_metric_and_writes_each_runs_curve(case: str, tmp_path: Path) -> None:
    metrics, args, csv_name, expected_rows = PLOT_CASES[case]
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.csv").write_text(metrics)
    out = tmp_path / "curves.png"
    load_benchmark("plot_curves").main(
        [arg.format(run=run) for arg in args] + ["--out", str(out), "--csv-dir", str(tmp_path / "results")]
    )
    assert 0 < out.stat().st_size < 300_000
    assert (tmp_path / "results" / csv_name).read_text().split() == expected_rows


def test_plot_curves_refuses_a_papers_number_that_is_not_a_number(tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        load_benchmark("plot_curves").main(
            ["--run", f"x={tmp_path}", "--paper", "x=many", "--out", str(tmp_path / "c.png")]
        )


def test_confusion_counts_each_true_and_predicted_pair() -> None:
    confusion = load_benchmark("confusion")
    labels = torch.tensor([9, 9, 9, 4, 4, 1, 1, 1])
    predictions = torch.tensor([4, 4, 9, 9, 4, 1, 1, 7])
    counts = multiclass_confusion_matrix(predictions, labels, 10)
    assert counts.sum() == 8 and counts.trace() == 4
    assert counts[9, 4] == 2 and counts[4, 9] == 1 and counts[1, 7] == 1
    assert confusion.top_confusions(counts, 5) == [(9, 4, 2), (1, 7, 1), (4, 9, 1)]
    text = confusion.report(counts, 2)
    assert "accuracy 50.00 % (4 errors of 8)" in text and "9->4: 2" in text and "4:3/2" in text


def test_confusion_reads_a_classifier_checkpoint_and_refuses_a_clustering_one(
    tiny_mnist_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import train

    for variant in ("semi", "clustering"):
        assert (
            train.main(
                [
                    "--variant",
                    variant,
                    "--run-name",
                    variant,
                    "--data-dir",
                    str(tiny_mnist_dir),
                    "--output-dir",
                    str(tmp_path),
                    *TINY_FLAGS,
                ]
            )
            == 0
        )
    capsys.readouterr()
    confusion = load_benchmark("confusion")
    assert confusion.main([str(tmp_path / "semi" / "checkpoints" / "last.ckpt")]) == 0
    out = capsys.readouterr().out
    received = out.split("images received / held per class: ")[1].split()
    # every one of the 100 validation images is predicted once and held once
    assert sum(int(cell.split(":")[1].split("/")[0]) for cell in received) == 100
    assert sum(int(cell.split("/")[1]) for cell in received) == 100
    assert confusion.main([str(tmp_path / "clustering" / "checkpoints" / "last.ckpt")]) == 2
    assert "not a digit classifier" in capsys.readouterr().err


def test_reproduce_semi_reports_the_mean_and_std_over_seeds_as_the_paper_does() -> None:
    def results(labels: str, seed: int, test_acc: float) -> dict:
        return {
            "labels": labels,
            "seed": seed,
            "epochs": 60,
            "val": {"val/acc": 0.98},
            "test": {"test/acc": test_acc},
            "wall_seconds": 2760.0,
        }

    # the 1,000-label row's three seeds (2.07, 2.17, 1.92 % test error) and a single 100-label run
    rows = [results("1000", 0, 0.9793), results("1000", 1, 0.9783), results("1000", 2, 0.9808), results("100", 0, 0.96)]
    lines = load_benchmark("reproduce_semi").table(rows)
    per_run = [line for line in lines if line.startswith(("| 1000 | ", "| 100 | ")) and line.count("|") == 8]
    assert [line.split("|")[5].strip() for line in per_run] == ["2.07", "2.17", "1.92", "4.00"]
    summary = [line for line in lines if line.count("|") == 5 and line.startswith("| 1")]
    # a sample standard deviation (n - 1), as the README's rows report; one seed gives no summary line
    assert summary == ["| 1000 | 3 | 2.05 +- 0.13 | 1.60 +- 0.08 |"]
