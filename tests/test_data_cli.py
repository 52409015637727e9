"""``covidxray data build | summary | credits | cache`` through the real command entry point."""

from __future__ import annotations

from pathlib import Path

from covidxray.cli import main
from covidxray.errors import EXIT_INPUT
from test_data_trees import cohen_tree, kermany_tree


def test_build_summary_credits_and_cache(tmp_path: Path, capsys):
    cohen_tree(tmp_path / "data", [
        ("1", "COVID-19", "PA", "X-ray", "a.jpg", "CC BY 4.0", True),
        ("2", "No Finding", "PA", "X-ray", "b.jpg", "", True),
        ("3", "COVID-19", "PA", "X-ray", "gone.jpg", "", False),
    ])  # fmt: skip
    kermany_tree(tmp_path / "data")
    out = tmp_path / "m.csv"
    assert main(["data", "build", "--root", str(tmp_path / "data"), "--out", str(out), "--workers", "1"]) == 0
    built = capsys.readouterr().out
    assert "10 images" in built and "rejects: 1 (missing 1)" in built and "kermany" in built
    assert main(["data", "summary", str(out)]) == 0
    assert capsys.readouterr().out == built
    assert main(["data", "credits", str(out)]) == 0
    credits = capsys.readouterr().out
    assert "Kermany DS" in credits and "1  CC BY 4.0" in credits and "1  unspecified" in credits
    assert main(["data", "cache", str(out), "--image-size", "32", "--cache-dir", str(tmp_path / "c")]) == 0
    assert "10 images of 32x32" in capsys.readouterr().out


def test_user_errors_exit_3_with_one_line(tmp_path: Path, capsys):
    assert (
        main(["data", "build", "--root", str(tmp_path / "nowhere"), "--out", str(tmp_path / "m.csv")])
        == EXIT_INPUT
    )
    assert "is not a folder" in capsys.readouterr().err
    assert main(["data", "summary", str(tmp_path / "none.csv")]) == EXIT_INPUT
    assert "manifest not found" in capsys.readouterr().err
