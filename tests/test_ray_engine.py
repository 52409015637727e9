"""``covidxray predict --engine ray``: the local engine's rows from Ray Data, Parquet shards, --resume, URIs.

The Ray tests share one local Ray instance (``ray_local`` in conftest.py); the others need no Ray at all.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import xray_like
from covidxray.bundle import DEFAULT_MODEL_DIR, read_config
from covidxray.cli import main
from covidxray.prediction.batch import columns
from covidxray.prediction.predictor import load_predictor
from covidxray.prediction.ray_engine import (
    RUN_FILE,
    SHARD_PATTERN,
    list_uri_images,
    predict_paths,
    worker_cpus,
)

REAL = [  # (folder under ../shared/data, pattern, how many): PNG, JPEG of three collections
    ("COVID-19_Radiography_Dataset/COVID", "*.png", 4),
    ("COVID-19_Radiography_Dataset/Normal", "*.png", 3),
    ("chest_xray/test/PNEUMONIA", "*.jpeg", 3),
    ("chest_xray/test/NORMAL", "*.jpeg", 2),
    ("covid-chestxray-dataset/images", "*.jpg", 3),
]


def _bad_files(folder: Path) -> None:
    (folder / "empty.png").write_bytes(b"")
    (folder / "notes.jpg").write_text("not an image at all")
    Image.fromarray(xray_like(40)).save(folder / "thumbnail.png")  # smaller than the loader's minimum side
    good = folder / "good.png"
    Image.fromarray(xray_like(128, seed=3)).save(good)
    (folder / "truncated.png").write_bytes(good.read_bytes()[:400])


def _read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), list(reader)


def _same_rows(a: list[dict], b: list[dict], classes: list[str], tol: float = 1e-5) -> None:
    assert [r["path"] for r in a] == [r["path"] for r in b]
    for x, y in zip(a, b, strict=True):
        assert (x["label"], x["warnings"], x["error"]) == (y["label"], y["warnings"], y["error"]), x["path"]
        # the deciding operating point and its threshold survive the shards (they were lost before)
        assert (x["decided_by"], x["threshold"]) == (y["decided_by"], y["threshold"]), x["path"]
        for c in classes:
            px, py = x[f"p_{c}"], y[f"p_{c}"]
            assert (px == "") == (py == ""), x["path"]
            if px != "":
                assert abs(float(px) - float(py)) <= tol, (x["path"], c, px, py)


def test_importing_covidxray_and_the_local_engine_do_not_import_ray(tmp_path):
    Image.fromarray(xray_like(96)).save(tmp_path / "a.png")
    code = (
        "import sys\n"
        "from covidxray.cli import main, build_parser\n"
        "build_parser()\n"
        f"rc = main(['predict', '--images', {str(tmp_path)!r}, '--backend', 'onnx', '--no-progress', "
        f"'--out', {str(tmp_path / 'p.csv')!r}])\n"
        "assert rc == 0, rc\n"
        "loaded = sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.'))\n"
        "assert not loaded, loaded\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "p.csv").read_text().count("\n") == 2


def test_actors_split_the_cluster_when_workers_is_given_else_take_one_cpu_each():
    assert worker_cpus(None) == 1 and worker_cpus(None, None, 8) == 1  # one actor per CPU
    assert worker_cpus(None, 1, 2) == 2  # --workers 1 on 2 CPUs: the local engine's resources
    assert worker_cpus(None, 2, 2) == 1 and worker_cpus(None, 3, 8) == 2 and worker_cpus(None, 4, 2) == 1
    assert worker_cpus(0.5, 1, 2) == 0.5 and worker_cpus(4) == 4  # --cpus-per-worker C wins


def test_uris_are_listed_and_read_through_pyarrow_filesystems(tmp_path):
    for i in range(3):
        Image.fromarray(xray_like(96, seed=i)).save(tmp_path / f"x{i}.png")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "bad.png").write_text("text")
    (tmp_path / "readme.txt").write_text("not listed")
    uris = list_uri_images(f"file://{tmp_path}/")
    assert uris == [f"file://{tmp_path}/sub/bad.png", *(f"file://{tmp_path}/x{i}.png" for i in range(3))]
    predictor = load_predictor(None, backend="onnx")
    gone = f"file://{tmp_path}/gone.png"
    preds = predict_paths(predictor, [*uris, gone, str(tmp_path / "x0.png")])
    assert [p.path for p in preds] == [*uris, gone, str(tmp_path / "x0.png")]
    assert preds[0].error_reason == "not_an_image" and uris[0] in preds[0].error
    assert preds[4].error_reason == "missing" and gone in preds[4].error
    local = predictor.predict_batch([str(tmp_path / f"x{i}.png") for i in range(3)])
    for uri_pred, local_pred in zip(preds[1:4], local, strict=True):
        assert uri_pred.label == local_pred.label and uri_pred.probabilities == local_pred.probabilities
    assert preds[5].probabilities == local[0].probabilities


def test_ray_outputs_in_the_way_are_refused_before_ray_starts(tmp_path, capsys):
    Image.fromarray(xray_like(96)).save(tmp_path / "a.png")
    out = tmp_path / "p.csv"
    out.write_text("earlier run\n")
    argv = ["predict", "--engine", "ray", "--images", str(tmp_path / "a.png"), "--no-progress"]
    assert main([*argv, "--out", str(out)]) == 2
    assert "p.csv exists" in capsys.readouterr().err
    assert main([*argv, "--out", str(out), "--resume"]) == 2
    assert "nothing to resume" in capsys.readouterr().err
    stray = tmp_path / "shards"
    stray.mkdir()
    (stray / "keep.txt").write_text("someone's file")
    assert main([*argv, "--out", str(stray)]) == 2
    assert "not a covidxray Ray output" in capsys.readouterr().err
    assert out.read_text() == "earlier run\n" and (stray / "keep.txt").is_file()


@pytest.mark.e2e
def test_ray_engine_gives_the_local_rows_on_real_images_and_bad_files(data_root, ray_local, tmp_path, capsys):
    images = tmp_path / "images"
    images.mkdir()
    for folder, pattern, n in REAL:
        for src in sorted((data_root / folder).glob(pattern))[:n]:
            os.symlink(src, images / f"{folder.split('/')[0]}-{src.name}")
    _bad_files(images)
    common = ["predict", "--images", str(images), "--backend", "onnx", "--no-progress"]
    assert main([*common, "--out", str(tmp_path / "local.csv")]) == 0
    header, local = _read_csv(tmp_path / "local.csv")
    classes = ["covid", "normal", "pneumonia"]
    assert header == columns(classes) and len(local) == 15 + 5

    # --out DIR: Parquet shards of 7 rows (three), the local rows at full precision, bad files as rows
    import pyarrow.parquet as pq

    ray_args = [*common, "--engine", "ray", "--workers", "2", "--shard-size", "7"]
    shards = tmp_path / "shards"
    capsys.readouterr()
    assert main([*ray_args, "--out", str(shards)]) == 0
    err = capsys.readouterr().err
    assert "on Ray, 2 worker(s)" in err and "4 could not be read" in err
    parts = sorted(shards.glob("part-*.parquet"))
    assert [p.name for p in parts] == [SHARD_PATTERN.format(k) for k in range(3)] and (
        shards / RUN_FILE
    ).is_file()
    table = pq.read_table(parts).to_pydict()
    assert table["index"] == list(range(20)) and table["path"] == [r["path"] for r in local]
    assert table["label"] == [r["label"] or None for r in local]
    assert table["error"] == [r["error"] or None for r in local]
    for c in classes:
        got = np.array([np.nan if v is None else v for v in table[f"p_{c}"]])
        want = np.array([float(r[f"p_{c}"]) if r[f"p_{c}"] else np.nan for r in local])
        assert np.allclose(got, want, atol=1e-5, equal_nan=True)
    assert main([*ray_args, "--out", str(shards)]) == 2  # an earlier run is there: not without --resume
    assert "--resume" in capsys.readouterr().err
    too_many = [*common, "--engine", "ray", "--workers", "3", "--out", str(tmp_path / "x.csv")]
    assert main(too_many) == 2  # 3 actors of 1 CPU would wait forever on a 2-CPU Ray
    assert "needs 3 CPUs; the Ray cluster has 2" in capsys.readouterr().err
    assert not (tmp_path / "x.csv.parts").exists() and not (tmp_path / "x.csv").exists()

    # an interrupted run of --out ray.csv (its shards folder with one shard missing), resumed: only that shard
    # is predicted again, then all are merged into the file the local engine wrote
    work = tmp_path / "ray.csv.parts"
    shards.rename(work)
    (work / parts[1].name).unlink()
    assert main([*ray_args, "--out", str(tmp_path / "ray.csv"), "--resume"]) == 0
    assert "13 images in 2 shard(s) already written were skipped (--resume)" in capsys.readouterr().err
    assert not work.exists()  # merged, then removed
    ray_header, ray_rows = _read_csv(tmp_path / "ray.csv")
    assert ray_header == header
    _same_rows(local, ray_rows, classes)
    # the shipped model's deciding point, not argmax
    decided = {r["decided_by"] for r in ray_rows if r["label"]}
    assert decided == {read_config(DEFAULT_MODEL_DIR).decision}, decided
    errors = {Path(r["path"]).name: r["error"] for r in ray_rows if r["error"]}
    assert set(errors) == {"empty.png", "notes.jpg", "thumbnail.png", "truncated.png"}
    assert sum(1 for r in ray_rows if r["label"]) == 16
