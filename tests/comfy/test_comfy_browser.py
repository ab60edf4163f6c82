"""Browser: headless Chromium (the system's Debian package, driven by Playwright; no browser is ever
downloaded) opens the ComfyUI page, finds the pack's nodes in the node library and loads every
example workflow without errors. With CONCEPT_ERASER_SCREENSHOTS=<dir> it also saves a picture of
each loaded example (the README's pictures: docs/images/); the ControlNet example is run from the page
first, so its picture shows the workflow's real output."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from comfy_paths import REPO

CHROMIUM = os.environ.get("CHROMIUM", shutil.which("chromium") or "/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
OUR_NODES = ["ConceptEraser_ScrambledGridDataset", "ConceptEraser_EraseDT", "ConceptEraser_EraseCG",
             "ConceptEraser_SaveErasure", "ConceptEraser_LoadErasure", "ConceptEraser_Compare",
             "ConceptEraser_ToyWorldLoader", "ConceptEraser_ToyControlNetLoader", "ConceptEraser_ToyControlImage"]
# Examples whose picture shows their output: the ids of their image-saving nodes.
RUN_FOR_PICTURE = {"erase_with_controlnet": [13, 14]}
IGNORED_CONSOLE = ("favicon", "Failed to load resource", "comfyui-workflow-templates", "templates",
                   "DevTools", "[vite]")


def close_dialogs(page, wait_ms: int = 8000) -> None:
    """Close the Templates dialog the frontend opens for a new user (it may appear a few seconds late)."""
    try:
        page.locator(".p-dialog").first.wait_for(state="visible", timeout=wait_ms)
    except Exception:  # playwright's TimeoutError: no dialog came
        return
    for _ in range(5):
        page.keyboard.press("Escape")
        page.wait_for_timeout(500)
        if page.locator(".p-dialog:visible").count() == 0:
            return


@pytest.fixture(scope="module")
def page(comfy):
    sync_api = pytest.importorskip("playwright.sync_api", reason="the Python 'playwright' package is not installed")
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    comfy.post("/settings/Comfy.TutorialCompleted", True)  # no first-run Templates dialog
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        page = browser.new_page(viewport={"width": 1600, "height": 1000})
        page.errors = []
        page.on("pageerror", lambda e: page.errors.append(f"pageerror: {e}"))
        page.on("console", lambda m: page.errors.append(f"console: {m.text}") if m.type == "error" and not any(
            s in m.text for s in IGNORED_CONSOLE) else None)
        page.goto(comfy.url, wait_until="domcontentloaded", timeout=180_000)
        page.wait_for_function("() => window.app && window.app.graph && window.LiteGraph", timeout=180_000)
        page.wait_for_function("n => !!window.LiteGraph.registered_node_types[n]", arg=OUR_NODES[0], timeout=120_000)
        close_dialogs(page)  # the frontend greets a new user with its Templates dialog
        yield page
        browser.close()


def test_nodes_in_library(page):
    registered = page.evaluate("ns => ns.filter(n => !!window.LiteGraph.registered_node_types[n])", OUR_NODES)
    assert registered == OUR_NODES
    categories = page.evaluate("ns => ns.map(n => window.LiteGraph.registered_node_types[n].category)", OUR_NODES)
    assert set(categories) == {"Concept Eraser"}
    extensions = page.evaluate("() => window.app.extensions.map(e => e.name)")
    assert "concept_eraser.loss_curve" in extensions, "web/concept_eraser.js is served and registered"
    # The node library (sidebar) lists them under the pack's category.
    page.keyboard.press("n")  # the frontend's shortcut for the node library
    page.wait_for_timeout(1000)
    assert page.locator("text=Concept Eraser").count() >= 1
    page.keyboard.press("n")


@pytest.mark.parametrize("name", ["erase_and_compare", "erase_with_controlnet", "save_erasure",
                                  "load_erasure_with_lora_loader"])
def test_load_example(page, name):
    workflow = json.loads((REPO / "examples" / f"{name}.json").read_text())
    page.errors.clear()
    page.evaluate("wf => window.app.loadGraphData(wf)", workflow)
    page.wait_for_timeout(1500)
    loaded = page.evaluate("() => window.app.graph._nodes.map(n => n.type)")
    assert sorted(loaded) == sorted(n["type"] for n in workflow["nodes"])
    widgets = page.evaluate("() => Object.fromEntries(window.app.graph._nodes.map("
                            "n => [n.id, (n.widgets || []).map(w => w.value)]))")
    for node in workflow["nodes"]:  # every widget got the file's value (a shifted list shows up here)
        assert widgets[str(node["id"])][:len(node["widgets_values"])] == node["widgets_values"], node["type"]
    missing = page.evaluate("() => window.app.graph._nodes.filter(n => n.has_errors).map(n => n.type)")
    assert not missing, f"nodes with errors: {missing}"
    assert not page.errors, page.errors
    dialog = page.locator(".p-dialog:visible")
    assert dialog.count() == 0, dialog.first.inner_text()[:500] if dialog.count() else ""
    target = os.environ.get("CONCEPT_ERASER_SCREENSHOTS")
    if target:
        page.evaluate("() => document.querySelectorAll('button').forEach(b => { "  # hide the 'Nodes 2.0' banner
                      "if (b.textContent.includes('Try it out')) b.parentElement.parentElement.style.display = 'none'; })")
        if name in RUN_FOR_PICTURE:  # the picture shows the workflow's own output: run it from the page
            page.evaluate("() => window.app.queuePrompt(0, 1)")
            page.wait_for_function("ids => ids.every(i => (window.app.graph.getNodeById(i).imgs || []).length)",
                                   arg=RUN_FOR_PICTURE[name], timeout=900_000, polling=1000)
            page.wait_for_timeout(1500)
        page.mouse.click(800, 980)  # focus the canvas (an empty spot) so the shortcut reaches it
        page.keyboard.press(".")  # the frontend's "fit view" shortcut
        page.wait_for_timeout(800)
        Path(target).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(target) / f"{name}.png"))
