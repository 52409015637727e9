"""Saved models as self-describing bundles (after MONAI bundles and timm's pretrained_cfg).

A bundle is a folder holding ``model.safetensors`` (weights, no pickle) and ``config.json``: the architecture and
its arguments, the classes, the preprocessing, versions, the data it was trained on, metrics, the operating point
and the intended use. :func:`load_bundle` rebuilds the network from those facts alone, so a model saved today
loads with a later covidxray; an ONNX export of it loads with no covidxray at all.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from covidxray.about import NOT_FOR_CLINICAL_USE, __version__
from covidxray.decision import (
    OperatingPointError,
    read_operating_points,
    rule_in_words,
    validate_operating_points,
)
from covidxray.preprocess import NewerPreprocessingError, Preprocessing

if TYPE_CHECKING:  # torch is imported where a network is built, so the ONNX path resolves models without it
    from covidxray.models.base import XRayNet

FORMAT = "covidxray-bundle"
FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
ONNX_FILE = "model.onnx"
ONNX_CONFIG_KEY = "covidxray.config"  # the whole config.json, as it was when the ONNX file was written
ONNX_CONFIG_HASH_KEY = "covidxray.config_sha256"  # config_digest() of that config
# config.json keys that do not change what a model outputs or decides: editing them leaves an export valid
INFORMATIONAL_KEYS = (
    "training",
    "data",
    "metrics",
    "versions",
    "created",
    "intended_use",
    "not_for_clinical_use",
)
BACKENDS = ("torch", "onnx")  # what runs a model: the bundle through PyTorch, or its ONNX export
DEFAULT_MODEL_DIR = Path(__file__).resolve().parent / "default_model"
INTENDED_USE = (
    "Research on chest X-ray classification (COVID-19 / pneumonia / normal) and on its failure modes, "
    "e.g. reproducing published CNN results and measuring cross-source generalisation. "
    "Not for screening, triage or diagnosis of any person."
)


class BundleError(ValueError):
    """A bundle that cannot be loaded, with what is wrong and what to do."""


class ModelLoadError(RuntimeError):
    """A model that cannot be found or loaded (CLI exit code 5), with what to do about it."""


@dataclass
class BundleConfig:
    """The facts in ``config.json``; unknown keys are kept in ``extra`` and written back unchanged."""

    architecture: str
    classes: list[str]
    preprocessing: Preprocessing
    architecture_kwargs: dict[str, Any] = field(default_factory=dict)
    num_outputs: int = 0
    training: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    operating_points: dict[str, dict[str, Any]] = field(default_factory=dict)
    decision: str | None = None
    guard: dict[str, Any] | None = None
    versions: dict[str, str] = field(default_factory=dict)
    created: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.num_outputs:
            self.num_outputs = len(self.classes)

    @property
    def operating_point(self) -> dict[str, Any] | None:
        """The deciding operating point (None: the label is the arg-max); see :mod:`covidxray.decision`."""
        return self.operating_points.get(self.decision) if self.decision else None

    @operating_point.setter
    def operating_point(self, point: dict[str, Any] | None) -> None:
        """Old single-point form: ``point`` becomes the only, deciding ``screening`` point (None clears)."""
        self.operating_points, self.decision = read_operating_points({"operating_point": point})

    def to_dict(self) -> dict[str, Any]:
        d = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "architecture": {
                "name": self.architecture,
                "kwargs": self.architecture_kwargs,
                "num_outputs": self.num_outputs,
                "in_channels": self.preprocessing.channels,
            },
            "classes": list(self.classes),
            "preprocessing": self.preprocessing.to_dict(),
            "network_data_format": {
                "input": {
                    "shape": [
                        -1,
                        self.preprocessing.channels,
                        self.preprocessing.image_size,
                        self.preprocessing.image_size,
                    ],
                    "dtype": "float32",
                    "value_range": [0, 1],
                    "description": "grayscale chest X-ray after covidxray.preprocess.Preprocessing (see 'preprocessing')",
                },
                "output": {
                    "shape": [-1, self.num_outputs],
                    "type": "logits"
                    + (" (one sigmoid output for the last class)" if self.num_outputs == 1 else ""),
                    "classes": list(self.classes),
                },
            },
            "training": self.training,
            "data": self.data,
            "metrics": self.metrics,
            "operating_points": self.operating_points,
            "decision": self.decision,
            "operating_point": self.operating_point,  # the deciding point, for readers before 'decision'
            "guard": self.guard,
            "versions": self.versions,
            "created": self.created,
            "intended_use": INTENDED_USE,
            "not_for_clinical_use": NOT_FOR_CLINICAL_USE,
        }
        d.update(self.extra)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "config.json") -> BundleConfig:
        if d.get("format") != FORMAT:
            raise BundleError(
                f"{source}: not a covidxray bundle (format={d.get('format')!r}, expected {FORMAT!r})"
            )
        version = d.get("format_version")
        if not isinstance(version, int) or version > FORMAT_VERSION or version < 1:
            raise BundleError(
                f"{source}: bundle format version {version!r} is not supported by covidxray {__version__}, "
                f"which reads format versions 1 to {FORMAT_VERSION}; "
                "upgrade covidxray, or load its ONNX export with onnxruntime"
            )
        arch = d["architecture"]
        try:
            preprocessing = Preprocessing.from_dict(d["preprocessing"])
        except NewerPreprocessingError as exc:
            raise BundleError(f"{source}: format version {version}: {exc}") from exc
        known = {
            "format",
            "format_version",
            "architecture",
            "classes",
            "preprocessing",
            "network_data_format",
            "training",
            "data",
            "metrics",
            "operating_point",
            "operating_points",
            "decision",
            "guard",
            "versions",
            "created",
            "intended_use",
            "not_for_clinical_use",
        }
        points, decision = read_operating_points(d)
        try:
            validate_operating_points(points, decision, list(d["classes"]))
        except OperatingPointError as exc:
            raise BundleError(f"{source}: {exc}") from exc
        return cls(
            architecture=arch["name"],
            architecture_kwargs=dict(arch.get("kwargs", {})),
            num_outputs=int(arch.get("num_outputs", len(d["classes"]))),
            classes=list(d["classes"]),
            preprocessing=preprocessing,
            training=d.get("training", {}),
            data=d.get("data", {}),
            metrics=d.get("metrics", {}),
            operating_points=points,
            decision=decision,
            guard=d.get("guard"),
            versions=d.get("versions", {}),
            created=d.get("created", ""),
            extra={k: v for k, v in d.items() if k not in known},
        )


@dataclass
class Bundle:
    model: XRayNet
    config: BundleConfig
    path: Path | None = None


def build_network(config: BundleConfig) -> XRayNet:
    from covidxray.models.base import XRayNet
    from covidxray.models.registry import create_model

    """An untrained network exactly as the config describes it."""
    net = create_model(
        config.architecture,
        num_classes=config.num_outputs,
        in_channels=config.preprocessing.channels,
        **config.architecture_kwargs,
    )
    return XRayNet(net, config.preprocessing.mean, config.preprocessing.std, config.num_outputs)


def _versions() -> dict[str, str]:
    import torch

    from covidxray.kernels import pinned_kernels

    out = {
        "covidxray": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        # the CPU kernels PyTorch picked (e.g. AVX2, AVX512): float results, hence trained weights, depend on it
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "machine": platform.machine(),
    }
    kernels = pinned_kernels()
    if kernels:  # only when pinned (covidxray --kernels avx2): a native run's config.json is as before
        out["kernels"] = kernels
    return out


def save_bundle(path: str | Path, model: XRayNet, config: BundleConfig) -> Path:
    from safetensors.torch import save_file

    """Write ``model.safetensors`` + ``config.json`` into the folder ``path`` (created if needed)."""
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    config.versions.update(_versions())
    config.created = config.created or _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tmp = out / (WEIGHTS_FILE + ".tmp")
    # one metadata key: safetensors writes its metadata map in a random order, so two keys made the same
    # weights give different file bytes (and a different weights_version) from one save to the next
    save_file(state, str(tmp), metadata={"format": FORMAT})  # the format version is in config.json
    tmp.replace(out / WEIGHTS_FILE)
    write_config(out, config)
    return out


def write_config(path: str | Path, config: BundleConfig) -> None:
    out = Path(path) / CONFIG_FILE
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(config.to_dict(), indent=2, default=str) + "\n")
    tmp.replace(out)


def read_config(path: str | Path) -> BundleConfig:
    p = Path(path)
    cfg_path = p / CONFIG_FILE if p.is_dir() else p
    if not cfg_path.exists():
        raise BundleError(f"{p}: no {CONFIG_FILE} here; a bundle is a folder written by 'covidxray train'")
    try:
        d = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as exc:
        raise BundleError(f"{cfg_path}: config is not valid JSON ({exc})") from exc
    return BundleConfig.from_dict(d, source=str(cfg_path))


def _read_weights(weights: Path, map_location: str) -> dict[str, Any]:
    """The tensors of ``model.safetensors``; a zero-byte, truncated or foreign file is a :class:`BundleError`."""
    from safetensors.torch import load_file

    size = weights.stat().st_size
    if size == 0:
        raise BundleError(
            f"{weights}: weights file is empty (0 bytes); the copy did not complete. "
            "Copy the bundle again or retrain it"
        )
    try:
        return load_file(str(weights), device=map_location)
    except Exception as exc:  # safetensors raises SafetensorError (not an OSError) for every malformed file
        raise BundleError(
            f"{weights}: not a readable safetensors weights file ({size:,} bytes; {type(exc).__name__}: {exc}). "
            "The file is truncated or corrupt, or is not the one 'covidxray train' wrote: "
            "copy the bundle again or retrain it"
        ) from exc


def load_bundle(path: str | Path, map_location: str = "cpu") -> Bundle:
    """Rebuild a saved model (no pickle): architecture from ``config.json``, weights from safetensors."""
    p = Path(path)
    if p.is_file() and p.name in (CONFIG_FILE, WEIGHTS_FILE):
        p = p.parent
    config = read_config(p)
    weights = p / WEIGHTS_FILE
    if not weights.exists():
        raise BundleError(f"{p}: {WEIGHTS_FILE} is missing; the bundle is incomplete")
    model = build_network(config)
    state = _read_weights(weights, map_location)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise BundleError(
            f"{weights}: weights do not match architecture {config.architecture!r} "
            f"(missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]})"
        )
    model.eval()
    return Bundle(model=model, config=config, path=p)


def update_bundle(path: str | Path, **changes: Any) -> BundleConfig:
    """Change fields of a saved bundle's config (e.g. ``operating_points``, ``guard``, ``metrics``).

    This and :func:`set_operating_points` are the functions that change a saved bundle: when it holds an ONNX
    export (``model.onnx``), its config metadata is rewritten too (:func:`refresh_onnx_metadata`), so both
    backends decide alike."""
    config = read_config(path)
    for k, v in changes.items():
        if not hasattr(config, k):
            raise AttributeError(f"BundleConfig has no field {k!r}")
        setattr(config, k, v)
    write_config(path, config)
    _refresh_export(path, config)
    return config


def _refresh_export(path: str | Path, config: BundleConfig) -> None:
    onnx_path = Path(path) / ONNX_FILE
    if onnx_path.is_file():
        refresh_onnx_metadata(onnx_path, config.to_dict())


def set_operating_points(
    path: str | Path, points: dict[str, dict[str, Any]], decision: str, keep_others: bool = False
) -> BundleConfig:
    """Store named operating points (e.g. from :func:`covidxray.evaluation.operating_point.choose_operating_points`)
    in the bundle at ``path`` and name the one that ``decision``-s the label.

    ``keep_others`` keeps stored points whose names are not in ``points``. Raises :class:`BundleError` when a
    point has no threshold in [0, 1], names a class the model lacks, or ``decision`` names no point. A
    ``model.onnx`` beside it gets the new points in its metadata (:func:`refresh_onnx_metadata`).
    """
    config = read_config(path)
    merged = {**config.operating_points, **points} if keep_others else dict(points)
    try:
        validate_operating_points(merged, decision, list(config.classes))
    except OperatingPointError as exc:
        raise BundleError(f"{path}: {exc}") from exc
    config.operating_points, config.decision = merged, decision
    write_config(path, config)
    _refresh_export(path, config)
    return config


# -- the ONNX export's copy of the config --------------------------------------------------------------------
def config_digest(config: dict[str, Any]) -> str:
    """SHA-256 of the parts of a config that change what a model outputs or decides (everything but
    :data:`INFORMATIONAL_KEYS`): classes, preprocessing, operating point(s), input guard, architecture."""
    return hashlib.sha256(json.dumps(_decisive(config), sort_keys=True, default=str).encode()).hexdigest()


def _decisive(config: dict[str, Any]) -> dict[str, Any]:
    """The config without :data:`INFORMATIONAL_KEYS`, its operating points in one form (old or current)."""
    kept = {k: v for k, v in config.items() if k not in (*INFORMATIONAL_KEYS, *_POINT_KEYS)}
    kept["operating_points"], kept["decision"] = read_operating_points(config)
    return kept


_POINT_KEYS = ("operating_point", "operating_points", "decision")


def config_differences(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """The decision-relevant top-level keys on which two configs differ."""
    a, b = _decisive(a), _decisive(b)
    dump = lambda d, k: json.dumps(d.get(k), sort_keys=True, default=str)  # noqa: E731
    return sorted(k for k in set(a) | set(b) if dump(a, k) != dump(b, k))


def onnx_config_metadata(config: dict[str, Any]) -> dict[str, str]:
    """The ONNX metadata that follows the config a bundle may change after export (the rest of the metadata
    is written once by ``covidxray export``)."""
    points, decision = read_operating_points(config)
    return {
        ONNX_CONFIG_KEY: json.dumps(config, default=str),
        ONNX_CONFIG_HASH_KEY: config_digest(config),
        "operating_point": json.dumps(points.get(decision) if decision else None, default=str),
        "operating_points": json.dumps(points, default=str),
        "decision": str(decision or ""),
        "decision_rule": rule_in_words(list(config["classes"]), points, decision),
    }


def refresh_onnx_metadata(onnx_path: str | Path, config: dict[str, Any]) -> None:
    """Rewrite an ONNX export's config metadata from ``config`` (the graph and weights are unchanged)."""
    import onnx

    path = Path(onnx_path)
    proto = onnx.load_model(str(path))
    new = onnx_config_metadata(config)
    props = {p.key: p.value for p in proto.metadata_props}
    props.update(new)
    del proto.metadata_props[:]
    for k, v in props.items():
        proto.metadata_props.add(key=k, value=v)
    tmp = path.with_name(path.name + ".tmp")
    onnx.save_model(proto, str(tmp))
    tmp.replace(path)


