"""One small adapter per collection layout, picked by detecting the layout (overridable with ``--layout``).

Each adapter module has ``detect(directory) -> bool`` and ``scan(directory, source, ...) -> SourceScan``.
A data root is either one collection or a folder of collections (one per sub-folder), e.g. ``../shared/data``
with ``covid-chestxray-dataset/`` (layout ``cohen``), ``chest_xray/`` (``kermany``) and
``COVID-19_Radiography_Dataset/`` (``radiography``). Known collections keep their layout's name as source name;
generic folder-per-class trees are named after their folder.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from covidxray.data.sources import cohen, covidx, folder, kermany, radiography
from covidxray.data.sources.base import Candidate, Reject, SourceScan
from covidxray.vocabulary import LABELS

LAYOUTS = {m.NAME: m for m in (cohen, kermany, radiography, folder, covidx)}
SPECIFIC = ("cohen", "covidx", "kermany", "radiography")  # detection order; "folder" is the fallback

__all__ = [
    "LABELS",
    "LAYOUTS",
    "Candidate",
    "Reject",
    "SourceDir",
    "SourceScan",
    "find_sources",
    "scan_source",
]


@dataclass(frozen=True)
class SourceDir:
    """A collection found under the data root: its source name, layout and folder."""

    name: str
    layout: str
    directory: Path


def detect_layout(directory: Path, allow_folder: bool = True) -> str | None:
    """The layout of ``directory``, or None when it looks like none of them."""
    for name in SPECIFIC:
        if LAYOUTS[name].detect(directory):
            return name
    return "folder" if allow_folder and folder.detect(directory) else None


def _source_name(layout: str, directory: Path, taken: set[str]) -> str:
    name = directory.name if layout == "folder" else layout
    return directory.name if name in taken else name


def find_sources(
    root: str | Path, layouts: Mapping[str, str] | None = None, sources: Iterable[str] | None = None
) -> list[SourceDir]:
    """The collections under ``root``. ``layouts`` maps a folder name to a layout, overriding detection;
    ``sources`` keeps only the named sources."""
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"data root {root} is not a folder")
    layouts = dict(layouts or {})
    for name, layout in layouts.items():
        if layout not in LAYOUTS:
            raise ValueError(f"unknown layout {layout!r} for {name!r}; choose from {', '.join(LAYOUTS)}")
    own = layouts.get(root.name) or layouts.get(".") or detect_layout(root, allow_folder=False)
    if own:
        found = [SourceDir(_source_name(own, root, set()), own, root)]
    else:
        found, taken = [], set()
        for sub in sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")):
            layout = layouts.get(sub.name) or detect_layout(sub)
            if layout:
                found.append(SourceDir(_source_name(layout, sub, taken), layout, sub))
                taken.add(found[-1].name)
        if not found and folder.detect(root):  # the root itself is one folder-per-class tree
            found = [SourceDir(root.resolve().name, "folder", root)]
    if not found:
        raise ValueError(f"no chest X-ray collection found under {root} (layouts: {', '.join(LAYOUTS)})")
    if sources is not None:
        wanted = set(sources)
        unknown = wanted - {s.name for s in found}
        if unknown:
            raise ValueError(
                f"source(s) {', '.join(sorted(unknown))} not found under {root}; "
                f"found {', '.join(s.name for s in found)}"
            )
        found = [s for s in found if s.name in wanted]
    return found


def scan_source(source: SourceDir, label_map: Mapping[str, str] | None = None) -> SourceScan:
    """Run the source's adapter: its candidate images, what it left out and its rejects."""
    module = LAYOUTS[source.layout]
    if source.layout == "folder":
        return module.scan(source.directory, source.name, label_map=label_map)
    return module.scan(source.directory, source.name)
