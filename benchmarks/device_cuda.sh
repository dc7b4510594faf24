#!/usr/bin/env bash
# The cuda target on a real NVIDIA GPU: what CI cannot run (it has no GPU).
#
# Runs from the repository root on a CUDA host whose python3 has torch with CUDA and onnxruntime-gpu
# (CUDAExecutionProvider) importable, edgekd's other dependencies on PYTHONPATH. It writes into $OUT:
#   env.txt                 nvidia-smi, versions, providers, `edgekd targets`
#   fashion-cuda.json/.md   report of `edgekd build --target cuda --recipe fashion-cnn --quick`
#   digits-cuda.json        report of the digits-mlp quick build on cuda
#   llm-cuda.json/.md       report of the smollm2-seqkd quick build on cuda: the students on onnxruntime's CUDA
#                           provider, the teacher decoding on the GPU, NVML joules per generated token
#   pytest-cuda.txt         the GPU-marked tests (torch on cuda, NVML) and the cuda availability probe
# Copy the reports back and quote them in the issue notes (the README quotes only results files).
set -u
OUT=${OUT:-/tmp/edgekd-cuda}
mkdir -p "$OUT"
export PYTHONPATH="${SITE:+$SITE:}$PWD" PYTHONUNBUFFERED=1 EDGEKD_CACHE=${EDGEKD_CACHE:-/tmp/edgekd-cache}
PY=${PY:-python3}
{
  nvidia-smi --query-gpu=name,driver_version,memory.total,power.limit --format=csv
  $PY -c "import sys, torch, onnxruntime as o; print(sys.version.split()[0], 'torch', torch.__version__, torch.cuda.is_available() and torch.cuda.get_device_name(), 'ort', o.__version__, o.get_available_providers())"
  nproc
  $PY -m edgekd.cli targets
} >"$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

build() {  # build NAME RECIPE TIMEOUT
  local t0=$SECONDS
  timeout "$3" $PY -m edgekd.cli build --target cuda --recipe "$2" --quick --out "/tmp/b-$1" 2>&1 | tail -40
  echo "== $1: exit ${PIPESTATUS[0]} after $((SECONDS - t0)) s"
  cp "/tmp/b-$1/report/report.json" "$OUT/$1-cuda.json" 2>/dev/null
  cp "/tmp/b-$1/report/report.md" "$OUT/$1-cuda.md" 2>/dev/null
}
build digits digits-mlp 120
build fashion fashion-cnn 240
build llm smollm2-seqkd 900
timeout 150 $PY -m pytest -q -p no:cacheprovider -m "cuda" tests/targets/test_registry.py tests/profile/test_profile.py \
  >"$OUT/pytest-cuda.txt" 2>&1
timeout 60 $PY -m pytest -q -p no:cacheprovider tests/targets/test_registry.py -k "cuda or availability" \
  >>"$OUT/pytest-cuda.txt" 2>&1
tail -15 "$OUT/pytest-cuda.txt"
rm -f "$OUT/digits-cuda.md"
