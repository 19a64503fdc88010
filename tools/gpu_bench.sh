#!/usr/bin/env bash
# GPU throughput in one command: the training step of the four LibriSpeech
# configs, the data loader's rate beside the model's consumption, and each
# part of the CPC step as a share of the card's bf16 matmul peak.
#
#   bash tools/gpu_bench.sh                      # on a CUDA machine, from the repository root
#   CORPUS=/data/LibriSpeech/train-clean-100 bash tools/gpu_bench.sh
#   COMPILES=0 bash tools/gpu_bench.sh; COMPILES=1 bash tools/gpu_bench.sh   # two shorter commands
#   DEVICE=cpu bash tools/gpu_bench.sh           # dry run of every line on the CPU (tiny, minutes)
#
# Prints, for recipes/conf/{cpc,apc,mpc,npc}_libri.yaml at batch_size 8 and
# 64, eager and with compile=true: `audiossl bench --device cuda` (bf16
# autocast on CUDA; median step time, audio seconds per second, the split;
# compiled, the first step's time is the compilation), then `audiossl bench
# --data CORPUS` for the CPC config at batch 8: windows and audio seconds per
# second that 1, 2, 4 and 8 DataLoader workers deliver, and how many times
# the model's consumption that is. Last, tools/gpu_peak.py: the matmul peak
# the card reaches (8192 x 8192 products in bf16, TF32 and fp32, TFLOP/s) and,
# for each eager CPC run, the FLOPs of the model forward (frontend, encoder,
# context), the objective forward and the backward at that batch, each
# divided by its median time: TFLOP/s achieved and % of the bf16 peak (on the
# CPU: a 512 x 512 matmul peak). Every run has its own time limit
# (RUN_LIMIT seconds), so one slow compilation costs one line, not the whole
# command. Eager runs take seconds each on a GPU; compilation can take
# minutes per config (on a 2-core CPU whose model was not recorded it took 14 minutes cold for CPC, 1
# with inductor's cache warm), so under a 10-minute command limit run the
# eager and compiled halves as two commands (COMPILES=0, then COMPILES=1).
# With OUT set, everything printed is also written to $OUT/gpu_bench.txt.
#
# Settings (environment variables):
#   DEVICE     cuda (default) | cuda:N | cpu (dry run: batch 2, 1 step, eager, 1 worker)
#   CONFIGS    "cpc apc mpc npc"   BATCHES "8 64"   COMPILES "0 1" (0 eager, 1 compiled)
#   STEPS, WARMUP   timed and untimed steps per run (10 and 3; compiled runs warm up at least 2)
#   CORPUS     corpus folder or manifest for the loader (default data/demo, embedded in the repository)
#   WORKERS    loader worker counts (default 1,2,4,8)
#   RUN_LIMIT  seconds per run before it is stopped (default 240)
#   PYTHON     the interpreter (default .venv/bin/python if there, else python3)
set -euo pipefail

cd "$(dirname "$0")/.."
DEVICE=${DEVICE:-cuda}
if [[ $DEVICE == cpu ]]; then
  defaults=(2 "0" 1 0 1 "cpc apc mpc npc")
else
  defaults=("8 64" "0 1" 10 3 "1,2,4,8" "cpc apc mpc npc")
fi
BATCHES=${BATCHES:-${defaults[0]}}
COMPILES=${COMPILES:-${defaults[1]}}
STEPS=${STEPS:-${defaults[2]}}
WARMUP=${WARMUP:-${defaults[3]}}
WORKERS=${WORKERS:-${defaults[4]}}
CONFIGS=${CONFIGS:-${defaults[5]}}
CORPUS=${CORPUS:-data/demo}
RUN_LIMIT=${RUN_LIMIT:-240}
if [[ -z ${PYTHON:-} ]]; then
  if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi

if [[ -n ${OUT:-} ]]; then
  mkdir -p "$OUT"
  exec > >(tee "$OUT/gpu_bench.txt") 2>&1
fi

log() { echo "[$(date -u +%H:%M:%S)] $*"; }
start=$(date +%s)
results=$(mktemp -d)  # the eager CPC runs' `bench --json` output, for gpu_peak.py
trap 'rm -rf "$results"' EXIT
peak_args=()

bench() {  # bench LIMIT ARGS...: one `audiossl bench`, stopped after LIMIT seconds
  local limit=$1; shift
  local rc=0
  timeout --kill-after=10 "$limit" "$PYTHON" -m audiossl.cli bench --device "$DEVICE" "$@" || rc=$?
  if (( rc == 124 || rc == 137 )); then
    echo "  (stopped after ${limit} s: RUN_LIMIT)"
  elif (( rc != 0 )); then
    echo "  (failed with exit status $rc)"
  fi
}

log "audiossl gpu_bench on $DEVICE: configs $CONFIGS, batches $BATCHES, compile $COMPILES, $STEPS steps after $WARMUP"
"$PYTHON" - <<'PY'
import torch
import audiossl
print(f"audiossl {audiossl.__version__}, torch {torch.__version__}, CUDA {torch.version.cuda}, "
      f"{torch.cuda.get_device_name() if torch.cuda.is_available() else 'no CUDA device'}, "
      f"{torch.get_num_threads()} CPU threads")
PY
if [[ $DEVICE == cuda* ]] && command -v nvidia-smi > /dev/null; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
fi

for compile in $COMPILES; do
  warmup=$WARMUP
  flags=()
  if [[ $compile == 1 ]]; then
    flags=(--compile)
    (( warmup >= 2 )) || warmup=2  # the first step compiles, the second may recompile
  fi
  for objective in $CONFIGS; do
    for batch in $BATCHES; do
      log "$objective batch $batch $([[ $compile == 1 ]] && echo compiled || echo eager)"
      run=(--config "recipes/conf/${objective}_libri.yaml" --steps "$STEPS" --warmup "$warmup" "${flags[@]}"
           "batch_size=$batch")
      if [[ $objective == cpc && $compile == 0 ]]; then  # keep the JSON line for gpu_peak.py, show the rest
        bench "$RUN_LIMIT" "${run[@]}" --json | tee "$results/cpc_b$batch.txt" | grep -v '^{' || true
        peak_args+=(--bench-json "$results/cpc_b$batch.txt")
      else
        bench "$RUN_LIMIT" "${run[@]}"
      fi
    done
  done
done

log "data loader on $CORPUS (cpc_libri.yaml, batch 8), beside the eager CPC step"
bench "$RUN_LIMIT" --config recipes/conf/cpc_libri.yaml --steps "$STEPS" --warmup "$WARMUP" batch_size=8 \
  --data "$CORPUS" --workers "$WORKERS" --loader-seconds 5

log "the CPC step's parts against the matmul peak (tools/gpu_peak.py)"
rc=0
timeout --kill-after=10 "$RUN_LIMIT" "$PYTHON" tools/gpu_peak.py --device "$DEVICE" \
  --config recipes/conf/cpc_libri.yaml "${peak_args[@]}" || rc=$?
(( rc == 0 )) || echo "  (gpu_peak.py failed with exit status $rc)"

log "done in $(( $(date +%s) - start )) s"
