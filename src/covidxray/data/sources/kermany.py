"""Kermany et al. (Cell 2018) pediatric chest X-rays: ``chest_xray/{train,test[,val]}/{NORMAL,PNEUMONIA}/``.

The file name gives the patient and, for pneumonia, the type: ``person1_bacteria_1.jpeg`` (patient ``person1``,
bacterial), ``person447_virus_921_1.jpeg``; normals are ``IM-0115-0001.jpeg`` (patient ``IM-0115``, also
``IM-0640-0001-0001.jpeg``) and ``NORMAL2-IM-1427-0001.jpeg`` (patient ``NORMAL2-IM-1427``: a separate numbering,
kept distinct from ``IM-1427``). The collection's own train/test folder is kept in ``original_split``; covidxray
makes its own patient-level split. The images are anterior-posterior chest radiographs (view ``AP``).
"""

from __future__ import annotations

import re
from pathlib import Path

from covidxray.data.sources.base import Candidate, SourceScan, image_files

NAME = "kermany"
SPLIT_FOLDERS = ("train", "val", "test")
CLASSES = {"NORMAL": "normal", "PNEUMONIA": "pneumonia"}
PERSON = re.compile(r"^(person\d+)_(bacteria|virus)_", re.IGNORECASE)
NORMAL_ID = re.compile(r"^((?:NORMAL\d+-)?IM-\d+)-", re.IGNORECASE)
SUBTYPES = {"bacteria": "bacterial", "virus": "viral"}


def detect(directory: Path) -> bool:
    return any((directory / s / c).is_dir() for s in SPLIT_FOLDERS for c in CLASSES)


def parse_name(name: str) -> tuple[str, str]:
    """File name -> (patient id without source prefix, pneumonia subtype or "")."""
    m = PERSON.match(name)
    if m:
        return m.group(1).lower(), SUBTYPES[m.group(2).lower()]
    m = NORMAL_ID.match(name)
    if m:
        return m.group(1).upper(), ""
    return Path(name).stem, ""  # unknown pattern: one patient per image


def scan(directory: Path, source: str = NAME) -> SourceScan:
    result = SourceScan(source, NAME, directory)
    for split in SPLIT_FOLDERS:
        for folder, label in CLASSES.items():
            for path in image_files(directory / split / folder):
                patient, subtype = parse_name(path.name)
                known = bool(PERSON.match(path.name) or NORMAL_ID.match(path.name))
                result.candidates.append(
                    Candidate(
                        path=path,
                        label=label,
                        finding=folder,
                        subtype=subtype,
                        patient_id=f"{source}:{patient}",
                        patient_known=known,
                        view="AP",
                        original_split=split,
                    )
                )
    return result
