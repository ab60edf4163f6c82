"""The tab inside a real webui: Automatic1111 v1.10.1 and Forge (dfdcbab), on the CPU, with a full-size SD1.5
checkpoint of random weights made here.

The webui is built by `tests/webui/setup_webui.sh KIND .webui/KIND` from its own requirements_versions.txt
(.ci/run does that); the extension is copied into extensions/ as a user's clone and the webui starts without
--skip-install, so it runs install.py. Checked: install.py moves no package the webui has (pip freeze before and
after the start); a short cg erasure driven from the tab in headless Chromium goes through the webui's job queue
(a txt2img sent meanwhile waits for it) and writes one LoRA into models/Lora with the keys and metadata the
webui's Lora list reads (/sdapi/v1/loras lists it); txt2img with `<lora:NAME:1>` changes the image and
`<lora:NAME:0>` does not; the webui's Interrupt stops an erasure while it samples, before training. Then the same
erasure from an SDXL checkpoint of random weights (tests/webui/sdxl_checkpoint.py: SDXL's full-size text encoders;
for A1111 a narrow UNet described by the .yaml beside it, for Forge SDXL base's own UNet) writes kohya's SDXL
layout, which the webui lists and applies.
Random weights cannot show that a concept is gone (the toy world's judge measures that elsewhere); this checks
the integration. Without a built webui, Chromium or playwright the tests skip, saying which.
"""
from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from browser_support import CHROMIUM_ARGS, chromium_path, free_port
from webui_process import (KINDS, REPO, built, forget_checkpoint, install_extension, moved_packages, pip_freeze,
                           start, stop)

pytestmark = pytest.mark.slow
SD1_FINGERPRINT = "a558eacf71fca10b"  # erasure_core.backends.webui.sd1_fingerprint(), pinned by test_layers.py
DONE = ("Done", "Error", "Cancelled", "Training diverged", "An erasure")


@pytest.fixture(scope="module", params=KINDS)
def webui(request, tmp_path_factory):
    kind = request.param
    dest = built(kind)
    if dest is None:
        pytest.skip(f"no {kind} webui built (run: tests/webui/setup_webui.sh {kind} .webui/{kind})")
    if chromium_path() is None:
        pytest.skip("Chromium is not installed (apt-get install -y chromium)")
    pytest.importorskip("playwright.sync_api", reason="pip install playwright (no browser download needed)")
    folder = dest / "webui"
    for generated in ("models/Lora", "outputs"):
        shutil.rmtree(folder / generated, ignore_errors=True)
    install_extension(folder)
    forget_checkpoint(folder)
    checkpoint = folder / "models" / "Stable-diffusion" / "random-sd15.safetensors"
    if not checkpoint.exists():  # the webui makes its models folders at its first start
        checkpoint.parent.mkdir(parents=True, exist_ok=True)
        write_checkpoint("sd15_checkpoint.py", str(checkpoint))
    before = pip_freeze(dest)
    log = tmp_path_factory.mktemp(f"{kind}_log") / "webui.log"
    t0 = time.time()
    server = start(kind, dest, free_port(), log)
    print(f"{kind}: webui up in {time.time() - t0:.0f} s")
    server.freeze_before, server.freeze_after = before, pip_freeze(dest)
    server.post("/sdapi/v1/options", {"sd_model_checkpoint": checkpoint.name})  # the SDXL test adds another
    yield server
    stop(server)
    print(f"--- {kind} webui log (end) ---\n{server.log()[-6000:]}")


def write_checkpoint(script: str, *args: str) -> None:
    """Run one of this folder's checkpoint writers, with the ComfyUI of tests/comfy_setup.sh for the layer shapes."""
    env = dict(os.environ, COMFYUI_DIR=os.environ.get("COMFYUI_DIR", str(REPO / ".comfyui")))
    subprocess.run([sys.executable, str(Path(__file__).parent / script), *args], check=True, env=env, cwd=REPO)


