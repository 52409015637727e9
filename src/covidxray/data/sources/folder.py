"""Any folder-per-class tree: ``ROOT/<class>/*.png|jpg|dcm`` (sub-folders inside a class are read too).

Class folder names go through :data:`DEFAULT_LABEL_MAP` (case, spaces, ``-`` and ``_`` ignored) or a label map
file given with ``--label-map``: a YAML/JSON mapping or a two-column CSV ``folder,label`` whose label is
``covid``, ``normal``, ``pneumonia`` or ``pneumonia/<subtype>``, or ``ignore`` to leave the folder out.
Folders the map does not name are counted as ``unmapped:<folder>``. A tree is found without flags when it has two
class folders holding images, or one whose name is a known class (``covid/``, ``COVID-19/``, ``NORMAL/``,
``Viral Pneumonia/``, ``Lung_Opacity/``, ...): a hospital's single ``normal/`` folder is a collection too.

Patient ids: a CSV beside the class folders (e.g. ``patients.csv``) with an image column (``image``, ``file``,
``filename`` or ``path``: the file name or the path below the tree) and a patient column (``patient_id``,
``patient`` or ``patientid``) gives them, so splits keep a patient's images together. Without one the manifest
makes one pseudo-patient per duplicate group (and per image otherwise). Views are assumed frontal.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping
from pathlib import Path

import pandas as pd
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


IMAGE_COLUMNS = ("image", "file", "filename", "path", "image_path")
PATIENT_COLUMNS = ("patient_id", "patient", "patientid")


def detect(directory: Path) -> bool:
    """Two sub-folders holding images, or one named after a known class (see :data:`DEFAULT_LABEL_MAP`)."""
    classes = [d for d in directory.iterdir() if d.is_dir() and not d.name.startswith(".")]
    with_images = [d for d in classes if image_files(d, recursive=True)]
    return len(with_images) >= 2 or any(resolve_label(d.name)[0] for d in with_images)


def read_patient_ids(directory: Path) -> dict[str, str]:
    """{image path below ``directory`` or file name: patient id} from a CSV beside the class folders."""
    for path in sorted(directory.glob("*.csv")):
        try:
            frame = pd.read_csv(path, dtype=str)
        except (ValueError, UnicodeDecodeError, pd.errors.ParserError):
            continue
        cols = {normalise_name(c): c for c in frame.columns}
        image = next((cols[c] for c in map(normalise_name, IMAGE_COLUMNS) if c in cols), None)
        patient = next((cols[c] for c in map(normalise_name, PATIENT_COLUMNS) if c in cols), None)
        if image is None or patient is None:
            continue
        rows = frame[[image, patient]].dropna()
        return {str(k).strip().replace("\\", "/"): str(v).strip() for k, v in rows.itertuples(index=False)}
    return {}


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
    patients = read_patient_ids(directory)
    for class_dir in sorted(d for d in directory.iterdir() if d.is_dir() and not d.name.startswith(".")):
        files = image_files(class_dir, recursive=True)
        label, subtype = resolve_label(class_dir.name, label_map)
        if label is None:
            result.exclude(f"unmapped:{class_dir.name}", len(files))
            continue
        for path in files:
            rel = path.relative_to(directory).as_posix()
            pid = patients.get(rel) or patients.get(path.name)
            result.candidates.append(
                Candidate(
                    path=path,
                    label=label,
                    finding=class_dir.name,
                    subtype=subtype,
                    patient_id=f"{source}:{pid}"
                    if pid
                    else f"{source}:{Path(rel).with_suffix('').as_posix()}",
                    patient_known=pid is not None,
                )
            )
    return result
