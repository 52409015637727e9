"""Where the images come from: each source's citation, address and licence, and per-image licences for
covid-chestxray-dataset (whose images come under many licences, some non-commercial)."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd


@dataclass(frozen=True)
class Credit:
    title: str
    citation: str
    url: str
    license: str


CREDITS = {
    "cohen": Credit(
        "COVID-19 image data collection (covid-chestxray-dataset)",
        "Cohen JP, Morrison P, Dao L, Roth K, Duong TQ, Ghassemi M. COVID-19 Image Data Collection: Prospective "
        "Predictions Are the Future. arXiv:2006.11988 (2020); also arXiv:2003.11597.",
        "https://github.com/ieee8023/covid-chestxray-dataset",
        "per image (the metadata.csv 'license' column, counted below); metadata CC BY-NC-SA 4.0",
    ),
    "kermany": Credit(
        "Labeled Optical Coherence Tomography (OCT) and Chest X-Ray Images for Classification",
        "Kermany DS, Goldbaum M, Cai W, et al. Identifying Medical Diagnoses and Treatable Diseases by "
        "Image-Based Deep Learning. Cell 172(5):1122-1131 (2018). doi:10.1016/j.cell.2018.02.010",
        "https://data.mendeley.com/datasets/rscbjbr9sj/2",
        "CC BY 4.0",
    ),
    "radiography": Credit(
        "COVID-19 Radiography Database",
        "Chowdhury MEH, Rahman T, Khandakar A, et al. Can AI help in screening Viral and COVID-19 pneumonia? "
        "IEEE Access 8:132665-132676 (2020); Rahman T, Khandakar A, Qiblawey Y, et al. Exploring the effect of "
        "image enhancement techniques on COVID-19 detection using chest X-ray images. Comput Biol Med 132:104319 "
        "(2021).",
        "https://www.kaggle.com/datasets/tawsifurrahman/covid19-radiography-database",
        "see the database's page; its images come from BIMCV, SIRM, RSNA, NIH and other collections with their "
        "own terms",
    ),
    "covidx": Credit(
        "COVIDx (COVID-Net)",
        "Wang L, Lin ZQ, Wong A. COVID-Net: a tailored deep convolutional neural network design for detection of "
        "COVID-19 cases from chest X-ray images. Sci Rep 10:19549 (2020).",
        "https://github.com/lindawangg/COVID-Net",
        "per source collection (see the COVIDx data description)",
    ),
}
UNKNOWN = Credit(
    "a local folder-per-class collection", "unknown: add its citation", "", "unknown: check before use"
)


def credit_for(source: str, layout: str | None = None) -> Credit:
    """The credit of a source by its name, else by its layout, else :data:`UNKNOWN`."""
    return CREDITS.get(source) or CREDITS.get(layout or "") or UNKNOWN


def license_counts(df: pd.DataFrame, source: str = "cohen") -> pd.Series:
    """Images per licence value of one source; blank licences count as ``unspecified``."""
    values = df.loc[df["source"] == source, "license"].fillna("").astype(str).str.strip()
    return values.replace("", "unspecified").value_counts()


def format_credits(df: pd.DataFrame, layouts: dict[str, str] | None = None) -> str:
    """The text printed by ``covidxray data credits``."""
    lines = [
        "Images in this manifest come from these collections (research use only, not for clinical use):",
        "",
    ]
    for source, n in df["source"].value_counts().sort_index().items():
        credit = credit_for(source, (layouts or {}).get(source))
        lines += [
            f"{source}: {n} images -- {credit.title}",
            f"  cite:    {credit.citation}",
            f"  url:     {credit.url or '-'}",
            f"  licence: {credit.license}",
        ]
        if credit is CREDITS["cohen"]:
            lines.append("  images per licence:")
            lines += [f"    {count:5d}  {lic}" for lic, count in license_counts(df, source).items()]
        lines.append("")
    return "\n".join(lines).rstrip()
