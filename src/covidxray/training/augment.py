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

Why batched torch rather than per-image MONAI ``RandAffine`` etc.: on this project's busy 2-core CPUs the
per-image transforms cost 3-30 ms an image (MetaTensor and per-call set-up), as much as seed_cnn6's forward and
backward pass at 64 px; one ``affine_grid``/``grid_sample`` per batch costs a fraction of that. The blur is MONAI's batched :class:`monai.networks.layers.GaussianFilter`.
Randomness comes from an explicit :class:`torch.Generator`, so a batch's augmentation depends on
(run seed, epoch, step, rank) only -- identical after a resume.
"""

from __future__ import annotations

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

    def __init__(self, policy: str, image_size: int):
        if policy not in AUGMENTS:
            raise ValueError(f"augmentation policy must be one of {list(AUGMENTS)}, got {policy!r}")
        self.policy = policy
        self.image_size = int(image_size)
        self.blur = GaussianFilter(spatial_dims=2, sigma=1.0) if policy == "light" else None

    def __call__(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        if self.policy == "seed002":
            return self._seed002(x, g)
        if self.policy == "light":
            return self._light(x, g)
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
        return f"Augment({self.policy!r})"


def batch_generator(seed: int, epoch: int, step: int, rank: int = 0) -> torch.Generator:
    """The generator of one batch's augmentation: a function of (seed, epoch, step, rank) only."""
    key = ((int(seed) * 1_000_003 + int(epoch)) * 1_000_003 + int(step)) * 257 + int(rank)
    return torch.Generator().manual_seed(key % (2**63 - 1) or 1)
