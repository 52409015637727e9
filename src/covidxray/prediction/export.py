"""ONNX export: ``covidxray export --model RUN --onnx model.onnx``.

The graph takes ``image``: float32 (N, C, S, S) in [0, 1] (after :class:`covidxray.preprocess.Preprocessing`;
mean/std normalisation is inside) with a dynamic batch dimension, and returns ``probabilities`` (N, K) in the
order of ``classes`` and ``features`` (N, F), the penultimate vector the input guard measures. The metadata
carries everything needed to use the file without covidxray: the classes, the preprocessing (as data and in
words), the operating points (``operating_points`` JSON, ``decision`` = the name of the deciding one,
``operating_point`` = that point) and the decision rule in words, the intended use and the not-for-clinical-use line, and the whole
bundle config under ``covidxray.config``. Uses the ``torch.export``-based exporter (``dynamo=True``), falling
back to the TorchScript exporter for networks it cannot handle.
"""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from covidxray.about import NOT_FOR_CLINICAL_USE, __version__
from covidxray.bundle import WEIGHTS_FILE, BundleError, load_bundle, onnx_config_metadata
from covidxray.models.base import XRayNet
from covidxray.onnxrt import torchscript_onnx
from covidxray.prediction.backend import ModelLoadError, weights_version
from covidxray.prediction.onnx_backend import INPUT_NAME, OUTPUTS, VERSION_KEY, make_session
from covidxray.preprocess import LUNGMASK_DILATION, Preprocessing

DEFAULT_OPSET = 18
AGREEMENT_TOLERANCE = 1e-4


class ProbabilitiesAndFeatures(nn.Module):
    """The exported graph: [0, 1] images -> (class probabilities, penultimate features)."""

    def __init__(self, model: XRayNet):
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.probabilities_and_features(image)


def describe_preprocessing(p: Preprocessing) -> str:
    """The preprocessing in words, for people reading the ONNX metadata."""
    resize = {
        "squash": f"resize to {p.image_size}x{p.image_size} ignoring the aspect ratio (bilinear)",
        "pad": f"pad to a square with black, then resize to {p.image_size}x{p.image_size} (bilinear)",
        "crop": f"centre-crop to a square, then resize to {p.image_size}x{p.image_size} (bilinear)",
        "lungcrop": f"crop to the lung fields' bounding box (covidxray lung segmenter {p.lung_segmenter or '?'}, "
        f"its ONNX in the covidxray package) widened by {p.lungcrop_margin:g} of its size on each side, then "
        f"resize to {p.image_size}x{p.image_size} (bilinear)",
        "lungmask": f"crop to the lung fields' bounding box (covidxray lung segmenter {p.lung_segmenter or '?'}, "
        f"its ONNX in the covidxray package) widened by {p.lungcrop_margin:g} of its size on each side, resize to "
        f"{p.image_size}x{p.image_size} (bilinear), then black out everything outside the lung fields widened by "
        f"{LUNGMASK_DILATION:g} of the side (the intensity step sees the lung fields only)",
    }[p.resize]
    intensity = {
        "equalize": "histogram equalisation (PIL ImageOps.equalize) on the 8-bit image",
        "equalize_lungs": "histogram equalisation (PIL ImageOps.equalize) of the 8-bit crop with the lookup table "
        "taken from the lung fields' histogram (the mask eroded by 2 px), applied to the whole crop",
        "percentile": f"stretch the {p.percentiles[0]:g}-{p.percentiles[1]:g} percentiles to 0-255",
        "minmax": "stretch min-max to 0-255",
        "none": "no intensity change",
    }[p.intensity]
    return (
        f"decode to grayscale in [0, 1] (0 = black; DICOM MONOCHROME1 inverted), convert to 8-bit, {resize}, "
        f"{intensity}, divide by 255, repeat to {p.channels} channel(s); input float32 (N, {p.channels}, "
        f"{p.image_size}, {p.image_size}). Mean {p.mean:g} / std {p.std:g} normalisation is inside the graph."
    )


