"""End to end: ``covidxray serve`` as a real process on a free port, driven by headless Debian Chromium
(Playwright with ``executable_path``): upload real X-rays by keyboard and by drag and drop, see the class, the
probability bars and the Grad-CAM heatmap, and check the page on a phone-sized screen."""

from __future__ import annotations

import base64
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from covidxray.web.audit import AuditLog

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
]
DISPLAY = {"covid": "COVID-19", "normal": "Normal", "pneumonia": "Pneumonia"}

pytestmark = [
    pytest.mark.browser,
    pytest.mark.e2e,
    pytest.mark.skipif(
        not Path(CHROMIUM).exists(),
        reason=f"{CHROMIUM} is absent: install Debian's chromium (apt-get install -y chromium)",
    ),
]


OPERATING_POINTS = {
    "screening": {"class": "covid", "threshold": 0.05, "rule": "sensitivity>=0.95"},
    "balanced": {"class": "covid", "threshold": 0.5, "rule": "max min(sensitivity,specificity)"},
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _first_png(folder: Path) -> Path:
    path = next(iter(sorted(folder.glob("*.png"))), None)
    if path is None:
        pytest.skip(f"no PNG in {folder}")
    return path


@pytest.fixture()
def served(tiny_bundle: Path, tmp_path: Path) -> Iterator[tuple[str, str]]:
    """``covidxray serve`` in a subprocess on a free port; yields (base URL, audit DB URL)."""
    import shutil

    import httpx

    from covidxray.bundle import set_operating_points

    bundle = tmp_path / "bundle"  # with two operating points, the balanced one deciding
    shutil.copytree(tiny_bundle, bundle)
    set_operating_points(bundle, OPERATING_POINTS, "balanced")
    port = _free_port()
    audit = f"sqlite:///{tmp_path}/audit.sqlite"
    cmd = [sys.executable, "-m", "covidxray.cli", "serve", "--model", str(bundle), "--port", str(port),
           "--audit-db", audit, "--log-level", "warning"]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                pytest.fail(f"covidxray serve exited: {proc.stdout.read().decode()[-2000:]}")
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail("covidxray serve did not answer /healthz within 60 s")
            time.sleep(0.2)
        yield base, audit
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_browser_upload_shows_class_and_heatmap(served, data_root: Path):
    import httpx
    from playwright.sync_api import expect, sync_playwright

    base, audit = served
    covid = _first_png(data_root / "COVID-19_Radiography_Dataset" / "COVID")
    normal = _first_png(data_root / "COVID-19_Radiography_Dataset" / "Normal")
    answer = httpx.post(
        f"{base}/api/v1/predict?explain=true", files={"files": (covid.name, covid.read_bytes(), "image/png")}
    )
    first = answer.json()["predictions"][0]
    expected = DISPLAY[first["label"]]
    assert first["decision"]["point"] == "balanced" and first["decision"]["threshold"] == 0.5
    assert first["decision"]["probability"] == pytest.approx(first["probabilities"]["covid"])
    share = first["gradcam_lung_share"]

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 900})
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.on("requestfailed", lambda req: errors.append(f"request failed: {req.url}"))
            # Playwright turns file-chooser interception on without waiting for it: do it early, not at the key press.
            page.on("filechooser", lambda _chooser: None)
            page.goto(base)
            expect(page.locator("#notice")).to_contain_text("not be used for clinical diagnosis")
            expect(page.locator("#model-card")).to_contain_text("seed_cnn2")
            # a readable card, not a key dump: sentences under plain headings
            expect(page.locator("#model-card")).to_contain_text(
                "Sorts a chest X-ray into COVID-19, Normal, Pneumonia."
            )
            expect(page.locator("#model-card")).to_contain_text(
                "Outlined by the covidxray lung segmenter lung-unet@"
            )
            expect(page.locator("#model-card")).to_contain_text(
                "Lateral views are flagged by the covidxray view check view-cnn@"
            )
            expect(page.locator("#model-card")).to_contain_text("with the lung check")
            expect(page.locator("#model-card")).to_contain_text('Operating point "balanced"')
            expect(page.locator("#model-card")).to_contain_text("this one decides")
            assert "chosen_on" not in page.locator("#model-card").inner_text()

            # Keyboard only: Tab to the drop zone, press Enter, pick a real COVID-19 X-ray in the file chooser.
            for _ in range(5):
                page.keyboard.press("Tab")
                if page.evaluate("document.activeElement.id") == "dropzone":
                    break
            assert page.evaluate("document.activeElement.id") == "dropzone"
            with page.expect_file_chooser() as chooser:
                page.keyboard.press("Enter")
            chooser.value.set_files(str(covid))
            card = page.locator("article.result", has_text=covid.name)
            expect(card.locator(".prediction")).to_be_visible(timeout=30_000)
            expect(card.locator(".label")).to_contain_text(expected)
            # why: the deciding point and p(covid) beside its threshold
            p_covid = f"{100 * first['probabilities']['covid']:.1f}%"
            expect(card.locator(".why")).to_contain_text(
                f"{p_covid} {'≥' if first['decision']['met'] else '<'}"
            )
            expect(card.locator(".why")).to_contain_text("threshold 50.0% of the balanced operating point")
            expect(page.locator("#model-card")).to_contain_text(
                "chosen for max min(sensitivity,specificity) — this one decides"
            )
            expect(card.locator(".bar-row")).to_have_count(3)
            expect(card.locator(".card-notice")).to_be_visible()
            assert card.locator(".preview").evaluate("img => img.complete && img.naturalWidth") > 0
            # lung outline on the X-ray (cyan pixels in the preview), the lung facts, the heatmap's in-lung share
            expect(card.locator(".lungs")).to_contain_text("Lung fields: 2 regions covering")
            expect(card.locator(".lung-share")).to_contain_text(
                "of the heatmap lies inside the lung fields" if share is not None else "The heatmap is empty"
            )  # the tiny random-weight model's Grad-CAM is flat; test_segmentation measures a real share
            cyan = card.locator(".preview").evaluate(
                """img => { const c = document.createElement("canvas"); c.width = img.naturalWidth;
                   c.height = img.naturalHeight; const g = c.getContext("2d"); g.drawImage(img, 0, 0);
                   const d = g.getImageData(0, 0, c.width, c.height).data; let n = 0;
                   for (let i = 0; i < d.length; i += 4) if (d[i] < 40 && d[i + 1] > 200 && d[i + 2] > 200) n++;
                   return n; }"""
            )
            assert cyan > 100

            # The Grad-CAM overlay replaces the X-ray when toggled (by keyboard), and is a decoded image.
            expect(card.locator(".heatmap")).to_be_hidden()
            card.locator(".toggle").focus()
            page.keyboard.press("Enter")
            expect(card.locator(".toggle")).to_have_attribute("aria-pressed", "true")
            expect(card.locator(".heatmap")).to_be_visible()
            expect(card.locator(".preview")).to_be_hidden()
            assert card.locator(".heatmap").evaluate("img => img.naturalWidth") == 512
            card.locator(".toggle").click()
            expect(card.locator(".preview")).to_be_visible()

            # Drag and drop a second real X-ray onto the drop zone.
            page.evaluate(
                """([b64, name]) => {
                    const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
                    const dt = new DataTransfer();
                    dt.items.add(new File([bytes], name, {type: "image/png"}));
                    document.querySelector("#dropzone").dispatchEvent(
                        new DragEvent("drop", {dataTransfer: dt, bubbles: true, cancelable: true}));
                }""",
                [base64.b64encode(normal.read_bytes()).decode(), normal.name],
            )
            dropped = page.locator("article.result", has_text=normal.name)
            expect(dropped.locator(".prediction")).to_be_visible(timeout=30_000)
            expect(dropped.locator(".toggle")).to_be_visible()

            # A phone: no sideways scrolling, and the notice stays on screen at the bottom of the page.
            page.set_viewport_size({"width": 390, "height": 844})
            assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
            page.evaluate("window.scrollTo(0, document.body.scrollHeight)")
            expect(page.locator("#notice")).to_be_in_viewport()
            assert errors == []
        finally:
            browser.close()

    assert AuditLog(audit).count() == 3  # the API call and the two uploads from the page
