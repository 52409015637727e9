"""covid-chestxray-dataset (Cohen, Morrison, Dao et al.): ``metadata.csv`` plus ``images/``.

Rows are filtered in this order, each step counted: CT and other non-X-ray modalities; X-ray rows whose file is
absent (listed as ``missing`` rejects); rows naming a file an earlier row already named (the collection
lists a few patients twice); findings without a label (``todo``, blank) or not a pneumonia label on their own
(``ARDS`` alone: a syndrome with many causes, so neither covid nor pneumonia).

Combined findings ("COVID-19, ARDS") are labelled by their pneumonia ("covid") and flagged ``combined_finding``:
an explicit ``labels`` selection keeps only single-finding rows, so ``views=["PA"], labels=["covid"]`` selects
exactly the seeds' rows (``finding == "COVID-19" and view == "PA"``, whose equality test left out the 11 PA
"COVID-19, ARDS" rows), less the rows whose file is absent.

Finding -> label: anything containing COVID-19 -> ``covid`` (so "COVID-19, ARDS" too); "No Finding" -> ``normal``;
the other pneumonias (SARS, MERS, Streptococcus, Pneumocystis, ..., and the "Pneumonia/Viral/SARS" forms of later
releases) -> ``pneumonia`` with a viral/bacterial/fungal/lipoid subtype.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from covidxray.data.sources.base import Candidate, SourceScan

NAME = "cohen"
UNLABELLED = {"", "todo", "unknown", "nan"}
NOT_A_LABEL = {"ards"}  # acute respiratory distress syndrome: a syndrome, not a pneumonia label by itself
SUBTYPE_KEYWORDS = (  # substring of a finding part -> pneumonia subtype; first match wins
    ("sars", "viral"),
    ("mers", "viral"),
    ("influenza", "viral"),
    ("varicella", "viral"),
    ("herpes", "viral"),
    ("viral", "viral"),
    ("streptococcus", "bacterial"),
    ("staphylococcus", "bacterial"),
    ("klebsiella", "bacterial"),
    ("legionella", "bacterial"),
    ("e.coli", "bacterial"),
    ("chlamydophila", "bacterial"),
    ("mycoplasma", "bacterial"),
    ("nocardia", "bacterial"),
    ("bacteri", "bacterial"),
    ("pneumocystis", "fungal"),
    ("aspergillosis", "fungal"),
    ("candida", "fungal"),
    ("histoplasmosis", "fungal"),
    ("fungal", "fungal"),
    ("lipoid", "lipoid"),
    ("pneumonia", ""),
)


def detect(directory: Path) -> bool:
    return (directory / "metadata.csv").is_file() and (directory / "images").is_dir()


def map_finding(finding: str) -> tuple[str | None, str, str]:
    """``finding`` -> (label or None, subtype, why it has no label: ``unlabelled`` or ``unmapped``)."""
    text = str(finding).strip()
    if text.lower() in UNLABELLED:
        return None, "", "unlabelled"
    if "covid-19" in text.lower():
        return "covid", "", ""
    # "Pneumonia/Viral/SARS" (later releases) and "COVID-19, ARDS" style combinations
    parts = [p.strip().lower() for chunk in text.split(",") for p in chunk.split("/") if p.strip()]
    if parts == ["no finding"]:
        return "normal", "", ""
    parts = [p for p in parts if p not in NOT_A_LABEL]
    for keyword, subtype in SUBTYPE_KEYWORDS:
        if any(keyword in p for p in reversed(parts)):
            return "pneumonia", subtype, ""
    return None, "", "unmapped"


def _text(value) -> str:
    return "" if pd.isna(value) else str(value).strip()


def scan(directory: Path, source: str = NAME) -> SourceScan:
    """Read ``metadata.csv``: one candidate per labelled X-ray row whose file exists."""
    result = SourceScan(source, NAME, directory)
    meta = pd.read_csv(directory / "metadata.csv", dtype=str, keep_default_na=False)
    seen: set[Path] = set()
    for row in meta.to_dict("records"):
        modality = _text(row.get("modality"))
        if modality != "X-ray":
            result.exclude(f"modality:{modality or 'unknown'}")
            continue
        folder = _text(row.get("folder")) or "images"
        path = directory / folder / _text(row.get("filename"))
        if not path.is_file():
            result.reject(
                path,
                "missing",
                f"metadata.csv row for patient {row.get('patientid')} names a file that is not there",
            )
            continue
        if path in seen:
            result.exclude("duplicate_row")
            continue
        seen.add(path)
        finding = _text(row.get("finding"))
        label, subtype, why = map_finding(finding)
        if label is None:
            result.exclude(f"{why}:{finding}")
            continue
        age = pd.to_numeric(_text(row.get("age")), errors="coerce")
        result.candidates.append(
            Candidate(
                path=path,
                label=label,
                finding=finding,
                subtype=subtype,
                patient_id=f"{source}:{_text(row.get('patientid'))}",
                combined_finding="," in finding,
                view=_text(row.get("view")) or "unknown",
                modality=modality,
                sex=_text(row.get("sex")),
                age=None if pd.isna(age) else float(age),
                license=_text(row.get("license")),
                doi=_text(row.get("doi")),
                url=_text(row.get("url")),
            )
        )
    return result
