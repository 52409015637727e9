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
