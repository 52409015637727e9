"""Lung-field benchmarks (issue #13): the segmenter's speed and held-out Dice, the guard's lung-field check on
real X-rays, non-X-rays and lateral views, and where the shipped model looks (in-lung Grad-CAM share).

    .venv/bin/python benchmarks/bench_lungs.py [--root ../shared/data] [--real 600] [--attention 300]

1. ONNX throughput of the shipped segmenter at its input size, 2 intra-op threads, batch 16 (wall clock and per
   CPU-second: the machine is shared, so both are printed), and the cold start of ``covidxray segment --image``.
2. Held-out Dice per source, from the segmenter's config (``covidxray segment train`` measured it).
3. The "no plausible lung fields" check alone, the view check alone ("looks like a lateral view") and the whole
   guard (with the shipped default model) on: real frontal X-rays (random val + test rows of
   runs/data/manifest.csv or /work/main's), the guard benchmark's non-X-ray sets, and the lateral views
   (``view == L``) of covid-chestxray-dataset, with the model's labels there.
4. In-lung Grad-CAM share of the shipped model on a seeded sample of test rows, per source and per class.
Writes benchmarks/results/bench_lungs.json and prints tables.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
RESULTS = REPO / "benchmarks" / "results" / "bench_lungs.json"
MANIFESTS = [REPO / "runs" / "data" / "manifest.csv", Path("/work/main/runs/data/manifest.csv")]
THREADS = 2

sys.path.insert(0, str(REPO / "benchmarks"))


def machine() -> dict:
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "load_average_start": os.getloadavg(),
    }


def manifest_rows(root: Path, splits: set[str]) -> list[dict]:
    path = next((m for m in MANIFESTS if m.is_file()), None)
    if path is None:
        return []
    with open(path, newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["split"] in splits]
    for r in rows:
        r["abs"] = str(root / r["path"])
    return rows


# -- 1. speed ----------------------------------------------------------------------------------------------------
def bench_speed(image: str, repeats: int = 5) -> dict:
    from covidxray.segmentation import load_segmenter

    seg = load_segmenter(backend="onnx", threads=THREADS)
    s = seg.preprocessing.image_size
    x = np.random.default_rng(0).integers(0, 256, (16, s, s), dtype=np.uint8)
    seg.probabilities(x)
    rates, cpu_rates = [], []
    for _ in range(repeats):
        t0, c0, n = time.perf_counter(), time.process_time(), 0
        while time.perf_counter() - t0 < 2.0:
            seg.probabilities(x)
            n += len(x)
        rates.append(n / (time.perf_counter() - t0))
        cpu_rates.append(n / ((time.process_time() - c0) / THREADS))
    # end to end per image (decode, preprocess, network, resize back, clean-up) on one real file
    t0 = time.perf_counter()
    for _ in range(20):
        seg.segment(image)
    per_image = (time.perf_counter() - t0) / 20
    cold, cold_cpu = [], []
    for _ in range(repeats):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        res = subprocess.run(
            [str(BIN / "covidxray"), "segment", "--image", image], capture_output=True, text=True
        )
        cold.append(time.perf_counter() - t0)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cold_cpu.append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
        assert res.returncode == 0, res.stderr
    return {
        "input_size": s,
        "threads": THREADS,
        "batch": 16,
        "onnx_images_per_s_wall": statistics.median(rates),
        "onnx_images_per_s_per_2_cpu_seconds": statistics.median(cpu_rates),
        "end_to_end_ms_per_image": 1000 * per_image,
        "cold_start_s_median": statistics.median(cold),
        "cold_start_s_all": cold,
        "cold_start_cpu_s_median": statistics.median(cold_cpu),
        "target_images_per_s": 100,
        "target_cold_start_s": 1.5,
    }


# -- 3. the guard's lung-field check ---------------------------------------------------------------------------
def lung_check(images: list, predictor) -> dict:
    """Share flagged by the lung check alone, by the whole guard, and the model's labels (all, and those of the
    images the guard lets through without a warning)."""
    preds = predictor.predict_batch(images)
    ok = [p for p in preds if p.ok or p.error_reason == "refused"]
    lung = [p for p in ok if any(w.startswith("no plausible lung fields") for w in p.warnings)]
    view = [p for p in ok if any(w.startswith("looks like a lateral view") for w in p.warnings)]
    return {
        "n": len(ok),
        "lung_flagged": len(lung) / max(1, len(ok)),
        "view_flagged": len(view) / max(1, len(ok)),
        "guard_flagged": sum(bool(p.warnings) for p in ok) / max(1, len(ok)),
        "quality": dict(Counter((p.lungs or {}).get("quality", "n/a") for p in ok)),
        "labels": dict(Counter(p.label for p in ok)),
        "labels_unflagged": dict(Counter(p.label for p in ok if not p.warnings)),
    }


def bench_guard(root: Path, n_real: int) -> dict:
    from bench_predict import found_non_xrays, synthetic_non_xrays

    import covidxray

    predictor = covidxray.load_model(None, backend="onnx")
    out: dict = {"real": {}, "non_xray": {}, "lateral": {}}
    rows = manifest_rows(root, {"val", "test"})
    rng = np.random.default_rng(0)
    if rows:
        pick = [rows[i] for i in sorted(rng.choice(len(rows), min(n_real, len(rows)), replace=False))]
        out["real"]["all"] = lung_check([r["abs"] for r in pick], predictor)
        for src in sorted({r["source"] for r in pick}):
            out["real"][src] = lung_check([r["abs"] for r in pick if r["source"] == src], predictor)
    allnon = []
    for kind, images in synthetic_non_xrays().items():
        out["non_xray"][kind] = lung_check(images, predictor)
        allnon += images
    found = found_non_xrays()
    out["non_xray"]["found on this machine"] = lung_check(found, predictor)
    out["non_xray"]["all"] = lung_check(allnon + found, predictor)
    meta = root / "covid-chestxray-dataset" / "metadata.csv"
    with open(meta, newline="", encoding="utf-8") as f:
        lateral = [
            root / "covid-chestxray-dataset" / "images" / r["filename"]
            for r in csv.DictReader(f)
            if r["view"] == "L"
        ]
    lateral = [str(p) for p in lateral if p.is_file()]
    out["lateral"] = lung_check(lateral, predictor)
    return out


# -- 4. where the shipped model looks --------------------------------------------------------------------------
def bench_attention(root: Path, n: int, model_dir: Path | None = None) -> dict:
    from covidxray.bundle import DEFAULT_MODEL_DIR, load_bundle
    from covidxray.evaluation.attention import lung_attention
    from covidxray.imageio import load_image
    from covidxray.segmentation import lung_mask_fn

    bundle = load_bundle(model_dir or DEFAULT_MODEL_DIR)
    p = bundle.config.preprocessing
    rows = manifest_rows(root, {"test"})
    if not rows:
        return {"reason": "no manifest"}
    pick = [
        rows[i] for i in sorted(np.random.default_rng(0).choice(len(rows), min(n, len(rows)), replace=False))
    ]
    masks = lung_mask_fn(p)
    images = np.stack([p.canonical(load_image(r["abs"]).pixels, masks) for r in pick])
    import torch

    with torch.inference_mode():
        probs = bundle.model.probabilities(torch.from_numpy(p.to_input(images))).numpy()
    classes = list(bundle.config.classes)
    labels = np.array([r["label"] for r in pick])
    sources = np.array([r["source"] for r in pick])
    return lung_attention(bundle.model, p, images, probs.argmax(1), labels, sources, classes, max_images=0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--real", type=int, default=600, help="real X-rays for the guard check")
    ap.add_argument("--attention", type=int, default=300, help="test images for the Grad-CAM share")
    ap.add_argument("--skip", nargs="*", default=[], choices=("speed", "guard", "attention"))
    ap.add_argument(
        "--attention-models",
        nargs="*",
        default=[],
        metavar="NAME=BUNDLE",
        help="more models for the Grad-CAM share (e.g. the ablation's runs/gen/ROW/all/model), same images",
    )
    args = ap.parse_args()
    from covidxray.segmentation.segmenter import DEFAULT_DIR, segmenter_facts

    config = json.loads((DEFAULT_DIR / "config.json").read_text())
    result: dict = {
        "machine": machine(),
        "segmenter": segmenter_facts(config),
        "dice": config["metrics"]["test"],
    }
    jsrt = sorted((args.root / "JSRT" / "images").glob("*.png"))[0]
    if "speed" not in args.skip:
        result["speed"] = bench_speed(str(jsrt))
    if "guard" not in args.skip:
        result["guard"] = bench_guard(args.root, args.real)
    if "attention" not in args.skip:
        result["attention"] = bench_attention(args.root, args.attention)
    if args.attention_models:
        result["attention_models"] = {}
        for spec in args.attention_models:
            name, _, path = spec.partition("=")
            result["attention_models"][name] = bench_attention(args.root, args.attention, Path(path))
    result["machine"]["load_average_end"] = os.getloadavg()
    if args.skip and RESULTS.is_file():  # keep the sections measured by an earlier run
        earlier = json.loads(RESULTS.read_text())
        result = {**{k: earlier[k] for k in args.skip if k in earlier}, **result}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(f"segmenter {result['segmenter']['version']} (input {result['segmenter']['image_size']} px)")
    for src, m in result["dice"].items():
        print(
            f"  held-out Dice {src}: "
            + ", ".join(f"{k} {v['mean']:.4f}" for k, v in m.items() if isinstance(v, dict))
        )
    if "speed" in result:
        sp = result["speed"]
        print(
            f"ONNX {sp['onnx_images_per_s_wall']:.0f} img/s wall, {sp['onnx_images_per_s_per_2_cpu_seconds']:.0f} img/s "
            f"per 2 CPU-s; end to end {sp['end_to_end_ms_per_image']:.1f} ms/img; cold start {sp['cold_start_s_median']:.2f} s "
            f"({sp['cold_start_cpu_s_median']:.2f} CPU-s)"
        )
    if "guard" in result:
        print("| images | n | lung check flags | view check flags | whole guard flags | labels |")
        for group in ("real", "non_xray"):
            for k, v in result["guard"][group].items():
                print(
                    f"| {group}: {k} | {v['n']} | {v['lung_flagged']:.1%} | {v['view_flagged']:.1%} "
                    f"| {v['guard_flagged']:.1%} | {v['labels']} |"
                )
        v = result["guard"]["lateral"]
        print(
            f"| lateral views | {v['n']} | {v['lung_flagged']:.1%} | {v['view_flagged']:.1%} "
            f"| {v['guard_flagged']:.1%} | {v['labels']} (without a warning: {v.get('labels_unflagged')}) |"
        )
    for model, a in [("shipped", result.get("attention", {})), *result.get("attention_models", {}).items()]:
        if "overall" not in a:
            continue
        print(f"Grad-CAM in lungs, {model}:")
        print("| images | n | in lungs | lung area |")
        for name, m in [("all", a["overall"]), *a["per_source"].items(), *a["per_class"].items()]:
            print(f"| {name} | {m['n_images']} | {m['in_lung_share']} | {m['lung_area']} |")
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
