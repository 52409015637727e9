#!/usr/bin/env bash
# The model comparison of BENCHMARKS.md: every model trained by covidxray on the same manifest and split, under
# one protocol and one CPU budget, evaluated on the same test split, then put side by side.
#   usage: benchmarks/compare_models.sh MODEL... (default: all of the comparison)
# Protocol: 96 px, equalised grey input, `light` augmentation, label x source balanced sampler, Adam 1e-3,
# 2,048 images per epoch, at most 10 minutes of training (stops after the epoch that crosses it), 1 torch
# thread (two of these scripts run side by side on the 2 cores), best epoch by val macro AUC.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
MANIFEST=${MANIFEST:-runs/data/manifest.csv}
OUT=${OUT:-runs/compare}
MODELS=${*:-seed_cnn6 seed_cnn422k seed_cnn2 resnet18 densenet121 efficientnet_b0 mobilenet_v2}
export OMP_NUM_THREADS=1
for m in $MODELS; do
  if [ ! -f "$OUT/$m/model/config.json" ] || grep -q '"status": "running"' "$OUT/$m/run.json"; then
    $BIN/covidxray train --manifest "$MANIFEST" --model "$m" --out "$OUT/$m" --image-size 96 --epochs 40 \
      --epoch-samples 2048 --max-minutes 10 --patience 6 --threads 1 --no-progress
  fi
  [ -f "$OUT/$m/evaluation/metrics.json" ] || $BIN/covidxray evaluate --model "$OUT/$m" --manifest "$MANIFEST" \
      --split test --out "$OUT/$m/evaluation"
done
