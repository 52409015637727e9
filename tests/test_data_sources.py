"""Every layout adapter on a tiny tree made in tmp_path: detection, labels, patients, what is left out."""

from __future__ import annotations

from pathlib import Path

import pytest

from covidxray.data.sources import find_sources, scan_source
from covidxray.data.sources.cohen import map_finding
from covidxray.data.sources.folder import read_label_map
from test_data_trees import cohen_tree, kermany_tree, picture, radiography_tree, save

COHEN_ROWS = [
    ("1", "COVID-19", "PA", "X-ray", "a.jpg", "CC BY 4.0", True),
    ("1", "COVID-19, ARDS", "AP Supine", "X-ray", "b.jpg", "", True),
    ("2", "No Finding", "PA", "X-ray", "c.png", "CC BY-NC-SA", True),
    ("3", "Pneumonia/Viral/SARS", "AP", "X-ray", "d.jpg", "", True),
    ("4", "Streptococcus", "L", "X-ray", "e.jpg", "", True),
    ("5", "todo", "PA", "X-ray", "f.jpg", "", True),
    ("6", "ARDS", "PA", "X-ray", "g.jpg", "", True),
    ("7", "COVID-19", "Axial", "CT", "h.jpg", "", True),
    ("8", "COVID-19", "PA", "X-ray", "absent.jpg", "", False),
]


@pytest.mark.parametrize(
    "finding, expected",
    [
        ("COVID-19", ("covid", "")),
        ("COVID-19, ARDS", ("covid", "")),
        ("No Finding", ("normal", "")),
        ("SARS", ("pneumonia", "viral")),
        ("Pneumonia/Bacterial/Klebsiella", ("pneumonia", "bacterial")),
        ("Pneumocystis", ("pneumonia", "fungal")),
        ("Lipoid", ("pneumonia", "lipoid")),
        ("todo", (None, "")),
        ("ARDS", (None, "")),
    ],
)
def test_cohen_finding_to_label(finding, expected):
    assert map_finding(finding)[:2] == expected


def test_cohen_reader_keeps_xray_rows_and_rejects_missing_files(tmp_path: Path):
    cohen_tree(tmp_path, COHEN_ROWS)
    [source] = find_sources(tmp_path)
    assert (source.name, source.layout) == ("cohen", "cohen")
    scan = scan_source(source)
    by_name = {c.path.name: c for c in scan.candidates}
    assert sorted(by_name) == ["a.jpg", "b.jpg", "c.png", "d.jpg", "e.jpg"]
    assert by_name["b.jpg"].combined_finding and not by_name["a.jpg"].combined_finding
    assert by_name["c.png"].label == "normal" and by_name["c.png"].license == "CC BY-NC-SA"
    assert by_name["a.jpg"].patient_id == "cohen:1" and by_name["e.jpg"].view == "L"
    assert scan.excluded == {"modality:CT": 1, "unlabelled:todo": 1, "unmapped:ARDS": 1}
    assert [(Path(r.path).name, r.reason) for r in scan.rejects] == [("absent.jpg", "missing")]


def test_kermany_reader_parses_patients_and_subtypes(tmp_path: Path):
    kermany_tree(tmp_path)
    [source] = find_sources(tmp_path)
    scan = scan_source(source)
    got = {c.path.name: (c.label, c.subtype, c.patient_id, c.original_split) for c in scan.candidates}
    assert got["person1_bacteria_2.jpeg"] == ("pneumonia", "bacterial", "kermany:person1", "train")
    assert got["person9_virus_20.jpeg"] == ("pneumonia", "viral", "kermany:person9", "test")
    assert got["IM-0115-0001.jpeg"][2] == "kermany:IM-0115"
    assert got["NORMAL2-IM-0115-0001.jpeg"][2] == "kermany:NORMAL2-IM-0115"  # a separate numbering
    assert len({c.patient_id for c in scan.candidates}) == 7


def test_radiography_reader_maps_lung_opacity_to_pneumonia(tmp_path: Path):
    radiography_tree(tmp_path, {"COVID": 2, "Normal": 1, "Lung_Opacity": 1, "Viral Pneumonia": 1})
    [source] = find_sources(tmp_path)
    assert source.layout == "radiography"
    got = {c.path.name: (c.label, c.subtype, c.patient_known) for c in scan_source(source).candidates}
    assert got == {
        "COVID-1.png": ("covid", "", False),
        "COVID-2.png": ("covid", "", False),
        "Normal-1.png": ("normal", "", False),
        "Lung_Opacity-1.png": ("pneumonia", "lung_opacity", False),
        "Viral Pneumonia-1.png": ("pneumonia", "viral", False),
    }


def test_folder_reader_uses_the_label_map_and_counts_unmapped(tmp_path: Path):
    tree = tmp_path / "hospital"
    for k, folder in enumerate(["Covid-Positive", "healthy", "sick", "other"]):
        save(tree / folder / f"img{k}.png", picture(k))
    label_map_file = tmp_path / "map.csv"
    label_map_file.write_text("folder,label\nsick,pneumonia/bacterial\nother,ignore\n")
    label_map = read_label_map(label_map_file)
    [source] = find_sources(tree)
    scan = scan_source(source, label_map=label_map)
    got = {c.path.name: (c.label, c.subtype) for c in scan.candidates}
    assert got == {
        "img0.png": ("covid", ""),
        "img1.png": ("normal", ""),
        "img2.png": ("pneumonia", "bacterial"),
    }
    assert scan.excluded == {"unmapped:other": 1}


def test_label_map_rejects_unknown_labels(tmp_path: Path):
    bad = tmp_path / "map.yaml"
    bad.write_text("sick: flu\n")
    with pytest.raises(ValueError, match="flu"):
        read_label_map(bad)


def test_covidx_label_file(tmp_path: Path):
    d = tmp_path / "covidx"
    save(d / "train" / "x1.png", picture(1))
    save(d / "train" / "x2.png", picture(2))
    save(d / "test" / "y1.png", picture(3))
    (d / "train_split.txt").write_text(
        "p1 x1.png COVID-19 cohen\np2 x2.png normal rsna\np3 gone.png pneumonia rsna\np4 x2.png negative rsna\n"
    )
    (d / "test_split.txt").write_text("p9 y1.png pneumonia rsna\n")
    [source] = find_sources(tmp_path)
    assert source.layout == "covidx"
    scan = scan_source(source)
    got = {c.path.name: (c.label, c.patient_id, c.original_split, c.origin) for c in scan.candidates}
    assert got == {
        "x1.png": ("covid", "covidx:p1", "train", "cohen"),
        "x2.png": ("normal", "covidx:p2", "train", "rsna"),
        "y1.png": ("pneumonia", "covidx:p9", "test", "rsna"),
    }
    assert [(Path(r.path).name, r.reason) for r in scan.rejects] == [("gone.png", "missing")]


def test_a_root_of_several_collections_and_layout_override(tmp_path: Path):
    cohen_tree(tmp_path, COHEN_ROWS[:1])
    kermany_tree(tmp_path)
    radiography_tree(tmp_path)
    found = {s.name: s.layout for s in find_sources(tmp_path)}
    assert found == {"cohen": "cohen", "kermany": "kermany", "radiography": "radiography"}
    forced = {
        s.name: s.layout for s in find_sources(tmp_path, layouts={"COVID-19_Radiography_Dataset": "folder"})
    }
    assert forced["COVID-19_Radiography_Dataset"] == "folder"
    with pytest.raises(ValueError, match="unknown layout"):
        find_sources(tmp_path, layouts={"chest_xray": "nope"})
