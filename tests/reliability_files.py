"""Tiny hostile and unusual files the reliability tests make (no file ships with the tests)."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image

from conftest import dicom_bytes, xray_like


def bomb_png(width: int = 30000, height: int = 30000) -> bytes:
    """A valid, few-hundred-byte PNG whose header claims ``width`` x ``height`` 8-bit grey pixels."""
    raw = zlib.compress(b"\x00" * 64, 9)  # far too little data: a decoder must refuse before inflating it all

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", raw) + chunk(b"IEND", b"")


def big_png(side: int) -> bytes:
    """A highly compressible grey PNG of ``side`` x ``side`` px (kilobytes on disk, megapixels decoded)."""
    buf = io.BytesIO()
    Image.new("L", (side, side), 90).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def encode(pixels: np.ndarray, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format=fmt, **kw)
    return buf.getvalue()


def dicom(pixels: np.ndarray, patient: str = "Doe^Jane", preamble: bool = True) -> bytes:
    """A 12-bit MONOCHROME2 DICOM with a patient name and ID (for de-identification tests)."""
    from pydicom.uid import generate_uid

    tags = {
        "StudyInstanceUID": generate_uid(),
        "PatientName": patient,
        "PatientID": "MRN-123456",
        "PatientBirthDate": "19700101",
        "InstitutionName": "St Example Hospital",
        "ReferringPhysicianName": "House^Gregory",
    }
    return dicom_bytes(pixels, tags, preamble)


def every_format(size: int = 96) -> dict[str, bytes]:
    """One chest-X-ray-like image in every format folder mode must recognise, keyed by a file name."""
    px = xray_like(size)
    rgb = np.stack([px] * 3, axis=-1)
    px16 = px.astype(np.uint16) * 257
    return {
        "a.png": encode(px, "PNG"),
        "b.jpg": encode(px, "JPEG", quality=90),
        "c.jfif": encode(rgb, "JPEG", quality=90),
        "d.webp": encode(rgb, "WEBP", lossless=True),
        "e.gif": encode(px, "GIF"),
        "f.bmp": encode(px, "BMP"),
        "g.tif": encode(px, "TIFF"),
        "h16.tiff": encode(px16, "TIFF"),
        "IM000001": dicom(px),  # a PACS export: no extension
    }
