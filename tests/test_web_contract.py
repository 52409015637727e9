"""The JSON API's OpenAPI contract, fuzzed by schemathesis in-process (ASGI app, no network port).

Schemathesis reads ``/openapi.json`` and generates requests from it -- schema-valid ones, which must be
accepted (2xx), and schema-violating ones, which must be refused (4xx) -- and checks every response against the
documented status codes, content types, headers and models (all of its checks). So this test fails whenever the
schema and the server disagree. File parts of the requests are real chest X-rays from ../shared/data (a PNG, a
JPEG, and the PNG's pixels as DICOM), so every accepted request runs the shipped default model. The seed is
fixed and generation derandomized: CI runs the same ~175 requests every time.

The same run against a live server (``covidxray serve``, or any deployment): ``benchmarks/fuzz_api.py``, which
sets ``COVIDXRAY_CONTRACT_URL`` (and ``COVIDXRAY_CONTRACT_MAX_EXAMPLES`` / ``COVIDXRAY_CONTRACT_LOG``) and runs
this file.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
import schemathesis
from hypothesis import strategies as st
from PIL import Image
from schemathesis.checks import negative_data_rejection

from conftest import DATA_ROOT, dicom_bytes
from covidxray.web.app import create_app
from covidxray.web.settings import WebSettings

# A small per-request file limit for the in-process app, so the fuzzer reaches it (maxItems) quickly.
MAX_FILES = 2
# Per operation and phase. With the coverage phase's boundary cases: a few hundred requests, mostly
# Grad-CAM for the valid requests with explain=true.
MAX_EXAMPLES = int(os.environ.get("COVIDXRAY_CONTRACT_MAX_EXAMPLES", "200"))
SEED = 17
# How a schema-violating request may be refused: 413 for more files than maxItems, 415 for a body that is not
# multipart/form-data, 400 for the rest (422 is documented for undecodable images).
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
def test_api_contract(case: schemathesis.Case) -> None:
    """Every generated request gets a response that the published schema allows (all checks)."""
    response = case.call()
    log = os.environ.get("COVIDXRAY_CONTRACT_LOG")
    if log:  # one JSON line per request, for benchmarks/fuzz_api.py's summary
        meta = case.meta
        record = {
            "operation": f"{case.method} {case.path}",
            "phase": meta.phase.name.value if meta else None,
            "mode": meta.generation.mode.value if meta else None,
            "status": response.status_code,
            "seconds": round(response.elapsed, 4),
        }
        with open(log, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")
    if _same_bytes_as_a_valid_form(case):
        # multipart/form-data has no types: an array of 0 or 1 items is sent as no part or one plain part, the
        # same bytes as an absent or a scalar field, so the server cannot tell this "violation" from valid data.
        case.validate_response(response, excluded_checks=[negative_data_rejection])
    else:
        case.validate_response(response)


def _same_bytes_as_a_valid_form(case: schemathesis.Case) -> bool:
    """A schema-violating multipart body whose only violations are arrays of <= 1 valid item in scalar fields."""
    body = case.body if isinstance(case.body, dict) else None
    if not body or "files" not in body:
        return False
    explain = body.get("explain")
    if not isinstance(explain, list) or len(explain) > 1:
        return False
    return all(isinstance(v, bool) or str(v).strip().lower() in ("true", "false") for v in explain)
