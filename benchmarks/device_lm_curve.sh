#!/usr/bin/env bash
# Issue #28's run for a GPU host: what 2 cores cannot reach. The language-model curve (benchmarks/bench_lm_curve.py)
# on a prompt set grown past the CPU's (benchmarks/grow_llm_prompts.py --samples: the teacher writes several questions
# per seed topic and viewpoint, sampled), the teacher answering and the student training on the GPU
# (edgekd.llm.parallel.train_device), batches of 64 prompts for the teacher, the card's 4 epochs. Each phase resumes
# from its caches, so a run cut off by a time limit goes on where it stopped when called again on the same (warm)
# machine.
#
#   OUT=/tmp/lm bash benchmarks/device_lm_curve.sh [grow|curve|all] [SAMPLES] [EPOCHS] [POINTS...]
#   SETS="generate.train_samples=4 distill.epochs=1" OUT=/tmp/lm bash benchmarks/device_lm_curve.sh curve
#
# SETS: recipe overrides (space-separated key=value) passed to every curve build as --set, e.g. the sampled answers
# per training prompt that benchmarks/results/lm_samples.json measured on the CPU.
#
# Runs from the repository root with edgekd's dependencies importable (python3, or PY=...). Writes into $OUT:
#   env.txt                  nvidia-smi, torch and its CUDA device
#   prompts-grown-x$S.jsonl  the grown prompt set; prompts_grown-cuda.json what was kept and why not
#   lm_curve-cuda.json       the curve: held-out-template, natural-prompt and in-template agreement with bootstrap
#                            intervals, natural-text perplexity ratio, per point (training prompts), trained on the GPU
# Copy them to benchmarks/results/ and quote them in the issue notes; the README's generated tables read results files.
set -u
OUT=${OUT:-/tmp/edgekd-lm}
PHASE=${1:-all}
SAMPLES=${2:-8}
EPOCHS=${3:-4}
shift $(( $# < 3 ? $# : 3 ))
POINTS=${*:-500 1000 2000 0}
mkdir -p "$OUT"
export PYTHONPATH="${SITE:+$SITE:}$PWD" PYTHONUNBUFFERED=1 EDGEKD_CACHE=${EDGEKD_CACHE:-/tmp/edgekd-cache}
export EDGEKD_BENCH_WORK=${EDGEKD_BENCH_WORK:-/tmp/edgekd-bench}
PY=${PY:-python3}
PROMPTS="$OUT/prompts-grown-x$SAMPLES.jsonl"
{
  nvidia-smi --query-gpu=name,driver_version,memory.total,power.limit --format=csv 2>&1
  $PY -c "import torch; print('torch', torch.__version__, torch.cuda.is_available() and torch.cuda.get_device_name())"
  nproc
} >"$OUT/env.txt" 2>&1
cat "$OUT/env.txt"
if [ "$PHASE" = grow ] || [ "$PHASE" = all ]; then
  t0=$SECONDS
  $PY benchmarks/grow_llm_prompts.py --samples "$SAMPLES" --batch-size 64 --arithmetic-per-frame 40 \
    --out "$PROMPTS" --work "$EDGEKD_BENCH_WORK/grow-prompts" --results prompts_grown-cuda | tail -5
  echo "== grow: exit ${PIPESTATUS[0]} after $((SECONDS - t0)) s"
  cp benchmarks/results/prompts_grown-cuda.json "$OUT/" 2>/dev/null
fi
if [ "$PHASE" = curve ] || [ "$PHASE" = all ]; then
  [ -f "$PROMPTS" ] || { echo "no $PROMPTS: run the grow phase first"; exit 2; }
  t0=$SECONDS
  SET_ARGS=(--set generate.batch_size=64)
  for s in ${SETS:-}; do SET_ARGS+=(--set "$s"); done
  # shellcheck disable=SC2086  # POINTS is a list
  $PY benchmarks/bench_lm_curve.py --prompts "$PROMPTS" --points $POINTS --epochs "$EPOCHS" --threads "$(nproc)" \
    --results lm_curve-cuda "${SET_ARGS[@]}" \
    --note "GPU host: teacher generation and training on the GPU, fp32 ONNX profiled on the CPU target" | tail -20
  echo "== curve: exit ${PIPESTATUS[0]} after $((SECONDS - t0)) s"
  cp benchmarks/results/lm_curve-cuda.json "$OUT/" 2>/dev/null
fi
