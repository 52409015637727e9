"""ONNX Runtime on the CPU, one way for every network covidxray runs without torch: the classifier's export
(:mod:`covidxray.prediction.onnx_backend`), the lung segmenter and the view check.

Each of those files carries its config as JSON under its own metadata key; :func:`embedded_config` reads it and
refuses a file without it, with the caller's own error type and words. Only onnxruntime and json are used.
"""

from __future__ import annotations

import json
import os
from typing import Any


def cpu_session(path: str | os.PathLike, threads: int = 2, error: type[Exception] = RuntimeError):
    """A CPU session with ``threads`` intra-op threads (one inter-op) and every graph optimisation; a file
    ONNX Runtime cannot load raises ``error`` naming it."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = max(1, int(threads))
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types (InvalidProtobuf, Fail, ...)
        raise error(f"{path}: ONNX Runtime cannot load this file: {exc}") from exc


def embedded_config(
    session, key: str, path: str | os.PathLike, error: type[Exception], what: str
) -> tuple[dict[str, Any], dict[str, str]]:
    """The JSON config under metadata ``key`` and the whole metadata map; without the key, ``error`` with
    ``what`` (e.g. "not a covidxray view check") after the file's name."""
    meta = dict(session.get_modelmeta().custom_metadata_map)
    if key not in meta:
        raise error(f"{path}: no '{key}' metadata; {what}")
    return json.loads(meta[key]), meta


def torchscript_onnx(graph, sample, opset: int, input_name: str, output_names: list[str]):
    """The ONNX ModelProto of ``graph`` from PyTorch's TorchScript exporter (``dynamo=False``), every input and
    output with a dynamic batch axis. The caller sets ``torch.no_grad`` and silences the exporter's warnings."""
    import io

    import onnx
    import torch

    buf = io.BytesIO()
    torch.onnx.export(
        graph,
        (sample,),
        buf,
        dynamo=False,
        opset_version=opset,
        input_names=[input_name],
        output_names=output_names,
        dynamic_axes={input_name: {0: "batch"}, **{o: {0: "batch"} for o in output_names}},
    )
    return onnx.load_from_string(buf.getvalue())


def export_checked(
    graph, path: str | os.PathLike, *, size: int, input_name: str, output_name: str, key: str,
    config: dict[str, Any], what: str, tolerance: float, opset: int = 17,
) -> float:  # fmt: skip
    """Export a torch module taking (N, 1, size, size) to ONNX (dynamic batch) with ``config`` as JSON
    under metadata ``key``, then run the file with ONNX Runtime on a random batch and return max |ONNX - torch|,
    raising RuntimeError above ``tolerance``. Used by the lung segmenter's and the view check's training."""
    import warnings

    import numpy as np
    import onnx
    import onnxruntime as ort
    import torch

    from covidxray.about import NOT_FOR_CLINICAL_USE, __version__

    graph = graph.eval()
    sample = torch.rand(2, 1, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter(
            "ignore"
        )  # the TorchScript exporter's deprecation notes (it handles these graphs)
        proto = torchscript_onnx(graph, sample, opset, input_name, [output_name])
    proto.metadata_props.add(key=key, value=json.dumps(config))
    proto.doc_string = f"covidxray {what} {config.get('version', '')}. {NOT_FOR_CLINICAL_USE}"
    proto.producer_name, proto.producer_version = "covidxray", __version__
    onnx.save_model(proto, str(path))
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(1).random((3, 1, size, size), dtype=np.float32)
    with torch.inference_mode():
        ref = graph(torch.from_numpy(x)).numpy()
    diff = float(np.abs(sess.run([output_name], {input_name: x})[0] - ref).max())
    if diff > tolerance:
        raise RuntimeError(f"{path}: ONNX Runtime differs from PyTorch by {diff:.2e}")
    return diff
