"""Every precision and strategy flag on this machine, as a user types them: each case trains or is refused in one
line before training.

    OMP_NUM_THREADS=1 python benchmarks/flag_sweep.py --data-dir ../shared/data [--variants semi aae ...]

Each case is `train.py --variant V --fast-dev-run` with small networks, on the CPU: one precision with one process,
or one strategy on two processes (`--accelerator cpu --devices 2`). A case passes if it exits 0 (trained) or exits 2
with exactly one line on stderr (refused, with the reason); anything else (a traceback, a crash) fails it. Prints a
table of the outcomes and exits 1 if a case failed.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from aae_lightning import VARIANTS  # noqa: E402

PRECISIONS = ["32-true", "64-true", "16-true", "bf16-true", "16-mixed", "bf16-mixed", "transformer-engine"]
STRATEGIES = ["ddp", "ddp_spawn", "ddp_fork", "ddp_find_unused_parameters_false", "fsdp", "deepspeed"]
SMALL = ["--hidden-sizes", "32", "32", "--val-size", "100", "--batch-size", "50", "--labels", "100"]


def run_case(variant: str, data_dir: str, output_dir: str, flags: list[str]) -> tuple[str, str]:
    """(outcome, detail): trained, refused (the one line), or FAILED (the last line of stderr)."""
    adversarial = variant != "ae"
    command = [
        sys.executable,
        "train.py",
        "--variant",
        variant,
        *SMALL,
        *(["--disc-hidden-sizes", "16"] if adversarial else []),
        "--data-dir",
        data_dir,
        "--no-download",
        "--logger",
        "none",
        "--image-every-n-epochs",
        "0",
        "--output-dir",
        output_dir,
        "--fast-dev-run",
        *flags,
    ]
    process = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    errors = process.stderr.strip().splitlines()
    if process.returncode == 0:
        return "trained", ""
    refusal = [line for line in errors if line.startswith("error: ")]
    if process.returncode == 2 and len(refusal) == 1 and "Traceback" not in process.stderr:
        return "refused", refusal[0][len("error: ") :]
    return "FAILED", f"exit {process.returncode}: {errors[-1] if errors else ''}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default=str(REPO_ROOT.parent / "shared" / "data"))
    parser.add_argument("--variants", nargs="+", default=sorted(VARIANTS), choices=sorted(VARIANTS))
    args = parser.parse_args(argv)
    cases = [(["--gpus", "0", "--precision", precision], f"--precision {precision}") for precision in PRECISIONS]
    cases += [
        (["--accelerator", "cpu", "--devices", "2", "--strategy", strategy], f"--strategy {strategy}, 2 processes")
        for strategy in STRATEGIES
    ]
    failed = 0
    started = time.perf_counter()
    print("| case | variant | outcome | reason |")
    print("|---|---|---|---|")
    with tempfile.TemporaryDirectory() as output_dir:
        for flags, label in cases:
            for variant in args.variants:
                outcome, detail = run_case(variant, args.data_dir, output_dir, flags)
                failed += outcome == "FAILED"
                print(f"| {label} | {variant} | {outcome} | {detail[:160]} |", flush=True)
    print(f"\n{len(cases) * len(args.variants)} cases, {failed} failed, {time.perf_counter() - started:.0f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
