"""Any folder-per-class tree: ``ROOT/<class>/*.png|jpg|dcm`` (sub-folders inside a class are read too).

Class folder names go through :data:`DEFAULT_LABEL_MAP` (case, spaces, ``-`` and ``_`` ignored) or a label map
file given with ``--label-map``: a YAML/JSON mapping or a two-column CSV ``folder,label`` whose label is
``covid``, ``normal``, ``pneumonia`` or ``pneumonia/<subtype>``, or ``ignore`` to leave the folder out.
Folders the map does not name are counted as ``unmapped:<folder>``. No patient ids are known: the manifest
makes one pseudo-patient per duplicate group (and per image otherwise). Views are assumed frontal.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping
from pathlib import Path

import yaml

from covidxray.data.sources.base import Candidate, SourceScan, image_files, normalise_name
from covidxray.vocabulary import LABELS

NAME = "folder"
IGNORE = "ignore"
DEFAULT_LABEL_MAP = {
    "covid": "covid",
    "covid19": "covid",
    "covidpositive": "covid",
    "normal": "normal",
    "healthy": "normal",
    "nofinding": "normal",
    "pneumonia": "pneumonia",
    "bacterialpneumonia": "pneumonia/bacterial",
    "viralpneumonia": "pneumonia/viral",
    "lungopacity": "pneumonia/lung_opacity",
}


def detect(directory: Path) -> bool:
    """At least two sub-folders holding images."""
    classes = [d for d in directory.iterdir() if d.is_dir() and not d.name.startswith(".")]
    return sum(1 for d in classes if image_files(d, recursive=True)) >= 2


def read_label_map(path: str | Path) -> dict[str, str]:
    """A label map file (YAML/JSON mapping or two-column CSV) -> {folder name: label[/subtype]}."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"label map {path} does not exist")
    if path.suffix.lower() == ".csv":
        with path.open(newline="") as fh:
            rows = [r for r in csv.reader(fh) if r and not r[0].startswith("#")]
        if rows and normalise_name(rows[0][0]) in ("folder", "class", "name"):
            rows = rows[1:]
        if any(len(r) < 2 for r in rows):
            raise ValueError(f"label map {path}: every line needs two columns, folder,label")
        mapping = {r[0].strip(): r[1].strip() for r in rows}
    else:
        mapping = yaml.safe_load(path.read_text())
        if not isinstance(mapping, Mapping):
            raise ValueError(f"label map {path} must be a mapping of folder name to label")
        mapping = {str(k): str(v) for k, v in mapping.items()}
    for folder, value in mapping.items():
        if value.partition("/")[0] not in LABELS and value != IGNORE:
            raise ValueError(
                f"label map {path}: {folder!r} -> {value!r}; expected one of {', '.join(LABELS)}, "
                f"<label>/<subtype> or {IGNORE!r}"
            )
    return mapping


def resolve_label(folder: str, label_map: Mapping[str, str] | None = None) -> tuple[str | None, str]:
    """Class folder name -> (label or None, subtype), the label map first, then the default table."""
    table = {normalise_name(k): v for k, v in DEFAULT_LABEL_MAP.items()}
    table.update({normalise_name(k): v for k, v in (label_map or {}).items()})
    value = table.get(normalise_name(folder))
    if value is None:
        return None, ""
    label, _, subtype = value.partition("/")
    return (label, subtype) if label in LABELS else (None, "")


def scan(directory: Path, source: str, label_map: Mapping[str, str] | None = None) -> SourceScan:
    result = SourceScan(source, NAME, directory)
    for class_dir in sorted(d for d in directory.iterdir() if d.is_dir() and not d.name.startswith(".")):
        files = image_files(class_dir, recursive=True)
        label, subtype = resolve_label(class_dir.name, label_map)
        if label is None:
            result.exclude(f"unmapped:{class_dir.name}", len(files))
            continue
        for path in files:
            result.candidates.append(
                Candidate(
                    path=path,
                    label=label,
                    finding=class_dir.name,
                    subtype=subtype,
                    patient_id=f"{source}:{path.relative_to(directory).with_suffix('').as_posix()}",
                    patient_known=False,
                )
            )
    return result
