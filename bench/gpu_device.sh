#!/usr/bin/env bash
# The GPU training benchmark (issue 21.4) on a GPU machine without internet, in one prepared command.
#
#   bash bench/gpu_device.sh --fetch   # here, with PyPI: download the wheels the GPU image lacks into .whl/ (ignored)
#   bash bench/gpu_device.sh           # there, with .whl/ carried: install what is missing offline, then
#                                      #   python bench/run_all.py --profile quick --gpu --only gpu_train (both sizes,
#                                      #   full and LoRA, 40 steps each)
#   bash bench/gpu_device.sh --toy     # anywhere, CPU included: the same path at toy size (CI runs it)
#
# The GPU image (shared/gpu-notes.md) has torch, transformers, peft and accelerate, but not TRL or datasets; the wheels
# below are the set that installs and imports there (python 3.12), plus liger-kernel for the fused kernels.
# With OUT set (the device machine sets it), the results come back in $OUT: results.json and results.md (the repo's,
# with the gpu_train section added), gpu_train.log, and the RESULT json alone as gpu_train.json.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
WHEELS=(trl==1.16.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 liger-kernel==0.8.5)
MODULES=(trl datasets dill multiprocess liger_kernel)

if [[ "${1:-}" == --fetch ]]; then
  "$PY" -m pip download --no-deps --only-binary=:all: --python-version "${WHEEL_PYTHON:-3.12}" \
        --platform manylinux2014_x86_64 --dest .whl "${WHEELS[@]}"
  echo "wheels in .whl/; on the GPU machine: carry .whl and run bash bench/gpu_device.sh"
  exit 0
fi

# install only what the machine lacks, from the carried wheels (never over a package that is already there); the
# toy run uses the environment as it is (it runs where the project is installed, CI included)
[[ "${1:-}" == --toy ]] || {
  missing=$("$PY" -c "import importlib.util as u, sys; print(*[m for m in sys.argv[1:] if u.find_spec(m) is None])" "${MODULES[@]}")
  for i in "${!MODULES[@]}"; do
    [[ " $missing " == *" ${MODULES[$i]} "* ]] || continue
    name=${WHEELS[$i]%%==*}; whl=$(ls .whl/"${name//-/_}"-*.whl 2>/dev/null | head -1 || true)
    if [[ -n "$whl" ]]; then "$PY" -m pip install --quiet --no-index --no-deps "$whl"
    elif [[ "${MODULES[$i]}" != liger_kernel ]]; then   # liger-kernel is optional: the trainer runs without it
      echo "gpu_device.sh: ${MODULES[$i]} is not installed and .whl/ has no ${name} wheel: run bash bench/gpu_device.sh --fetch here and carry .whl" >&2
      exit 2
    fi
  done
}

OUT=${OUT:-}
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
if [[ "${1:-}" == --toy ]]; then   # the toy run prints its plan and RESULT line; it never writes bench/results.*
  "$PY" bench/gpu_train.py --toy 2>&1 | tee ${OUT:+"$OUT/gpu_train.log"}
  [[ -z "$OUT" ]] || grep '^RESULT ' "$OUT/gpu_train.log" | tail -1 | cut -c8- > "$OUT/gpu_train.json"
  exit 0
fi
"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'gpu_device.sh: no GPU here; run it on the GPU machine, or with --toy')"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
"$PY" bench/run_all.py --profile quick --gpu --only gpu_train
if [[ -n "$OUT" ]]; then
  cp bench/results.json bench/results.md bench/logs/gpu_train.log "$OUT"/
  grep '^RESULT ' bench/logs/gpu_train.log | tail -1 | cut -c8- > "$OUT/gpu_train.json"
fi
