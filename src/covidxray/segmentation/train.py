"""Training the lung segmenter from scratch on JSRT + the V7 masks (``covidxray segment train``).

Two annotation conventions, one model. SCR (JSRT) lungs exclude the heart; V7 lungs include the lung behind it.
The network has three outputs (:data:`covidxray.segmentation.net.OUTPUTS`) and each source supervises what it
annotates, with per-pixel loss weights (loss masking):

- JSRT: ``lungs`` (labels 150 + 200) and ``heart`` (250) everywhere; ``lungs_behind_heart`` = lungs, ignored on
  the heart (JSRT does not say whether lung lies behind it).
- V7: ``lungs_behind_heart`` = the V7 mask everywhere; ``lungs`` = the V7 mask *minus the heart the network
  currently predicts* (learnt from JSRT, detached), ignored on that predicted heart: outside the V7 lungs is
  certainly not lung, inside and off the heart certainly is; ``heart`` is not supervised.

So the shipped ``lungs`` output follows SCR while still learning lung appearance from the COVID-19 images.
Augmentation aims at unseen hospitals: scale/aspect/rotation/shift with black borders, lower resolutions,
gamma, noise, blur, black bands and burnt-in text, then the same histogram equalisation as inference.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import platform
import string
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFilter, ImageFont, ImageOps

from covidxray.about import NOT_FOR_CLINICAL_USE, __version__
from covidxray.onnxrt import export_checked
from covidxray.preprocess import Preprocessing
from covidxray.segmentation.data import (
    COHEN,
    JSRT,
    MaskPair,
    load_pixels,
    load_targets,
    mask_pairs,
    split_pairs,
)
from covidxray.segmentation.masks import clean_mask, dice
from covidxray.segmentation.net import OUTPUTS, LungSegNet, SegProbabilities
from covidxray.segmentation.segmenter import (
    CONFIG_FILE,
    INPUT_NAME,
    ONNX_CONFIG_KEY,
    ONNX_FILE,
    OUTPUT_NAME,
    WEIGHTS_FILE,
)
from covidxray.segmentation.train_config import SegTrainConfig

BASE = 256  # training images are stored at this size (squashed, raw intensities) and augmented down to image_size


# -- augmentation ----------------------------------------------------------------------------------------------
def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def augment(
    img: np.ndarray, tgt: np.ndarray, rng: np.random.Generator, size: int
) -> tuple[np.ndarray, np.ndarray]:
    """Raw uint8 image (B, B) + targets (K, B, B) -> canonical uint8 (S, S) + targets (K, S, S)."""
    b = img.shape[0]
    # geometry: inverse affine map output (S) -> input (B)
    scale = math.exp(rng.uniform(math.log(0.75), math.log(1.3)))  # > 1 zooms in (crop), < 1 out (borders)
    aspect = math.exp(rng.uniform(-0.12, 0.12))
    rot = math.radians(rng.uniform(-10, 10))
    sx, sy = scale * aspect, scale / aspect
    tx, ty = rng.uniform(-0.08, 0.08) * b, rng.uniform(-0.08, 0.08) * b
    k = b / size
    cos, sin = math.cos(rot), math.sin(rot)
    a, bb, d, e = cos * k / sx, -sin * k / sy, sin * k / sx, cos * k / sy
    cx = cy = size / 2
    c = b / 2 + tx - (a * cx + bb * cy)
    f = b / 2 + ty - (d * cx + e * cy)
    data = (a, bb, c, d, e, f)
    im = Image.fromarray(img, mode="L")
    if rng.random() < 0.3:  # a lower-resolution original
        lo = int(b * rng.uniform(0.35, 0.8))
        im = im.resize((lo, lo), Image.Resampling.BILINEAR).resize((b, b), Image.Resampling.BILINEAR)
    im = im.transform((size, size), Image.Transform.AFFINE, data, Image.Resampling.BILINEAR, fillcolor=0)
    out_t = np.stack(
        [
            np.asarray(
                Image.fromarray(t * 255, mode="L").transform(
                    (size, size), Image.Transform.AFFINE, data, Image.Resampling.NEAREST, fillcolor=0
                )
            )
            > 127
            for t in tgt
        ]
    ).astype(np.uint8)
    if rng.random() < 0.25:
        im = im.filter(ImageFilter.GaussianBlur(rng.uniform(0.5, 1.5)))
    x = np.asarray(im, dtype=np.float32) / 255.0
    x = x ** math.exp(rng.uniform(math.log(0.6), math.log(1.7)))  # gamma
    if rng.random() < 0.25:
        x = x + rng.normal(0, rng.uniform(0.01, 0.04), x.shape).astype(np.float32)
    if rng.random() < 0.3:  # black bands (scanner borders, letterboxing); nothing visible under them
        for side in rng.choice(4, size=rng.integers(1, 3), replace=False):
            w = int(rng.uniform(0.02, 0.1) * size)
            sl = [np.s_[:w, :], np.s_[-w:, :], np.s_[:, :w], np.s_[:, -w:]][side]
            x[sl] = 0.0
            out_t[(slice(None), *sl)] = 0
    im = Image.fromarray(np.clip(x * 255 + 0.5, 0, 255).astype(np.uint8), mode="L")
    if rng.random() < 0.35:  # burnt-in text labels / markers
        draw = ImageDraw.Draw(im)
        for _ in range(rng.integers(1, 4)):
            n = int(rng.integers(1, 7))
            text = "".join(rng.choice(list(string.ascii_uppercase + string.digits), n))
            fs = int(rng.integers(8, 22))
            xy = (int(rng.uniform(0, size * 0.85)), int(rng.uniform(0, size * 0.9)))
            draw.text(xy, text, fill=int(rng.integers(180, 256)), font=_font(fs))
    return np.asarray(ImageOps.equalize(im), dtype=np.uint8), out_t


# -- loss ------------------------------------------------------------------------------------------------------
def loss_weights(logits: torch.Tensor, targets: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
    """Per-pixel weights (N, 3, S, S) implementing the per-source supervision of the module docstring."""
    heart_pred = (torch.sigmoid(logits[:, 1:2].detach()) > 0.5).float()
    is_jsrt = known[:, 0:1, None, None].float()  # known = (1, 1, 0) for JSRT, (0, 0, 1) for V7
    heart = targets[:, 1:2]
    ones = torch.ones_like(heart)
    w_lungs = is_jsrt * ones + (1 - is_jsrt) * (1 - targets[:, 2:3] * heart_pred)
    w_heart = is_jsrt * ones
    w_behind = is_jsrt * (1 - heart) + (1 - is_jsrt) * ones
    return torch.cat([w_lungs, w_heart, w_behind], dim=1)


def seg_loss(logits: torch.Tensor, targets: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
    """Weighted BCE + weighted soft Dice over the supervised (image, output) pairs."""
    w = loss_weights(logits, targets, known)
    bce = (
        F.binary_cross_entropy_with_logits(logits, targets, reduction="none") * w
    ).sum() / w.sum().clamp_min(1)
    p = torch.sigmoid(logits)
    inter = (p * targets * w).sum(dim=(2, 3))
    denom = ((p + targets) * w).sum(dim=(2, 3))
    has = (w.sum(dim=(2, 3)) > 0).float()
    soft_dice = 1 - (2 * inter + 1) / (denom + 1)
    return bce + (soft_dice * has).sum() / has.sum().clamp_min(1)


# -- data ------------------------------------------------------------------------------------------------------
@dataclass
class _Prepared:
    pairs: list[MaskPair]
    base: np.ndarray  # uint8 (N, B, B) raw intensities
    targets: np.ndarray  # uint8 (N, 3, B, B)
    known: np.ndarray  # uint8 (N, 3)


def _prepare(pairs: list[MaskPair]) -> _Prepared:
    base = np.zeros((len(pairs), BASE, BASE), np.uint8)
    targets = np.zeros((len(pairs), 3, BASE, BASE), np.uint8)
    known = np.zeros((len(pairs), 3), np.uint8)
    for i, p in enumerate(pairs):
        px = load_pixels(p)
        im = Image.fromarray(np.clip(px * 255 + 0.5, 0, 255).astype(np.uint8), mode="L")
        base[i] = np.asarray(im.resize((BASE, BASE), Image.Resampling.BILINEAR, reducing_gap=2.0))
        targets[i], known[i] = load_targets(p, (BASE, BASE))
    return _Prepared(pairs, base, targets, known)


def _batches(prep: _Prepared, order: np.ndarray, epoch: int, cfg: SegTrainConfig):
    for s in range(0, len(order), cfg.batch_size):
        idx = order[s : s + cfg.batch_size]
        xs, ts = [], []
        for j, i in enumerate(idx):
            rng = np.random.default_rng([cfg.seed, epoch, s + j])
            x, t = augment(prep.base[i], prep.targets[i], rng, cfg.image_size)
            xs.append(x)
            ts.append(t)
        yield (
            torch.from_numpy(np.stack(xs)[:, None].astype(np.float32) / 255.0),
            torch.from_numpy(np.stack(ts).astype(np.float32)),
            torch.from_numpy(prep.known[idx]),
        )


# -- evaluation ------------------------------------------------------------------------------------------------
def evaluate(
    graph: SegProbabilities, pairs: list[MaskPair], pre: Preprocessing, full_size: bool
) -> dict[str, Any]:
    """Dice per source on held-out pairs. ``full_size``: masks cleaned and compared at the image's own size
    (what ``covidxray segment`` writes); else raw thresholded maps at the input size (fast, for model selection)."""
    per: dict[str, dict[str, list[float]]] = {}
    graph.eval()
    for i in range(0, len(pairs), 16):
        chunk = pairs[i : i + 16]
        pix = [load_pixels(p) for p in chunk]
        x = torch.from_numpy(pre.to_input(np.stack([pre.canonical(px) for px in pix])))
        with torch.inference_mode():
            prob = graph(x).numpy()
        for p, px, pr in zip(chunk, pix, prob, strict=True):
            h, w = px.shape
            size = (w, h) if full_size else (pre.image_size, pre.image_size)
            t, _ = load_targets(p, size)
            if full_size:
                maps = [
                    np.asarray(Image.fromarray(c, mode="F").resize(size, Image.Resampling.BILINEAR))
                    for c in pr
                ]
                lungs = clean_mask(maps[0])
                heart, behind = maps[1] >= 0.5, clean_mask(maps[2])
            else:
                lungs, heart, behind = pr[0] >= 0.5, pr[1] >= 0.5, pr[2] >= 0.5
            d = per.setdefault(p.source, {})
            if p.source == JSRT:
                d.setdefault("lungs", []).append(dice(lungs, t[0]))
                d.setdefault("heart", []).append(dice(heart, t[1]))
            else:
                d.setdefault("lungs_behind_heart", []).append(dice(behind, t[2]))
                d.setdefault("lungs_vs_v7_minus_heart", []).append(dice(lungs, t[2].astype(bool) & ~heart))
                d.setdefault("lungs_vs_v7", []).append(dice(lungs, t[2]))
    out: dict[str, Any] = {}
    for src, d in per.items():
        out[src] = {"n_images": len(next(iter(d.values())))}
        for k, v in d.items():
            a = np.asarray(v)
            out[src][k] = {
                "mean": round(float(a.mean()), 4),
                "median": round(float(np.median(a)), 4),
                "min": round(float(a.min()), 4),
            }
    return out


def selection_score(m: dict[str, Any]) -> float:
    """Mean of the JSRT lung Dice and the V7 lung Dice (each in its own convention)."""
    parts = []
    if JSRT in m:
        parts.append(m[JSRT]["lungs"]["mean"])
    if COHEN in m:
        parts.append(m[COHEN]["lungs_behind_heart"]["mean"])
    return float(np.mean(parts)) if parts else 0.0


# -- training --------------------------------------------------------------------------------------------------
def train_segmenter(cfg: SegTrainConfig, log=print) -> dict[str, Any]:
    """Train, select the best epoch on val, evaluate on test at full size, save safetensors + config + ONNX."""
    t0 = time.time()
    torch.set_num_threads(max(1, cfg.threads))
    torch.manual_seed(cfg.seed)
    pairs = mask_pairs(cfg.root)
    if cfg.max_images:
        pairs = [p for s in (JSRT, COHEN) for p in [q for q in pairs if q.source == s][: cfg.max_images]]
    split = split_pairs(pairs, cfg.seed)
    by = {s: [p for p in pairs if split[p.key] == s] for s in ("train", "val", "test")}
    counts = {s: {src: sum(p.source == src for p in v) for src in (JSRT, COHEN)} for s, v in by.items()}
    log(f"lung masks: {json.dumps(counts)}")
    prep = _prepare(by["train"])
    pre = Preprocessing(image_size=cfg.image_size, channels=1, resize="squash", intensity="equalize")
    net = LungSegNet(**cfg.arch, mean=pre.mean, std=pre.std)
    graph = SegProbabilities(net)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    jsrt_idx = np.flatnonzero([p.source == JSRT for p in prep.pairs])
    other_idx = np.flatnonzero([p.source != JSRT for p in prep.pairs])
    epoch_idx = np.concatenate([np.tile(jsrt_idx, max(1, cfg.jsrt_repeat)), other_idx])
    steps = cfg.epochs * math.ceil(len(epoch_idx) / cfg.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=steps, pct_start=0.1)
    history, best, best_state = [], -1.0, None
    for epoch in range(cfg.epochs):
        net.train()
        order = np.random.default_rng([cfg.seed, epoch]).permutation(epoch_idx)
        losses = []
        for x, t, k in _batches(prep, order, epoch, cfg):
            loss = seg_loss(net(x), t, k)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(float(loss.detach()))
        val = evaluate(graph, by["val"], pre, full_size=False)
        score = selection_score(val)
        history.append(
            {
                "epoch": epoch + 1,
                "loss": round(float(np.mean(losses)), 5),
                "val_score": round(score, 4),
                "seconds": round(time.time() - t0, 1),
            }
        )
        log(
            f"epoch {epoch + 1}/{cfg.epochs} loss {np.mean(losses):.4f} val Dice {score:.4f} ({time.time() - t0:.0f} s)"
        )
        if score > best:
            best, best_state = score, {k: v.detach().clone() for k, v in net.state_dict().items()}
            best_epoch = epoch + 1
    net.load_state_dict(best_state)
    metrics = {
        "val": evaluate(graph, by["val"], pre, full_size=True),
        "test": evaluate(graph, by["test"], pre, full_size=True),
        "best_epoch": best_epoch,
        "splits": counts,
    }
    config = {
        "kind": "lung_segmenter",
        "outputs": list(OUTPUTS),
        "mask_output": "lungs",
        "convention": "SCR: lung fields as seen, heart excluded",
        "architecture": dict(cfg.arch),
        "preprocessing": pre.to_dict(),
        "threshold": 0.5,
        "postprocessing": "probability resized to the image (bilinear), >= threshold, two largest components, holes filled",
        "training": {
            **asdict(cfg),
            "seconds": round(time.time() - t0, 1),
            "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        },
        "metrics": metrics,
        "created": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "versions": {"covidxray": __version__, "torch": torch.__version__},
        "not_for_clinical_use": NOT_FOR_CLINICAL_USE,
    }
    return save_segmenter(cfg.out, net, config, history)


def save_segmenter(
    out: str | Path, net: LungSegNet, config: dict[str, Any], history: list[dict] | None = None
) -> dict[str, Any]:
    """Write model.safetensors, config.json (with ``version``), model.onnx (config in its metadata), history.csv;
    returns the config as written."""
    from safetensors.torch import save_file

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.contiguous() for k, v in net.state_dict().items()}
    save_file(state, str(out / WEIGHTS_FILE))
    digest = hashlib.sha256((out / WEIGHTS_FILE).read_bytes()).hexdigest()[:12]
    config = {**config, "version": f"lung-unet@{digest}"}
    (out / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    export_onnx(net, config, out / ONNX_FILE)
    if history:
        with open(out / "history.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(history[0]))
            w.writeheader()
            w.writerows(history)
    return config


def export_onnx(net: LungSegNet, config: dict[str, Any], path: Path, opset: int = 17) -> float:
    """ONNX export (dynamic batch), the config in its metadata; returns max |p_onnx - p_torch| (checked <= 1e-4)."""
    return export_checked(
        SegProbabilities(net),
        path,
        size=int(config["preprocessing"]["image_size"]),
        input_name=INPUT_NAME,
        output_name=OUTPUT_NAME,
        key=ONNX_CONFIG_KEY,
        config=config,
        what="lung segmenter",
        tolerance=1e-4,
        opset=opset,
    )