def test_install_moves_nothing_the_webui_has(webui):
    moved = moved_packages(webui.freeze_before, webui.freeze_after)
    assert not moved, f"install.py changed packages the webui had: {moved}"
    added = sorted(set(webui.freeze_after) - set(webui.freeze_before))
    print(f"{webui.kind}: install.py added {added}")
    assert "Concept Eraser: `from" not in webui.log(), "install.py reported a package that does not import"
    assert "Error loading script: concept_eraser_tab.py" not in webui.log()
    for package in ("diffusers", "peft"):
        assert package in webui.freeze_after


def open_tab(page, url: str) -> None:
    page.goto(url, timeout=600_000)
    page.wait_for_selector("#ce_run", state="attached", timeout=600_000)
    page.locator("#tabs .tab-nav button, #tabs [role=tab]").filter(has_text="Concept Eraser").first.click()
    page.wait_for_selector("#ce_run", state="visible", timeout=60_000)


def fill(page, elem_id: str, value) -> None:
    field = page.locator(f"#{elem_id} input, #{elem_id} textarea").first
    field.fill(str(value))
    field.press("Tab")  # gradio 3 commits a Number on blur


def start_erasure(page, steps: int, report_steps: int) -> None:
    page.locator("#ce_method").get_by_label("cg", exact=True).check()
    page.wait_for_function("document.querySelector('#ce_lr input').value == '0.0005'")  # the method's defaults
    fill(page, "ce_concepts", "a dog")
    for elem_id, value in (("ce_steps", steps), ("ce_lr", 1e-3), ("ce_rank", 4), ("ce_batch_size", 2),
                           ("ce_image_size", 64), ("ce_sample_steps", 1), ("ce_report_size", 64),
                           ("ce_report_steps", report_steps)):
        fill(page, elem_id, value)
    page.locator("#ce_run").click()


def status_of(page) -> str:
    return page.locator("#ce_status textarea").input_value()


def watch(page, webui, until: float, on_job=None) -> tuple[str, set[str], float, int]:
    """Poll the tab and the webui's progress API until the status says the run ended; returns the status,
    every progress text seen (page and API), when the webui last reported the erasure as its job, and the
    webui process's peak resident memory meanwhile."""
    import psutil

    seen, last_job, peak = set(), 0.0, 0
    process = psutil.Process(webui.process.pid)
    while time.time() < until:
        peak = max(peak, process.memory_info().rss)
        state = webui.get("/sdapi/v1/progress?skip_current_image=true", timeout=30)
        if state["state"]["job"] == "Concept Eraser":
            last_job = time.time()
            seen.add(f"api: {state['textinfo']}")
            if on_job is not None:
                on_job()
        text = page.evaluate("document.querySelector('#tab_concept_eraser').innerText")
        seen |= {f"page: {line.strip()}" for line in text.splitlines() if "/" in line and ":" in line}
        status = status_of(page)
        if status.startswith(DONE):
            return status, seen, last_job, peak
        time.sleep(0.5)
    raise AssertionError(f"the erasure did not finish in time; seen: {sorted(seen)[-10:]}")


@dataclass
class TabRun:
    """What a run of the tab left: its status, the progress texts seen (watch), when the webui last reported it as
    its job, the webui's peak memory, the file it saved, the before/after images and loss plots shown, and the
    webui's memory before and after."""

    status: str
    seen: set[str]
    last_job: float
    peak: int
    saved: Path
    images: int
    loss_plots: int
    anon_before: int  # the webui's anonymous resident memory before the run and after it ended
    anon_after: int


def anonymous_memory(pid: int) -> int:
    """A process's anonymous resident bytes (its heap and tensors; not the checkpoint files it maps)."""
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith("RssAnon:"))


