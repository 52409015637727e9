"""Grad-CAM overlays (MONAI's :class:`monai.visualize.GradCAM`) on the layer the model names.

The heatmap is computed for the predicted class on the model input and drawn over the image with the same
geometry (squash / pad / crop) but its original contrast, with the class, its probability and the
not-for-clinical-use line written underneath. Grad-CAM shows where the network looked, not why: on these public
collections it often lights up text, markers and borders (source shortcuts) rather than lungs.
"""

from __future__ import annotations

import copy
import dataclasses
import io
import textwrap

import numpy as np
import torch
from monai.visualize import GradCAM
from PIL import Image, ImageDraw, ImageFont

from covidxray.about import NOT_FOR_CLINICAL_USE
from covidxray.evaluation.attention import class_scores, in_lung_share
from covidxray.imageio import LoadedImage
from covidxray.models.base import XRayNet
from covidxray.preprocess import Preprocessing
from covidxray.segmentation.masks import draw_outline
from covidxray.segmentation.overlay import OUTLINE_COLOR

OVERLAY_SIDE = 512
ALPHA = 0.6  # heatmap opacity where the heat is highest; cool regions let the X-ray show through


def jet(heat: np.ndarray) -> np.ndarray:
    """The jet colour map: values in [0, 1] (H, W) -> uint8 RGB (H, W, 3)."""
    h = np.clip(heat, 0.0, 1.0)[..., None]
    rgb = np.clip(1.5 - np.abs(4.0 * h - np.array([3.0, 2.0, 1.0])), 0.0, 1.0)
    return (rgb * 255.0 + 0.5).astype(np.uint8)


class GradCamExplainer:
    """Grad-CAM for one bundle model. Works on its own copy of the network: MONAI's hooks stay off the copy
    used for predictions."""

    def __init__(self, model: XRayNet, preprocessing: Preprocessing, classes: list[str]):
        layer = getattr(model.net, "gradcam_layer", "")
        if not layer:
            raise RuntimeError(
                f"{type(model.net).__name__} names no gradcam_layer; Grad-CAM is not available"
            )
        net = copy.deepcopy(model).eval()
        for prm in net.parameters():
            prm.requires_grad_(True)
        self.scores = class_scores(net)
        self.cam = GradCAM(nn_module=self.scores, target_layers=f"model.net.{layer}")
        self.preprocessing = preprocessing
        self.classes = classes

    def heatmap(self, image: LoadedImage, label: str, lung_mask: np.ndarray | None = None) -> np.ndarray:
        """Grad-CAM of class ``label`` on the model input: float (S, S) in [0, 1]. ``lung_mask`` (bool, the
        image's size) is needed by ``resize: lungcrop`` models."""
        x = torch.from_numpy(self.preprocessing(image.pixels, lung_mask)[None])
        with torch.enable_grad():
            cam = self.cam(x, class_idx=self.classes.index(label))
        heat = cam[0, 0].detach().float().numpy()
        return np.nan_to_num(heat, nan=0.0)

    def lung_share(self, heat: np.ndarray, image: LoadedImage, lung_mask: np.ndarray) -> float:
        """Share of the heatmap's energy inside the lung fields (both in the model-input frame)."""
        return in_lung_share(heat, self.preprocessing.canonical_mask(lung_mask, lung_mask))

    def overlay_png(
        self, image: LoadedImage, label: str, probability: float, lung_mask: np.ndarray | None = None
    ) -> bytes:
        """The image with the heatmap of ``label``, the lung outline (when ``lung_mask`` is given: bool, the
        image's size) and a caption with the heatmap's in-lung share, as PNG bytes."""
        return self.overlay(image, label, probability, lung_mask)[0]

    def overlay(
        self, image: LoadedImage, label: str, probability: float, lung_mask: np.ndarray | None = None
    ) -> tuple[bytes, float | None]:
        """:meth:`overlay_png` and the heatmap's in-lung share (None without a lung mask)."""
        heat = self.heatmap(image, label, lung_mask)
        share = self.lung_share(heat, image, lung_mask) if lung_mask is not None else None
        view = dataclasses.replace(self.preprocessing, image_size=OVERLAY_SIDE, intensity="none")
        base = view.canonical(image.pixels, lung_mask).astype(np.float32)[..., None].repeat(3, axis=2)
        heat_big = (
            np.asarray(
                Image.fromarray((heat * 255).astype(np.uint8)).resize(
                    (OVERLAY_SIDE, OVERLAY_SIDE), Image.BILINEAR
                ),
                dtype=np.float32,
            )
            / 255.0
        )
        alpha = ALPHA * heat_big[..., None]
        blended = (1 - alpha) * base + alpha * jet(heat_big).astype(np.float32)
        rgb = np.clip(blended + 0.5, 0, 255).astype(np.uint8)
        if lung_mask is not None:
            rgb = draw_outline(rgb, view.canonical_mask(lung_mask, lung_mask), OUTLINE_COLOR)
        return _with_caption(Image.fromarray(rgb, mode="RGB"), label, probability, share), share


def _with_caption(
    picture: Image.Image, label: str, probability: float, lung_share: float | None = None
) -> bytes:
    font = ImageFont.load_default(size=16)
    small = ImageFont.load_default(size=12)
    lines = [
        (f"Predicted: {label}  (p = {probability:.2f})", font, (255, 255, 255)),
        ("Grad-CAM: red = image regions that raised this class's score", small, (200, 200, 200)),
    ]
    if lung_share is not None and np.isfinite(lung_share):
        lines.append(
            (f"{lung_share:.0%} of the heatmap inside the lung fields (cyan outline)", small, (0, 229, 255))
        )
    lines += [(t, small, (255, 200, 80)) for t in textwrap.wrap(NOT_FOR_CLINICAL_USE, 72)]
    height = 10 + sum(22 if f is font else 16 for _, f, _ in lines)
    canvas = Image.new("RGB", (picture.width, picture.height + height), (0, 0, 0))
    canvas.paste(picture, (0, 0))
    draw = ImageDraw.Draw(canvas)
    y = picture.height + 6
    for text, f, colour in lines:
        draw.text((8, y), text, fill=colour, font=f)
        y += 22 if f is font else 16
    buf = io.BytesIO()
    canvas.save(buf, format="PNG", optimize=False)
    return buf.getvalue()
