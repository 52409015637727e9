"""The input guard: is this plausibly a frontal chest X-ray like the ones the model was trained on?

Two kinds of evidence, each giving a plain-language warning (a string) when it fails:

1. **Image statistics** of the decoded image (:func:`image_stats`): colourfulness, size, aspect ratio, the share
   of near-white pixels, grey-level entropy and the density of sharp edges. Colour photographs, tiny images,
   scanned documents, text and drawings fail these. The limits are :data:`DEFAULT_LIMITS` (measured on the
   three collections in ``../shared/data``, see BENCHMARKS.md) and can be overridden per bundle.
2. **Distance to the training distribution** in the model's feature space (:class:`FeatureDistance`): a
   Mahalanobis distance in the principal subspace of the training features, with shrunk variances, plus the
   scaled residual outside that subspace. Its threshold is a high quantile (99 % by default) of the distances of
   held-out training images. :func:`fit_guard` fits it and stores it in the bundle's ``guard`` field
   (:func:`fit_guard_on_split` from a manifest split).

3. **Lung fields** (:class:`covidxray.segmentation.LungFacts` from the shipped lung segmenter): a frontal chest
   X-ray shows two lung fields of plausible area and left/right balance; lateral views, other body parts and
   non-X-rays mostly do not ("no plausible lung fields", measured in BENCHMARKS.md).
4. **View** (:mod:`covidxray.viewcheck`): a small network's probability that the image is a lateral view, which
   the lung-field check misses about 40 % of the time ("looks like a lateral view"; patient-grouped
   cross-validation in BENCHMARKS.md). It runs with the lung check (``lung_check``).

Warnings never change the prediction; ``--strict`` (or ``Predictor(strict=True)``) refuses flagged inputs.
Only NumPy and Pillow are used, so the ONNX backend runs the same guard without torch.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from covidxray.imageio import LoadedImage
from covidxray.segmentation.masks import LungFacts
from covidxray.viewcheck import ViewFacts, view_warning

if TYPE_CHECKING:
    import pandas as pd

GUARD_VERSION = 1
STATS_SIDE = 256  # statistics are computed on a copy whose longest side is this many pixels

# Limits of the image statistics. Real chest X-rays of all three collections stay inside them (measured, see
# BENCHMARKS.md "Input guard"); each limit names the kind of non-X-ray input it catches.
DEFAULT_LIMITS: dict[str, float] = {
    "max_colorfulness": 0.06,  # colour photographs and figures (X-rays: 0; tinted photos of films: 0.08-0.4)
    "min_side": 128,  # thumbnails, icons
    "min_aspect": 0.5,  # width / height: strips, banners, screenshots of a page
    "max_aspect": 2.0,
    "max_white_fraction": 0.35,  # documents and scans of paper: mostly near-white
    "min_entropy": 4.0,  # bits of the grey-level histogram: flat drawings, binary images, text
    "max_edge_density": 0.12,  # share of sharp-edge pixels: text, line art, screenshots
}


@dataclass(frozen=True)
class ImageStats:
    """Statistics of one decoded image that separate chest X-rays from other pictures."""

    width: int
    height: int
    colorfulness: float
    white_fraction: float  # pixels >= 0.94
    black_fraction: float  # pixels <= 0.06 (reported, not checked: X-rays often have black borders)
    entropy: float  # bits, 256-bin histogram
    edge_density: float  # share of pixels whose neighbour difference exceeds 0.25

    @property
    def aspect(self) -> float:
        return self.width / self.height


def image_stats(image: LoadedImage) -> ImageStats:
    """Compute :class:`ImageStats` on a copy of ``image`` at most :data:`STATS_SIDE` pixels on a side."""
    px = image.pixels
    small = Image.fromarray(np.clip(px * 255.0 + 0.5, 0, 255).astype(np.uint8), mode="L")
    scale = STATS_SIDE / max(small.size)
    if scale < 1:
        small = small.resize(
            (max(1, round(small.width * scale)), max(1, round(small.height * scale))),
            Image.Resampling.BILINEAR,
        )
    a = np.asarray(small, dtype=np.float32) / 255.0
    hist = np.bincount(np.asarray(small, dtype=np.uint8).ravel(), minlength=256).astype(np.float64)
    p = hist[hist > 0] / hist.sum()
    dx = np.abs(np.diff(a, axis=1))[:-1, :] if a.shape[0] > 1 else np.zeros((0,))
    dy = np.abs(np.diff(a, axis=0))[:, :-1] if a.shape[1] > 1 else np.zeros((0,))
    edge = float((np.maximum(dx, dy) > 0.25).mean()) if dx.size and dy.size else 0.0
    return ImageStats(
        width=image.width,
        height=image.height,
        colorfulness=float(image.colorfulness),
        white_fraction=float((a >= 0.94).mean()),
        black_fraction=float((a <= 0.06).mean()),
        entropy=float(-(p * np.log2(p)).sum()),
        edge_density=edge,
    )


def stats_warnings(stats: ImageStats, limits: dict[str, float] | None = None) -> list[str]:
    """Plain-language warnings for every statistic outside ``limits`` (default :data:`DEFAULT_LIMITS`)."""
    lim = {**DEFAULT_LIMITS, **(limits or {})}
    out: list[str] = []
    if stats.colorfulness > lim["max_colorfulness"]:
        out.append(
            f"colour image (colourfulness {stats.colorfulness:.2f} > {lim['max_colorfulness']:.2f}): chest X-rays are "
            "grayscale; this looks like a photograph, a coloured figure or a tinted photo of a film"
        )
    if min(stats.width, stats.height) < lim["min_side"]:
        out.append(
            f"small image ({stats.width}x{stats.height} px, under {lim['min_side']:.0f} px on a side): "
            "use the original radiograph, not a thumbnail"
        )
    if not lim["min_aspect"] <= stats.aspect <= lim["max_aspect"]:
        out.append(
            f"unusual shape (width/height {stats.aspect:.2f}, expected {lim['min_aspect']:g} to "
            f"{lim['max_aspect']:g}): a frontal chest X-ray is roughly square"
        )
    if stats.white_fraction > lim["max_white_fraction"]:
        out.append(
            f"mostly white ({stats.white_fraction:.0%} near-white pixels): looks like a document or a scanned page"
        )
    if stats.entropy < lim["min_entropy"]:
        out.append(
            f"few grey levels (entropy {stats.entropy:.1f} bits < {lim['min_entropy']:g}): looks like a drawing, "
            "text or a binary image, not a radiograph"
        )
    if stats.edge_density > lim["max_edge_density"]:
        out.append(
            f"many sharp edges ({stats.edge_density:.0%} of pixels): looks like text, line art or a screenshot"
        )
    return out


@dataclass
class FeatureDistance:
    """Mahalanobis distance to the training features in their top principal components, plus the residual.

    ``d^2 = sum_i z_i^2 / (var_i + shrink) + |r|^2 / residual_var``, divided by ``components + 1`` so that
    ``d`` is about 1 for typical training images whatever the feature width.
    """

    mean: np.ndarray  # (F,)
    basis: np.ndarray  # (k, F) orthonormal rows
    variances: np.ndarray  # (k,) shrunk
    residual_var: float  # mean squared residual per feature dimension outside the subspace
    threshold: float
    quantile: float
    fitted_on: int

    def distance(self, features: np.ndarray) -> np.ndarray:
        """(N, F) or (F,) -> distances (N,) or a float."""
        f = np.asarray(features, dtype=np.float64)
        one = f.ndim == 1
        f = np.atleast_2d(f) - self.mean
        z = f @ self.basis.T
        resid = np.maximum((f * f).sum(axis=1) - (z * z).sum(axis=1), 0.0)
        n_resid = max(self.mean.shape[0] - self.basis.shape[0], 1)
        d2 = (z * z / self.variances).sum(axis=1) + resid / (self.residual_var * n_resid)
        d = np.sqrt(d2 / (self.basis.shape[0] + 1))
        return float(d[0]) if one else d

    @classmethod
    def fit(
        cls,
        features: np.ndarray,
        quantile: float = 0.99,
        components: int = 32,
        holdout: float = 0.2,
        seed: int = 0,
    ) -> FeatureDistance:
        """Fit on ``features`` (N, F); the threshold is the ``quantile`` of held-out images' distances.

        Holding out a share of the images matters: in-sample distances are smaller, and a threshold read off
        them would flag far more than ``1 - quantile`` of new real X-rays.
        """
        x = np.asarray(features, dtype=np.float64)
        if x.ndim != 2 or x.shape[0] < 20:
            raise ValueError(f"need at least 20 feature vectors (N, F) to fit the guard, got shape {x.shape}")
        if not 0.5 <= quantile < 1:
            raise ValueError(f"quantile must be in [0.5, 1), got {quantile}")
        rng = np.random.default_rng(seed)
        order = rng.permutation(x.shape[0])
        n_hold = max(10, int(round(holdout * x.shape[0])))
        held, fit = x[order[:n_hold]], x[order[n_hold:]]
        mean = fit.mean(axis=0)
        centred = fit - mean
        _, s, vt = np.linalg.svd(centred, full_matrices=False)
        var = s**2 / max(fit.shape[0] - 1, 1)
        k = int(min(components, fit.shape[0] - 1, x.shape[1]))
        total = float(var.sum()) / x.shape[1]  # mean variance per dimension
        shrink = 0.1 * total  # pulls small, noisy eigenvalues up (shrinkage towards a scaled identity)
        residual_var = max(float(var[k:].sum()) / max(x.shape[1] - k, 1), 1e-3 * total, 1e-12)
        model = cls(
            mean,
            vt[:k],
            var[:k] + shrink,
            residual_var,
            threshold=math.inf,
            quantile=quantile,
            fitted_on=int(x.shape[0]),
        )
        model.threshold = float(np.quantile(model.distance(held), quantile))
        return model

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": "pca-mahalanobis",
            "threshold": self.threshold,
            "quantile": self.quantile,
            "fitted_on": self.fitted_on,
            "components": int(self.basis.shape[0]),
            "residual_var": self.residual_var,
            "variances": _floats(self.variances),
            "mean": _floats(self.mean),
            "basis": [_floats(row) for row in self.basis],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FeatureDistance:
        return cls(
            mean=np.asarray(d["mean"], dtype=np.float64),
            basis=np.asarray(d["basis"], dtype=np.float64).reshape(int(d["components"]), -1),
            variances=np.asarray(d["variances"], dtype=np.float64),
            residual_var=float(d["residual_var"]),
            threshold=float(d["threshold"]),
            quantile=float(d.get("quantile", 0.99)),
            fitted_on=int(d.get("fitted_on", 0)),
        )


def _floats(a: np.ndarray) -> list[float]:
    return [float(f"{v:.6g}") for v in np.asarray(a, dtype=np.float64).ravel()]


class InputGuard:
    """Checks one image (statistics) and its features (distance); :meth:`check` returns warnings."""

    def __init__(self, limits: dict[str, float] | None = None, distance: FeatureDistance | None = None):
        self.limits = {**DEFAULT_LIMITS, **(limits or {})}
        self.distance = distance

    @classmethod
    def from_config(cls, guard: dict[str, Any] | None) -> InputGuard:
        """Build from a bundle's ``guard`` field (None: statistics only, default limits)."""
        guard = guard or {}
        fd = guard.get("feature_distance")
        return cls(guard.get("limits"), FeatureDistance.from_dict(fd) if fd else None)

    @property
    def needs_features(self) -> bool:
        return self.distance is not None

    def check(
        self,
        image: LoadedImage,
        features: np.ndarray | None = None,
        lungs: LungFacts | None = None,
        view: ViewFacts | None = None,
    ) -> list[str]:
        out = stats_warnings(image_stats(image), self.limits)
        if lungs is not None and not lungs.plausible:
            out.append(lung_warning(lungs))
        if view is not None and view.lateral:
            out.append(view_warning(view))
        if self.distance is not None and features is not None:
            d = self.distance.distance(features)
            if d > self.distance.threshold:
                out.append(
                    f"unlike the training X-rays (feature distance {d:.2f} > {self.distance.threshold:.2f}, the "
                    f"{self.distance.quantile:.0%} quantile of held-out training images): it may not be a frontal "
                    "chest X-ray, or comes from a source the model has not seen"
                )
        return out


