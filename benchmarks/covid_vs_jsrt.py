"""All-sources models against adults of a hospital none of them saw: the test split's COVID-19 against JSRT.

The external test the shipped model is scored on puts COVID-19 of other collections against non-COVID adults of
other hospitals. The closest check here: every COVID-19 image of the test split (collections the model trained on,
patients it did not) against JSRT's 247 adults (Japanese hospitals, no COVID-19, never in any classifier's
training; ``runs/data/jsrt.csv`` from tools/jsrt_manifest.py). One anchor makes it readable: the first default
model (``c486c58``), which the issue's external images scored at COVID AUC 0.896. Each model is a bundle folder
(``NAME=PATH``); ``NAME=PATH+PATH`` averages the bundles' p(covid) (a small ensemble). Beside it, the test split's
COVID AUC on adults only (Kermany's children and their re-encoded copies left out: the external negatives are all
adults, and children are the easiest negatives there are), and COVID-19 against the adult normals and against the
adult pneumonias of the test split.

    git show c486c58:src/covidxray/default_model/config.json > /tmp/first/config.json   # (and model.safetensors)
    .venv/bin/python benchmarks/covid_vs_jsrt.py first=/tmp/first shipped=src/covidxray/default_model \\
        both=/tmp/first+src/covidxray/default_model [--out benchmarks/results/covid_vs_jsrt_all.json]

Prints a markdown table (95 % patient-bootstrap intervals) and writes the JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from covidxray.bundle import load_bundle
from covidxray.data.manifest import read_manifest
from covidxray.evaluation.inference import run_inference

sys.path.insert(0, str(Path(__file__).parent))
from generalization import against, auc_ci, children, fmt  # noqa: E402

COLUMNS = (
    ("test", "test COVID AUC"),
    ("test_adults", "test COVID AUC, adults"),
    ("adults_vs_normal", "adults: COVID-19 vs normal"),
    ("adults_vs_pneumonia", "adults: COVID-19 vs pneumonia"),
    ("within_radiography", "within Radiography"),
    ("covid_vs_jsrt", "test COVID-19 vs JSRT"),
    ("covid_vs_jsrt_nonnodule", "vs JSRT without nodules"),
    ("cohen_covid_vs_jsrt", "cohen's COVID-19 vs JSRT"),
    ("radiography_covid_vs_jsrt", "Radiography's COVID-19 vs JSRT"),
)


def figures(paths: list[str], df, jsrt, test: np.ndarray, cache_dir: str) -> dict:
    p, pj = [], []
    for path in paths:
        bundle = load_bundle(path)
        p.append(run_inference(bundle, df, cache_dir, 64, test).probability("covid"))
        pj.append(run_inference(bundle, jsrt, cache_dir, 64, None).probability("covid"))
    p, pj = np.mean(p, axis=0), np.mean(pj, axis=0)
    src = df["source"].astype(str).to_numpy()[test]
    y = df["label"].astype(str).to_numpy()[test] == "covid"
    pid = df["patient_id"].astype(str).to_numpy()[test]
    jp = jsrt["patient_id"].astype(str).to_numpy()
    nn = (jsrt["subtype"].astype(str) == "non-nodule").to_numpy()
    r = src == "radiography"
    adult = ~children(df)[test]
    label = df["label"].astype(str).to_numpy()[test]
    out = {
        "bundles": paths,
        "test": auc_ci(y, p, pid),
        "test_adults": auc_ci(y[adult], p[adult], pid[adult]),
        "within_radiography": auc_ci(y[r], p[r], pid[r]),
        "covid_vs_jsrt": against(p[y], pid[y], pj, jp),
        "covid_vs_jsrt_nonnodule": against(p[y], pid[y], pj[nn], jp[nn]),
    }
    for neg in ("normal", "pneumonia"):
        m = adult & (y | (label == neg))
        out[f"adults_vs_{neg}"] = auc_ci(y[m], p[m], pid[m])
    for s in ("cohen", "radiography"):
        m = y & (src == s)
        out[f"{s}_covid_vs_jsrt"] = against(p[m], pid[m], pj, jp)
    out["jsrt_median_p_covid"] = float(np.median(pj))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="+", help="NAME=BUNDLE or NAME=BUNDLE+BUNDLE (probabilities averaged)")
    ap.add_argument("--manifest", default="runs/data/manifest.csv")
    ap.add_argument("--jsrt", default="runs/data/jsrt.csv")
    ap.add_argument("--cache-dir", default="runs/cache")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/covid_vs_jsrt_all.json"))
    a = ap.parse_args()
    df, jsrt = read_manifest(a.manifest), read_manifest(a.jsrt)
    test = np.flatnonzero(df["split"].astype(str).to_numpy() == "test")
    results = {}
    for spec in a.models:
        name, sep, paths = spec.partition("=")
        if not sep or not paths:
            sys.exit(f"{spec!r}: give NAME=BUNDLE (or NAME=BUNDLE+BUNDLE)")
        missing = [p for p in paths.split("+") if not (Path(p) / "config.json").is_file()]
        if missing:
            sys.exit(f"{name}: no bundle (config.json) in {', '.join(missing)}")
        results[name] = figures(paths.split("+"), df, jsrt, test, a.cache_dir)
    old = json.loads(a.out.read_text()) if a.out.is_file() else {}
    old.update(results)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(old, indent=2) + "\n")
    print("| model | " + " | ".join(t for _, t in COLUMNS) + " | JSRT median p(covid) |")
    print("|---|" + "---|" * (len(COLUMNS) + 1))
    for name, r in results.items():
        print(
            f"| {name} | "
            + " | ".join(fmt(r[k]) for k, _ in COLUMNS)
            + f" | {r['jsrt_median_p_covid']:.2f} |"
        )
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
