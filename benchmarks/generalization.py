"""The generalization ablation table (BENCHMARKS.md, "Generalization ablation"), from runs of
``benchmarks/generalization.sh``: per row (a technique), the leave-one-source-out figures that predict how a model
does at another hospital.

For each row folder ``runs/gen/ROW`` with runs ``cohen/`` and ``radiography/`` (that source held out) and ``all/``
(every source) -- each a run folder, or a folder whose ``members.json`` lists run folders (a small ensemble:
probabilities averaged, features side by side):

- out-of-source COVID ROC AUC per fold (every image of the held-out source; 95 % patient-bootstrap interval);
- the same AUC against each kind of negative of the held-out source alone (COVID-19 against its normals, against
  its pneumonia): where the out-of-source AUC is lost; and on adults only (:func:`children`: Kermany's children and
  their re-encoded copies left out), the shape of the external test, whose negatives are all adults;
- each fold's held-out COVID-19 against JSRT's adults (a hospital no model here saw);
- sensitivity / specificity on the held-out source at operating points chosen **without** that source: on the
  other fold's out-of-source predictions (``travel``: highest min(sensitivity, specificity) there), and, for
  contrast, on the fold's own in-source validation rows at sensitivity 0.95 (the old rule, ``in-source``); and
  the rule ``covidxray run`` decides with (``travel_level``): the other fold chooses an in-source sensitivity
  level (:func:`covidxray.pipeline.fold_balanced_point`), this fold model decides at its own threshold for it;
- from ``all/``: test COVID AUC (all, and adults only), within the Radiography Database only and within
  covid-chestxray-dataset only, the test split's COVID-19 against JSRT,
  and the source-shortcut probe (balanced accuracy of a logistic regression predicting the source from the
  penultimate features, test split, 5-fold by patient);
- the share of JSRT (``runs/data/jsrt.csv``, tools/jsrt_manifest.py; adults, no COVID-19) called COVID-19 by
  ``all/`` at the pooled travelling point and by each fold model at its own travelling point;
- training time (sum over the runs, and ``all/`` alone).

    .venv/bin/python benchmarks/generalization.py ROW [ROW...] [--out benchmarks/results/generalization.json]
        [--store-points BUNDLE]

Prints a markdown table and writes the JSON (every figure, plus the chosen thresholds). ``--store-points`` writes
the (one) row's pooled out-of-source "screening" and "balanced" points into a bundle (``balanced`` decides): how
the shipped default model gets an operating point chosen on images of sources its recipe never saw.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from covidxray.bundle import load_bundle
from covidxray.data import population
from covidxray.data.manifest import read_manifest
from covidxray.evaluation.bootstrap import patient_bootstrap, weighted_roc_auc
from covidxray.evaluation.inference import run_inference
from covidxray.evaluation.operating_point import rates_at, threshold_for_sensitivity
from covidxray.evaluation.probe import source_probe
from covidxray.pipeline import fold_balanced_point

FOLDS = ("cohen", "radiography")
COVID = "covid"


def auc_ci(y: np.ndarray, p: np.ndarray, patients: np.ndarray, n: int = 1000) -> dict:
    """COVID ROC AUC with a 95 % patient-bootstrap interval."""
    from sklearn.metrics import roc_auc_score

    if len(np.unique(y)) < 2:
        return {"value": None, "ci": None}
    ci = patient_bootstrap(lambda w: {"auc": weighted_roc_auc(w, y, p)}, patients, n_resamples=n)["auc"]
    return {"value": float(roc_auc_score(y, p)), "ci": ci.to_list()}


def against(pos: np.ndarray, pos_pid: np.ndarray, neg: np.ndarray, neg_pid: np.ndarray) -> dict:
    """COVID ROC AUC of the scores ``pos`` (positives) against ``neg`` (negatives of another set, e.g. JSRT), with
    its 95 % patient-bootstrap interval (:func:`auc_ci`)."""
    y = np.r_[np.ones(len(pos)), np.zeros(len(neg))]
    return auc_ci(y, np.r_[pos, neg], np.r_[pos_pid, neg_pid])


def children(df: pd.DataFrame) -> np.ndarray:
    """Rows that are children: Kermany's (Guangzhou, ages 1-5) and their re-encoded copies in other collections (a
    duplicate group holding a Kermany image; 205 of the Radiography Database's normals). The external images the
    issue scores are adults, so the figures on adults leave these out. The package's rule
    (:func:`covidxray.data.population.children`) without its age test, as the recorded figures were measured (it
    would move one cohen COVID-19 test image, age 12)."""
    return population.children(df, by_age=False)


def balanced_threshold(y: np.ndarray, p: np.ndarray) -> float:
    """The threshold with the highest min(sensitivity, specificity) (ties: the highest such threshold)."""
    from sklearn.metrics import roc_curve

    fpr, tpr, thr = roc_curve(y, p, drop_intermediate=False)
    score = np.minimum(tpr, 1 - fpr)
    best = np.flatnonzero(score >= score.max() - 1e-12)
    return float(min(thr[best[0]], 1.0))


def members_of(run: Path) -> list[Path]:
    """The runs behind a row's run folder: itself, or, for a small ensemble, the run folders listed in its
    ``members.json`` (relative to the ensemble folder or absolute); their probabilities are averaged."""
    listed = run / "members.json"
    if not listed.is_file():
        return [run]
    return [(run / m).resolve() for m in json.loads(listed.read_text())]


def predict(run: Path, frames: list, cache_dir: str) -> list[tuple[np.ndarray, np.ndarray]]:
    """For each ``(df, rows)`` of ``frames`` (rows None: all): p(covid) of a run (an ensemble: the mean over its
    members) and its penultimate features (an ensemble: the members' side by side). Each member's bundle is
    loaded once for all the frames."""
    probs: list[list] = [[] for _ in frames]
    feats: list[list] = [[] for _ in frames]
    for member in members_of(run):
        bundle = load_bundle(member / "model")
        for i, (df, rows) in enumerate(frames):
            res = run_inference(bundle, df, cache_dir, 64, rows)
            probs[i].append(res.probability(COVID))
            feats[i].append(res.features)
    return [(np.mean(p, axis=0), np.concatenate(f, axis=1)) for p, f in zip(probs, feats, strict=True)]


def fmt(m: dict | None) -> str:
    if not m or m.get("value") is None:
        return "n/a"
    ci = m.get("ci")
    return f"{m['value']:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")


def row_figures(row_dir: Path, df, jsrt, cache_dir: str) -> dict:
    out: dict = {"row": row_dir.name, "folds": {}}
    src = df["source"].astype(str).to_numpy()
    split = df["split"].astype(str).to_numpy()
    labels = df["label"].astype(str).to_numpy()
    is_covid = labels == COVID
    pid = df["patient_id"].astype(str).to_numpy()
    jsrt_pid = jsrt["patient_id"].astype(str).to_numpy()
    adult = ~children(df)
    preds = {}
    seconds = {}
    # each fold's run folder(s): one run, or an ensemble's members
    members = {f: members_of(row_dir / f) for f in (*FOLDS, "all") if (row_dir / f).is_dir()}
    for fold in (*FOLDS, "all"):
        run = row_dir / fold
        if fold not in members or not (members[fold][0] / "model" / "config.json").is_file():
            continue
        infos = [json.loads((m / "run.json").read_text()) for m in members[fold]]
        info = infos[0]
        seconds[fold] = sum(i["train_seconds"] for i in infos)
        # only the rows a figure needs: held-out source + in-source val (folds), test split (all sources)
        need = (split == "test") if fold == "all" else ((src == fold) | ((src != fold) & (split == "val")))
        rows = np.flatnonzero(need)
        (p_rows, f_rows), (p_jsrt, _) = predict(run, [(df, rows), (jsrt, None)], cache_dir)
        p_all = np.full(len(df), np.nan)
        p_all[rows] = p_rows
        feats = np.zeros((len(df), f_rows.shape[1]), np.float32)
        feats[rows] = f_rows
        preds[fold] = (p_all, feats, p_jsrt)
        out.setdefault(
            "config", {k: v for k, v in info["config"].items() if k not in ("out", "holdout_source")}
        )
    for fold in FOLDS:
        if fold not in preds:
            continue
        p_all, _, p_jsrt = preds[fold]
        held = src == fold
        f = {"auc_out": auc_ci(is_covid[held], p_all[held], pid[held])}
        # adults only: the held-out source without Kermany's children re-encoded in it (the external test's shape)
        f["auc_out_adults"] = auc_ci(is_covid[held & adult], p_all[held & adult], pid[held & adult])
        # where the out-of-source AUC is lost: COVID-19 against each kind of negative of the held-out source
        f["auc_out_against"] = {}
        for neg in sorted(set(labels[held & ~is_covid])):
            m = held & (is_covid | (labels == neg))
            f["auc_out_against"][neg] = {
                "n_negative": int((m & ~is_covid).sum()),
                **auc_ci(is_covid[m], p_all[m], pid[m]),
            }
            if (m & ~is_covid & ~adult).any():
                f["auc_out_against"][f"{neg} (adults)"] = {
                    "n_negative": int((m & ~is_covid & adult).sum()),
                    **auc_ci(is_covid[m & adult], p_all[m & adult], pid[m & adult]),
                }
        # the held-out COVID-19 against adults of hospitals no model here saw (JSRT, no COVID-19): the shape of
        # the external test (COVID-19 of unseen collections against non-COVID adults of other hospitals)
        pos = held & is_covid
        f["auc_out_vs_jsrt"] = {"n_negative": len(p_jsrt), **against(p_all[pos], pid[pos], p_jsrt, jsrt_pid)}
        training = load_bundle(members[fold][0] / "model").config.training
        f["epoch"], f["selected_by"] = training.get("best_epoch"), training.get("selected_by")
        f["averaged_epochs"] = training.get("averaged_epochs")
        run_json = members[fold][0] / "run.json"
        if run_json.is_file() and "group_dro_weights" in json.loads(run_json.read_text()):
            f["group_dro_weights"] = json.loads(run_json.read_text())["group_dro_weights"]
        # in-source validation rows, sensitivity 0.95 (the rule the bundles used so far)
        val = (~held) & (split == "val")
        t_in = threshold_for_sensitivity(is_covid[val], p_all[val], 0.95)
        f["in_source"] = {"threshold": t_in, **rates_at(is_covid[held], p_all[held], t_in)}
        others = [o for o in FOLDS if o != fold and o in preds]
        if others:  # chosen on the other fold(s)' out-of-source predictions: never sees this source
            y_o = np.concatenate([is_covid[src == o] for o in others])
            p_o = np.concatenate([preds[o][0][src == o] for o in others])
            t = balanced_threshold(y_o, p_o)
            f["travel"] = {"threshold": t, **rates_at(is_covid[held], p_all[held], t)}
            f["jsrt_covid_share"] = float(np.mean(p_jsrt >= t))
            # the rule `covidxray run` decides with (fold_balanced_point): the other fold(s) choose an in-source
            # sensitivity level; this fold model decides at its own threshold for that level
            pool_o, val_o = [], []
            for o in others:
                for mask, parts in ((src == o, pool_o), ((src != o) & (split == "val"), val_o)):
                    parts.append(pd.DataFrame({"label": labels[mask], "p": preds[o][0][mask], "fold": o}))
            chosen = fold_balanced_point(pd.concat(pool_o), pd.concat(val_o), COVID)
            if chosen is not None:
                level = chosen["in_source_sensitivity"]
                t_l = threshold_for_sensitivity(is_covid[val], p_all[val], level)
                f["travel_level"] = {
                    "level": level,
                    "threshold": t_l,
                    **rates_at(is_covid[held], p_all[held], t_l),
                    "jsrt_covid_share": float(np.mean(p_jsrt >= t_l)),
                }
        out["folds"][fold] = f
    # pooled out-of-source predictions of both folds -> the operating points a bundle of this row would store
    if all(f in preds for f in FOLDS):
        y_pool = np.concatenate([is_covid[src == f] for f in FOLDS]).astype(bool)
        p_pool = np.concatenate([preds[f][0][src == f] for f in FOLDS])
        where = {
            "description": "pooled out-of-source leave-one-source-out predictions (cohen held out, "
            "radiography held out)",
            "n_images": int(len(y_pool)),
            "n_positive": int(y_pool.sum()),
            "n_negative": int((~y_pool).sum()),
        }
        t_bal, t_scr = balanced_threshold(y_pool, p_pool), threshold_for_sensitivity(y_pool, p_pool, 0.95)
        out["pooled"] = {"balanced": t_bal, "screening": t_scr}
        # in the form of a bundle's config.json "operating_points" (covidxray.decision, issue #18)
        out["operating_points"] = {
            "screening": {
                "class": COVID,
                "threshold": t_scr,
                "rule": "sensitivity>=0.95",
                "chosen_on": where,
            },
            "balanced": {
                "class": COVID,
                "threshold": t_bal,
                "rule": "max min(sensitivity,specificity)",
                "chosen_on": where,
            },
        }
        out["decision"] = "balanced"
        out["mean_auc_out"] = float(np.mean([out["folds"][f]["auc_out"]["value"] for f in FOLDS]))
        out["mean_auc_out_adults"] = float(
            np.mean([out["folds"][f]["auc_out_adults"]["value"] for f in FOLDS])
        )
    if "all" in preds:
        p_all, feats, p_jsrt = preds["all"]
        test = split == "test"
        a = {}
        for s in ("radiography", "cohen"):
            m = test & (src == s)
            a[f"auc_within_{s}"] = auc_ci(is_covid[m], p_all[m], pid[m])
        probe = source_probe(feats[test], src[test], pid[test], df["label"].astype(str).to_numpy()[test])
        a["probe"] = probe.balanced_accuracy
        a["probe_label_only"] = probe.label_only_baseline
        a["auc_test"] = auc_ci(is_covid[test], p_all[test], pid[test])
        a["auc_test_adults"] = auc_ci(is_covid[test & adult], p_all[test & adult], pid[test & adult])
        # the test split's COVID-19 (collections seen in training) against JSRT's adults (a hospital never seen)
        pos = test & is_covid
        a["auc_test_covid_vs_jsrt"] = against(p_all[pos], pid[pos], p_jsrt, jsrt_pid)
        if "pooled" in out:
            # the point the all-sources model decides with: the pooled balanced threshold, or, when `covidxray
            # run` carried it to that model as an in-source sensitivity (covidxray.pipeline), the carried one
            stored = load_bundle(members["all"][0] / "model").config.operating_points.get("balanced", {})
            # an ensemble decides at the pooled point
            carried = "carried" in stored and len(members["all"]) == 1
            t_dec = stored["threshold"] if carried else out["pooled"]["balanced"]
            a["decision_threshold"] = float(t_dec)
            a["decision_carried"] = carried
            a["jsrt_covid_share_balanced"] = float(np.mean(p_jsrt >= t_dec))
            a["jsrt_covid_share_screening"] = float(np.mean(p_jsrt >= out["pooled"]["screening"]))
            nn = (jsrt["subtype"].astype(str) == "non-nodule").to_numpy()
            a["jsrt_nonnodule_covid_share_balanced"] = float(np.mean(p_jsrt[nn] >= t_dec))
        out["all"] = a
    out["train_seconds"] = seconds
    return out


def _rates(d: dict | None) -> str:
    return "n/a" if not d else f"{d['sensitivity']:.2f} / {d['specificity']:.2f}"


def _level(d: dict | None) -> str:
    return "n/a" if not d else f"{d['level']:.2f}: {_rates(d)}, {_share(d['jsrt_covid_share'])}"


def _share(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.0%}"


def table(rows: list[dict]) -> str:
    """The markdown ablation table, one line per row."""
    head = [
        "row",
        "COVID AUC out-of-source, cohen held out",
        "COVID AUC out-of-source, radiography held out",
        "mean",
        "sens / spec on held-out cohen (point from the other fold)",
        "sens / spec on held-out radiography (point from the other fold)",
        "same at the in-source sens-0.95 point (cohen; radiography)",
        "JSRT called COVID (fold models)",
        "sens / spec, JSRT called COVID, at the in-source sensitivity level chosen on the other fold (cohen; "
        "radiography)",
        "COVID AUC within Radiography / within cohen (all sources)",
        "probe (all sources)",
        "JSRT called COVID (all sources, pooled balanced point)",
        "training min (3 runs)",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        f, a = r["folds"], r.get("all", {})
        mean = r.get("mean_auc_out")
        cells = [
            r["row"],
            fmt(f.get("cohen", {}).get("auc_out")),
            fmt(f.get("radiography", {}).get("auc_out")),
            "n/a" if mean is None else f"{mean:.3f}",
            _rates(f.get("cohen", {}).get("travel")),
            _rates(f.get("radiography", {}).get("travel")),
            f"{_rates(f.get('cohen', {}).get('in_source'))}; {_rates(f.get('radiography', {}).get('in_source'))}",
            "; ".join(_share(f.get(k, {}).get("jsrt_covid_share")) for k in FOLDS),
            "; ".join(_level(f.get(k, {}).get("travel_level")) for k in FOLDS),
            f"{fmt(a.get('auc_within_radiography'))} / {fmt(a.get('auc_within_cohen'))}" if a else "not run",
            f"{a['probe']:.3f}" if a.get("probe") is not None else "not run",
            _share(a.get("jsrt_covid_share_balanced")),
            f"{sum(r['train_seconds'].values()) / 60:.0f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def against_table(rows: list[dict]) -> str:
    """Out-of-source COVID AUC against each kind of negative of the held-out source (normal, pneumonia)."""
    lines = [
        "| row | held-out source | COVID-19 against | negatives | COVID AUC out-of-source |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        for fold in FOLDS:
            m = r["folds"].get(fold, {}).get("auc_out_adults")
            if m:
                lines.append(
                    f"| {r['row']} | {fold} | every adult negative (children's copies out) | | {fmt(m)} |"
                )
            for neg, m in r["folds"].get(fold, {}).get("auc_out_against", {}).items():
                lines.append(f"| {r['row']} | {fold} | {neg} | {m['n_negative']} | {fmt(m)} |")
            m = r["folds"].get(fold, {}).get("auc_out_vs_jsrt")
            if m:
                lines.append(f"| {r['row']} | {fold} | JSRT adults | {m['n_negative']} | {fmt(m)} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("rows", nargs="+", help="row names (folders under --runs)")
    p.add_argument("--runs", type=Path, default=Path("runs/gen"))
    p.add_argument("--manifest", type=Path, default=Path("runs/data/manifest.csv"))
    p.add_argument("--jsrt", type=Path, default=Path("runs/data/jsrt.csv"))
    p.add_argument("--cache-dir", default="runs/cache")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/generalization.json"))
    p.add_argument(
        "--store-points",
        type=Path,
        metavar="BUNDLE",
        help="store the row's pooled out-of-source operating points in this bundle (balanced decides)",
    )
    a = p.parse_args()
    if a.store_points and len(a.rows) != 1:
        sys.exit("--store-points takes exactly one row")
    df, jsrt = read_manifest(a.manifest), read_manifest(a.jsrt)
    results = []
    for name in a.rows:
        d = a.runs / name
        if not d.is_dir():
            sys.exit(f"{d}: no such row folder (run benchmarks/generalization.sh {name} first)")
        results.append(row_figures(d, df, jsrt, a.cache_dir))
    old = json.loads(a.out.read_text()) if a.out.is_file() else {}
    old.update({r["row"]: r for r in results})
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(old, indent=2) + "\n")
    print(table(results))
    print()
    print(against_table(results))
    print(f"wrote {a.out}")
    if a.store_points:
        from covidxray.bundle import set_operating_points

        r = results[0]
        if "operating_points" not in r:
            sys.exit(
                f"row {r['row']}: both folds ({', '.join(FOLDS)}) are needed for pooled operating points"
            )
        set_operating_points(a.store_points, r["operating_points"], r["decision"])
        pts = ", ".join(f"{k} p(covid) >= {v['threshold']:.3f}" for k, v in r["operating_points"].items())
        print(f"stored in {a.store_points}: {pts}; {r['decision']} decides")


if __name__ == "__main__":
    main()
