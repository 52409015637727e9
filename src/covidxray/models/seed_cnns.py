"""The small CNNs the seed write-ups trained from scratch, rebuilt layer for layer.

Each takes an ``image_size`` argument (default: the seed's own input size) so the flatten size follows the
input; the layer lists mirror the seeds' Keras ``Sequential`` models (conv, activation and pooling are separate
modules, in the seeds' order). ``num_classes=1`` gives the seeds' single sigmoid logit.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from covidxray.models.base import Classifier
from covidxray.models.registry import register_model


class SeedCNN(Classifier):
    """A seed CNN: ``conv`` (conv/ReLU/pool/dropout stack) -> flatten -> ``fc`` (dense, ReLU, [dropout]) -> ``head``.

    ``features(x)`` is the output of the hidden dense layer (after its activation and dropout), the
    penultimate vector; ``gradcam_layer`` is the ReLU after the last convolution.
    """

    def __init__(
        self,
        name: str,
        conv: nn.Sequential,
        in_channels: int,
        image_size: int,
        hidden: int,
        num_classes: int,
        dropout: float = 0.0,
    ):
        super().__init__()
        self.conv = conv
        self.flatten = nn.Flatten()
        flat = _flat_size(name, conv, in_channels, image_size)
        fc: list[tuple[str, nn.Module]] = [("dense", nn.Linear(flat, hidden)), ("relu", nn.ReLU())]
        if dropout > 0:
            fc.append(("dropout", nn.Dropout(dropout)))
        self.fc = nn.Sequential(OrderedDict(fc))
        self.head = nn.Linear(hidden, num_classes)
        last_relu = [n for n, m in conv.named_children() if isinstance(m, nn.ReLU)][-1]
        self.gradcam_layer = f"conv.{last_relu}"
        self.image_size = int(image_size)
        self.flat_features = flat

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.flatten(self.conv(x)))


def _flat_size(name: str, conv: nn.Sequential, in_channels: int, image_size: int) -> int:
    """Flattened length of ``conv``'s output for one ``image_size`` square image (a dry run on zeros)."""
    try:
        with torch.no_grad():
            out = conv(torch.zeros(1, in_channels, image_size, image_size))
    except RuntimeError as exc:
        raise ValueError(
            f"{name}: image_size={image_size} is too small for its conv/pool stack ({exc})"
        ) from exc
    if out.numel() == 0:
        raise ValueError(f"{name}: image_size={image_size} is too small for its conv/pool stack")
    return int(out.numel())


@register_model("seed_cnn6")
def seed_cnn6(
    num_classes: int = 3, in_channels: int = 1, image_size: int = 256, dropout: float = 0.5
) -> SeedCNN:
    """Seed 000 ("Corona Detection from X-ray using CNN"): six 3x3 convolutions, dense 64, dropout 0.5.

    The seed lists six conv layers (16, 16, 32, 32, 64, 64 filters, ReLU) with 2x2 max pooling "reducing the
    image size to its half", says the result is "64 features, each represented by a 32*32 array", and then a
    flatten "of size 4800" -- which no 64-channel map can give (4800 / 64 = 75 is not a square). We follow the
    feature-map sentence: ``same``-padded convs in three pairs, one 2x2 max-pool after each pair, so a 256 px
    input ends as 64 maps of 32x32 exactly (hence the default ``image_size=256``); the flatten size follows
    ``image_size`` (16,384 at 128 px). Pooling per pair, not per conv, is also what keeps the text's 32x32
    reachable. Then dense 64 + ReLU, dropout 0.5 and the output layer (the seed: 2 sigmoid units; here
    ``num_classes`` logits, 1 = one sigmoid logit). Cost at 128 px: ~0.15 GMAC per image forward.
    """
    conv = _cnn6_stack(in_channels, instance_norm=0)
    return SeedCNN("seed_cnn6", conv, in_channels, image_size, 64, num_classes, dropout=dropout)


def _cnn6_stack(in_channels: int, instance_norm: int) -> nn.Sequential:
    """seed_cnn6's six convolutions; the first ``instance_norm`` of them followed by an ``InstanceNorm2d``."""
    layers: list[tuple[str, nn.Module]] = []
    channels = [in_channels, 16, 16, 32, 32, 64, 64]
    for i in range(6):
        # replicate padding in front of instance normalisation: zero padding is not shifted with the image's
        # brightness, so the border would carry it past the normalisation
        pad = "replicate" if i == 0 and instance_norm else "zeros"
        layers.append(
            (f"conv{i + 1}", nn.Conv2d(channels[i], channels[i + 1], 3, padding=1, padding_mode=pad))
        )
        if i < instance_norm:
            layers.append((f"in{i + 1}", nn.InstanceNorm2d(channels[i + 1], affine=True)))
        layers.append((f"relu{i + 1}", nn.ReLU()))
        if i % 2 == 1:
            layers.append((f"pool{i // 2 + 1}", nn.MaxPool2d(2)))
    return nn.Sequential(OrderedDict(layers))


