"""Training-time augmentation policies, applied to a whole batch (N, C, S, S) of [0, 1] float images at once.

- ``seed002``: seed 002's Keras ``ImageDataGenerator(rotation_range=5, shear_range=0.2, zoom_range=0.3,
  horizontal_flip=True, fill_mode="nearest", brightness_range=[0.2, 1.0])``. As in Keras: rotation from
  U(-5, 5) degrees, shear *angle* from U(-0.2, 0.2) degrees (Keras reads ``shear_range`` in degrees), each axis'
  zoom from U(0.7, 1.3), a horizontal flip half of the time, brightness multiplied by U(0.2, 1.0), border pixels
  repeated outside the image. ``rescale=1/255`` is :meth:`covidxray.preprocess.Preprocessing.to_input`.
- ``light``: aimed at generalising across collections: 90 % of images get a small rotation (7 deg), translation
  (5 %) and isotropic zoom (+-10 %, a random crop-resize about the centre); half get a random gamma (0.7-1.5),
  half a contrast change (+-20 % about the image mean); 20 % a Gaussian blur, 20 % Gaussian noise (sd 0.02).
  No horizontal flip: the heart is on the left in nearly every chest X-ray, a mirrored one is not a real image.
- ``none``: identity.

**Random erasing** (``erasing=p`` > 0, any policy; ``TrainConfig.erasing``, ``--erasing``): last, each image with
probability ``p`` gets one random box of 2-33 % of its area filled with uniform noise (Zhong et al. 2020).

**Acquisition randomisation** (``acquisition=p`` > 0, any policy; ``TrainConfig.acquisition``, ``--acquisition``):
after the policy, each image independently gets, each with probability ``p``, what another hospital's scanner,
processing and export would change -- the style cues a model can learn instead of the disease (DeGrave et al.
2021; Zunaed et al. 2023): a gamma (0.5-2.0); a random window (black point U(0, 0.2), white point U(0.8, 1),
stretched, or the range compressed into such a window); a Gaussian blur (sigma 0.4-1.6 px) or an unsharp-mask
sharpening (amount 0.5-2); Gaussian noise (sd 0.01-0.05); JPEG re-compression at quality 15-90 (Pillow's real
codec, on the selected images only); down-sampling by 0.3-0.8 and back (area, then bilinear); a border crop
(up to 12 % of each side removed, the rest stretched back) or padding (the image shrunk by up to 15 % onto a
black or white frame); and the four corners (where markers, text and labels sit) each covered, with
probability 1/2, by a box of 6-22 % of the side in a random grey. Blur and sharpen use MONAI's batched
:class:`~monai.networks.layers.GaussianFilter`; the per-image parameters come from the batch's generator.
kornia's batched equivalents were measured first (kornia 0.9, batch of 32 at 96 px, 1 thread, on the 2-core VM
at load average ~13): 35-115 ms per transform per batch for ``RandomGamma``, ``RandomContrast``,
``RandomGaussianBlur``, ``RandomSharpness``, ``RandomResizedCrop`` and ``RandomAffine`` (~0.45 s together) and
4.2 s for its differentiable ``RandomJPEG``, against 0.25-0.7 s for this whole block, JPEG included, under the
same load; with a new dependency on top, kornia is not used.
Note that the cached images are already histogram-equalised, as every input at prediction time is: gamma and
window then model what is left of intensity differences after equalisation, not raw detector curves.

Why batched torch rather than per-image MONAI ``RandAffine`` etc.: on this project's busy 2-core CPUs the
per-image transforms cost 3-30 ms an image (MetaTensor and per-call set-up), as much as seed_cnn6's forward and
backward pass at 64 px; one ``affine_grid``/``grid_sample`` per batch costs a fraction of that. The blur is MONAI's batched :class:`monai.networks.layers.GaussianFilter`.
Randomness comes from an explicit :class:`torch.Generator`, so a batch's augmentation depends on
(run seed, epoch, step, rank) only -- identical after a resume.
"""

from __future__ import annotations

import io

import numpy as np
import torch
import torch.nn.functional as F
from monai.networks.layers import GaussianFilter

from covidxray.training.config import AUGMENTS


def _uniform(n: int, lo: float, hi: float, g: torch.Generator) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=g)


def _chance(n: int, p: float, g: torch.Generator) -> torch.Tensor:
    return torch.rand(n, generator=g) < p