# -- finding a model -----------------------------------------------------------------------------------------
def _no_default_model() -> ModelLoadError:
    return ModelLoadError(
        f"no --model given and no default model is installed in {DEFAULT_MODEL_DIR}. Get one by training: "
        "'covidxray run' (manifest, training, evaluation), then pass the run with --model runs/<name>; "
        "or copy a bundle (config.json, model.safetensors) and its export "
        "('covidxray export --model runs/<name>', giving model.onnx) into that folder"
    )


def resolve_model_path(path: str | Path | None, backend: str = "torch") -> Path:
    """The bundle folder (torch) or ``.onnx`` file (onnx) meant by ``path``: a bundle folder, a training run
    folder (``<run>/model``), a bundle's ``config.json``, an ``.onnx`` file, or None for the shipped default.

    Raises :class:`ModelLoadError` saying what was expected when there is no such model."""
    if backend not in BACKENDS:
        raise ModelLoadError(f"backend must be one of {BACKENDS}, got {backend!r}")
    wanted = ONNX_FILE if backend == "onnx" else CONFIG_FILE
    if path is None:
        if not (DEFAULT_MODEL_DIR / wanted).exists():
            raise _no_default_model()
        p = DEFAULT_MODEL_DIR
    else:
        p = Path(path)
        if not p.exists():
            raise ModelLoadError(
                f"{p}: model path does not exist (expected a bundle folder, a run folder or a .onnx file)"
            )
    if p.is_file():
        if p.suffix == ".onnx":
            if backend != "onnx":
                raise ModelLoadError(
                    f"{p} is an ONNX file: use the onnx backend (--backend onnx), or pass the bundle"
                )
            return p
        if p.name not in (CONFIG_FILE, WEIGHTS_FILE):
            raise ModelLoadError(f"{p}: not a model (expected a bundle folder, a run folder or a .onnx file)")
        p = p.parent
    for cand in (p, p / "model"):
        if (cand / wanted).exists():
            return cand / ONNX_FILE if backend == "onnx" else cand
    if backend == "onnx" and any((c / CONFIG_FILE).exists() for c in (p, p / "model")):
        bundle = p if (p / CONFIG_FILE).exists() else p / "model"
        raise ModelLoadError(
            f"{bundle}: no {ONNX_FILE} in this bundle; export it with "
            f"'covidxray export --model {bundle}', or use --backend torch"
        )
    raise ModelLoadError(
        f"{p}: no model here (expected {CONFIG_FILE} + {WEIGHTS_FILE} in it or in {p / 'model'}); "
        "a bundle is the folder written by 'covidxray train'"
    )
