#!/usr/bin/env bash
# Pretrain on LibriSpeech, extract features, run the phone and speaker linear
# probes with the MFCC and log-mel floors beside them, and write a report.
#
#   recipes/librispeech/run.sh --librispeech-root /data/LibriSpeech \
#       --cpc-labels /data/LibriSpeech100_labels_split [--objective cpc] [--stage N] [--stop-stage M]
#
# Stages (each is safe to re-run; training and extraction resume, finished probes are kept):
#   0 check inputs   1 manifest   2 pretrain (hubert: k-means targets first, two iterations)   3 extract
#   4 phone probe    5 speaker probe   6 ABX   7 CTC phone recognition   8 CTC subword recognition
#   9 discrete units (k-means, unit sequences, purity / PNMI / ABX)
#   10 report (figures and tables: $exp/$objective/report/report.md)
set -euo pipefail

# ---- defaults (every one is an option: --librispeech-root sets librispeech_root)
librispeech_root=          # folder holding train-clean-100/
subset=train-clean-100
cpc_labels=                # folder with converted_aligned_phones.txt, train_split.txt, test_split.txt
objective=cpc              # cpc | apc | mpc | npc | w2v2 | hubert
config=                    # default: recipes/conf/${objective}_libri.yaml
train_overrides=           # extra key=value settings for training, space separated
layer=context              # layer to probe
exp=exp/librispeech        # experiment root; the run goes to $exp/$objective
stage=0
stop_stage=100
probe_overrides=           # phone and speaker probe settings (key=value) and options, e.g. "hidden=256 --baselines mfcc"
ctc_overrides=             # both CTC probes' settings (key=value) and options, e.g. "head=bilstm epochs=100"
units_k=50                 # discrete units: k-means sizes, space separated, e.g. "50 100"
units_overrides=           # extra options for audiossl units fit, e.g. "--max-frames 2000000"
nproc=1                    # processes for pretraining (torchrun on one node when > 1)
data=                      # use this corpus folder instead of $librispeech_root/$subset
hubert_iterations=2        # hubert on k-means units: 1 (MFCC units) or 2 (then units of the iteration-1 model)
hubert_k1=100              # hubert: k-means size on MFCC (iteration 1)
hubert_k2=500              # hubert: k-means size on the iteration-1 model's layer (iteration 2)
hubert_layer=              # hubert: that layer (default: context_<L/2>, the paper's layer 6 of 12)
hubert_init=scratch        # hubert iteration 2: scratch (a new model, as the paper) or it1 (iteration 1's model)

options="librispeech_root subset cpc_labels objective config train_overrides layer exp stage stop_stage probe_overrides ctc_overrides units_k units_overrides nproc data hubert_iterations hubert_k1 hubert_k2 hubert_layer hubert_init"

log() { echo "$(date '+%Y-%m-%d %H:%M:%S') [$(basename "$0")] $*"; }

# ---- option parser: --foo-bar VALUE sets foo_bar; unknown options exit
while [ $# -gt 0 ]; do
  case "$1" in
    --help|-h) sed -n '2,12p' "$0"; exit 0 ;;
    --*=*) name="${1%%=*}"; value="${1#*=}"; shift ;;
    --*) [ $# -ge 2 ] || { echo "$0: option $1 needs a value" >&2; exit 2; }; name="$1"; value="$2"; shift 2 ;;
    *) echo "$0: unexpected argument '$1' (options are --name value)" >&2; exit 2 ;;
  esac
  var="${name#--}"; var="${var//-/_}"
  if [[ " $options " != *" $var "* ]]; then
    echo "$0: unknown option $name" >&2; exit 2
  fi
  printf -v "$var" '%s' "$value"
done

case "$hubert_init" in scratch|it1) ;; *) echo "$0: --hubert-init is scratch or it1, not '$hubert_init'" >&2; exit 2 ;; esac

here="$(cd "$(dirname "$0")/../.." && pwd)"
# Use the project's virtual environment (tools/setup.sh) unless one is active.
if ! command -v audiossl >/dev/null 2>&1 && [ -x "$here/.venv/bin/audiossl" ]; then
  PATH="$here/.venv/bin:$PATH"
fi
[ -n "$config" ] || config="$here/recipes/conf/${objective}_libri.yaml"
[ -n "$data" ] || data="$librispeech_root/$subset"
run="$exp/$objective"
mkdir -p "$run"
start_time=$(date +%s)
alignments="$cpc_labels/converted_aligned_phones.txt"
train_split="$cpc_labels/train_split.txt"
test_split="$cpc_labels/test_split.txt"