def affine_warp(
    x: torch.Tensor,
    angle_deg: torch.Tensor,
    zoom_xy: torch.Tensor,
    shear_deg: torch.Tensor | None = None,
    shift_xy: torch.Tensor | None = None,
    flip: torch.Tensor | None = None,
) -> torch.Tensor:
    """Warp each image of ``x`` (N, C, S, S): sampling position = R(angle) Shear Zoom Flip out + shift.

    ``zoom_xy`` (N, 2) > 1 shows more of the image (zoom out); ``shift_xy`` (N, 2) is in fractions of the image.
    """
    n = x.shape[0]
    a = torch.deg2rad(angle_deg)
    rot = torch.stack([torch.cos(a), -torch.sin(a), torch.sin(a), torch.cos(a)], 1).view(n, 2, 2)
    if flip is not None:  # mirror the output x axis
        zoom_xy = zoom_xy * torch.stack([torch.where(flip, -1.0, 1.0), torch.ones(n)], 1)
    m = torch.diag_embed(zoom_xy)
    if shear_deg is not None:  # Keras: [[1, -sin(s)], [0, cos(s)]]
        s = torch.deg2rad(shear_deg)
        shear = torch.stack([torch.ones_like(s), -torch.sin(s), torch.zeros_like(s), torch.cos(s)], 1).view(
            n, 2, 2
        )
        m = shear @ m
    theta = torch.cat(
        [rot @ m, (2 * shift_xy if shift_xy is not None else torch.zeros(n, 2)).view(n, 2, 1)], 2
    )
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


