"""Make docs/app.png, the README's picture of the standalone app, after a short real erasure.

    nice -n 19 env OMP_NUM_THREADS=1 python docs/make_app_screenshot.py [--out docs/app.png] [--steps 150]

Starts `python -m erasure_core.app` (the built-in toy world) on a free port, drives it with
headless Chromium through playwright (Debian's `chromium`, or $CE_CHROMIUM: `playwright install`
is never needed): method `cg`, concept `circle`, alternative `square`, a few steps, the toy
world's judge ticked when the UI offers it; presses Erase, waits for the loss curve and the
before/after gallery, takes a full-page screenshot and stops the app. The picture is written
to a temporary file beside the target and renamed into place, so a failed run never leaves a
half-written docs/app.png.
"""
from __future__ import annotations

import argparse
import io
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DONE_PREFIXES = ("Done", "Error", "Cancelled", "Training")

sys.path.insert(0, str(ROOT / "tests"))
from browser_support import CHROMIUM_ARGS, chromium_path, free_port, stop, wait_for_http  # noqa: E402
sys.path.insert(0, str(ROOT))
from erasure_core.safe_files import atomic_path  # noqa: E402


def png_bytes(raw: bytes, max_bytes: int) -> bytes:
    """The screenshot as compact PNG: re-encoded with full compression, palette-reduced if still too big."""
    from PIL import Image

    image = Image.open(io.BytesIO(raw)).convert("RGB")
    buf = io.BytesIO()
    image.save(buf, "PNG", optimize=True)
    if buf.tell() <= max_bytes:
        return buf.getvalue()
    for colors in (256, 128, 64):
        buf = io.BytesIO()
        image.quantize(colors=colors, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(
            buf, "PNG", optimize=True)
        if buf.tell() <= max_bytes:
            break
    return buf.getvalue()


def drive(url: str, args) -> bytes:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium_path() or sys.exit(
            "Chromium is not installed (apt-get install -y chromium, or set CE_CHROMIUM)"), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": args.width, "height": args.height})
            page.set_default_timeout(60_000)
            page.goto(url)
            page.locator("#ce_run").wait_for(state="visible")
            page.get_by_label(args.method, exact=True).check()
            # choosing a method resets learning rate and group through an event: let it land first
            page.wait_for_timeout(1500)
            page.locator("#ce_concepts textarea").fill(args.concept)
            page.locator("#ce_alternative textarea, #ce_alternative input").first.fill(args.alternative)
            page.locator("#ce_steps input").fill(str(args.steps))
            page.locator("#ce_steps input").press("Tab")
            measure = page.locator("#ce_measure input[type=checkbox]")
            if args.judge and measure.count() and measure.first.is_visible():
                measure.first.check()
            elif args.judge:
                print("note: the judge checkbox is not offered by this UI; running without it", flush=True)
            page.wait_for_timeout(500)
            page.locator("#ce_run").click()

            status, deadline = "", time.time() + args.timeout
            while time.time() < deadline:
                status = page.locator("#ce_status textarea").input_value()
                if status.startswith(DONE_PREFIXES):
                    break
                page.wait_for_timeout(500)
            print(status, flush=True)
            if not status.startswith("Done"):
                raise RuntimeError(f"the erasure did not finish: {status!r}")

            # the loss curve and every gallery image actually loaded and shown
            page.locator("#ce_loss img").first.wait_for(state="visible")
            page.wait_for_function(
                """() => {
                    const imgs = [...document.querySelectorAll('#ce_loss img, #ce_gallery img')];
                    return imgs.length >= 3 && imgs.every(i => i.complete && i.naturalWidth > 0);
                }""")
            page.mouse.move(0, 0)  # no hover highlight in the picture
            page.evaluate("document.activeElement && document.activeElement.blur()")
            page.wait_for_timeout(1500)  # let gradio's progress overlays and transitions settle
            return page.screenshot(full_page=True, type="png")
        finally:
            browser.close()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(ROOT / "docs" / "app.png"))
    parser.add_argument("--method", default="cg")
    parser.add_argument("--concept", default="circle")
    parser.add_argument("--alternative", default="square")
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--no-judge", dest="judge", action="store_false", help="do not tick the judge checkbox")
    # 1536: the gallery's six columns need over 100 px each (gradio's minmax(100px, 1fr)), and
    # gradio caps the page at 1280 px below a 1536 px window, where the sixth column is cut off
    parser.add_argument("--width", type=int, default=1536)
    parser.add_argument("--height", type=int, default=900, help="viewport height (the shot is full-page)")
    parser.add_argument("--max-kb", type=int, default=400)
    parser.add_argument("--timeout", type=float, default=900, help="seconds to wait for the erasure")
    args = parser.parse_args(argv)

    target = Path(args.out).resolve()
    env = dict(os.environ, GRADIO_ANALYTICS_ENABLED="False")
    env.setdefault("OMP_NUM_THREADS", "1")
    with tempfile.TemporaryDirectory(prefix="ce_screenshot_") as tmp:
        # The app runs in the temporary folder, with the package linked in, so that the picture
        # shows the short relative paths a user sees (the toy model, concept_eraser_out/...) and
        # not this machine's folders; its results are thrown away with the folder.
        (Path(tmp) / "erasure_core").symlink_to(ROOT / "erasure_core", target_is_directory=True)
        port = free_port()
        log_path = Path(tmp) / "app.log"
        with open(log_path, "w") as log:
            process = subprocess.Popen([sys.executable, "-m", "erasure_core.app", "--port", str(port),
                                        "--model", "erasure_core/toyworld/assets/model",
                                        "--out", "concept_eraser_out"],
                                       cwd=tmp, env=env, stdout=log, stderr=subprocess.STDOUT)
            try:
                url = f"http://127.0.0.1:{port}/"
                wait_for_http(url, process, timeout=300)
                raw = drive(url, args)
            except Exception:
                print(log_path.read_text()[-3000:], file=sys.stderr)
                raise
            finally:
                stop(process)

    data = png_bytes(raw, args.max_kb * 1024)
    with atomic_path(target) as part:
        part.write_bytes(data)
        os.chmod(part, 0o644)
    print(f"wrote {target} ({len(data) // 1024} KB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