# Runs a Python step, its output teed to $run/<name>.log.
step() { local name="$1"; shift; log "$name: $*"; "$@" 2>&1 | tee "$run/$name.log"; }

if [ "$stage" -le 0 ] && [ "$stop_stage" -ge 0 ]; then
  log "stage 0: check inputs"
  missing=0
  if [ ! -d "$data" ]; then
    echo "missing corpus folder: $data" >&2
    echo "  LibriSpeech comes from https://www.openslr.org/12 (train-clean-100.tar.gz); pass --librispeech-root" >&2
    missing=1
  fi
  labels_missing=0
  for f in "$alignments" "$train_split" "$test_split"; do
    [ -f "$f" ] || { echo "missing CPC label file: $f" >&2; labels_missing=1; }
  done
  if [ "$labels_missing" = 1 ]; then
    echo "  The phone alignments and splits come from the CPC paper's release (van den Oord et al. 2018)," >&2
    echo "  distributed with CPC_audio as LibriSpeech100_labels_split; pass that folder as --cpc-labels" >&2
    missing=1
  fi
  [ -f "$config" ] || { echo "missing config: $config" >&2; missing=1; }
  [ "$missing" = 0 ] || exit 1
fi

if [ "$stage" -le 1 ] && [ "$stop_stage" -ge 1 ]; then
  log "stage 1: manifest"
  if [ -f "$run/manifest.tsv" ]; then log "manifest exists, kept"; else
    step prepare audiossl prepare --data "$data" --out "$run/manifest.tsv"
  fi
fi

# pretrain NAME EXP_DIR [key=value ...]: train into EXP_DIR (resuming), logged as NAME.
pretrain() {
  local name="$1" dir="$2"; shift 2
  local launcher=(audiossl)
  if [ "$nproc" -gt 1 ]; then launcher=(torchrun --standalone --nproc_per_node "$nproc" -m audiossl.cli); fi
  # Exit 3: the config's max_minutes budget is spent and a checkpoint written; the later stages use it
  # (running stage 2 again continues the training). Any other failure stops the recipe.
  local rc=0
  # shellcheck disable=SC2086
  step "$name" "${launcher[@]}" train --config "$config" --data "$run/manifest.tsv" --exp-dir "$dir" \
    $train_overrides "$@" || rc=$?
  if [ "$rc" = 3 ]; then log "$name: time budget spent; continuing with its checkpoint"
  elif [ "$rc" != 0 ]; then exit "$rc"; fi
}

# hubert_units NAME FEATURES LAYER K: k-means on the training split of FEATURES' LAYER, units of every utterance
# in NAME/units/assign (HuBERT's targets).
hubert_units() {
  local name="$1" features="$2" layer_name="$3" k="$4"
  # shellcheck disable=SC2086
  step "${name}_units_fit" audiossl units fit --features "$features" --layer "$layer_name" --k "$k" \
    --split "$train_split" --out "$run/$name/units" --no-progress $units_overrides
  step "${name}_units_assign" audiossl units assign --units "$run/$name/units" --features "$features" \
    --out "$run/$name/units/assign" --onehot none --no-progress
}

# The config's hubert_targets (a train override wins): empty means the recipe makes k-means units.
hubert_targets=$(sed -n 's/^hubert_targets:[[:space:]]*\([^#[:space:]]*\).*/\1/p' "$config" | tail -n 1)
for kv in $train_overrides; do case "$kv" in hubert_targets=*) hubert_targets="${kv#*=}" ;; esac; done

if [ "$stage" -le 2 ] && [ "$stop_stage" -ge 2 ]; then
  if [ "$objective" != hubert ] || [ -n "$hubert_targets" ]; then
    log "stage 2: pretrain $objective ($config)"
    pretrain pretrain "$run/pretrain"
  else
    log "stage 2: HuBERT iteration 1: k-means (k = $hubert_k1) on MFCC"
    step hubert_it1_mfcc audiossl extract --baseline mfcc --data "$run/manifest.tsv" --out "$run/hubert_it1/features" \
      --dtype float16 --no-progress
    hubert_units hubert_it1 "$run/hubert_it1/features" mfcc "$hubert_k1"
    targets=(hubert_targets="$run/hubert_it1/units/assign" hubert_num_units="$hubert_k1")
    if [ "$hubert_iterations" -ge 2 ]; then
      log "stage 2: HuBERT iteration 1: pretrain ($config)"
      pretrain pretrain_it1 "$run/hubert_it1/pretrain" "${targets[@]}"
      it2_layer="$hubert_layer"
      if [ -z "$it2_layer" ]; then
        layers=$(sed -n 's/^context_layers:[[:space:]]*//p' "$run/hubert_it1/pretrain/config.yaml")
        it2_layer="context_$(( layers / 2 > 0 ? layers / 2 : 1 ))"
      fi
      log "stage 2: HuBERT iteration 2: k-means (k = $hubert_k2) on the iteration-1 model's $it2_layer"
      step hubert_it2_extract audiossl extract --ckpt "$run/hubert_it1/pretrain/checkpoint.pt" \
        --data "$run/manifest.tsv" --out "$run/hubert_it2/features" --layer "$it2_layer" --dtype float16 --no-progress
      hubert_units hubert_it2 "$run/hubert_it2/features" "$it2_layer" "$hubert_k2"
      targets=(hubert_targets="$run/hubert_it2/units/assign" hubert_num_units="$hubert_k2")
      if [ "$hubert_init" = it1 ]; then targets+=(init_from="$run/hubert_it1/pretrain/checkpoint.pt"); fi
    fi
    log "stage 2: pretrain $objective ($config) on ${targets[0]#*=}"
    pretrain pretrain "$run/pretrain" "${targets[@]}"
  fi