def lung_warning(lungs: LungFacts) -> str:
    """The "no plausible lung fields" warning, with the numbers behind it."""
    return (
        f"no plausible lung fields: {lungs.describe()}; it may not be a frontal chest X-ray "
        "(lateral view, another body part, not an X-ray)"
    )


def guard_config(distance: FeatureDistance | None, limits: dict[str, float] | None = None) -> dict[str, Any]:
    """The bundle's ``guard`` field."""
    return {
        "version": GUARD_VERSION,
        "limits": {**DEFAULT_LIMITS, **(limits or {})},
        "feature_distance": distance.to_dict() if distance is not None else None,
    }


def fit_guard(
    bundle_path: str | Path,
    images: np.ndarray | Iterable[np.ndarray],
    quantile: float = 0.99,
    components: int = 32,
    limits: dict[str, float] | None = None,
    batch_size: int = 64,
    store: bool = True,
) -> dict[str, Any]:
    """Fit the feature-distance guard of a saved bundle; with ``store``, write it to the bundle's ``guard`` field.

    ``images``: canonical uint8 training images as in the cache, an array (N, S, S) (e.g. a memory map from
    :func:`covidxray.data.cache.load_cache` on the training rows) or an iterable of (S, S) images or (n, S, S)
    chunks; or float features (N, F) already computed with the bundle's model. Returns the ``guard`` dict.
    Re-export the ONNX file afterwards so it carries the guard too (``covidxray guard`` does).
    """
    from covidxray.bundle import load_bundle, update_bundle

    if isinstance(images, np.ndarray) and images.ndim == 2 and np.issubdtype(images.dtype, np.floating):
        feats = images
    else:
        bundle = load_bundle(bundle_path)
        feats = compute_features(bundle.model, bundle.config.preprocessing, _chunks(images, batch_size))
    guard = guard_config(FeatureDistance.fit(feats, quantile=quantile, components=components), limits)
    if store:
        update_bundle(bundle_path, guard=guard)
    return guard