class Augment:
    """A policy by name; ``augment(batch, generator)`` returns a new batch clipped to [0, 1]."""

    def __init__(self, policy: str, image_size: int, acquisition: float = 0.0, erasing: float = 0.0):
        if policy not in AUGMENTS:
            raise ValueError(f"augmentation policy must be one of {list(AUGMENTS)}, got {policy!r}")
        for name, v in (("acquisition", acquisition), ("erasing", erasing)):
            if not 0 <= v <= 1:
                raise ValueError(f"{name} is a probability in [0, 1], got {v}")
        self.erasing = float(erasing)
        self.policy = policy
        self.image_size = int(image_size)
        self.acquisition = float(acquisition)
        self.blur = GaussianFilter(spatial_dims=2, sigma=1.0) if policy == "light" else None
        self.acq_blur = (
            {s: GaussianFilter(spatial_dims=2, sigma=s) for s in (0.4, 1.6)} if acquisition else {}
        )

    def __call__(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        if self.policy == "seed002":
            x = self._seed002(x, g)
        elif self.policy == "light":
            x = self._light(x, g)
        if self.acquisition > 0:
            x = self._acquisition(x, g)
        if self.erasing > 0:
            x = self._erase(x, g)
        return x

    def _erase(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """Random erasing (Zhong et al., AAAI 2020): each image, with probability ``self.erasing``, gets one box of
        2-33 % of its area (aspect ratio 0.3-3.3, log-uniform, anywhere in the image) replaced by uniform noise,
        so no single region -- a rib, a border, the heart's outline -- can carry the decision alone. A box too long
        for the image is clipped to its side (a smaller area). Every channel gets the same noise (the inputs are
        grey)."""
        n, size = x.shape[0], x.shape[-1]
        pick = _chance(n, self.erasing, g)
        area = _uniform(n, 0.02, 1 / 3, g) * size * size
        aspect = torch.exp(_uniform(n, float(np.log(0.3)), float(np.log(1 / 0.3)), g))
        h = (area * aspect).sqrt().round().long().clamp(1, size)
        w = (area / aspect).sqrt().round().long().clamp(1, size)
        top, left = torch.rand(n, generator=g), torch.rand(n, generator=g)
        x = x.clone()
        for i in pick.nonzero().flatten().tolist():
            hi, wi = int(h[i]), int(w[i])
            r, c = int(top[i] * (size - hi + 1)), int(left[i] * (size - wi + 1))
            x[i, :, r : r + hi, c : c + wi] = torch.rand((1, hi, wi), generator=g)  # one grey plane
        return x

    # -- acquisition randomisation ---------------------------------------------------------------------------
    def _acquisition(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """Scanner / processing / export differences, each transform on a random ``self.acquisition`` share."""
        n, p = x.shape[0], self.acquisition
        x = x.clone()
        # gamma
        pick = _chance(n, p, g)
        gamma = torch.exp(_uniform(n, float(np.log(0.5)), float(np.log(2.0)), g))
        if pick.any():
            x[pick] = x[pick].clamp_min(1e-6).pow(gamma[pick].view(-1, 1, 1, 1))
        # window: stretch [lo, hi] to [0, 1] (clipping), or compress [0, 1] into [lo, hi]
        pick, stretch = _chance(n, p, g), _chance(n, 0.5, g)
        lo, hi = _uniform(n, 0.0, 0.2, g).view(n, 1, 1, 1), _uniform(n, 0.8, 1.0, g).view(n, 1, 1, 1)
        if pick.any():
            xs, lo_s, hi_s = x[pick], lo[pick], hi[pick]
            windowed = torch.where(
                stretch[pick].view(-1, 1, 1, 1), (xs - lo_s) / (hi_s - lo_s), lo_s + xs * (hi_s - lo_s)
            )
            x[pick] = windowed.clamp(0.0, 1.0)
        # blur (sigma 0.4-1.6: a blend between two fixed MONAI Gaussian filters) or unsharp-mask sharpening
        pick, sharpen = _chance(n, p, g), _chance(n, 0.5, g)
        mix, amount = torch.rand(n, generator=g).view(n, 1, 1, 1), _uniform(n, 0.5, 2.0, g).view(n, 1, 1, 1)
        if pick.any():
            xs = x[pick]
            wide = self.acq_blur[1.6](xs)
            soft = torch.lerp(self.acq_blur[0.4](xs), wide, mix[pick])
            sharp = xs + amount[pick] * (xs - wide)
            x[pick] = torch.where(sharpen[pick].view(-1, 1, 1, 1), sharp, soft).clamp(0.0, 1.0)
        # noise
        pick, sd = _chance(n, p, g), _uniform(n, 0.01, 0.05, g).view(n, 1, 1, 1)
        if pick.any():
            noise = torch.randn((int(pick.sum()), *x.shape[1:]), generator=g)
            x[pick] = (x[pick] + sd[pick] * noise).clamp(0.0, 1.0)
        # JPEG re-compression (Pillow), then down-then-up sampling
        pick, quality = _chance(n, p, g), torch.randint(15, 91, (n,), generator=g)
        for i in pick.nonzero().flatten().tolist():
            x[i] = jpeg_roundtrip(x[i], int(quality[i]))
        pick, factor = _chance(n, p, g), _uniform(n, 0.3, 0.8, g)
        for i in pick.nonzero().flatten().tolist():
            small = max(8, round(x.shape[-1] * float(factor[i])))
            down = F.interpolate(x[i : i + 1], size=(small, small), mode="area")
            x[i] = F.interpolate(down, size=x.shape[-2:], mode="bilinear", align_corners=False)[0]
        # border crop (zoom in, each side independently) or padding onto a black or white frame (zoom out)
        pick, pad = _chance(n, p, g), _chance(n, 0.5, g)
        cut = _uniform(4 * n, 0.0, 0.12, g).view(n, 4)  # left, right, top, bottom
        shrink, frame = _uniform(n, 0.85, 1.0, g), (torch.rand(n, generator=g) < 0.5).float()
        for i in pick.nonzero().flatten().tolist():
            x[i] = _pad(x[i], float(shrink[i]), float(frame[i])) if pad[i] else _crop(x[i], cut[i].tolist())
        # corners: each covered with probability 1/2 when the image is picked
        pick = _chance(n, p, g)
        corner_on = _chance(4 * n, 0.5, g).view(n, 4) & pick.view(n, 1)
        size = (_uniform(8 * n, 0.06, 0.22, g).view(n, 4, 2) * x.shape[-1]).round().long().clamp_min(1)
        grey = torch.rand(n, 4, generator=g)
        for i, c in torch.nonzero(corner_on).tolist():
            h, w = int(size[i, c, 0]), int(size[i, c, 1])
            rows = slice(0, h) if c < 2 else slice(x.shape[-2] - h, None)
            cols = slice(0, w) if c % 2 == 0 else slice(x.shape[-1] - w, None)
            x[i, :, rows, cols] = grey[i, c]
        return x

    def _seed002(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        n = x.shape[0]
        angle = _uniform(n, -5.0, 5.0, g)
        shear = _uniform(n, -0.2, 0.2, g)
        zoom = _uniform(2 * n, 0.7, 1.3, g).view(n, 2)
        flip = _chance(n, 0.5, g)
        brightness = _uniform(n, 0.2, 1.0, g).view(n, 1, 1, 1)
        x = affine_warp(x, angle, zoom, shear_deg=shear, flip=flip)
        return (x * brightness).clamp_(0.0, 1.0)

    def _light(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        n = x.shape[0]
        warp = _chance(n, 0.9, g).float()
        angle = _uniform(n, -7.0, 7.0, g) * warp
        zoom = (1.0 + _uniform(n, -0.1, 0.1, g) * warp).view(n, 1).expand(n, 2)
        shift = _uniform(2 * n, -0.05, 0.05, g).view(n, 2) * warp.view(n, 1)
        x = affine_warp(x, angle, zoom, shift_xy=shift).clamp_(0.0, 1.0)
        gamma = torch.where(_chance(n, 0.5, g), _uniform(n, 0.7, 1.5, g), torch.ones(n)).view(n, 1, 1, 1)
        x = x.clamp_min(1e-6).pow(gamma)
        contrast = torch.where(_chance(n, 0.5, g), _uniform(n, 0.8, 1.2, g), torch.ones(n)).view(n, 1, 1, 1)
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        x = (x - mean) * contrast + mean
        blur, amount = _chance(n, 0.2, g), torch.rand(n, generator=g)
        if blur.any():  # blend towards a sigma-1 blur, i.e. a random sigma in (0, 1]
            x[blur] = torch.lerp(x[blur], self.blur(x[blur]), amount[blur].view(-1, 1, 1, 1))
        noisy = _chance(n, 0.2, g)
        noise = torch.randn((int(noisy.sum()), *x.shape[1:]), generator=g)
        if noisy.any():
            x[noisy] = x[noisy] + 0.02 * noise
        return x.clamp_(0.0, 1.0)

    def __repr__(self) -> str:
        return f"Augment({self.policy!r}, acquisition={self.acquisition}, erasing={self.erasing})"


def jpeg_roundtrip(image: torch.Tensor, quality: int) -> torch.Tensor:
    """One (C, H, W) [0, 1] image through Pillow's JPEG encoder at ``quality`` and back (each channel as grey)."""
    from PIL import Image

    out = torch.empty_like(image)
    for c in range(image.shape[0]):
        a = (image[c].clamp(0, 1).numpy() * 255.0 + 0.5).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, format="JPEG", quality=int(quality))
        buf.seek(0)
        out[c] = torch.from_numpy(np.asarray(Image.open(buf).convert("L"), np.float32) / 255.0)
    return out


def _crop(image: torch.Tensor, cut: list[float]) -> torch.Tensor:
    """Remove fractions ``cut`` = (left, right, top, bottom) of the borders and stretch the rest back."""
    h, w = image.shape[-2:]
    left, right, top, bottom = (int(round(f * s)) for f, s in zip(cut, (w, w, h, h), strict=True))
    part = image[:, top : h - bottom, left : w - right].unsqueeze(0)
    return F.interpolate(part, size=(h, w), mode="bilinear", align_corners=False)[0]


def _pad(image: torch.Tensor, shrink: float, value: float) -> torch.Tensor:
    """The image shrunk by ``shrink`` and centred on a frame of grey ``value``."""
    h, w = image.shape[-2:]
    sh, sw = max(1, round(h * shrink)), max(1, round(w * shrink))
    small = F.interpolate(image.unsqueeze(0), size=(sh, sw), mode="area")[0]
    out = torch.full_like(image, value)
    top, left = (h - sh) // 2, (w - sw) // 2
    out[:, top : top + sh, left : left + sw] = small
    return out


def batch_generator(seed: int, epoch: int, step: int, rank: int = 0) -> torch.Generator:
    """The generator of one batch's augmentation: a function of (seed, epoch, step, rank) only."""
    key = ((int(seed) * 1_000_003 + int(epoch)) * 1_000_003 + int(step)) * 257 + int(rank)
    return torch.Generator().manual_seed(key % (2**63 - 1) or 1)
