"""The JSON API's OpenAPI contract, fuzzed by schemathesis in-process (ASGI, no network port).

Schemathesis reads ``/openapi.json`` and generates requests from it -- schema-valid ones (which must be
accepted: 2xx) and schema-violating ones (which must be refused: 4xx) -- and checks every response against the
documented status codes, content types and models. So the test fails whenever the schema and the server
disagree. Uploads in valid requests are real chest X-rays from ../shared/data (PNG, JPEG, and the PNG's pixels
as DICOM), so every accepted request runs the shipped default model.

The same run against a live server: ``benchmarks/fuzz_api.py`` (sets ``COVIDXRAY_CONTRACT_URL``).
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest

schemathesis = pytest.importorskip("schemathesis")

from hypothesis import strategies as st  # noqa: E402
from PIL import Image  # noqa: E402

from conftest import DATA_ROOT, dicom_bytes  # noqa: E402
from covidxray.web.app import create_app  # noqa: E402
from covidxray.web.settings import WebSettings  # noqa: E402

# A small per-request file limit, so the fuzzer reaches it (maxItems) in a few hundred cases.
MAX_FILES = 3
# Per operation and phase; with the coverage phase's boundary cases this is a few hundred requests in all.
MAX_EXAMPLES = 60
SEED = 17
# Status codes a schema-violating request may be refused with: 413 for more than maxItems files, 415 for a body
# that is not multipart/form-data; 400 otherwise.
REJECTED = ["400", "413", "415", "422"]

CONFIG = schemathesis.Config.from_dict(
    {
        "seed": SEED,
        "generation": {
            "mode": "all",
            "max-examples": MAX_EXAMPLES,
            "deterministic": True,
            "database": "none",
        },
        "phases": {
            "examples": {"enabled": True},
            "coverage": {"enabled": True},
            "fuzzing": {"enabled": True},
        },
        "checks": {"enabled": True, "negative_data_rejection": {"expected-statuses": REJECTED}},
    }
)


def real_xrays(data_root: Path) -> list[bytes]:
    """Three real chest X-rays as upload bytes: a PNG, a JPEG and the PNG's pixels as a 12-bit DICOM."""
    png = data_root / "COVID-19_Radiography_Dataset" / "COVID" / "COVID-1003.png"
    jpeg = data_root / "chest_xray" / "test" / "NORMAL" / "IM-0001-0001.jpeg"
    pixels = np.asarray(Image.open(io.BytesIO(png.read_bytes())).convert("L"))
    return [png.read_bytes(), jpeg.read_bytes(), dicom_bytes(pixels)]


def load_contract() -> schemathesis.BaseSchema:
    """The contract as the server publishes it: in-process, or from ``COVIDXRAY_CONTRACT_URL`` if set."""
    if not (DATA_ROOT / "COVID-19_Radiography_Dataset").is_dir():
        pytest.skip(f"real data not found at {DATA_ROOT}", allow_module_level=True)
    # Binary parts of valid requests are real X-rays (schemathesis' default would be random bytes, which the
    # server rightly refuses with 415 -- the schema cannot say "a decodable chest X-ray").
    schemathesis.openapi.format("binary", st.sampled_from(real_xrays(DATA_ROOT)))
    url = os.environ.get("COVIDXRAY_CONTRACT_URL")
    if url:
        return schemathesis.openapi.from_url(url.rstrip("/") + "/openapi.json", config=CONFIG)
    settings = WebSettings(max_files=MAX_FILES, audit_db=None, workers=1)
    # Loading starts the app's lifespan once (the shipped default model); requests then run in-process.
    return schemathesis.openapi.from_asgi("/openapi.json", create_app(None, settings), config=CONFIG)


# Loaded at import: schemathesis.pytest.from_fixture does not work with pytest 9.2 (it reads a removed
# attribute, Node._nodeid).
schema = load_contract()


@schema.parametrize()
def test_api_contract(case):
    """Every generated request gets a response that the published schema allows, with all checks."""
    case.call_and_validate()