def fit_guard_on_split(
    bundle_path: str | Path,
    manifest: pd.DataFrame,
    cache_dir: str | Path,
    split: str = "train",
    quantile: float = 0.99,
    max_images: int = 3000,
) -> dict[str, Any]:
    """Fit the guard of a bundle on one manifest split (at most ``max_images`` rows, a seeded sample) from the
    shared image cache, store it in the bundle and re-export its ``model.onnx`` if it has one.

    What ``covidxray guard`` and ``covidxray run`` do. Returns the ``guard`` dict; raises ValueError for a
    quantile outside [0.5, 1) or a split of fewer than 20 rows.
    """
    from covidxray.bundle import ONNX_FILE, read_config
    from covidxray.data.cache import load_cache

    if not 0.5 <= quantile < 1:
        raise ValueError(f"the guard's quantile must be in [0.5, 1), got {quantile}")
    positions = np.flatnonzero((manifest["split"] == split).to_numpy())
    if len(positions) < 20:
        raise ValueError(f"split {split!r} has {len(positions)} rows; need at least 20")
    if len(positions) > max_images:
        positions = np.sort(np.random.default_rng(0).choice(positions, max_images, replace=False))
    # the whole manifest's cache, as training and evaluation use it: built once, shared
    cache = load_cache(manifest, read_config(bundle_path).preprocessing, cache_dir=cache_dir)
    guard = fit_guard(bundle_path, np.asarray(cache[positions]), quantile=quantile)
    onnx_path = Path(bundle_path) / ONNX_FILE
    if onnx_path.exists():
        from covidxray.prediction.export import export_onnx

        export_onnx(bundle_path, onnx_path)
    return guard


