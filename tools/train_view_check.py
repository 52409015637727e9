"""Train the input guard's view check (frontal or lateral?) and ship it to src/covidxray/default_view/.

Data (read from --root, never copied): covid-chestxray-dataset's X-rays with view L (positives) against its
frontal ones (PA, AP, AP Supine), plus --negatives frontal images each of the Radiography Database and Kermany
from the manifest (all lateral views at hand come from covid-chestxray-dataset, so its frontal images are the
negatives that keep the collection from telling the answer). JSRT is kept out: its share called lateral is an
independent check. First a patient-grouped K-fold cross-validation (every figure in the config's ``cv`` comes
from images of patients the fold's network never saw), then one network on all of it, exported to ONNX and
checked against PyTorch. Deterministic for a seed (one torch thread).

    .venv/bin/python tools/train_view_check.py --root ../shared/data --manifest runs/data/manifest.csv \\
        --jsrt runs/data/jsrt.csv --out src/covidxray/default_view
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import GroupKFold

from covidxray.about import NOT_FOR_CLINICAL_USE
from covidxray.imageio import load_image
from covidxray.onnxrt import export_checked
from covidxray.viewcheck import (
    CONFIG_FILE,
    INPUT_NAME,
    ONNX_CONFIG_KEY,
    ONNX_FILE,
    OUTPUT_NAME,
    VIEW_SIZE,
    build_view_net,
    view_input,
)

FRONTAL = ("PA", "AP", "AP Supine")
THRESHOLDS = (0.5, 0.8, 0.9, 0.95)


def gather(root: Path, manifest: Path, negatives: int, seed: int) -> pd.DataFrame:
    """One row per image: path, lateral (0/1), group (collection), patient."""
    rows = []
    with open(root / "covid-chestxray-dataset" / "metadata.csv", newline="", encoding="utf-8") as f:
        for r in csv.DictReader(f):
            p = root / "covid-chestxray-dataset" / "images" / r["filename"]
            if r["modality"] == "X-ray" and (r["view"] == "L" or r["view"] in FRONTAL) and p.is_file():
                rows.append((str(p), int(r["view"] == "L"), "cohen", f"cohen:{r['patientid']}"))
    m = pd.read_csv(manifest)
    missing = {"source", "path", "patient_id"} - set(m.columns)
    if missing:
        raise SystemExit(f"{manifest}: no column(s) {sorted(missing)}; make it with 'covidxray data build'")
    for src in ("radiography", "kermany"):
        rows_of = m[m.source == src]
        if len(rows_of) < negatives:
            raise SystemExit(
                f"{manifest}: {len(rows_of)} {src} images, fewer than --negatives {negatives}: lower --negatives"
            )
        pick = rows_of.sample(negatives, random_state=seed)
        rows += [(str(root / p), 0, src, pid) for p, pid in zip(pick.path, pick.patient_id, strict=True)]
    return pd.DataFrame(rows, columns=["path", "lateral", "group", "patient"])


def thumbnails(paths: list[str]) -> np.ndarray:
    return np.stack([view_input(load_image(p).pixels) for p in paths])[:, None].astype(np.float32)


def augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Mirror half, zoom +-10 %, shift +-5 %, gamma 0.8-1.2: the check must not hinge on any of them."""
    n = x.shape[0]
    flip = torch.rand(n, generator=g) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(3), x)
    theta = torch.zeros(n, 2, 3)
    zoom = 1 + 0.2 * (torch.rand(n, generator=g) - 0.5)
    theta[:, 0, 0], theta[:, 1, 1] = zoom, zoom
    theta[:, :, 2] = 0.1 * (torch.rand(n, 2, generator=g) - 0.5)
    x = F.grid_sample(x, F.affine_grid(theta, list(x.shape), align_corners=False), padding_mode="border",
                      align_corners=False)  # fmt: skip
    gamma = torch.exp(0.4 * (torch.rand(n, 1, 1, 1, generator=g) - 0.5))
    return x.clamp(0, 1) ** gamma


def fit(x: np.ndarray, y: np.ndarray, steps: int, seed: int) -> torch.nn.Module:
    """The network trained on (x, y): batches of 32, half of them lateral views on average."""
    torch.manual_seed(seed)
    net = build_view_net()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    w = np.where(y == 1, (y == 0).sum() / max(1, (y == 1).sum()), 1.0)
    w = w / w.sum()
    rng, g = np.random.default_rng(seed), torch.Generator().manual_seed(seed)
    net.train()
    for _ in range(steps):
        b = rng.choice(len(y), 32, p=w)
        xb = augment(torch.from_numpy(x[b]), g)
        loss = F.binary_cross_entropy_with_logits(net(xb)[:, 0], torch.from_numpy(y[b]).float())
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.eval()


