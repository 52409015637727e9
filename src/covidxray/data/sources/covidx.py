"""COVIDx label files (Wang et al., COVID-Net): ``train*.txt`` / ``test*.txt`` next to ``train/`` and ``test/``.

Each line is ``patientid filename label source`` (older releases omit the source). ``COVID-19``/``positive`` ->
``covid``, ``normal`` -> ``normal``, ``pneumonia`` -> ``pneumonia``; other labels (e.g. ``negative``, which mixes
normal and pneumonia) are counted as ``unmapped``. The label file's split is kept in ``original_split`` and the
``source`` column (the collection COVIDx took the image from) in ``origin``; a listed file that is not there is a
``missing`` reject.
"""

from __future__ import annotations

from pathlib import Path

from covidxray.data.sources.base import Candidate, SourceScan
from covidxray.vocabulary import SPLITS

NAME = "covidx"
LABEL_MAP = {
    "covid-19": "covid",
    "covid": "covid",
    "positive": "covid",
    "normal": "normal",
    "pneumonia": "pneumonia",
}


def parse_line(line: str) -> tuple[str, str, str, str] | None:
    """``"pid file.png COVID-19 cohen"`` -> (pid, filename, label text, origin); None for a blank/odd line."""
    parts = line.split()
    if len(parts) >= 4:
        return parts[0], " ".join(parts[1:-2]), parts[-2], parts[-1]
    if len(parts) == 3:
        return parts[0], parts[1], parts[2], ""
    return None


def label_files(directory: Path) -> list[Path]:
    """The ``*.txt`` files whose first line reads as a COVIDx label line."""
    found = []
    for path in sorted(directory.glob("*.txt")):
        with path.open(errors="replace") as fh:
            first = next((line for line in fh if line.strip()), "")
        parsed = parse_line(first)
        if parsed and parsed[2].lower() in {*LABEL_MAP, "negative"}:
            found.append(path)
    return found


def detect(directory: Path) -> bool:
    return bool(label_files(directory))


def _split_of(label_file: Path) -> str:
    name = label_file.stem.lower()
    return next((s for s in SPLITS if s in name), "")


def _locate(directory: Path, split: str, filename: str) -> Path:
    folders = [directory / split] if split else []
    folders += [directory, *(directory / s for s in SPLITS if s != split)]
    for folder in folders:
        if (folder / filename).is_file():
            return folder / filename
    return folders[0] / filename


def scan(directory: Path, source: str = NAME) -> SourceScan:
    result = SourceScan(source, NAME, directory)
    seen: set[Path] = set()
    for label_file in label_files(directory):
        split = _split_of(label_file)
        for number, line in enumerate(label_file.read_text(errors="replace").splitlines(), 1):
            parsed = parse_line(line)
            if parsed is None:
                if line.strip():
                    result.reject(
                        label_file,
                        "bad_label_line",
                        f"line {number} is not 'patientid filename label source'",
                    )
                continue
            pid, filename, label_text, origin = parsed
            path = _locate(directory, split, filename)
            if not path.is_file():
                result.reject(
                    path, "missing", f"{label_file.name} line {number} names a file that is not there"
                )
                continue
            if path in seen:
                result.exclude("duplicate_row")
                continue
            seen.add(path)
            label = LABEL_MAP.get(label_text.lower())
            if label is None:
                result.exclude(f"unmapped:{label_text}")
                continue
            result.candidates.append(
                Candidate(
                    path=path,
                    label=label,
                    finding=label_text,
                    patient_id=f"{source}:{pid}",
                    original_split=split,
                    origin=origin,
                )
            )
    return result
