#!/usr/bin/env bash
# One row of "The ablation under one protocol" (BENCHMARKS.md, "Leave-one-source-out without copies"): the two
# leave-one-source-out fold runs of the shipped recipe's command (seed_cnn6, Glorot init, 96 px lung crop, 20 x
# 2,048 images, every epoch's weights kept), cohen held out and Radiography held out, side by side on 1 thread
# each, with the row's extra flags appended (a flag given twice: the last one wins). The held-out source's copies
# in the other collections are left out of training by --holdout-source itself.
#   usage: benchmarks/fold_pair.sh NAME [extra covidxray train flags]
#   e.g.   benchmarks/fold_pair.sh nl_swa_wd1 --average-from 11 --weight-decay 0.1
# Writes runs/exp/NAME/{cohen,radiography} (logs runs/exp/NAME.FOLD.log) and links runs/gen/NAME/<fold> to them,
# so `.venv/bin/python benchmarks/generalization.py NAME` scores the row (with MANIFEST=... set, give
# generalization.py the same --manifest). An interrupted fold continues with
# `covidxray train --resume runs/exp/NAME/FOLD --threads 1 --no-progress` (then make the two links by hand:
# running this script again would start the fold afresh).
# (The runs/exp/pair.sh + runs/exp/fold.sh that BENCHMARKS' commands name from the sixth session on, kept in the
# repo; earlier sessions' fold.sh was another command, written beside their tables.)
set -euo pipefail
cd "$(dirname "$0")/.."
NAME=${1:?usage: benchmarks/fold_pair.sh NAME [extra covidxray train flags]}; shift
MANIFEST=${MANIFEST:-runs/data/manifest.csv}
mkdir -p "runs/exp/$NAME" "runs/gen/$NAME"
fold() {
  OMP_NUM_THREADS=1 .venv/bin/covidxray train --manifest "$MANIFEST" --model seed_cnn6 \
    --out "runs/exp/$NAME/$1" --holdout-source "$1" --init glorot --image-size 96 --resize lungcrop --epochs 20 \
    --epoch-samples 2048 --patience 10 --threads 1 --no-progress --epoch-weights "${@:2}" \
    > "runs/exp/$NAME.$1.log" 2>&1
}
rm -f "runs/exp/$NAME/cohen/history.csv"  # a fresh start: an old run's history must not release the second fold
fold cohen "$@" &
pid=$!
trap 'kill "$pid" 2>/dev/null' INT TERM
# the second fold starts once the first has built the shared image cache and finished an epoch
until [ -f "runs/exp/$NAME/cohen/history.csv" ] || ! kill -0 "$pid" 2>/dev/null; do sleep 10; done
rc=0
fold radiography "$@" || rc=$?
wait "$pid" || rc=$?
for f in cohen radiography; do
  if grep -qs '"status": "completed"' "runs/exp/$NAME/$f/run.json"; then
    ln -sfn "$PWD/runs/exp/$NAME/$f" "runs/gen/$NAME/$f"
  else
    echo "fold $f of $NAME did not complete: see runs/exp/$NAME.$f.log" >&2
  fi
done
exit "$rc"
