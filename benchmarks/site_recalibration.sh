#!/usr/bin/env bash
# Bring your own hospital, demonstrated: the shipped model at a site it never saw, before and after
# `covidxray recalibrate`. Writes runs/site-demo/ and benchmarks/results/site_recalibration.json.
# The site (tools/make_site_demo.py, symlinks only): all 247 JSRT adults as non-COVID + the 305 COVID-19 images of
# the test split of the manifest the shipped model was trained on (patients it never saw).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
OUT=runs/site-demo
MANIFEST=${MANIFEST:-/work/main/runs/data/manifest.csv}
$BIN/python tools/make_site_demo.py --out $OUT/site --manifest "$MANIFEST"
$BIN/covidxray data build --root $OUT/site --out $OUT/manifest.csv --fractions 0.5 0 0.5 --workers 1
$BIN/covidxray evaluate --manifest $OUT/manifest.csv --split test --out $OUT/before --no-probe
$BIN/covidxray recalibrate --manifest $OUT/manifest.csv --split train --out $OUT/screening
$BIN/covidxray recalibrate --manifest $OUT/manifest.csv --split train --out $OUT/balanced --decision balanced
$BIN/covidxray recalibrate --manifest $OUT/manifest.csv --split train --out $OUT/spec90 --target-specificity 0.9
$BIN/covidxray evaluate --model $OUT/balanced --manifest $OUT/manifest.csv --split test --out $OUT/after-balanced \
    --no-probe
$BIN/python - <<'PY'
import json, platform
from pathlib import Path
out = Path("runs/site-demo")
res = {"machine": platform.platform(), "site": "JSRT 247 non-COVID + 305 held-out COVID-19", "runs": {}}
for name in ("screening", "balanced", "spec90"):
    r = json.loads((out / name / "recalibration.json").read_text())
    res["runs"][name] = {"test": r["test"], "points": {k: {"threshold": v["threshold"], "ci": v["threshold_ci"],
                         "rule": v["rule"]} for k, v in r["operating_points"].items()},
                         "curve": r["site_curve"]["rows"]}
Path("benchmarks/results").mkdir(parents=True, exist_ok=True)
Path("benchmarks/results/site_recalibration.json").write_text(json.dumps(res, indent=2) + "\n")
print(f"{'run':<10} {'point':<10} {'threshold':>9}  {'sensitivity':<22} {'specificity':<22}")
for name, r in res["runs"].items():
    for when in ("before", "after"):
        t = r["test"][when]
        f = lambda m: f"{m['value']:.3f} [{m['ci'][0]:.3f}, {m['ci'][1]:.3f}]"
        print(f"{name:<10} {when + ':' + t['point']:<18} {t['threshold']:.4f}  {f(t['sensitivity']):<22} {f(t['specificity']):<22}")
PY