fi

if [ "$stage" -le 3 ] && [ "$stop_stage" -ge 3 ]; then
  log "stage 3: extract layer $layer"
  step extract audiossl extract --ckpt "$run/pretrain/checkpoint.pt" --data "$run/manifest.tsv" \
    --out "$run/features" --layer "$layer" --no-progress
fi

# probe KIND [options]: the layer with the MFCC and log-mel floors beside it.
probe() {
  local kind="$1"; shift
  local out="$run/probe_$kind"
  if [ -f "$out/metrics.json" ]; then log "probe $kind: done before, kept ($out)"; return; fi
  step "probe_$kind" audiossl probe "$kind" --features "$run/features" --layer "$layer" --out "$out" --no-progress "$@"
}
phones=()  # the phone inventory, when the labels come with one (this project's corpora do)
[ -f "$cpc_labels/phones.txt" ] && phones=(--phones "$cpc_labels/phones.txt")

if [ "$stage" -le 4 ] && [ "$stop_stage" -ge 4 ]; then
  log "stage 4: phone probe"
  # shellcheck disable=SC2086
  probe phone --alignments "$alignments" --train-split "$train_split" --test-split "$test_split" $probe_overrides
fi

if [ "$stage" -le 5 ] && [ "$stop_stage" -ge 5 ]; then
  log "stage 5: speaker probe"
  # shellcheck disable=SC2086
  probe speaker --train-split "$train_split" --test-split "$test_split" $probe_overrides
fi

if [ "$stage" -le 6 ] && [ "$stop_stage" -ge 6 ]; then
  log "stage 6: ABX phone discrimination (test split)"
  probe abx --alignments "$alignments" "${phones[@]}" --split "$test_split"
fi

if [ "$stage" -le 7 ] && [ "$stop_stage" -ge 7 ]; then
  log "stage 7: CTC phone recognition"
  # shellcheck disable=SC2086
  probe ctc-phone --alignments "$alignments" "${phones[@]}" --train-split "$train_split" --test-split "$test_split" \
    $ctc_overrides
fi

if [ "$stage" -le 8 ] && [ "$stop_stage" -ge 8 ]; then
  log "stage 8: CTC subword recognition (sentencepiece units from the corpus transcripts)"
  # shellcheck disable=SC2086
  probe ctc-subword --train-split "$train_split" --test-split "$test_split" $ctc_overrides
fi

if [ "$stage" -le 9 ] && [ "$stop_stage" -ge 9 ]; then
  log "stage 9: discrete units (k = $units_k): k-means on the training split, units of every utterance, test-split figures"
  for k in $units_k; do
    units="$run/units_k$k"
    # shellcheck disable=SC2086
    step "units_fit_k$k" audiossl units fit --features "$run/features" --layer "$layer" --k "$k" \
      --split "$train_split" --out "$units" --no-progress $units_overrides
    step "units_assign_k$k" audiossl units assign --units "$units" --features "$run/features" --out "$units/assign" \
      --no-progress
    out="$run/probe_units_k$k"
    if [ -f "$out/metrics.json" ]; then log "probe units_k$k: done before, kept ($out)"; else
      step "probe_units_k$k" audiossl probe units --units "$units" --features "$run/features" \
        --alignments "$alignments" "${phones[@]}" --split "$test_split" --out "$out" --no-progress
    fi
  done
fi

if [ "$stage" -le 10 ] && [ "$stop_stage" -ge 10 ]; then
  log "stage 10: report"
  step report audiossl report "$run" --data "$run/manifest.tsv" --labels "$cpc_labels"
fi

log "done in $(( $(date +%s) - start_time )) s; results in $run"
