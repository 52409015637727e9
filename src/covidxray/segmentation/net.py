"""The lung segmenter network (torch): a small MONAI U-Net with its input normalisation inside.

Three sigmoid outputs, one per structure a training source annotates (see :mod:`covidxray.segmentation.train`):

- ``lungs``: lung fields as seen, heart excluded (SCR convention) -- what ``covidxray segment`` writes;
- ``heart``: the heart (SCR label 250), learnt from JSRT only;
- ``lungs_behind_heart``: lungs including the region behind the heart (V7 convention), learnt from the V7 masks.
"""

from __future__ import annotations

import torch
from monai.networks.nets import UNet
from torch import nn

from covidxray.segmentation.train_config import DEFAULT_ARCH

OUTPUTS = ("lungs", "heart", "lungs_behind_heart")


class LungSegNet(nn.Module):
    """Takes (N, 1, S, S) images in [0, 1] (the segmenter's ``Preprocessing``), returns (N, 3, S, S) logits."""

    def __init__(
        self,
        channels: list[int] | tuple[int, ...] = tuple(DEFAULT_ARCH["channels"]),
        strides: list[int] | tuple[int, ...] = tuple(DEFAULT_ARCH["strides"]),
        num_res_units: int = 1,
        mean: float = 0.5,
        std: float = 0.25,
    ):
        super().__init__()
        self.unet = UNet(
            spatial_dims=2,
            in_channels=1,
            out_channels=len(OUTPUTS),
            channels=tuple(channels),
            strides=tuple(strides),
            num_res_units=int(num_res_units),
            norm="batch",
        )
        self.register_buffer("mean", torch.tensor(float(mean)))
        self.register_buffer("std", torch.tensor(float(std)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.unet((x - self.mean) / self.std)


class SegProbabilities(nn.Module):
    """The exported graph: sigmoid probabilities (N, 3, S, S)."""

    def __init__(self, net: LungSegNet):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.net(x))
