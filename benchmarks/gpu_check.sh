#!/usr/bin/env bash
# The checks that need a CUDA device, in one go (docs/gpu-check.md):
#   1. the tests whose behaviour could depend on the device (phases, priors, callbacks, checkpoint round trip,
#      resume), on CUDA: `pytest -m cuda`;
#   2. one epoch of `train.py --variant semi --labels 100 --gpus 1`, logging to CSV;
#   3. the throughput table (benchmarks/throughput.py) on the GPU.
# Needs PyTorch with CUDA, this project (pip install -e .) and pytest; not W&B. MNIST is read from $AAE_MNIST_DIR
# (default ../shared/data; relative to the repository root) and downloaded there if it is missing. $PYTHON picks the
# interpreter (default python3).
# Outputs and logs stay in a temporary folder, named at the start. Exit code: 0 if every step passed, 1 if one
# failed, 2 without a CUDA device.
#
#     bash benchmarks/gpu_check.sh
set -euo pipefail

python=${PYTHON:-python3}
# stderr silenced: a CUDA build of torch on a machine without a driver warns while answering
if ! "$python" -c 'import torch; exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
    echo "gpu_check.sh needs a CUDA device; torch.cuda.is_available() is False here" >&2
    exit 2
fi

cd "$(dirname "$0")/.."
data_dir=${AAE_MNIST_DIR:-../shared/data}
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

step tests "$python" -m pytest -m cuda -q -p no:cacheprovider \
    tests/test_phases.py tests/test_components.py tests/test_callbacks.py tests/test_resume.py \
    tests/test_parzen_callback.py
step train "$python" train.py --variant semi --labels 100 --gpus 1 --max-epochs 1 --logger csv \
    --data-dir "$data_dir" --output-dir "$work/runs" --run-name semi-gpu --results-json "$work/semi-gpu.json"
step throughput "$python" benchmarks/throughput.py --data-dir "$data_dir" --accelerator gpu

echo
echo "== summary: $device"
printf '%s\n' "${summary[@]}"
if [[ -f $work/semi-gpu.json ]]; then
    "$python" -c 'import json, sys
print("semi, 100 labels, one epoch: val/acc", json.load(open(sys.argv[1]))["val"]["val/acc"])' "$work/semi-gpu.json"
fi
grep -e '^[0-9]* timed batches' -e '^|' "$work/throughput.log" || true
exit $status
