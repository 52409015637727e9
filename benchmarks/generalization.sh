#!/usr/bin/env bash
# One row of the generalization ablation (BENCHMARKS.md, "Generalization ablation"): train seed_cnn6 under the
# reduced protocol with the technique's flags, once per fold: cohen held out, radiography held out (the two
# sources with COVID-19) and all sources (for the within-collection figures, the shortcut probe and JSRT).
#   usage: benchmarks/generalization.sh ROW [FOLD...] -- [extra covidxray train flags]
#   e.g.   benchmarks/generalization.sh adv_cond -- --adversary conditional
# FOLD is cohen, radiography, kermany or all (default: cohen radiography all). Runs already finished are kept.
# Then: .venv/bin/python benchmarks/generalization.py ROW... writes the table.
set -euo pipefail
cd "$(dirname "$0")/.."
ROW=$1; shift
FOLDS=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do FOLDS+=("$1"); shift; done
[ $# -gt 0 ] && shift
[ ${#FOLDS[@]} -eq 0 ] && FOLDS=(cohen radiography all)
MANIFEST=${MANIFEST:-runs/data/manifest.csv}
EPOCHS=${EPOCHS:-8}
SIZE=${SIZE:-64}
SAMPLES=${SAMPLES:-1536}
export OMP_NUM_THREADS=1
for fold in "${FOLDS[@]}"; do
  out=runs/gen/$ROW/$fold
  if grep -qs '"status": "completed"' "$out/run.json"; then echo "kept $out"; continue; fi
  hold=(); [ "$fold" != all ] && hold=(--holdout-source "$fold")
  .venv/bin/python -m covidxray.cli train --manifest "$MANIFEST" --model seed_cnn6 --out "$out" "${hold[@]}" \
    --init glorot --image-size "$SIZE" --epochs "$EPOCHS" --epoch-samples "$SAMPLES" --patience 10 --threads 1 \
    --no-progress "$@"
done