def guard_summary(guard: dict[str, Any], split: str = "train") -> str:
    """One line saying what a fitted guard measured, for the command line."""
    fd = guard["feature_distance"]
    return (
        f"input guard fitted on {fd['fitted_on']} {split} images: feature-distance threshold "
        f"{fd['threshold']:.3f} ({fd['quantile']:.0%} of held-out training images)"
    )


def _chunks(images: np.ndarray | Iterable[np.ndarray], batch_size: int) -> Iterator[np.ndarray]:
    """(n, S, S) uint8 chunks of at most ``batch_size`` images from an array or an iterable."""
    if isinstance(images, np.ndarray):
        if images.ndim != 3 or images.dtype != np.uint8:
            raise ValueError(
                "expected canonical uint8 images (N, S, S) or float features (N, F), "
                f"got dtype {images.dtype} and shape {images.shape}"
            )
        for i in range(0, len(images), batch_size):
            yield np.asarray(images[i : i + batch_size])
        return
    buf: list[np.ndarray] = []
    for item in images:
        a = np.asarray(item)
        if a.dtype != np.uint8 or a.ndim not in (2, 3):
            raise ValueError(f"expected uint8 images (S, S) or chunks (n, S, S), got {a.dtype} {a.shape}")
        buf.extend(a if a.ndim == 3 else [a])
        while len(buf) >= batch_size:
            yield np.stack(buf[:batch_size])
            buf = buf[batch_size:]
    if buf:
        yield np.stack(buf)


def compute_features(model, preprocessing, chunks: Iterable[np.ndarray]) -> np.ndarray:
    """Penultimate features (N, F) of canonical uint8 image chunks (n, S, S) with a torch :class:`XRayNet`."""
    import torch

    out = []
    model.eval()
    with torch.inference_mode():
        for chunk in chunks:
            x = torch.from_numpy(preprocessing.to_input(chunk))
            out.append(model.features(x).float().numpy())
    if not out:
        raise ValueError("no images given to fit the guard")
    return np.concatenate(out)
