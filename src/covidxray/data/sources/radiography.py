"""COVID-19 Radiography Database (Chowdhury et al. 2020, Rahman et al. 2021): one folder per class.

``COVID/``, ``Normal/``, ``Lung_Opacity/`` and ``Viral Pneumonia/``, images directly inside or in an ``images/``
sub-folder (the Kaggle release; its ``masks/`` are skipped). Lung_Opacity (RSNA adults with non-COVID lung
opacity) -> ``pneumonia`` with subtype ``lung_opacity``; Viral Pneumonia -> ``pneumonia``/``viral``. No patient
ids are given: the manifest makes one pseudo-patient per duplicate group (and per image otherwise).
"""

from __future__ import annotations

import re
from pathlib import Path

from covidxray.data.sources.base import Candidate, SourceScan, image_files

NAME = "radiography"
CLASSES = {  # folder -> (label, subtype)
    "COVID": ("covid", ""),
    "Normal": ("normal", ""),
    "Lung_Opacity": ("pneumonia", "lung_opacity"),
    "Viral Pneumonia": ("pneumonia", "viral"),
}
FILE_NAME = re.compile(r"^(COVID|Normal|Lung_Opacity|Viral Pneumonia)-\d+\.png$")


def detect(directory: Path) -> bool:
    """The distinctive class folders, or the database's own ``COVID-123.png`` file names."""
    if (directory / "Lung_Opacity").is_dir() or (directory / "Viral Pneumonia").is_dir():
        return True
    covid = directory / "COVID"
    files = image_files(covid / "images") or image_files(covid)
    return bool(files) and all(FILE_NAME.match(p.name) for p in files[:20])


def scan(directory: Path, source: str = NAME) -> SourceScan:
    result = SourceScan(source, NAME, directory)
    for folder, (label, subtype) in CLASSES.items():
        if not (directory / folder).is_dir():
            continue
        for path in image_files(directory / folder, recursive=True):
            result.candidates.append(
                Candidate(
                    path=path,
                    label=label,
                    finding=folder,
                    subtype=subtype,
                    patient_id=f"{source}:{path.stem}",
                    patient_known=False,
                )
            )
    return result
