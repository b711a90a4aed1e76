#!/usr/bin/env bash
# The checks that need a CUDA device, in one go, on a fresh machine without network (docs/gpu-check.md):
#   1. every test marked `cuda` (`pytest -m cuda`): phases, priors, a training step that never waits for the GPU,
#      callbacks, weight averaging, checkpoints and resume on the GPU;
#   2. one epoch of `train.py --variant semi --labels 100 --gpus 1` in 32-true and in bf16-mixed;
#   3. the throughput table (benchmarks/throughput.py) on the GPU, in 32-true and bf16-mixed.
# Needs PyTorch with CUDA, this project (pip install -e .), pytest and pytest-xdist; no W&B and no network.
#
#     bash benchmarks/gpu_check.sh MNIST_DIR
#
# MNIST_DIR holds MNIST/raw/ in torchvision's layout, its four files plain or gzipped (*.gz files are unpacked
# beside themselves); nothing is downloaded. $PYTHON picks the interpreter (default python3). Logs stay in a
# temporary folder named at the start; the last lines are one summary block. Exit code: 0 if every step passed,
# 1 if one failed, 2 without a CUDA device or without the MNIST files.
set -euo pipefail

python=${PYTHON:-python3}
if [[ $# -ne 1 ]]; then
    echo "usage: bash benchmarks/gpu_check.sh MNIST_DIR   (the folder that holds MNIST/raw/)" >&2
    exit 2
fi
if [[ ! -d $1 ]]; then
    echo "gpu_check.sh: no folder $1" >&2
    exit 2
fi
data_dir=$(cd "$1" && pwd)
raw=$data_dir/MNIST/raw
for name in train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte t10k-labels-idx1-ubyte; do
    if [[ ! -f $raw/$name && -f $raw/$name.gz ]]; then
        gunzip -k "$raw/$name.gz"
    fi
    if [[ ! -f $raw/$name ]]; then
        echo "gpu_check.sh: $raw/$name (or $name.gz) is missing" >&2
        exit 2
    fi
done
# stderr silenced: a CUDA build of torch on a machine without a driver warns while answering
if ! "$python" -c 'import torch; exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
    echo "gpu_check.sh needs a CUDA device; torch.cuda.is_available() is False here" >&2
    exit 2
fi

cd "$(dirname "$0")/.."
export WANDB_MODE=disabled AAE_MNIST_DIR=$data_dir
work=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")
device=$("$python" -c 'import pytorch_lightning as pl, torch
print(f"{torch.cuda.get_device_name()}, torch {torch.__version__} (CUDA {torch.version.cuda}),",
      f"Lightning {pl.__version__}")')
echo "gpu_check.sh on $device; outputs in $work"

summary=()
status=0
# step NAME COMMAND...: runs COMMAND with its output shown and kept in $work/NAME.log, and notes how it ended
step() {
    local name=$1 started=$SECONDS
    shift
    echo
    echo "== $name: $*"
    if "$@" 2>&1 | tee "$work/$name.log"; then
        summary+=("$name: passed ($((SECONDS - started)) s)")
    else
        summary+=("$name: FAILED ($((SECONDS - started)) s; log in $work/$name.log)")
        status=1
    fi
}

step tests "$python" -m pytest -m cuda -n 0 -q -p no:cacheprovider tests
for precision in 32-true bf16-mixed; do
    step "semi-$precision" "$python" train.py --variant semi --labels 100 --gpus 1 --max-epochs 1 \
        --precision "$precision" --logger csv --progress lines --image-every-n-epochs 0 --no-download \
        --data-dir "$data_dir" --output-dir "$work/runs" --run-name "semi-$precision" \
        --results-json "$work/semi-$precision.json"
done
step throughput "$python" benchmarks/throughput.py --data-dir "$data_dir" --accelerator gpu \
    --precision 32-true bf16-mixed

echo
echo "== summary: $device"
printf '%s\n' "${summary[@]}"
echo "tests: $(grep -E '[0-9]+ (passed|failed)' "$work/tests.log" | tail -n 1)"
for precision in 32-true bf16-mixed; do
    if [[ -f $work/semi-$precision.json ]]; then
        epoch=$(grep -o '^epoch 1/1 | [0-9.]* s' "$work/semi-$precision.log" | grep -o '[0-9.]* s' || true)
        "$python" -c 'import json, sys
print(f"semi, 100 labels, one epoch in {sys.argv[2]}: {sys.argv[3]}, val/acc", json.load(open(sys.argv[1]))["val"]["val/acc"])' \
            "$work/semi-$precision.json" "$precision" "$epoch"
    fi
done
grep -e '^[0-9]* timed batches' -e '^|' -e '^The Lightning loop' "$work/throughput.log" || true
exit $status
