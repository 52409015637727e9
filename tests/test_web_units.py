"""Web app parts without a model: streaming upload limits, type sniffing, kept uploads, the audit log, settings."""

from __future__ import annotations

import asyncio
import hashlib

import pytest

from covidxray.web.audit import AuditLog, AuditRecord
from covidxray.web.settings import WebSettings
from covidxray.web.uploads import (
    UploadError,
    check_upload,
    display_name,
    keep_upload,
    read_multipart,
    sniff_kind,
)

PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 64
JPEG = b"\xff\xd8\xff\xe0" + b"\0" * 64
DICOM = b"\0" * 128 + b"DICM" + b"\0" * 64
BOUNDARY = "testboundary"
CONTENT_TYPE = f"multipart/form-data; boundary={BOUNDARY}"


def _part(name: str, data: bytes, filename: str | None = None) -> bytes:
    disp = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
    return f"--{BOUNDARY}\r\nContent-Disposition: {disp}\r\n\r\n".encode() + data + b"\r\n"


def _body(*parts: bytes) -> bytes:
    return b"".join(parts) + f"--{BOUNDARY}--\r\n".encode()


async def _chunks(data: bytes, size: int = 1000):
    for i in range(0, len(data), size):
        yield data[i : i + size]


def _read(body_stream, content_type=CONTENT_TYPE, max_file_bytes=1000, max_files=4):
    return asyncio.run(
        read_multipart(
            content_type, body_stream, file_field="files", max_file_bytes=max_file_bytes, max_files=max_files
        )
    )


def test_read_multipart_files_and_fields():
    body = _body(_part("files", PNG, "a.png"), _part("explain", b"true"), _part("files", JPEG, "dir/b.jpg"))
    files, fields = _read(_chunks(body, 7))
    assert files == [("a.png", PNG), ("b.jpg", JPEG)]
    assert fields == {"explain": "true"}


def test_size_limit_is_enforced_while_streaming():
    """An endless upload is refused after about the limit: the reader never holds more than that."""
    consumed = 0

    async def endless():
        nonlocal consumed
        yield f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="files"; filename="huge.png"\r\n\r\n'.encode()
        while True:
            consumed += 4096
            yield b"\0" * 4096

    with pytest.raises(UploadError) as exc:
        _read(endless(), max_file_bytes=64 * 1024)
    assert exc.value.status_code == 413 and exc.value.file == "huge.png"
    assert "huge.png" in exc.value.message and "limit" in exc.value.message
    assert consumed <= 64 * 1024 + 4096


def test_too_many_files_is_413():
    body = _body(*(_part("files", PNG, f"{i}.png") for i in range(3)))
    with pytest.raises(UploadError) as exc:
        _read(_chunks(body), max_files=2)
    assert exc.value.status_code == 413 and exc.value.error == "too_many_files"


def test_not_multipart_is_415_and_wrong_field_is_400():
    with pytest.raises(UploadError) as exc:
        _read(_chunks(b"x=1"), content_type="application/x-www-form-urlencoded")
    assert exc.value.status_code == 415
    with pytest.raises(UploadError) as exc:
        _read(_chunks(_body(_part("image", PNG, "a.png"))))
    assert exc.value.status_code == 400 and "'files'" in exc.value.message


@pytest.mark.parametrize(
    ("data", "kind"), [(PNG, "png"), (JPEG, "jpeg"), (DICOM, "dicom"), (b"GIF89a....", None)]
)
def test_sniff_kind(data, kind):
    assert sniff_kind(data) == kind


def test_check_upload_accepts_by_content_and_refuses_others():
    assert check_upload("x.png", PNG).kind == "png"
    assert check_upload("x.png", JPEG).kind == "jpeg"  # mislabelled but an image: the content decides
    assert check_upload("scan", DICOM).kind == "dicom"
    assert (
        check_upload("raw.dcm", b"\x08\x00" * 80).kind == "dicom"
    )  # DICOM without preamble: the decoder decides
    assert check_upload("x.png", PNG).sha256 == hashlib.sha256(PNG).hexdigest()
    for name, data in [("notes.txt", b"hello"), ("x.gif", PNG), ("x.png", b"<html>not an image</html>")]:
        with pytest.raises(UploadError) as exc:
            check_upload(name, data)
        assert exc.value.status_code == 415 and exc.value.file == name and name in exc.value.message


def test_display_name_drops_paths_and_control_characters():
    assert display_name("C:\\Users\\x\\patient.png") == "patient.png"
    assert display_name("../../etc/passwd\n") == "passwd"
    assert display_name("") == "<unnamed>"


def test_keep_upload_stores_under_sha256(tmp_path):
    up = check_upload("../../evil name.png", PNG)
    path = keep_upload(up, tmp_path / "kept")
    assert path.name == f"{up.sha256}.png" and path.read_bytes() == PNG
    assert keep_upload(up, tmp_path / "kept") == path
    assert [p.name for p in (tmp_path / "kept").iterdir()] == [path.name]


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///{tmp}/sub/audit.sqlite"])
def test_audit_log_round_trip(tmp_path, url):
    log = AuditLog(url.format(tmp=tmp_path))
    log.record(
        [
            AuditRecord("a" * 64, "m@1", "covid", {"covid": 0.7, "normal": 0.3}, ["odd"]),
            AuditRecord("b" * 64, "m@1", "normal", {"covid": 0.2, "normal": 0.8}),
        ]
    )
    assert log.count() == 2
    latest = log.recent(1)[0]
    assert (latest.image_sha256, latest.label, latest.probabilities, latest.warnings) == (
        "b" * 64,
        "normal",
        {"covid": 0.2, "normal": 0.8},
        [],
    )
    assert latest.time is not None and latest.id == 2
    log.close()


def test_settings_validate():
    assert WebSettings(max_upload_mb=2).max_upload_bytes == 2 * 1024 * 1024
    assert WebSettings().workers >= 1 and WebSettings().torch_threads == 1
    for bad in (
        {"max_upload_mb": 0},
        {"max_files": 0},
        {"backend": "tf"},
        {"workers": 0},
        {"torch_threads": 0},
    ):
        with pytest.raises(ValueError):
            WebSettings(**bad)


def test_serve_options_parse_and_bad_values_exit_2(capsys):
    from covidxray.cli import build_parser, main
    from covidxray.errors import EXIT_USAGE

    argv = ["serve", "--model", "runs/m", "--port", "9001", "--max-upload-mb", "5", "--audit-db", "none",
            "--keep-uploads", "kept", "--workers", "3", "--threads", "2"]  # fmt: skip
    args = build_parser().parse_args(argv)
    assert (args.model, args.port, args.max_upload_mb, args.audit_db, str(args.keep_uploads)) == (
        "runs/m", 9001, 5.0, "none", "kept"
    )  # fmt: skip
    assert (args.workers, args.threads) == (3, 2)
    assert main(["serve", "--workers", "0", "--audit-db", "none"]) == EXIT_USAGE
    assert "workers must be at least 1" in capsys.readouterr().err