def erase_in_tab(webui, label: str, on_job=None, screenshot: str | None = None) -> TabRun:
    """The short cg erasure of "a dog" (start_erasure) from the tab in headless Chromium, until its status ends."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1300})
            open_tab(page, webui.url)
            t0, anon_before = time.time(), anonymous_memory(webui.process.pid)
            start_erasure(page, steps=2, report_steps=1)
            status, seen, last_job, peak = watch(page, webui, time.time() + 3600, on_job)
            anon_after = anonymous_memory(webui.process.pid)
            print(f"{label}: erasure {time.time() - t0:.0f} s, webui peak RSS {peak / 2**30:.2f} GiB, anonymous "
                  f"memory {anon_before / 2**30:.2f} GiB before, {anon_after / 2**30:.2f} GiB after; status:\n"
                  f"{status}\nprogress seen: {sorted(seen)}")
            if screenshot:  # the page as the user sees it: the webui around the tab
                page.screenshot(path=screenshot, full_page=True)
            return TabRun(status, seen, last_job, peak,
                          Path(page.locator("#ce_saved textarea, #ce_saved input").first.input_value()),
                          page.locator("#ce_gallery img").count(), page.locator("#ce_loss img").count(),
                          anon_before, anon_after)
        finally:
            browser.close()


def test_erase_in_the_tab_then_use_the_lora(webui):
    from safetensors import safe_open

    lora_dir = webui.folder / "models" / "Lora"
    baseline, waiting = {}, []

    def txt2img_meanwhile():  # sent while the erasure runs: it must wait for it (the webui's queue lock)
        baseline["image"] = webui.txt2img("a dog")
        baseline["finished"] = time.time()

    def on_job():
        if not waiting:
            waiting.append(threading.Thread(target=txt2img_meanwhile))
            waiting[0].start()

    run = erase_in_tab(webui, webui.kind, on_job, os.environ.get("CE_WEBUI_SCREENSHOT"))
    assert run.status.startswith("Done"), run.status
    assert run.images >= 2 and run.loss_plots == 1
    saved, seen, last_job = run.saved, run.seen, run.last_job
    phases = " ".join(seen)
    for phase in ("sampling the 'before' images", "trajectories", "erasing", "sampling the 'after' images"):
        assert phase in phases, f"no progress shown for {phase!r}: {sorted(seen)}"

    # One file, in models/Lora, with the keys and metadata the webui's Lora list reads.
    assert saved.parent == lora_dir and saved.suffix == ".safetensors", saved
    assert stat.S_IMODE(saved.stat().st_mode) == 0o644, "readable by the user's other programs, as the webui's files"
    assert [f.name for f in lora_dir.iterdir()] == [saved.name]
    assert not list((webui.folder / "outputs").rglob("*.safetensors")), "the erasure is stored once"
    with safe_open(str(saved), "pt") as f:
        keys, meta = list(f.keys()), f.metadata()
    assert keys and all(k.startswith("lora_unet_") and "attn2" in k for k in keys)
    assert {k.rsplit(".", 2)[-2] if k.endswith(".weight") else k.rsplit(".", 1)[-1] for k in keys} == {
        "lora_down", "lora_up", "alpha"}
    assert meta["modelspec.architecture"] == "stable-diffusion-v1/lora" and meta["ss_base_model_version"] == "sd_v1"
    assert meta["concept_eraser.unet_fingerprint"] == SD1_FINGERPRINT
    name = saved.stem
    webui.post("/sdapi/v1/refresh-loras")
    assert name in [lora["name"] for lora in webui.get("/sdapi/v1/loras")]

    # The txt2img sent during the erasure ran after it, on the unchanged model: the baseline image.
    waiting[0].join(timeout=1800)
    assert baseline["finished"] > last_job, "a txt2img ran while the erasure held the model"
    with_lora = webui.txt2img(f"a dog <lora:{name}:1>")
    at_zero = webui.txt2img(f"a dog <lora:{name}:0>")
    change = np.abs(with_lora.astype(int) - baseline["image"].astype(int)).mean()
    print(f"{webui.kind}: mean |image with the LoRA - without| = {change:.3f} (0-255)")
    assert change > 0, "<lora:NAME:1> did not change the image"
    assert np.array_equal(at_zero, baseline["image"]), "<lora:NAME:0> changed the image"


def test_interrupt_stops_an_erasure_while_it_samples(webui):
    """After generations with a LoRA (the webui then keeps a backup of every weight), a second erasure starts
    from the clean weights without copying the model, and the webui's Interrupt stops it while it samples."""
    import psutil
    from playwright.sync_api import sync_playwright

    lora_dir = webui.folder / "models" / "Lora"
    files = sorted(lora_dir.glob("*.safetensors")) if lora_dir.exists() else []
    interrupted = []

    def interrupt_once():
        state = webui.get("/sdapi/v1/progress?skip_current_image=true", timeout=30)
        if not interrupted and "sampling" in (state["textinfo"] or ""):
            webui.post("/sdapi/v1/interrupt")
            interrupted.append(state["textinfo"])

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1300})
            open_tab(page, webui.url)
            rss = psutil.Process(webui.process.pid).memory_info().rss
            start_erasure(page, steps=500, report_steps=50)
            status, _, _, peak = watch(page, webui, time.time() + 1800, interrupt_once)
        finally:
            browser.close()
    print(f"{webui.kind}: interrupted during {interrupted}: {status}; RSS {rss / 2**30:.2f} GiB before, "
          f"peak {peak / 2**30:.2f} GiB")
    assert interrupted and status.startswith("Cancelled"), status
    assert peak - rss < 2**30, "the erasure copied the model's weights"
    assert (sorted(lora_dir.glob("*.safetensors")) if lora_dir.exists() else []) == files, "nothing is written"


