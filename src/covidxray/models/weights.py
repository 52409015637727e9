"""Load a local state dict (ImageNet, chest X-ray, or an earlier covidxray run) into a model's backbone.

``load_pretrained(model, "resnet18_imagenet.pth")`` copies every backbone tensor the file has, keeps the
model's fresh ``head``, drops the file's own classifier, and adapts a 3-channel first convolution to a
1-channel model by summing over the colour channels. Nothing is downloaded. Used by ``covidxray train --weights``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from covidxray.models.base import XRayNet

_WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "module")


class PretrainedWeightsError(ValueError):
    """A weights file that cannot be read or does not fit the model."""


@dataclass
class LoadReport:
    """What :func:`load_pretrained` did with each key of the file."""

    path: Path
    loaded: list[str] = field(default_factory=list)  # model keys copied from the file
    adapted: list[str] = field(default_factory=list)  # model keys whose input channels were adapted
    skipped_head: list[str] = field(default_factory=list)  # file keys of a classifier the model replaces
    ignored: list[str] = field(default_factory=list)  # an XRayNet's normalisation buffers (mean, std)
    mismatched: list[str] = field(default_factory=list)  # "key: file shape vs model shape"
    missing: list[str] = field(default_factory=list)  # backbone keys the file lacks
    unexpected: list[str] = field(default_factory=list)  # file keys the model does not have

    def summary(self) -> str:
        return (
            f"{self.path.name}: loaded {len(self.loaded)} tensors ({len(self.adapted)} channel-adapted), "
            f"skipped {len(self.skipped_head)} old-head, {len(self.mismatched)} mismatched, "
            f"{len(self.missing)} missing, {len(self.unexpected)} unexpected"
        )


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a ``.safetensors`` file or a ``.pt``/``.pth`` state dict (no pickled code: ``weights_only``)."""
    p = Path(path)
    if not p.is_file():
        raise PretrainedWeightsError(f"weights file {p} does not exist")
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj: object = load_file(str(p), device="cpu")
        else:
            obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # any reader failure is "not a weights file" to the caller
        raise PretrainedWeightsError(
            f"cannot read weights file {p}: {exc}. Expected a state dict saved with torch.save(model.state_dict()) "
            "(.pt/.pth) or a .safetensors file"
        ) from exc
    for key in _WRAPPER_KEYS:  # training checkpoints often nest the state dict
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise PretrainedWeightsError(
            f"weights file {p} does not hold a state dict (a mapping of names to tensors)"
        )
    return dict(obj)


def _normalise_key(key: str) -> str:
    for prefix in ("module.", "_orig_mod."):  # DDP / torch.compile wrappers
        if key.startswith(prefix):
            key = key[len(prefix) :]
    return key[len("net.") :] if key.startswith("net.") else key  # saved from an XRayNet


def _adapt_channels(src: torch.Tensor, shape: torch.Size) -> torch.Tensor | None:
    """A first-conv kernel with 3 (or 1) input channels made to fit ``shape`` (1 or 3), else None."""
    if src.ndim != 4 or len(shape) != 4 or src.shape[0] != shape[0] or src.shape[2:] != shape[2:]:
        return None
    if src.shape[1] == 3 and shape[1] == 1:
        return src.sum(dim=1, keepdim=True)  # grey = R = G = B, so summing keeps the response
    if src.shape[1] == 1 and shape[1] == 3:
        return src.repeat(1, 3, 1, 1) / 3
    return None


def load_pretrained(model: nn.Module, path: str | Path, strict_backbone: bool = True) -> LoadReport:
    """Copy the backbone tensors of the state dict at ``path`` into ``model`` (a Classifier or an XRayNet).

    The model's ``head`` is never touched, and the file's own classifier (``head.*``, or the family's
    ``pretrained_head_keys`` such as ImageNet's ``fc.*``) is skipped. Keys are matched as saved or under the
    family's ``backbone_prefix`` (torchvision/MONAI names). With ``strict_backbone`` any backbone key the file
    lacks, any file key the model lacks, and any shape that does not fit raise :class:`PretrainedWeightsError`
    naming the file and the keys; otherwise what fits is loaded and the rest reported.
    """
    net = model.net if isinstance(model, XRayNet) else model
    prefix = getattr(net, "backbone_prefix", "")
    old_heads = tuple(getattr(net, "pretrained_head_keys", ())) + ("head.",)
    source = read_state_dict(path)
    report = LoadReport(Path(path))
    target = net.state_dict()
    copies: dict[str, torch.Tensor] = {}

    from_xraynet = any(k.removeprefix("module.").startswith("net.") for k in source)
    for raw_key, tensor in source.items():
        key = _normalise_key(raw_key)
        name = key if key in target else prefix + key
        if from_xraynet and key in ("mean", "std"):
            report.ignored.append(raw_key)
        elif name.startswith("head.") or any(key.startswith(h) for h in old_heads):
            report.skipped_head.append(raw_key)
        elif name not in target:
            report.unexpected.append(raw_key)
        elif tensor.shape == target[name].shape:
            copies[name] = tensor
        elif (adapted := _adapt_channels(tensor, target[name].shape)) is not None:
            copies[name] = adapted
            report.adapted.append(name)
        else:
            report.mismatched.append(
                f"{raw_key}: file {tuple(tensor.shape)} vs model {tuple(target[name].shape)}"
            )

    report.missing = [
        k
        for k in target
        if k not in copies and not k.startswith("head.") and not k.endswith("num_batches_tracked")
    ]
    problems = report.missing or report.unexpected or report.mismatched
    if not copies or (strict_backbone and problems):
        raise PretrainedWeightsError(_describe_misfit(report, type(net).__name__, bool(copies)))
    with torch.no_grad():
        for name, tensor in copies.items():
            target[name].copy_(tensor.to(target[name].dtype))
    report.loaded = list(copies)
    return report


def _describe_misfit(report: LoadReport, arch: str, any_fit: bool, limit: int = 8) -> str:
    def first(keys: list[str]) -> str:
        more = f" ... (+{len(keys) - limit} more)" if len(keys) > limit else ""
        return ", ".join(keys[:limit]) + more

    lines = [
        f"weights file {report.path} does not fit this {arch}" + ("" if any_fit else " (no tensor matched)")
    ]
    if report.missing:
        lines.append(f"  missing in the file ({len(report.missing)}): {first(report.missing)}")
    if report.unexpected:
        lines.append(f"  unexpected in the file ({len(report.unexpected)}): {first(report.unexpected)}")
    if report.mismatched:
        lines.append(f"  shape mismatch ({len(report.mismatched)}): {first(report.mismatched)}")
    lines.append(
        "  Check that the file was saved from the same architecture; pass strict_backbone=False to load what fits."
    )
    return "\n".join(lines)
