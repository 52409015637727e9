"""What every layout adapter returns: the candidate images of one collection, what it left out and why."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from covidxray.imageio import IMAGE_SUFFIXES


@dataclass
class Candidate:
    """One image a collection offers, with its label and metadata, before the file is opened.

    ``patient_known`` is False when the collection gives no patient id: the manifest then makes one
    pseudo-patient per duplicate group (and per image otherwise).
    ``combined_finding`` marks findings that name more than one condition ("COVID-19, ARDS"): they count for
    their label by default, but an explicit ``labels`` selection keeps single-finding rows only.
    """

    path: Path
    label: str
    finding: str
    patient_id: str
    patient_known: bool = True
    subtype: str = ""
    view: str = "frontal"
    modality: str = "X-ray"
    sex: str = ""
    age: float | None = None
    license: str = ""
    doi: str = ""
    url: str = ""
    original_split: str = ""
    origin: str = ""
    combined_finding: bool = False  # e.g. "COVID-19, ARDS": an explicit labels selection leaves it out


@dataclass
class Reject:
    """A file or metadata row that cannot be used, with a reason code and a human-readable detail."""

    path: str
    source: str
    reason: str
    detail: str


@dataclass
class SourceScan:
    """A collection's candidates, the counts of what it left out (by reason) and its rejects."""

    source: str
    layout: str
    directory: Path
    candidates: list[Candidate] = field(default_factory=list)
    excluded: Counter = field(default_factory=Counter)
    rejects: list[Reject] = field(default_factory=list)

    def exclude(self, reason: str, n: int = 1) -> None:
        self.excluded[reason] += n

    def reject(self, path: Path | str, reason: str, detail: str) -> None:
        self.rejects.append(Reject(str(path), self.source, reason, detail))


def image_files(directory: Path, recursive: bool = False) -> list[Path]:
    """Image files (by suffix) in ``directory``, sorted; hidden files and ``masks`` folders are skipped."""
    pattern = "**/*" if recursive else "*"
    files = [
        p
        for p in directory.glob(pattern)
        if p.suffix.lower() in IMAGE_SUFFIXES
        and p.is_file()
        and not any(
            part.startswith(".") or part.lower() == "masks" for part in p.relative_to(directory).parts
        )
    ]
    return sorted(files)


def normalise_name(name: str) -> str:
    """``"Viral Pneumonia"``, ``"viral_pneumonia"`` and ``"VIRAL-PNEUMONIA"`` all become ``"viralpneumonia"``."""
    return "".join(ch for ch in name.lower() if ch.isalnum())