@register_model("seed_cnn6_in")
def seed_cnn6_in(
    num_classes: int = 3, in_channels: int = 1, image_size: int = 256, dropout: float = 0.5
) -> SeedCNN:
    """seed_cnn6 with instance normalisation after its first four convolutions (the IBN-Net idea, Pan et al.,
    ECCV 2018: instance normalisation in the shallow layers removes each image's contrast and texture-statistics
    "style" -- what a scanner, an exposure or an export leaves -- while the deep layers keep what is content).

    Each normalised map has zero mean and unit variance per image and channel before its learned scale and
    shift, so the whole network's output does not change when an image's brightness and contrast do
    (``x -> a x + b``, ``a > 0``; ``tests/test_models.py`` checks it) -- for which the first convolution pads
    by replicating the edge instead of with zeros. Otherwise seed_cnn6 layer for layer.
    """
    conv = _cnn6_stack(in_channels, instance_norm=4)
    return SeedCNN("seed_cnn6_in", conv, in_channels, image_size, 64, num_classes, dropout=dropout)


class MixStyle(nn.Module):
    """MixStyle (Zhou et al., "Domain generalization with MixStyle", ICLR 2021): during training, with
    probability ``p`` per batch, re-style each image's feature maps with a mix of its own and another image's
    channel statistics.

    Each map is normalised by its own per-channel mean and standard deviation (the "style": exposure, contrast,
    texture statistics a scanner or export leaves) and re-scaled with ``lam * own + (1 - lam) * other``, ``lam ~
    Beta(alpha, alpha)``, the other image drawn from the same batch (which the balanced sampler fills from every
    training collection). The content (the normalised maps) is untouched. An identity in eval mode, so the saved
    model, its ONNX export and its predictions do not depend on it. Draws from torch's global generator (seeded by
    the trainer), so a run stays reproducible.
    """

    def __init__(self, p: float = 0.5, alpha: float = 0.1, eps: float = 1e-6):
        super().__init__()
        self.p, self.alpha, self.eps = float(p), float(alpha), float(eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or x.shape[0] < 2 or float(torch.rand(())) >= self.p:
            return x
        n = x.shape[0]
        mu = x.mean(dim=(2, 3), keepdim=True).detach()
        sig = (x.var(dim=(2, 3), keepdim=True) + self.eps).sqrt().detach()
        beta = torch.distributions.Beta(torch.tensor(self.alpha), torch.tensor(self.alpha))
        lam = beta.sample((n, 1, 1, 1)).to(x.dtype)
        perm = torch.randperm(n)
        mu_mix = lam * mu + (1 - lam) * mu[perm]
        sig_mix = lam * sig + (1 - lam) * sig[perm]
        return (x - mu) / sig * sig_mix + mu_mix


@register_model("seed_cnn6_mixstyle")
def seed_cnn6_mixstyle(
    num_classes: int = 3, in_channels: int = 1, image_size: int = 256, dropout: float = 0.5
) -> SeedCNN:
    """seed_cnn6 with :class:`MixStyle` (p 0.5, alpha 0.1, the paper's setting) after its first two pooling
    layers -- the shallow features, where style lives. Identical to seed_cnn6 at inference (same weights, same
    output); only what training shows the deeper layers differs."""
    conv = _cnn6_stack(in_channels, instance_norm=0)
    layers = OrderedDict()
    for name, module in conv.named_children():
        layers[name] = module
        if name in ("pool1", "pool2"):
            layers[f"mixstyle{name[-1]}"] = MixStyle()
    return SeedCNN(
        "seed_cnn6_mixstyle", nn.Sequential(layers), in_channels, image_size, 64, num_classes, dropout=dropout
    )


class _GlobalPool(nn.Module):
    """Global average pooling of each map to one value, as ``(N, C, 1, 1)``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3), keepdim=True)


@register_model("seed_cnn6_gap")
def seed_cnn6_gap(
    num_classes: int = 3, in_channels: int = 1, image_size: int = 256, dropout: float = 0.5
) -> SeedCNN:
    """seed_cnn6 with global average pooling in place of the flatten: the dense layer sees 64 values (the
    mean of each last feature map) instead of 64 maps position by position (9,216 values at 96 px).

    The flatten lets the network learn *where* things are in the frame -- the layout of a child's chest, a
    collection's framing, the crop box a segmenter draws on one collection's images; the pooled form only
    *whether* a pattern occurs somewhere, and has 98 % fewer dense weights. Otherwise seed_cnn6 layer for layer.
    """
    conv = _cnn6_stack(in_channels, instance_norm=0)
    conv.add_module("gap", _GlobalPool())
    return SeedCNN("seed_cnn6_gap", conv, in_channels, image_size, 64, num_classes, dropout=dropout)


@register_model("seed_cnn422k")
def seed_cnn422k(
    num_classes: int = 1, in_channels: int = 3, image_size: int = 256, dropout: float = 0.25
) -> SeedCNN:
    """Seed 002's "Our Model" (422,177 parameters at 256x256x3 with one output).

    From its Keras summary: Conv2D 64 3x3 stride 3 (``valid`` padding: 256 -> 85) -> MaxPool 2 (42) -> Dropout ->
    Conv2D 32 3x3 stride 3 (14) -> MaxPool 2 (7) -> Dropout -> Flatten (1568) -> Dense 256 -> Dense 1 (sigmoid).
    The summary shows no activations or dropout rates; we use ReLU after both convs and the 256-unit dense
    layer, and ``dropout=0.25``. Parameter count: 1,792 + 18,464 + 401,664 + 257 = 422,177.
    """
    conv = nn.Sequential(
        OrderedDict(
            [
                ("conv1", nn.Conv2d(in_channels, 64, 3, stride=3)),
                ("relu1", nn.ReLU()),
                ("pool1", nn.MaxPool2d(2)),
                ("dropout1", nn.Dropout(dropout)),
                ("conv2", nn.Conv2d(64, 32, 3, stride=3)),
                ("relu2", nn.ReLU()),
                ("pool2", nn.MaxPool2d(2)),
                ("dropout2", nn.Dropout(dropout)),
            ]
        )
    )
    return SeedCNN("seed_cnn422k", conv, in_channels, image_size, 256, num_classes)


@register_model("seed_cnn2")
def seed_cnn2(num_classes: int = 1, in_channels: int = 1, image_size: int = 64) -> SeedCNN:
    """Seeds 003/004: two blocks of Conv2D 32 3x3 + ReLU + MaxPool 2, flatten, dense 256 + ReLU, output.

    Keras defaults (``valid`` padding) as in the seeds; they do not state the input size, we default to 64 px
    (64 -> 62 -> 31 -> 29 -> 14: a flatten of 6,272). The seeds end in one sigmoid unit (``num_classes=1``).
    """
    conv = nn.Sequential(
        OrderedDict(
            [
                ("conv1", nn.Conv2d(in_channels, 32, 3)),
                ("relu1", nn.ReLU()),
                ("pool1", nn.MaxPool2d(2)),
                ("conv2", nn.Conv2d(32, 32, 3)),
                ("relu2", nn.ReLU()),
                ("pool2", nn.MaxPool2d(2)),
            ]
        )
    )
    return SeedCNN("seed_cnn2", conv, in_channels, image_size, 256, num_classes)


class PatchClassifier(Classifier):
    """A patch-based classifier (Oh, Park and Ye, "Deep learning COVID-19 features on CXR using limited
    training data sets", IEEE TMI 2020): a network that sees one patch of half the image's side at a time.

    Training (``self.training``): each image gives one patch at a random place (torch's global generator,
    seeded by the trainer, like dropout), so the network learns local lung texture and cannot use the image's
    whole-field layout (thorax shape and size, positioning, devices in the middle of the image). Evaluation: a
    fixed ``grid x grid`` lattice of patches covering the image (3 x 3 with half-patch overlap by default); the
    patches' penultimate vectors are averaged before the (linear) head, i.e. their logits are averaged -- one
    deterministic forward the ONNX export, the predictor and the web page run unchanged. An input of the patch's
    own size is one patch in both modes; any other size than ``image_size`` is refused. The lattice (``grid``,
    ``stride``) is part of the architecture's definition, like its layers.

    Grad-CAM (``gradcam_layer = "stitch"``): at evaluation the patches' last convolutional maps are laid on one
    canvas of the whole image, each patch in its own channels at its own place (zeros elsewhere), divided by the
    number of patches covering each place, and read back from it (multiplied back: exact, the counts being
    powers of two for the registered lattice). Grad-CAM on that canvas puts each patch's evidence at its place
    and averages where patches overlap (Oh et al.'s "probabilistic Grad-CAM"), so the centre, seen by four
    patches, is not four times as bright as a corner seen by one.
    """

    def __init__(self, patch_net: SeedCNN, image_size: int, grid: int = 3, stride: int = 8):
        super().__init__()
        self.patch, self.image_size = int(patch_net.image_size), int(image_size)
        self.grid, self.stride = int(grid), int(stride)  # stride: the conv stack's total downsampling
        if self.grid < 1 or self.stride < 1:
            raise ValueError(f"grid and stride must be at least 1, got grid={grid}, stride={stride}")
        if self.patch > self.image_size:
            raise ValueError(f"patch {self.patch} px is larger than the image ({self.image_size} px)")
        if self.patch % self.stride or self.image_size % self.stride:
            raise ValueError(
                f"patch ({self.patch} px) and image ({self.image_size} px) must be multiples of the conv stack's "
                f"downsampling ({self.stride} px), so that every patch's maps sit on the image's grid of cells"
            )
        with torch.no_grad():
            side = patch_net.conv(
                torch.zeros(1, patch_net.conv[0].in_channels, self.patch, self.patch)
            ).shape[-1]
        if side != self.patch // self.stride:
            raise ValueError(
                f"the patch network downsamples {self.patch} px to {side} cells, not {self.patch // self.stride}: "
                f"stride {self.stride} does not match it"
            )
        self.lattice = self.offsets(self.image_size)
        if len(set(self.lattice)) < self.grid:
            raise ValueError(
                f"a {self.image_size} px image is too small for a {self.grid} x {self.grid} lattice of "
                f"{self.patch} px patches at a {self.stride} px step (offsets {self.lattice})"
            )
        self.patch_net = patch_net
        self.head = patch_net.head  # the head maps the patches' mean feature: it lives here, once
        patch_net.head = nn.Identity()
        self.stitch = nn.Identity()
        self.gradcam_layer = "stitch"
        # the lattice's patches as (row, column) in cells of ``stride`` px, and how many cover each cell
        self.places = [(a // self.stride, b // self.stride) for a in self.lattice for b in self.lattice]
        cells, h = self.image_size // self.stride, self.patch // self.stride
        cover = torch.zeros(1, 1, cells, cells)
        for a, b in self.places:
            cover[..., a : a + h, b : b + h] += 1
        self.register_buffer("cover", cover.clamp_min(1.0), persistent=False)

    def offsets(self, size: int) -> list[int]:
        """The evaluation lattice's patch offsets (px) along one side of a ``size`` px image: evenly spread
        from one edge to the other, each a multiple of the stride (the last ``size mod stride`` px are not
        seen)."""
        span = (size - self.patch) // self.stride
        if self.grid == 1:
            return [span // 2 * self.stride]
        return [int(i * span / (self.grid - 1) + 0.5) * self.stride for i in range(self.grid)]

    def features(self, x: torch.Tensor) -> torch.Tensor:
        n, p, size = x.shape[0], self.patch, int(x.shape[-1])
        if int(x.shape[-2]) != size or size not in (p, self.image_size):
            raise ValueError(
                f"{type(self).__name__} takes square {self.image_size} px images (or {p} px patches), got "
                f"{int(x.shape[-2])} x {size}: use the bundle's preprocessing"
            )
        if size == p:
            return self.patch_net.features(x)
        if self.training:
            at = torch.randint(0, size - p + 1, (n, 2))
            patches = torch.stack([x[i, :, a : a + p, b : b + p] for i, (a, b) in enumerate(at.tolist())])
            return self.patch_net.features(patches)
        step, cells, places = self.stride, size // self.stride, self.places
        patches = torch.stack(
            [x[:, :, a * step : a * step + p, b * step : b * step + p] for a, b in places], 1
        )
        maps = self.patch_net.conv(patches.flatten(0, 1))  # (n * k, c, h, w)
        k, (c, h, w) = len(places), maps.shape[1:]
        maps = maps.view(n, k, c, h, w)
        # each patch's maps in its own channels, at its place on the image, shared out where patches overlap
        canvas = torch.cat(
            [F.pad(maps[:, j], (b, cells - w - b, a, cells - h - a)) for j, (a, b) in enumerate(places)],
            dim=1,
        )
        canvas = (self.stitch(canvas / self.cover) * self.cover).view(n, k, c, cells, cells)
        read = torch.stack([canvas[:, j, :, a : a + h, b : b + w] for j, (a, b) in enumerate(places)], dim=1)
        f = self.patch_net.fc(self.patch_net.flatten(read.flatten(0, 1)))
        return f.view(n, k, -1).mean(dim=1)


@register_model("seed_cnn6_patch")
def seed_cnn6_patch(
    num_classes: int = 3, in_channels: int = 1, image_size: int = 192, dropout: float = 0.5
) -> PatchClassifier:
    """seed_cnn6 on patches of half the image's side (:class:`PatchClassifier`): ``--image-size 192`` trains
    seed_cnn6 at 96 px on random 96 px patches of the 192 px image and predicts with the mean logit of a 3 x 3
    lattice of them (9 patch forwards per image: about 9x seed_cnn6's inference at 96 px). ``image_size`` must be
    a multiple of 16 (the patch, half of it, a multiple of seed_cnn6's 8 px downsampling)."""
    if image_size % 16:
        raise ValueError(f"seed_cnn6_patch: image_size must be a multiple of 16, got {image_size}")
    inner = seed_cnn6(num_classes, in_channels, image_size=image_size // 2, dropout=dropout)
    return PatchClassifier(inner, image_size)
