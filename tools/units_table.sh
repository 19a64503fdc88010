#!/usr/bin/env bash
# Discrete units of any feature folders and of the MFCC / log-mel floors, side by side: for each k, k-means
# on the training split's frames, then purity, PNMI and one-hot ABX on the test split; ends with a markdown table.
#
#   tools/units_table.sh --labels DIR --data CORPUS_OR_MANIFEST --out DIR [--k "50 100"] [--floors "mfcc logmel"]
#       [--fit-options "..."] [--probe-options "..."] [NAME=FEATURES_DIR:LAYER ...]
#
# --labels holds converted_aligned_phones.txt, phones.txt, train_split.txt and test_split.txt. Each
# NAME=FEATURES_DIR:LAYER is an audiossl extract folder and the layer to cluster (e.g.
# cpc=exp/cpc/features:context). The floors are extracted from --data into OUT/floors. Every step resumes:
# a fitted model or a finished probe is kept, so adding a source or a k re-runs only what is new.
set -euo pipefail

labels=
data=
out=
k_list="50 100"
floors="mfcc logmel"
fit_options=
probe_options=
sources=()
while [ $# -gt 0 ]; do
  case "$1" in
    --help|-h) sed -n '2,11p' "$0"; exit 0 ;;
    --labels) labels="$2"; shift 2 ;;
    --data) data="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --k) k_list="$2"; shift 2 ;;
    --floors) floors="$2"; shift 2 ;;
    --fit-options) fit_options="$2"; shift 2 ;;
    --probe-options) probe_options="$2"; shift 2 ;;
    --*) echo "$0: unknown option $1" >&2; exit 2 ;;
    *=*:*) sources+=("$1"); shift ;;
    *) echo "$0: expected NAME=FEATURES_DIR:LAYER, got '$1'" >&2; exit 2 ;;
  esac
done
[ -n "$labels" ] && [ -n "$data" ] && [ -n "$out" ] || { echo "$0: --labels, --data and --out are required" >&2; exit 2; }
here="$(cd "$(dirname "$0")/.." && pwd)"
if ! command -v audiossl >/dev/null 2>&1 && [ -x "$here/.venv/bin/audiossl" ]; then PATH="$here/.venv/bin:$PATH"; fi
python=python3
[ -x "$here/.venv/bin/python" ] && python="$here/.venv/bin/python"
log() { echo "$(date '+%Y-%m-%d %H:%M:%S') [units_table] $*"; }
run() { log "$*"; "$@"; }
mkdir -p "$out"

for floor in $floors; do
  run audiossl extract --baseline "$floor" --data "$data" --out "$out/floors" \
    --ids "$labels/train_split.txt" --ids "$labels/test_split.txt" --no-progress
  sources+=("$floor=$out/floors:$floor")
done

for source in "${sources[@]}"; do
  name="${source%%=*}"; rest="${source#*=}"; features="${rest%:*}"; layer="${rest##*:}"
  for k in $k_list; do
    units="$out/$name/k$k"
    # shellcheck disable=SC2086
    run audiossl units fit --features "$features" --layer "$layer" --k "$k" --split "$labels/train_split.txt" \
      --out "$units" --no-progress $fit_options
    if [ -f "$units/probe/metrics.json" ]; then log "probe of $units: done before, kept"; continue; fi
    # shellcheck disable=SC2086
    run audiossl probe units --units "$units" --features "$features" --alignments "$labels/converted_aligned_phones.txt" \
      --phones "$labels/phones.txt" --split "$labels/test_split.txt" --baselines none --out "$units/probe" \
      --no-progress $probe_options
  done
done
"$python" "$here/tools/units_table.py" "$out"
