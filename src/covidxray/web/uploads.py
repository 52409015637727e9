"""Reading uploaded X-rays safely: size limits enforced while the body streams in, type by content sniffing.

Starlette's form parser spools every uploaded file to disk with no size limit before a handler sees it, so
``POST /api/v1/predict`` parses its multipart body here instead: each file is held in memory and the request is
refused (413) the moment one file passes the limit, so at most ``max_files x max_upload`` bytes are ever held.
Client-supplied file names are only echoed in messages; nothing is written under them.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect

ACCEPTED_SUFFIXES = {
    ".png": "png",
    ".jpg": "jpeg",
    ".jpeg": "jpeg",
    ".jpe": "jpeg",
    ".dcm": "dicom",
    ".dicom": "dicom",
}
STORED_SUFFIX = {"png": ".png", "jpeg": ".jpg", "dicom": ".dcm"}
ACCEPTED_TYPES = "PNG, JPEG or DICOM"
REPEATED = "\x00"  # joins the values of a form field sent more than once (an array, in OpenAPI terms)
MAX_FIELD_BYTES = 1024  # plain form fields (e.g. explain=true) are tiny
MAX_FIELDS = 16


class UploadError(Exception):
    """A request or file the API refuses: HTTP status, a stable error code, and a message naming the file."""

    def __init__(self, status_code: int, error: str, message: str, file: str | None = None, hint: str = ""):
        super().__init__(message)
        self.status_code = status_code
        self.error = error
        self.message = message
        self.file = file
        self.hint = hint


@dataclass(frozen=True)
class Upload:
    """One uploaded file, in memory. ``filename`` is for messages only and is never used as a path."""

    filename: str
    data: bytes
    sha256: str
    kind: str  # "png" | "jpeg" | "dicom"


@dataclass
class _Part:
    headers: dict[bytes, bytes] = field(default_factory=dict)
    name: str = ""
    filename: str | None = None
    data: bytearray = field(default_factory=bytearray)


def display_name(raw: str) -> str:
    """A client file name made safe to echo: last path component, no control characters, at most 200 chars."""
    name = re.split(r"[\\/]", raw)[-1]
    name = "".join(ch for ch in name if ch.isprintable()).strip()
    return (name or "<unnamed>")[:200]


class _MultipartReader:
    """Callbacks for python-multipart's streaming parser that enforce the limits as bytes arrive."""

    def __init__(
        self, file_field: str, max_file_bytes: int, max_files: int, max_total_bytes: int | None = None
    ):
        self.file_field = file_field
        self.max_file_bytes = max_file_bytes
        self.max_files = max_files
        self.max_total_bytes = max_total_bytes
        self.total = 0
        self.files: list[tuple[str, bytes]] = []
        self.fields: dict[str, str] = {}
        self._part = _Part()
        self._header_name = b""
        self._header_value = b""
        self._n_files = 0
        self._n_fields = 0

    def callbacks(self) -> dict:
        return {
            "on_part_begin": self._on_part_begin,
            "on_part_data": self._on_part_data,
            "on_part_end": self._on_part_end,
            "on_header_field": self._on_header_field,
            "on_header_value": self._on_header_value,
            "on_header_end": self._on_header_end,
            "on_headers_finished": self._on_headers_finished,
        }

    def _on_part_begin(self) -> None:
        self._part = _Part()

    def _on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def _on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def _on_header_end(self) -> None:
        self._part.headers[self._header_name.lower()] = self._header_value
        self._header_name = self._header_value = b""

    def _on_headers_finished(self) -> None:
        _, options = parse_options_header(self._part.headers.get(b"content-disposition", b""))
        self._part.name = options.get(b"name", b"").decode("utf-8", "replace")
        if b"filename" in options:
            self._part.filename = display_name(options[b"filename"].decode("utf-8", "replace"))
            if self._part.name != self.file_field:
                raise UploadError(
                    400,
                    "bad_request",
                    f"{self._part.filename}: files go in the form field "
                    f"'{self.file_field}', not '{self._part.name}'",
                    self._part.filename,
                )
            self._n_files += 1
            if self._n_files > self.max_files:
                raise UploadError(
                    413,
                    "too_many_files",
                    f"{self._part.filename}: more than {self.max_files} files in one request",
                    self._part.filename,
                    "send the images in several requests",
                )
        else:
            self._n_fields += 1
            if self._n_fields > MAX_FIELDS:
                raise UploadError(400, "bad_request", f"more than {MAX_FIELDS} form fields in one request")

    def _on_part_data(self, data: bytes, start: int, end: int) -> None:
        part = self._part
        limit = self.max_file_bytes if part.filename is not None else MAX_FIELD_BYTES
        if len(part.data) + (end - start) > limit:
            if part.filename is None:
                raise UploadError(
                    400, "bad_request", f"form field '{part.name}' is longer than {limit} bytes"
                )
            raise UploadError(
                413,
                "too_large",
                f"{part.filename}: larger than the upload limit of {limit / 1024 / 1024:.3g} MB",
                part.filename,
                "send a smaller export of the image (a chest X-ray PNG is rarely above 10 MB)",
            )
        self.total += end - start
        if self.max_total_bytes is not None and self.total > self.max_total_bytes:
            raise UploadError(
                413,
                "too_large",
                f"{part.filename or part.name}: the request's files pass the limit of "
                f"{self.max_total_bytes / 1024 / 1024:.3g} MB in all",
                part.filename,
                "send the images in several requests",
            )
        part.data += data[start:end]

    def _on_part_end(self) -> None:
        part = self._part
        if part.filename is not None:
            self.files.append((part.filename, bytes(part.data)))
            part.data = bytearray()  # the copy above is the one kept
        else:
            value = part.data.decode("utf-8", "replace")
            if part.name in self.fields:  # a repeated field is an array: keep every value, joined by REPEATED
                value = self.fields[part.name] + REPEATED + value
            self.fields[part.name] = value


