"""What a decision threshold will do at another hospital, read from the proxies this machine has (issue #12).

The one measurement of a model at other hospitals is in issue #12's text: the first default model (whole image,
commit c486c58), deciding at p(covid) >= 0.105, had sensitivity 0.92 and specificity 0.62 on ~2,000 external
images (best threshold a posteriori: 0.83 / 0.83). This script puts the local proxies beside it, for that model
and for the shipped one, at their deciding points and along a grid of thresholds:

- in-source test sensitivity and specificity (all sources; the Radiography Database's adults alone);
- JSRT specificity (247 adults from Japanese hospitals no training image comes from; ``runs/data/jsrt.csv``);
- the shipped model's stored points.

    .venv/bin/python benchmarks/operating_point_proxies.py [--old-commit c486c58] [--out J]
        [--compare NAME=BUNDLE[+BUNDLE...] ...]

``--compare`` adds models (``+`` joins an ensemble: probabilities averaged) to a second table that sets every
model at the same test sensitivities and compares what it then does to adults it should not call COVID-19: the
Radiography Database's (in source) and JSRT's (out of source).

The first default model's bundle is read from git (``git show COMMIT:src/covidxray/default_model/...``) into a
temporary folder; nothing is downloaded.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from covidxray.bundle import load_bundle
from covidxray.data.manifest import read_manifest
from covidxray.evaluation.inference import run_inference

SHIPPED = Path("src/covidxray/default_model")
FILES = ("config.json", "model.safetensors")
# issue #12, "What was measured": the first default model at other hospitals, deciding at p(covid) >= 0.105
EXTERNAL_OLD = {"threshold": 0.105, "sensitivity": 0.92, "specificity": 0.62, "best_balanced": 0.83}
GRID = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def rates(p: np.ndarray, covid: np.ndarray, t: float) -> tuple[float | None, float | None]:
    sens = float(np.mean(p[covid] >= t)) if covid.any() else None
    spec = float(np.mean(p[~covid] < t)) if (~covid).any() else None
    return sens, spec


def covid_probabilities(bundles: list[Path], frames: list, cache_dir: str) -> list[np.ndarray]:
    """p(covid) of one bundle or the mean of several, for each frame."""
    out = [np.zeros(len(f)) for f in frames]
    for path in bundles:
        b = load_bundle(path)
        for i, f in enumerate(frames):
            out[i] += run_inference(b, f, cache_dir, 64).probability("covid") / len(bundles)
    return out


def figures(bundle_dir: Path, test, jsrt, cache_dir: str, thresholds: list[float]) -> dict:
    p_test, p_jsrt = covid_probabilities([bundle_dir], [test, jsrt], cache_dir)
    covid = (test["label"].astype(str) == "covid").to_numpy()
    radio = (test["source"].astype(str) == "radiography").to_numpy()
    rows = []
    for t in thresholds:
        sens, spec = rates(p_test, covid, t)
        r_sens, r_spec = rates(p_test[radio], covid[radio], t)
        rows.append(
            {
                "threshold": round(float(t), 4),
                "test_sensitivity": sens,
                "test_specificity": spec,
                "radiography_sensitivity": r_sens,
                "radiography_adults_specificity": r_spec,
                "jsrt_specificity": float(np.mean(p_jsrt < t)),
            }
        )
    return {"bundle": str(bundle_dir), "rows": rows}


MATCHED = (0.95, 0.9, 0.85, 0.8, 0.75, 0.7)


def matched(bundles: list[Path], test, jsrt, cache_dir: str) -> dict:
    """At thresholds giving each test sensitivity of MATCHED: specificity on the Radiography Database's test
    adults and on JSRT; plus test and within-Radiography COVID AUC."""
    from covidxray.metrics import roc_auc

    p_test, p_jsrt = covid_probabilities(bundles, [test, jsrt], cache_dir)
    covid = (test["label"].astype(str) == "covid").to_numpy()
    radio = (test["source"].astype(str) == "radiography").to_numpy()
    rows = []
    for target in MATCHED:
        t = float(np.quantile(p_test[covid], 1 - target))
        rows.append(
            {
                "test_sensitivity": target,
                "threshold": t,
                "radiography_adults_specificity": float(np.mean(p_test[radio & ~covid] < t)),
                "jsrt_specificity": float(np.mean(p_jsrt < t)),
            }
        )
    return {
        "bundles": [str(b) for b in bundles],
        "test_auc_covid": roc_auc(covid, p_test)[0],
        "radiography_auc_covid": roc_auc(covid[radio], p_test[radio])[0],
        "rows": rows,
    }


def table(name: str, fig: dict, marks: dict[float, str]) -> str:
    lines = [
        f"\n{name}\n",
        "| p(covid) >= | test sensitivity | test specificity | Radiography adults specificity | "
        "JSRT specificity | |",
        "|---|---|---|---|---|---|",
    ]
    for r in fig["rows"]:
        lines.append(
            f"| {r['threshold']:.3f} | {r['test_sensitivity']:.2f} | {r['test_specificity']:.2f} | "
            f"{r['radiography_adults_specificity']:.2f} | {r['jsrt_specificity']:.2f} | "
            f"{marks.get(r['threshold'], '')} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--old-commit", default="c486c58", help="git commit of the first default model")
    ap.add_argument("--manifest", type=Path, default=Path("runs/data/manifest.csv"))
    ap.add_argument("--jsrt", type=Path, default=Path("runs/data/jsrt.csv"))
    ap.add_argument("--cache-dir", default="runs/cache")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/operating_point_proxies.json"))
    ap.add_argument(
        "--compare",
        action="append",
        default=[],
        metavar="NAME=BUNDLE[+BUNDLE]",
        help="another model (or an ensemble) for the matched-sensitivity table",
    )
    a = ap.parse_args()
    df, jsrt = read_manifest(a.manifest), read_manifest(a.jsrt)
    test = df[df["split"].astype(str) == "test"].reset_index(drop=True)
    shipped_cfg = json.loads((SHIPPED / "config.json").read_text())
    points = {k: float(v["threshold"]) for k, v in shipped_cfg["operating_points"].items()}
    result = {"external_first_default_model": EXTERNAL_OLD, "shipped_points": points}
    with tempfile.TemporaryDirectory() as tmp:
        old = Path(tmp)
        for f in FILES:
            blob = subprocess.run(
                ["git", "show", f"{a.old_commit}:{SHIPPED}/{f}"], check=True, capture_output=True
            ).stdout
            (old / f).write_bytes(blob)
        result["first_default_model"] = figures(
            old, test, jsrt, a.cache_dir, sorted({*GRID, EXTERNAL_OLD["threshold"]})
        )
        models = {"first default (whole image)": [old], "shipped (lung crop)": [SHIPPED]}
        for spec in a.compare:
            name, _, paths = spec.partition("=")
            models[name] = [Path(x) for x in paths.split("+")]
        result["matched_sensitivity"] = {n: matched(b, test, jsrt, a.cache_dir) for n, b in models.items()}
        # the first default model is named by where it lives, not by the temporary folder it was read into
        where = f"git {a.old_commit}:{SHIPPED}"
        result["first_default_model"]["bundle"] = where
        for m in result["matched_sensitivity"].values():
            m["bundles"] = [where if b == str(old) else b for b in m["bundles"]]
    result["shipped_model"] = figures(SHIPPED, test, jsrt, a.cache_dir, sorted({*GRID, *points.values()}))
    print(
        table(
            f"first default model ({a.old_commit}); at other hospitals (issue #12) p >= 0.105 gave sensitivity "
            "0.92, specificity 0.62",
            result["first_default_model"],
            {EXTERNAL_OLD["threshold"]: "its decision; other hospitals: 0.92 / 0.62"},
        )
    )
    print(
        table(
            "shipped model",
            result["shipped_model"],
            {round(v, 4): f"stored point '{k}'" for k, v in points.items()},
        )
    )
    print(
        "\nat the same test sensitivity: specificity on the Radiography Database's test adults (in source) / on "
        "JSRT (out of source)\n"
    )
    names = list(result["matched_sensitivity"])
    print("| test sensitivity | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))
    for i, target in enumerate(MATCHED):
        cells = [result["matched_sensitivity"][n]["rows"][i] for n in names]
        print(
            f"| {target:.2f} | "
            + " | ".join(
                f"{c['radiography_adults_specificity']:.2f} / {c['jsrt_specificity']:.2f}" for c in cells
            )
            + " |"
        )
    print(
        "| COVID AUC, test / within Radiography | "
        + " | ".join(
            f"{result['matched_sensitivity'][n]['test_auc_covid']:.3f} / "
            f"{result['matched_sensitivity'][n]['radiography_auc_covid']:.3f}"
            for n in names
        )
        + " |"
    )
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {a.out}")


if __name__ == "__main__":
    main()
