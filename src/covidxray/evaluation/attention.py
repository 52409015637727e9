"""Where the model looks: the share of Grad-CAM energy inside the lung fields, per source and per class.

Models trained on these collections often look outside the lungs, at text, markers and borders (DeGrave et al.,
Nat Mach Intell 2021). For each evaluated image (a seeded sample of at most ``max_images``) this module computes
the Grad-CAM of the predicted class on the cached model input and the lung fields *in the same frame* (the
shipped segmenter run on that cached input), and reports ``sum(cam inside lungs) / sum(cam)``. For reference,
``lung_area`` is the share of the input the lungs cover: a heatmap spread uniformly would score that.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from covidxray.preprocess import Preprocessing

if TYPE_CHECKING:
    from covidxray.models.base import XRayNet

DEFAULT_MAX_IMAGES = 300


def class_scores(model: XRayNet):
    """An ``nn.Module`` giving one score per class (a single sigmoid logit z becomes [-z, z]), for Grad-CAM."""
    from torch import nn

    class _ClassScores(nn.Module):
        def __init__(self, model: XRayNet):
            super().__init__()
            self.model = model

        def forward(self, x):
            import torch

            logits = self.model(x)
            return torch.cat([-logits, logits], dim=1) if logits.shape[1] == 1 else logits

    return _ClassScores(model)


def canonical_lungs(images: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """Lung masks (N, S, S) bool of canonical uint8 model inputs (N, S, S), with the shipped ONNX segmenter."""
    from covidxray.segmentation.segmenter import default_segmenter

    seg = default_segmenter("onnx")
    out = np.zeros(images.shape, dtype=bool)
    for i in range(0, len(images), batch_size):
        chunk = [np.asarray(im, dtype=np.float32) / 255.0 for im in images[i : i + batch_size]]
        out[i : i + len(chunk)] = [s.mask for s in seg.segment_many(chunk, batch_size)]
    return out


def gradcam_maps(
    model: XRayNet,
    preprocessing: Preprocessing,
    images: np.ndarray,
    classes: np.ndarray,
    batch_size: int = 16,
) -> np.ndarray:
    """Grad-CAM (N, S, S) in [0, 1] of class index ``classes[i]`` for canonical uint8 images (N, S, S)."""
    import copy

    import torch
    from monai.visualize import GradCAM

    layer = getattr(model.net, "gradcam_layer", "")
    if not layer:
        raise RuntimeError(f"{type(model.net).__name__} names no gradcam_layer; Grad-CAM is not available")
    net = copy.deepcopy(model).eval()
    for p in net.parameters():
        p.requires_grad_(True)
    cam = GradCAM(nn_module=class_scores(net), target_layers=f"model.net.{layer}")
    out = np.zeros(images.shape, dtype=np.float32)
    for k in np.unique(classes):
        idx = np.flatnonzero(classes == k)
        for s in range(0, len(idx), batch_size):
            rows = idx[s : s + batch_size]
            x = torch.from_numpy(preprocessing.to_input(np.asarray(images[rows])))
            with torch.enable_grad():
                heat = cam(x, class_idx=int(k))[:, 0].detach().float().numpy()
            out[rows] = np.nan_to_num(heat, nan=0.0)
    return out


def in_lung_share(heat: np.ndarray, lungs: np.ndarray) -> float:
    """Share of one non-negative heatmap's total inside ``lungs`` (same shape); NaN for an all-zero heatmap."""
    return float(lung_shares(np.asarray(heat)[None], np.asarray(lungs, dtype=bool)[None])[0])


def lung_shares(heat: np.ndarray, lungs: np.ndarray) -> np.ndarray:
    """Per image: share of the (non-negative) heatmap inside the lungs; NaN when the heatmap is all zero."""
    h = np.clip(heat.astype(np.float64), 0, None).reshape(len(heat), -1)
    m = lungs.reshape(len(lungs), -1)
    total = h.sum(axis=1)
    inside = (h * m).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, inside / total, np.nan)


def _summary(share: np.ndarray, area: np.ndarray) -> dict[str, Any]:
    ok = np.isfinite(share)
    if not ok.any():
        return {"n_images": int(len(share)), "in_lung_share": None, "lung_area": None}
    return {
        "n_images": int(ok.sum()),
        "in_lung_share": round(float(np.mean(share[ok])), 4),
        "median": round(float(np.median(share[ok])), 4),
        "lung_area": round(float(np.mean(area[ok])), 4),
    }


def lung_attention(
    model: XRayNet,
    preprocessing: Preprocessing,
    images: np.ndarray,
    predicted: np.ndarray,
    labels: np.ndarray,
    sources: np.ndarray,
    classes: list[str],
    max_images: int = DEFAULT_MAX_IMAGES,
    seed: int = 0,
) -> dict[str, Any]:
    """In-lung Grad-CAM share overall, per source and per true class, on a seeded sample of the images.

    ``images``: canonical uint8 (N, S, S) (e.g. the cache rows); ``predicted``: class indices the heatmaps
    explain; ``labels``/``sources``: strings per image.
    """
    n = len(images)
    pick = np.arange(n)
    if max_images and n > max_images:
        pick = np.sort(np.random.default_rng(seed).choice(n, max_images, replace=False))
    imgs = np.asarray(images[pick])
    lungs = canonical_lungs(imgs)
    heat = gradcam_maps(model, preprocessing, imgs, np.asarray(predicted)[pick])
    share = lung_shares(heat, lungs)
    area = lungs.reshape(len(lungs), -1).mean(axis=1)
    lab, src = np.asarray(labels)[pick].astype(str), np.asarray(sources)[pick].astype(str)
    return {
        "method": "Grad-CAM of the predicted class; lungs from the shipped segmenter on the model input",
        "explained_class": "predicted",
        "sampled": {"n_images": int(len(pick)), "of": int(n), "seed": seed},
        "overall": _summary(share, area),
        "per_source": {s: _summary(share[src == s], area[src == s]) for s in sorted(set(src))},
        "per_class": {c: _summary(share[lab == c], area[lab == c]) for c in classes if (lab == c).any()},
    }
