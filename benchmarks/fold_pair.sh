#!/usr/bin/env bash
# One row of "The ablation under one protocol" (BENCHMARKS.md, "Leave-one-source-out without copies"):
# benchmarks/generalization.sh with the shipped recipe's protocol (seed_cnn6, Glorot init, 96 px lung crop,
# 20 x 2,048 images, every epoch's weights kept) for the two folds with COVID-19, cohen held out and Radiography
# held out, side by side on 1 thread each, with the row's extra flags appended (a flag given twice: the last one
# wins). The held-out source's copies in the other collections are left out of training by --holdout-source.
#   usage: benchmarks/fold_pair.sh NAME [extra covidxray train flags]
#   e.g.   benchmarks/fold_pair.sh nl_swa_wd1 --average-from 11 --weight-decay 0.1
# Writes runs/gen/NAME/{cohen,radiography} (logs runs/gen/NAME.FOLD.log), so
# `.venv/bin/python benchmarks/generalization.py NAME` scores the row (with MANIFEST=... set, give it the same
# --manifest). A fold already completed is kept; an interrupted one continues with
# `covidxray train --resume runs/gen/NAME/FOLD --threads 1 --no-progress`.
# (BENCHMARKS' commands from the sixth session on call it runs/exp/pair.sh, whose runs lived in runs/exp/NAME
# with links from runs/gen/NAME.)
set -euo pipefail
cd "$(dirname "$0")/.."
NAME=${1:?usage: benchmarks/fold_pair.sh NAME [extra covidxray train flags]}; shift
fold() {
  EPOCHS=20 SIZE=96 SAMPLES=2048 benchmarks/generalization.sh "$NAME" "$1" -- \
    --resize lungcrop --epoch-weights "${@:2}" > "runs/gen/$NAME.$1.log" 2>&1
}
mkdir -p "runs/gen/$NAME"
cohen=runs/gen/$NAME/cohen
# an unfinished earlier run's history must not release the second fold before the cache is built
grep -qs '"status": "completed"' "$cohen/run.json" || rm -f "$cohen/history.csv"
fold cohen "$@" &
pid=$!
trap 'kill "$pid" 2>/dev/null' INT TERM
# the second fold starts once the first has built the shared image cache and finished an epoch
until [ -f "$cohen/history.csv" ] || ! kill -0 "$pid" 2>/dev/null; do sleep 10; done
rc=0
fold radiography "$@" || rc=$?
wait "$pid" || rc=$?
[ "$rc" = 0 ] || echo "a fold of $NAME did not complete: see runs/gen/$NAME.cohen.log, runs/gen/$NAME.radiography.log" >&2
exit "$rc"