async def read_multipart(
    content_type: str,
    stream: AsyncIterator[bytes],
    *,
    file_field: str,
    max_file_bytes: int,
    max_files: int,
    max_total_bytes: int | None = None,
) -> tuple[list[tuple[str, bytes]], dict[str, str]]:
    """Parse a multipart/form-data body as it streams: ``([(display name, bytes), ...], {field: value})``.

    Raises :class:`UploadError` 413 as soon as a file passes ``max_file_bytes``, the files pass
    ``max_total_bytes`` in all, or there are more than ``max_files`` files; 415 if the body is not multipart,
    400 if it is malformed or the client went away before sending all of it.
    """
    mime, params = parse_options_header(content_type or "")
    if mime != b"multipart/form-data" or b"boundary" not in params:
        raise UploadError(
            415,
            "unsupported_media_type",
            f"the request body must be multipart/form-data with the images in the field '{file_field}', "
            f"got {content_type or 'no Content-Type'!r}",
        )
    reader = _MultipartReader(file_field, max_file_bytes, max_files, max_total_bytes)
    parser = MultipartParser(params[b"boundary"], reader.callbacks())
    try:
        async for chunk in stream:
            parser.write(chunk)
        parser.finalize()
    except FormParserError as exc:
        raise UploadError(400, "bad_request", f"malformed multipart body: {exc}") from exc
    except ClientDisconnect as exc:
        raise UploadError(400, "client_disconnected", "the client closed the connection mid-upload") from exc
    return reader.files, reader.fields


def sniff_kind(data: bytes) -> str | None:
    """The image type the bytes announce: "png", "jpeg", "dicom" (with its 128-byte preamble) or None."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if len(data) > 132 and data[128:132] == b"DICM":
        return "dicom"
    return None


def check_upload(filename: str, data: bytes) -> Upload:
    """Accept PNG, JPEG and DICOM by content and extension, else raise :class:`UploadError` 415.

    An empty file is left to the decoder (422). A DICOM file without the standard preamble is accepted on its
    ``.dcm`` extension, and the decoder decides.
    """
    suffix = os.path.splitext(filename)[1].lower()
    if suffix and suffix not in ACCEPTED_SUFFIXES:
        raise UploadError(
            415,
            "unsupported_media_type",
            f"{filename}: files ending in '{suffix}' are not accepted; send a {ACCEPTED_TYPES} image",
            filename,
            "accepted extensions: " + ", ".join(sorted(ACCEPTED_SUFFIXES)),
        )
    kind = sniff_kind(data)
    if kind is None and data:
        if ACCEPTED_SUFFIXES.get(suffix) == "dicom":
            kind = "dicom"
        else:
            raise UploadError(
                415,
                "unsupported_media_type",
                f"{filename}: the content is not a {ACCEPTED_TYPES} image (starts with {data[:8]!r})",
                filename,
                "check the file is an image and not e.g. an HTML page saved with an image extension",
            )
    return Upload(
        filename, data, hashlib.sha256(data).hexdigest(), kind or ACCEPTED_SUFFIXES.get(suffix, "png")
    )


def keep_upload(upload: Upload, folder: Path) -> Path:
    """Store an upload as ``folder/<sha256>.<ext>`` (atomic; an existing copy is kept as is)."""
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{upload.sha256}{STORED_SUFFIX[upload.kind]}"
    if not target.exists():
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".upload-", delete=False) as tmp:
            tmp.write(upload.data)
        Path(tmp.name).replace(target)
    return target
