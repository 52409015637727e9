"""Prediction benchmarks (issue #5): cold start, ONNX vs PyTorch throughput, 10,000 images, and the input guard.

    .venv/bin/python benchmarks/bench_predict.py [--model RUN] [--root ../shared/data] [--skip-10k]

``--model`` defaults to the shipped default model, else the newest ``runs/*/model`` bundle, else a tiny-bundle-like
seed_cnn2 at 64 px with seeded random weights (the tests' fixture). The model is copied to a temporary folder,
exported to ONNX there and, when it has no input guard, given one fitted on 1,000 training images of the manifest.
Throughput at 224 px also uses the same architecture rebuilt at 224 px and mobilenet_v2 at 224 px (random
weights: speed does not depend on them). Writes benchmarks/results/bench_predict.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
RESULTS = REPO / "benchmarks" / "results" / "bench_predict.json"
MANIFEST = REPO / "runs" / "data" / "manifest.csv"
THREADS = 2


# -- models ------------------------------------------------------------------------------------------------------
def pick_model(arg: str | None) -> tuple[Path | None, str]:
    from covidxray.bundle import DEFAULT_MODEL_DIR

    if arg:
        return Path(arg), "given"
    if (DEFAULT_MODEL_DIR / "config.json").exists():
        return DEFAULT_MODEL_DIR, "default model"
    runs = sorted((REPO / "runs").glob("*/model/config.json"), key=lambda p: p.stat().st_mtime)
    if runs:
        return runs[-1].parent, "newest run"
    return None, "tiny seed_cnn2 at 64 px (random weights; no default model or run yet)"


def build_bundle(out: Path, arch: str, size: int, kwargs: dict | None = None) -> Path:
    import torch

    from covidxray.bundle import BundleConfig, save_bundle
    from covidxray.models.base import XRayNet
    from covidxray.models.registry import create_model
    from covidxray.preprocess import Preprocessing

    torch.manual_seed(0)
    pre = Preprocessing(image_size=size)
    kw = dict(kwargs or {})
    net = create_model(arch, num_classes=3, in_channels=1, **kw)
    model = XRayNet(net, pre.mean, pre.std, num_outputs=3).eval()
    cfg = BundleConfig(
        architecture=arch, architecture_kwargs=kw, classes=["covid", "normal", "pneumonia"], preprocessing=pre
    )
    return save_bundle(out, model, cfg)


def prepare(bundle: Path, work: Path, name: str) -> Path:
    """A copy of ``bundle`` in ``work`` with model.onnx exported next to it."""
    from covidxray.prediction.export import export_onnx

    dst = work / name
    if bundle != dst:
        shutil.copytree(bundle, dst, dirs_exist_ok=True)
    export_onnx(dst, dst / "model.onnx")
    return dst


# -- data --------------------------------------------------------------------------------------------------------
def manifest_rows(split: set[str]):
    from covidxray.data.manifest import read_manifest

    df = read_manifest(MANIFEST)
    rows = df[df["split"].isin(split)]
    root = Path(df.attrs["root"])
    return [(str(root / p), s) for p, s in zip(rows["path"], rows["source"], strict=True)]


def real_paths(root: Path, n: int) -> list[str]:
    if MANIFEST.exists():
        paths = [p for p, _ in manifest_rows({"val", "test"})]
    else:
        paths = [str(p) for p in sorted(root.rglob("*")) if p.suffix.lower() in (".png", ".jpeg", ".jpg")]
    rng = np.random.default_rng(0)
    return [paths[i] for i in rng.choice(len(paths), size=min(n, len(paths)), replace=False)]


# -- 1. cold start -----------------------------------------------------------------------------------------------
def bench_cold_start(onnx_path: Path, image: str, repeats: int = 5) -> dict:
    cmd = [
        str(BIN / "covidxray"),
        "predict",
        "--backend",
        "onnx",
        "--model",
        str(onnx_path),
        "--image",
        image,
    ]
    subprocess.run(
        cmd, capture_output=True, check=True
    )  # warm the page cache, as a second run by a user would
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        res = subprocess.run(cmd, capture_output=True, text=True, check=True)
        times.append(time.perf_counter() - t)
        assert "label:" in res.stdout
    return {"median_s": statistics.median(times), "runs_s": [round(t, 3) for t in times], "target_s": 1.5}


# -- 2. throughput -----------------------------------------------------------------------------------------------
def bench_throughput(bundle: Path, paths: list[str], batch: int = 32, seconds: float = 6.0) -> dict:
    """Images/s of the network alone (preprocessed inputs) and of the whole predictor (decode + guard)."""
    import torch

    import covidxray
    from covidxray.bundle import load_bundle
    from covidxray.prediction.onnx_backend import INPUT_NAME, make_session
    from covidxray.preprocess import Preprocessing

    torch.set_num_threads(THREADS)
    b = load_bundle(bundle)
    pre: Preprocessing = b.config.preprocessing
    from covidxray.imageio import load_image

    x = pre.to_input(np.stack([pre.canonical(load_image(p).pixels) for p in paths[:batch]]))
    sess = make_session(bundle / "model.onnx", THREADS)
    model = b.model.eval()

    def rate(fn) -> tuple[float, float]:
        """(images per wall second, images per second of CPU time / THREADS): the second is what two
        dedicated cores would give, measured even when other processes share the machine."""
        fn()
        n, t0, c0 = 0, time.perf_counter(), time.process_time()
        while time.perf_counter() - t0 < seconds:
            fn()
            n += len(x)
        return n / (time.perf_counter() - t0), n / ((time.process_time() - c0) / THREADS)

    with torch.inference_mode():
        torch_ips, torch_cpu = rate(lambda: model.probabilities(torch.from_numpy(x)))
    onnx_ips, onnx_cpu = rate(lambda: sess.run(["probabilities"], {INPUT_NAME: x}))
    out = {
        "image_size": pre.image_size,
        "architecture": b.config.architecture,
        "batch": batch,
        "network_torch_ips": torch_ips,
        "network_onnx_ips": onnx_ips,
        "onnx_over_torch": onnx_ips / torch_ips,
        "network_torch_cpu_ips": torch_cpu,
        "network_onnx_cpu_ips": onnx_cpu,
    }
    for backend in ("torch", "onnx"):
        predictor = covidxray.load_model(bundle, backend=backend)
        predictor.predict_batch(paths[:batch])
        t0, c0 = time.perf_counter(), time.process_time()
        preds = predictor.predict_batch(paths, batch_size=batch)
        out[f"end_to_end_{backend}_ips"] = len(preds) / (time.perf_counter() - t0)
        out[f"end_to_end_{backend}_cpu_ips"] = len(preds) / ((time.process_time() - c0) / THREADS)
    out["end_to_end_images"] = len(paths)
    return out


# -- 3. 10,000 images --------------------------------------------------------------------------------------------
def bench_10k(onnx_path: Path, sources: list[str], work: Path, n: int = 10_000) -> dict:
    folder = work / "10k"
    folder.mkdir()
    for i in range(n):  # symlinks to real images, repeated: a folder of n files without copying the data
        src = sources[i % len(sources)]
        os.symlink(src, folder / f"{i:05d}{Path(src).suffix}")
    out = work / "preds_10k.csv"
    cmd = [
        str(BIN / "covidxray"),
        "predict",
        "--backend",
        "onnx",
        "--model",
        str(onnx_path),
        "--images",
        str(folder),
        "--out",
        str(out),
        "--no-progress",
    ]
    probe = (
        "import resource, subprocess, sys; r = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
        "print(r.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.stderr.write(r.stderr)"
    )
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, "-c", probe, *cmd], capture_output=True, text=True)
    elapsed = time.perf_counter() - t0
    rc, kib = (int(v) for v in res.stdout.split())
    rows = sum(1 for _ in out.open()) - 1
    return {
        "images": n,
        "rows": rows,
        "exit_code": rc,
        "seconds": elapsed,
        "images_per_s": n / elapsed,
        "peak_rss_mb": kib / 1024,
        "target_mb": 1536,
        "summary": res.stderr.strip().splitlines()[:4],
    }


# -- 4. the input guard ------------------------------------------------------------------------------------------
def fit_bench_guard(bundle: Path, n: int = 1000) -> str:
    from covidxray.bundle import read_config
    from covidxray.imageio import load_image
    from covidxray.prediction.guard import fit_guard

    cfg = read_config(bundle)
    if cfg.guard and cfg.guard.get("feature_distance"):
        return "the model's own guard"
    if not MANIFEST.exists():
        return "no guard fitted (no manifest): image statistics only"
    train = [p for p, _ in manifest_rows({"train"})]
    pick = np.random.default_rng(1).choice(len(train), size=min(n, len(train)), replace=False)
    pre = cfg.preprocessing
    fit_guard(bundle, (pre.canonical(load_image(train[i]).pixels) for i in sorted(pick)))
    return f"fitted here on {len(pick)} training images of {MANIFEST.relative_to(REPO)}"


def synthetic_non_xrays(n: int = 40, seed: int = 0) -> dict[str, list[np.ndarray]]:
    """Kinds of images that are not chest X-rays, made here (uint8 RGB or grayscale)."""
    from PIL import Image, ImageDraw, ImageFilter, ImageFont

    rng = np.random.default_rng(seed)
    out: dict[str, list[np.ndarray]] = {
        k: [] for k in ("colour photo-like", "document", "natural-ish gray", "random noise", "tiny")
    }
    words = "the patient was seen in clinic and the report of the chest radiograph is attached below".split()
    for _ in range(n):
        h, w = int(rng.integers(240, 480)), int(rng.integers(240, 480))
        yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
        base = np.stack([np.sin(xx * rng.uniform(2, 9) + c) for c in rng.uniform(0, 6, 3)], -1)
        tex = np.asarray(
            Image.fromarray(rng.integers(0, 255, (h // 8, w // 8, 3), dtype=np.uint8)).resize((w, h))
        )
        photo = np.clip((base * 0.5 + 0.5) * 180 + tex * 0.3, 0, 255).astype(np.uint8)
        out["colour photo-like"].append(photo)
        doc = Image.new(
            "L", (int(rng.integers(500, 700)), int(rng.integers(700, 900))), int(rng.integers(225, 256))
        )
        draw = ImageDraw.Draw(doc)
        font = ImageFont.load_default(size=int(rng.integers(11, 18)))
        for y in range(20, doc.height - 20, int(rng.integers(16, 26))):
            draw.text((20, y), " ".join(rng.choice(words, 9)), fill=int(rng.integers(0, 60)), font=font)
        out["document"].append(np.asarray(doc))
        blobs = Image.fromarray(rng.integers(0, 255, (12, 12), dtype=np.uint8)).resize((w, h), Image.BICUBIC)
        natural = np.asarray(blobs.filter(ImageFilter.GaussianBlur(3)), dtype=np.float32)
        natural += (
            np.asarray(
                Image.fromarray(rng.integers(0, 255, (h // 3, w // 3), dtype=np.uint8)).resize((w, h)),
                dtype=np.float32,
            )
            * 0.25
        )
        out["natural-ish gray"].append(np.clip(natural / natural.max() * 255, 0, 255).astype(np.uint8))
        out["random noise"].append(rng.integers(0, 256, (h, w), dtype=np.uint8))
        out["tiny"].append(
            np.asarray(Image.fromarray(photo).convert("L").resize((int(rng.integers(64, 120)),) * 2))
        )
    return out


FOUND_DIRS = ("/usr/share", "/root/.rustup", "/root/.pyenv")


def found_non_xrays(limit: int = 400) -> list[str]:
    """Image files on this machine outside the repo and the data: icons, documentation figures, sample photos."""
    import matplotlib

    dirs = [*FOUND_DIRS, str(Path(matplotlib.get_data_path()) / "sample_data")]
    files: list[str] = []
    for d in dirs:
        for dirpath, _, names in os.walk(d):
            files += [
                os.path.join(dirpath, f) for f in names if f.lower().endswith((".png", ".jpg", ".jpeg"))
            ]
    files = sorted(f for f in files if os.path.getsize(f) > 2000)
    rng = np.random.default_rng(0)
    return [files[i] for i in sorted(rng.choice(len(files), size=min(limit, len(files)), replace=False))]


def bench_guard(bundle: Path, guard_note: str, real_limit: int) -> dict:
    import covidxray
    from covidxray.prediction.predictor import Predictor

    predictor: Predictor = covidxray.load_model(bundle / "model.onnx", backend="onnx")

    def kinds(preds) -> dict:
        ok = [p for p in preds if p.ok]
        stats = sum(any(not w.startswith("unlike the training") for w in p.warnings) for p in ok)
        dist = sum(any(w.startswith("unlike the training") for w in p.warnings) for p in ok)
        flagged = sum(bool(p.warnings) for p in ok)
        return {
            "n": len(ok),
            "unreadable": len(preds) - len(ok),
            "flagged": flagged,
            "flagged_share": flagged / max(len(ok), 1),
            "by_statistics": stats,
            "by_feature_distance": dist,
        }

    out: dict = {"guard": guard_note, "real": {}, "non_xray": {}}
    if MANIFEST.exists():
        rows = manifest_rows({"val", "test"})
        rng = np.random.default_rng(0)
        if len(rows) > real_limit:
            rows = [rows[i] for i in sorted(rng.choice(len(rows), size=real_limit, replace=False))]
        preds = predictor.predict_batch([p for p, _ in rows])
        for source in sorted({s for _, s in rows}):
            out["real"][source] = kinds([p for p, (_, s) in zip(preds, rows, strict=True) if s == source])
        out["real"]["all"] = kinds(preds)
        reasons: dict[str, int] = {}
        for p in preds:
            for w in p.warnings:
                key = w.split(" (")[0].split(":")[0]
                reasons[key] = reasons.get(key, 0) + 1
        out["real"]["warning_counts"] = reasons
    for kind, images in synthetic_non_xrays().items():
        out["non_xray"][kind] = kinds(predictor.predict_batch(images))
    found = found_non_xrays()
    out["non_xray"]["found on this machine"] = kinds(predictor.predict_batch(found))
    out["found_dirs"] = [*FOUND_DIRS, "matplotlib sample_data"]
    allnon = [v for k, v in out["non_xray"].items()]
    caught = sum(v["flagged"] for v in allnon)
    out["non_xray"]["all"] = {
        "n": sum(v["n"] for v in allnon),
        "flagged": caught,
        "flagged_share": caught / max(sum(v["n"] for v in allnon), 1),
    }
    return out


# -- main --------------------------------------------------------------------------------------------------------
def machine() -> dict:
    return {
        "cpu": platform.processor() or platform.machine(),
        "cores_available": len(os.sched_getaffinity(0)),
        "threads_used": THREADS,
        "load_average_1_5_15": [round(v, 2) for v in os.getloadavg()],
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="bundle or run folder (default: the default model)")
    ap.add_argument("--root", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--images", type=int, default=256, help="real images for the throughput runs")
    ap.add_argument(
        "--real-guard", type=int, default=1500, help="val/test X-rays for the guard false-flag rate"
    )
    ap.add_argument("--skip-10k", action="store_true")
    args = ap.parse_args()

    import onnxruntime
    import torch

    work = Path(tempfile.mkdtemp(prefix="bench_predict_"))
    try:
        src, how = pick_model(args.model)
        if src is None:
            src = build_bundle(work / "src_tiny", "seed_cnn2", 64, {"image_size": 64})
        bundle = prepare(src, work, "model")
        guard_note = fit_bench_guard(bundle)
        bundle = prepare(bundle, work, "model")  # re-export: the ONNX file carries the guard
        from covidxray.bundle import read_config

        cfg = read_config(bundle)
        paths = real_paths(args.root, args.images)
        result: dict = {
            "model": {
                "source": how,
                "path": str(src),
                "architecture": cfg.architecture,
                "image_size": cfg.preprocessing.image_size,
            },
            "machine": machine(),
            "versions": {"torch": torch.__version__, "onnxruntime": onnxruntime.__version__},
        }
        print(f"model: {cfg.architecture} at {cfg.preprocessing.image_size} px ({how})", flush=True)
        result["cold_start"] = bench_cold_start(bundle / "model.onnx", paths[0])
        print(f"cold start (onnx): {result['cold_start']['median_s']:.2f} s", flush=True)
        result["throughput"] = [bench_throughput(bundle, paths)]
        extra = []
        if cfg.preprocessing.image_size != 224:
            kw = dict(cfg.architecture_kwargs)
            if "image_size" in kw:
                kw["image_size"] = 224
            extra.append((cfg.architecture, kw))
        if cfg.architecture != "mobilenet_v2":
            extra.append(("mobilenet_v2", {}))
        for arch, kw in extra:
            b = prepare(build_bundle(work / f"src_{arch}224", arch, 224, kw), work, f"{arch}224")
            result["throughput"].append(bench_throughput(b, paths))
        for t in result["throughput"]:
            print(
                f"throughput {t['architecture']}@{t['image_size']}: torch {t['network_torch_ips']:.0f}/s, onnx "
                f"{t['network_onnx_ips']:.0f}/s (x{t['onnx_over_torch']:.2f}) [per 2 CPU-s: torch "
                f"{t['network_torch_cpu_ips']:.0f}, onnx {t['network_onnx_cpu_ips']:.0f}]; end to end torch "
                f"{t['end_to_end_torch_ips']:.0f}/s, onnx {t['end_to_end_onnx_ips']:.0f}/s",
                flush=True,
            )
        if not args.skip_10k:
            result["ten_thousand"] = bench_10k(bundle / "model.onnx", paths, work)
            tk = result["ten_thousand"]
            print(
                f"10k images: {tk['seconds']:.0f} s ({tk['images_per_s']:.0f}/s), peak RSS "
                f"{tk['peak_rss_mb']:.0f} MB, rows {tk['rows']}, exit {tk['exit_code']}",
                flush=True,
            )
        result["guard"] = bench_guard(bundle, guard_note, args.real_guard)
        g = result["guard"]
        for group in ("real", "non_xray"):
            for k, v in g[group].items():
                if isinstance(v, dict) and "flagged_share" in v:
                    print(f"guard {group:8s} {k:24s} n={v['n']:5d} flagged {v['flagged_share']:.1%}")
        print("real X-ray warnings:", g["real"].get("warning_counts"))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result["machine"]["load_average_at_end"] = [round(v, 2) for v in os.getloadavg()]
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(f"wrote {RESULTS.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
