"""The web app under hostile input and faults: decompression bombs and pixel caps (413 naming the limit), request
size, slow bodies and bounded concurrent uploads on a real uvicorn server, `serve` start-up checks and exit
codes, audit-log retention, bounded kept uploads with DICOMs de-identified."""

from __future__ import annotations

import datetime as dt
import io
import socket
import threading
import time
from contextlib import contextmanager

import httpx
import pytest
from fastapi.testclient import TestClient

from conftest import xray_like
from covidxray.cli import main
from covidxray.errors import EXIT_UNAVAILABLE, EXIT_USAGE
from covidxray.web.app import create_app
from covidxray.web.audit import AuditLog, AuditRecord
from covidxray.web.settings import WebSettings
from reliability_files import bomb_png, dicom, encode


@pytest.fixture(scope="module")
def predictor(tiny_bundle):
    from covidxray.prediction.predictor import load_predictor

    return load_predictor(tiny_bundle)


def _client(predictor, tmp_path, **settings) -> TestClient:
    settings.setdefault("audit_db", f"sqlite:///{tmp_path}/audit.sqlite")
    return TestClient(create_app(predictor, WebSettings(**settings)))


def _post(client, *files):
    return client.post(
        "/api/v1/predict", files=[("files", (name, data, "image/png")) for name, data in files]
    )


# -- 1 and 2: bombs and the pixel cap ------------------------------------------------------------------------------
def test_bomb_and_pixel_cap_are_413_json_naming_the_limit(predictor, tmp_path):
    good = encode(xray_like(300), "PNG")
    with _client(predictor, tmp_path, max_megapixels=0.05) as client:
        bomb = _post(client, ("bomb.png", bomb_png()))
        big = _post(client, ("ok.png", encode(xray_like(200), "PNG")), ("big.png", good))
        small = _post(client, ("ok.png", encode(xray_like(200), "PNG")))
    assert bomb.status_code == 413 and bomb.json()["error"] == "image_too_large"
    assert bomb.json()["file"] == "bomb.png" and "900 Mpx" in bomb.json()["message"]
    assert big.status_code == 413 and "above the limit of 0.05 Mpx" in big.json()["message"]
    assert big.json()["file"] == "big.png"
    assert small.status_code == 200
    assert AuditLog(f"sqlite:///{tmp_path}/audit.sqlite").count() == 1  # refused requests audit nothing


def test_request_total_is_bounded(predictor, tmp_path):
    png = encode(xray_like(300), "PNG")
    with _client(predictor, tmp_path, max_request_mb=len(png) * 2.5 / 1024 / 1024) as client:
        two = _post(client, ("a.png", png), ("b.png", png))
        three = _post(client, ("a.png", png), ("b.png", png), ("c.png", png))
    assert two.status_code == 200
    assert three.status_code == 413 and "in all" in three.json()["message"]


def test_images_of_a_request_are_decoded_one_at_a_time(predictor, tmp_path):
    """No two decoded images of one request are alive at once (the service drops each before the next)."""
    import gc
    import weakref

    from covidxray.web.service import PredictionService

    live: list[weakref.ref] = []
    most = 0
    real = PredictionService.decode

    def counting_decode(self, upload):
        nonlocal most
        gc.collect()
        img = real(self, upload)
        live.append(weakref.ref(img))
        most = max(most, sum(r() is not None for r in live))
        return img

    PredictionService.decode = counting_decode
    try:
        with _client(predictor, tmp_path) as client:
            r = _post(client, *[(f"{i}.png", encode(xray_like(200, seed=i), "PNG")) for i in range(4)])
    finally:
        PredictionService.decode = real
    assert r.status_code == 200 and len(r.json()["predictions"]) == 4
    assert most == 1