def test_erase_from_an_sdxl_checkpoint_in_the_tab(webui):
    """The same erasure from an SDXL checkpoint (A1111: its sgm DiffusionEngine; Forge: its StableDiffusionXL; two
    text encoders, pooled and size conditioning), saved in kohya's SDXL layout under SDXL's metadata, which the
    webui's Lora list files as SDXL and applies: `<lora:NAME:1>` changes the SDXL image, `<lora:NAME:0>` does not."""
    from safetensors import safe_open

    # A1111 builds the model from the .yaml beside the checkpoint, so a narrow UNet is enough; Forge recognises SDXL
    # by the UNet's shapes only (huggingface_guess), so it gets SDXL base's full-size UNet.
    full = webui.kind == "forge"
    checkpoint = webui.folder / "models" / "Stable-diffusion" / f"random-sdxl{'' if full else '-small'}.safetensors"
    if not checkpoint.exists():
        write_checkpoint("sdxl_checkpoint.py", str(webui.folder), str(checkpoint), *(["--full"] if full else []))
    webui.post("/sdapi/v1/refresh-checkpoints")
    webui.post("/sdapi/v1/options", {"sd_model_checkpoint": checkpoint.name})
    assert webui.get("/sdapi/v1/options")["sd_model_checkpoint"].startswith(checkpoint.stem)
    lora_dir = webui.folder / "models" / "Lora"
    before = set(lora_dir.glob("*.safetensors")) if lora_dir.exists() else set()
    baseline = webui.txt2img("a dog")

    run = erase_in_tab(webui, f"{webui.kind} SDXL")
    assert run.status.startswith("Done"), run.status
    # Training shares the model's weights (Forge's inference tensors too) and the job gives its freed heap back, so
    # the webui goes into its next generation as large as before (Forge: 15.2 GiB after, 6.4 before, without both).
    assert run.anon_after - run.anon_before < 2**30, "the erasure left memory held in the webui"
    saved = run.saved
    assert set(lora_dir.glob("*.safetensors")) - before == {saved}
    with safe_open(str(saved), "pt") as f:
        keys, meta = list(f.keys()), f.metadata()
    blocks = {k.split("_")[2] for k in keys}
    assert blocks <= {"input", "middle", "output"} and "output" in blocks, sorted(keys)[:5]
    assert all(k.startswith("lora_unet_") and "attn2" in k for k in keys)
    assert meta["modelspec.architecture"] == "stable-diffusion-xl-v1-base/lora"
    assert meta["ss_base_model_version"] == "sdxl_base_v1-0"
    webui.post("/sdapi/v1/refresh-loras")
    assert saved.stem in [lora["name"] for lora in webui.get("/sdapi/v1/loras")]
    with_lora = webui.txt2img(f"a dog <lora:{saved.stem}:1>")
    at_zero = webui.txt2img(f"a dog <lora:{saved.stem}:0>")
    change = np.abs(with_lora.astype(int) - baseline.astype(int)).mean()
    print(f"{webui.kind} SDXL: mean |image with the LoRA - without| = {change:.3f} (0-255)")
    assert change > 0, "<lora:NAME:1> did not change the SDXL image"
    assert np.array_equal(at_zero, baseline), "<lora:NAME:0> changed the SDXL image"
