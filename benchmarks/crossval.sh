#!/usr/bin/env bash
# The leave-one-source-out table of BENCHMARKS.md: for each source, train MODEL on the other sources with the
# comparison protocol (benchmarks/compare_models.sh) and test on the held-out source.
#   usage: benchmarks/crossval.sh [MODEL] [SOURCE...]   (default: seed_cnn6, every source; folds already
#   trained are reused, so two invocations with different SOURCEs can share the 2 cores, then one with none
#   writes the table; or ENGINE=ray runs every fold as a Ray task of 1 CPU: the same table, one command)
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${1:-seed_cnn6}; shift || true
MANIFEST=${MANIFEST:-runs/data/manifest.csv}
OUT=${OUT:-runs/crossval/$MODEL}
export OMP_NUM_THREADS=1
which="--all"; if [ $# -gt 0 ]; then which=""; for s in "$@"; do which="$which --holdout-source $s"; done; fi
.venv/bin/covidxray crossval --model "$MODEL" --manifest "$MANIFEST" $which --out "$OUT" \
  --image-size 96 --epochs 40 --epoch-samples 2048 --max-minutes 10 --patience 6 --threads 1 \
  --engine "${ENGINE:-local}"