# -- 3: slow bodies on a real server -------------------------------------------------------------------------------
@contextmanager
def _server(predictor, tmp_path, **settings):
    import uvicorn

    settings.setdefault("audit_db", None)
    app = create_app(predictor, WebSettings(**settings))
    sock = socket.create_server(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    try:
        yield sock.getsockname()[1]
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


def _slow_client(port: int, declared: int = 19 * 1024 * 1024) -> socket.socket:
    """Headers and the first bytes of a big multipart body that never finishes."""
    s = socket.create_connection(("127.0.0.1", port))
    head = (
        "POST /api/v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=B\r\n"
        f"Content-Length: {declared}\r\n\r\n"
        '--B\r\nContent-Disposition: form-data; name="files"; filename="slow.png"\r\n\r\n'
    )
    s.sendall(head.encode() + b"\x89PNG\r\n\x1a\n" + b"\x00" * 4096)
    return s


def test_slow_body_gets_408_and_uploads_wait_for_a_slot(predictor, tmp_path):
    with _server(predictor, tmp_path, body_timeout_s=1.5, max_concurrent_uploads=1) as port:
        slow = _slow_client(port)
        time.sleep(0.3)
        start = time.monotonic()
        r = httpx.post(
            f"http://127.0.0.1:{port}/api/v1/predict",
            files={"files": ("ok.png", encode(xray_like(96), "PNG"), "image/png")},
            timeout=30,
        )
        waited = time.monotonic() - start
        slow.settimeout(10)
        answer = slow.recv(65536).decode("latin-1")
        rest = b""
        try:
            while chunk := slow.recv(65536):
                rest += chunk
        except OSError:
            pass
        slow.close()
    assert answer.startswith("HTTP/1.1 408") and "body_timeout" in answer and "within 1.5 s" in answer
    assert "connection: close" in answer.lower()  # the server hung up: nothing of that body is held
    assert r.status_code == 200 and waited >= 0.8  # it waited for the one upload slot the slow client held


# -- 7: serve start-up ---------------------------------------------------------------------------------------------
def test_serve_busy_port_bad_port_and_unusable_audit_db(tiny_bundle, tmp_path, capsys):
    busy = socket.create_server(("127.0.0.1", 0))
    port = busy.getsockname()[1]
    try:
        rc = main(["serve", "--model", str(tiny_bundle), "--port", str(port), "--audit-db", "none"])
    finally:
        busy.close()
    out = capsys.readouterr()
    assert rc == EXIT_UNAVAILABLE and f"cannot listen on 127.0.0.1:{port}" in out.err
    assert "serving on" not in out.out
    with pytest.raises(SystemExit) as exit_:
        main(["serve", "--port", "99999"])
    assert exit_.value.code == EXIT_USAGE and "port must be between 0 and 65535" in capsys.readouterr().err
    not_a_db = tmp_path / "audit.sqlite"
    not_a_db.write_bytes(b"this is not a database" * 100)
    for url in (f"sqlite:///{not_a_db}", "sqlite:////proc/covidxray-test/audit.sqlite"):
        rc = main(["serve", "--model", str(tiny_bundle), "--port", "0", "--audit-db", url])
        out = capsys.readouterr()
        assert rc == EXIT_UNAVAILABLE and "cannot be opened for writing" in out.err, out.err
        assert "serving on" not in out.out and "Traceback" not in out.err
    assert main(["serve", "--port", "0", "--audit-db", "not a url"]) == EXIT_USAGE


# -- 8: retention and kept uploads ---------------------------------------------------------------------------------
def test_audit_retention_by_days_and_rows(tmp_path):
    url = f"sqlite:///{tmp_path}/audit.sqlite"
    log = AuditLog(url)
    now = dt.datetime.now(dt.timezone.utc)
    log.record(
        AuditRecord(f"{i:064d}", "m", "normal", {}, time=now - dt.timedelta(days=i)) for i in range(9, -1, -1)
    )
    log.close()
    log = AuditLog(url, retention_days=4.5)  # opening applies the bound
    assert log.count() == 5
    log.max_rows = 2
    assert log.prune() == 3 and log.count() == 2
    assert {r.image_sha256 for r in log.recent()} == {f"{i:064d}" for i in (0, 1)}


def test_kept_uploads_are_bounded_and_dicoms_de_identified(predictor, tmp_path):
    import pydicom

    kept = tmp_path / "kept"
    dcm = dicom(xray_like(128), patient="Doe^Jane")
    assert b"Doe^Jane" in dcm
    pngs = [encode(xray_like(128, seed=i), "PNG") for i in range(4)]
    limit_mb = (len(pngs[0]) * 2.5) / 1024 / 1024
    with _client(predictor, tmp_path, keep_uploads=kept) as client:
        r = client.post("/api/v1/predict", files={"files": ("scan.dcm", dcm, "application/dicom")})
        assert r.status_code == 200
        sha = r.json()["predictions"][0]["sha256"]
        stored = (kept / f"{sha}.dcm").read_bytes()
    with _client(predictor, tmp_path, keep_uploads=kept, keep_uploads_max_mb=limit_mb) as client:
        for i, png in enumerate(pngs):
            assert _post(client, (f"{i}.png", png)).status_code == 200
            time.sleep(0.01)  # distinct modification times: oldest first
    assert b"Doe^Jane" not in stored and b"MRN-123456" not in stored and b"St Example" not in stored
    ds = pydicom.dcmread(io.BytesIO(stored))
    assert ds.PatientIdentityRemoved == "YES" and str(ds.PatientName) == "" and ds.Rows == 128
    total = sum(p.stat().st_size for p in kept.iterdir())
    assert total <= limit_mb * 1024 * 1024 and len(list(kept.iterdir())) == 2  # the newest two PNGs
