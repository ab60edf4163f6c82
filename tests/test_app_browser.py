"""Headless Chromium drives the standalone app: a short erasure on the toy world, end to end.

Needs Debian's `chromium` (/usr/bin/chromium, or $CE_CHROMIUM) and the `playwright` Python
package (used with that browser: `playwright install` is never needed), plus gradio; skips
with the reason otherwise.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from browser_support import CHROMIUM_ARGS, chromium_path, free_port, stop, wait_for_http
from test_app_ui import toy_model_dir

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def app(tmp_path):
    pytest.importorskip("gradio")
    model = toy_model_dir()
    if model is None:
        pytest.skip("the toy world model is not built yet (set CE_TOY_MODEL to a toy-world build's model/ folder)")
    port, out = free_port(), tmp_path / "out"
    env = dict(os.environ, OMP_NUM_THREADS="1", GRADIO_ANALYTICS_ENABLED="False", PYTHONPATH=str(ROOT))
    log = open(tmp_path / "app.log", "w")
    process = subprocess.Popen([sys.executable, "-m", "erasure_core.app", "--model", str(model), "--port", str(port),
                                "--out", str(out)], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for_http(f"http://127.0.0.1:{port}/", process, timeout=300)
        yield f"http://127.0.0.1:{port}/", out
    finally:
        stop(process)
        log.close()
        print((tmp_path / "app.log").read_text()[-3000:])


def test_short_erasure_in_the_browser(app, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (no browser download needed)")
    browser_path = chromium_path()
    if browser_path is None:
        pytest.skip("Chromium is not installed (apt-get install -y chromium)")
    url, out = app
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=browser_path, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1100})
            page.goto(url)
            page.get_by_label("dt", exact=True).check()  # the grid field left as the form shows it (0 = default)
            page.locator("#ce_concepts textarea").fill("circle")
            page.locator("#ce_preserve textarea").fill("a red solid square")
            page.locator("#ce_steps input").fill("3")
            page.locator("#ce_steps input").press("Tab")
            page.locator("#ce_run").click()

            status, progress_seen, deadline = "", set(), time.time() + 400
            while time.time() < deadline:
                text = page.evaluate("document.body.innerText")
                progress_seen |= {line.strip() for line in text.splitlines() if "step " in line and "/3" in line}
                progress_seen |= {line.strip() for line in text.splitlines() if "sampling the" in line}
                status = page.locator("#ce_status textarea").input_value()
                if status.startswith(("Done", "Error", "Cancelled", "Training")):
                    break
                time.sleep(0.1)
            page.screenshot(path=str(tmp_path / "app.png"), full_page=True)
            assert status.startswith("Done"), status
            assert progress_seen, "no progress was shown while the erasure ran"
            saved = Path(page.locator("#ce_saved textarea, #ce_saved input").first.input_value())
            assert saved.exists() and saved.suffix == ".safetensors" and out in saved.parents
            assert page.locator("#ce_gallery img").count() >= 10  # 5 prompts, before and after
            assert page.locator("#ce_gallery").inner_text().count("after ·") >= 1 or page.locator(
                "#ce_gallery img").count() >= 10
            assert page.locator("#ce_loss img").count() == 1
        finally:
            browser.close()