def onnx_metadata(config: dict[str, Any], version: str) -> dict[str, str]:
    """The ``metadata_props`` written into the ONNX file."""
    p = Preprocessing.from_dict(config["preprocessing"])
    return {
        **onnx_config_metadata(config),  # the whole config, its hash, the operating point, the decision rule
        VERSION_KEY: version,
        "classes": json.dumps(list(config["classes"])),
        "preprocessing": json.dumps(p.to_dict()),
        "preprocessing_description": describe_preprocessing(p),
        "input": f"{INPUT_NAME}: float32 (N, {p.channels}, {p.image_size}, {p.image_size}) in [0, 1]",
        "outputs": "probabilities: float32 (N, K) in the order of 'classes'; "
        "features: float32 (N, F) penultimate features (covidxray input guard)",
        "intended_use": str(config.get("intended_use", "")),
        "not_for_clinical_use": NOT_FOR_CLINICAL_USE,
        "covidxray_version": __version__,
    }


def export_onnx(
    bundle_path: str | Path, out_path: str | Path, opset: int = DEFAULT_OPSET, check: bool = True
) -> dict[str, Any]:
    """Export a bundle to ONNX at ``out_path``; with ``check``, verify ONNX Runtime agrees with PyTorch.

    Returns facts about the export: path, size in bytes, opset, max probability difference on a check batch.
    """
    import onnx

    try:
        bundle = load_bundle(bundle_path)
    except (BundleError, OSError, ValueError, KeyError, RuntimeError) as exc:
        raise ModelLoadError(f"{bundle_path}: cannot load the model bundle: {exc}") from exc
    cfg = bundle.config
    p = cfg.preprocessing
    graph = ProbabilitiesAndFeatures(bundle.model).eval()
    sample = torch.rand(2, p.channels, p.image_size, p.image_size, generator=torch.Generator().manual_seed(0))
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    proto = _to_onnx(graph, sample, opset)
    config = cfg.to_dict()
    version = weights_version(cfg.architecture, Path(bundle.path or bundle_path) / WEIGHTS_FILE)
    del proto.metadata_props[:]
    for k, v in onnx_metadata(config, version).items():
        proto.metadata_props.add(key=k, value=v)
    proto.doc_string = f"covidxray {cfg.architecture} ({', '.join(cfg.classes)}). {NOT_FOR_CLINICAL_USE}"
    proto.producer_name, proto.producer_version = "covidxray", __version__
    tmp = out.with_name(out.name + ".tmp")
    onnx.save_model(proto, str(tmp))
    tmp.replace(out)
    facts: dict[str, Any] = {
        "path": str(out),
        "bytes": out.stat().st_size,
        "opset": opset,
        "version": version,
    }
    if check:
        facts["max_abs_diff"] = check_agreement(graph, out, p)
    return facts


def _to_onnx(graph: nn.Module, sample: torch.Tensor, opset: int):
    """The ONNX ModelProto of ``graph`` with a dynamic batch axis: the ``torch.export``-based exporter, or the
    TorchScript one (``dynamo=False``) for networks it cannot trace."""

    quiet = logging.getLogger("torch.onnx")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # the exporter's notes about optional torchvision ops
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            try:
                program = torch.onnx.export(
                    graph,
                    (sample,),
                    dynamo=True,
                    opset_version=opset,
                    input_names=[INPUT_NAME],
                    output_names=list(OUTPUTS),
                    dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=4096)},),
                    verbose=False,
                    report=False,
                )
                return program.model_proto
            except Exception:  # noqa: BLE001 - any failure of the new exporter: use the TorchScript one
                return torchscript_onnx(graph, sample, opset, INPUT_NAME, list(OUTPUTS))
    finally:
        quiet.setLevel(level)


def check_agreement(graph: ProbabilitiesAndFeatures, onnx_path: Path, p: Preprocessing) -> float:
    """Max |p_onnx - p_torch| on random inputs of two batch sizes; raises if above the tolerance."""
    sess = make_session(onnx_path)
    rng = np.random.default_rng(1)
    worst = 0.0
    for n in (1, 5):
        x = rng.random((n, p.channels, p.image_size, p.image_size), dtype=np.float32)
        with torch.inference_mode():
            ref = graph(torch.from_numpy(x))[0].numpy()
        got = sess.run([OUTPUTS[0]], {INPUT_NAME: x})[0]
        worst = max(worst, float(np.abs(got - ref).max()))
    if worst > AGREEMENT_TOLERANCE:
        raise RuntimeError(
            f"{onnx_path}: ONNX Runtime probabilities differ from PyTorch by {worst:.2e} "
            f"(> {AGREEMENT_TOLERANCE:g}); the export is not faithful"
        )
    return worst