def predict(net: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return torch.sigmoid(net(torch.from_numpy(x))[:, 0]).numpy()


def flagged(p: np.ndarray, df: pd.DataFrame, threshold: float) -> dict:
    """Shares flagged by the view check alone, and by it or the guard's lung-field check (``df.lung_flag``)."""
    out = {}
    for name, hit in (("", p >= threshold), ("_with_lung_check", (p >= threshold) | df.lung_flag.to_numpy())):
        out[f"laterals_flagged{name}"] = round(float(hit[df.lateral == 1].mean()), 4)
        for grp in sorted(df.group.unique()):
            frontal = (df.group == grp) & (df.lateral == 0)
            out[f"{grp}_frontal_flagged{name}"] = round(float(hit[frontal].mean()), 4)
    return out


def lung_flags(paths: list[str]) -> np.ndarray:
    """True where the shipped segmenter finds no plausible lung fields (the guard's lung-field check)."""
    from covidxray.segmentation.segmenter import default_segmenter

    seg = default_segmenter("onnx", threads=1)
    out = []
    for i in range(0, len(paths), 32):
        out += [not s.facts.plausible for s in seg.segment_many([load_image(p) for p in paths[i : i + 32]])]
    return np.asarray(out, dtype=bool)


def export(net: torch.nn.Module, config: dict, path: Path) -> float:
    """ONNX (dynamic batch) with the config in its metadata; returns max |p_onnx - p_torch| (checked <= 1e-5)."""

    class Prob(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module):
            super().__init__()
            self.inner = inner

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.sigmoid(self.inner(x))

    return export_checked(
        Prob(net), path, size=VIEW_SIZE, input_name=INPUT_NAME, output_name=OUTPUT_NAME, key=ONNX_CONFIG_KEY,
        config=config, what="view check", tolerance=1e-5,
    )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", type=Path, default=Path("../shared/data"))
    ap.add_argument("--manifest", type=Path, default=Path("runs/data/manifest.csv"))
    ap.add_argument(
        "--jsrt", default="runs/data/jsrt.csv", help="JSRT manifest, the independent check ('': none)"
    )
    ap.add_argument("--out", type=Path, default=Path("src/covidxray/default_view"))
    ap.add_argument(
        "--negatives", type=int, default=300, help="frontal images each of Radiography and Kermany"
    )
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--threshold", type=float, default=0.8)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    df = gather(a.root, a.manifest, a.negatives, a.seed)
    x, y = thumbnails(list(df.path)), df.lateral.to_numpy()
    df["lung_flag"] = lung_flags(list(df.path))
    print(f"{len(df)} images, {int(y.sum())} lateral views, {df.patient.nunique()} patients", file=sys.stderr)
    p = np.zeros(len(df))
    for k, (tr, te) in enumerate(GroupKFold(a.folds).split(x, y, df.patient)):
        p[te] = predict(fit(x[tr], y[tr], a.steps, a.seed + k), x[te])
    cv = {"folds": a.folds, "grouped_by": "patient", "auc": round(float(roc_auc_score(y, p)), 4)}
    cv["at"] = {f"{t:g}": flagged(p, df, t) for t in THRESHOLDS}
    net = fit(x, y, a.steps, a.seed)
    state = b"".join(v.numpy().tobytes() for v in net.state_dict().values())
    independent = {}
    if a.jsrt:
        j = pd.read_csv(a.jsrt)
        pj = predict(net, thumbnails([str(a.root / "JSRT" / q) for q in j.path]))
        independent["jsrt_frontal_flagged"] = round(float((pj >= a.threshold).mean()), 4)
        independent["jsrt_images"] = len(j)
    config = {
        "kind": "view_check",
        "version": "view-cnn@" + hashlib.sha256(state).hexdigest()[:12],
        "input_size": VIEW_SIZE,
        "input": "grayscale, 8-bit, resized bilinear to 64 x 64, histogram-equalised, / 255 (viewcheck.view_input)",
        "output": "p(lateral view)",
        "threshold": a.threshold,
        "data": {
            "lateral": int(y.sum()),
            "frontal": {
                g: int(((df.group == g) & (df.lateral == 0)).sum()) for g in sorted(df.group.unique())
            },
            "patients": int(df.patient.nunique()),
            "source": "covid-chestxray-dataset view L vs PA / AP / AP Supine; Radiography and Kermany frontal",
        },
        "training": {"steps": a.steps, "batch": 32, "lr": 1e-3, "seed": a.seed, "negatives": a.negatives},
        "cv": cv,
        "independent": independent,
        "not_for_clinical_use": NOT_FOR_CLINICAL_USE,
    }
    a.out.mkdir(parents=True, exist_ok=True)
    diff = export(net, config, a.out / ONNX_FILE)
    (a.out / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    print(json.dumps({"cv": cv, "independent": independent, "onnx_max_diff": diff}, indent=1))
    print(
        f"wrote {a.out / ONNX_FILE} ({config['version']}) in {time.perf_counter() - t0:.0f} s",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
