"""Weight initialisation schemes a training run can ask for (``TrainConfig.init`` / ``--init``).

- ``default``: whatever the architecture sets itself -- PyTorch's layer defaults for the seed CNNs, vgg16 and
  mobilenet_v2, MONAI's own (Kaiming) initialisation for its networks.
- ``glorot``: Glorot/Xavier-uniform weights and zero biases for every convolution and dense layer: the Keras
  default, i.e. what the seeds' models actually started from.
- ``he``: Kaiming-normal weights (fan-in, ReLU gain) and zero biases for every convolution and dense layer.

Why it matters here: PyTorch's default (uniform, variance ``1 / (3 fan_in)``) shrinks the signal by about six
times per ReLU layer of a plain convolutional stack without normalisation. seed_cnn6 has eight such layers, so it
starts with vanishing activations and, on a CPU time budget, ends under-trained; Glorot or He start it at a
sensible scale (measured in BENCHMARKS.md, "seed_cnn6 acceptance run"). Layers inside normalised backbones do not
suffer from this, and ``--weights`` replaces whatever the scheme set for the layers it loads.
"""

from __future__ import annotations

from torch import nn

from covidxray.vocabulary import INITS

__all__ = ["INITS", "initialize"]


def initialize(net: nn.Module, scheme: str) -> nn.Module:
    """Re-initialise every ``Conv2d``/``Linear`` of ``net`` in place with ``scheme``; returns ``net``.

    Draws from torch's global generator, so a seeded run (the trainer seeds it first) is reproducible.
    """
    if scheme not in INITS:
        raise ValueError(f"weight initialisation must be one of {list(INITS)}, got {scheme!r}")
    if scheme == "default":
        return net
    for module in net.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            if scheme == "he":
                nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
            else:
                nn.init.xavier_uniform_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
    return net
