"""A ComfyUI server (main.py --cpu on loopback) with the pack in custom_nodes/ and random-weight
SD1.5-detected model files, for the server and browser tests (one server per test session)."""
from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
from PIL import Image

# Every node the pack registers (tests/comfy/test_comfy_headless.py: test_schemas checks the same set in-process).
PACK_NODE_IDS = {"ConceptEraser_ScrambledGridDataset", "ConceptEraser_EraseDT", "ConceptEraser_EraseCG",
                 "ConceptEraser_SaveErasure", "ConceptEraser_LoadErasure", "ConceptEraser_Compare",
                 "ConceptEraser_ToyWorldLoader", "ConceptEraser_ToyControlNetLoader", "ConceptEraser_ToyControlImage",
                 "ConceptEraser_Audit", "ConceptEraser_EraseControlNet"}

from browser_support import free_port, stop  # tests/ is on sys.path (tests/conftest.py)
from comfy_paths import COMFYUI_DIR, REPO
from workflows import to_api

EXAMPLES = REPO / "examples"
FAST_WIDGETS = {  # class -> widget values that only trade quality for time (a large lr: 3 steps must show)
    "ConceptEraser_EraseCG": dict(steps=3, learning_rate=2e-3, sampling_steps=2, image_size=64, batch_size=2, templates="a photo of {}",
                                  trajectories_per_prompt=1),
    "ConceptEraser_EraseDT": dict(steps=3, learning_rate=1e-2, sampling_steps=2, image_size=64, batch_size=2, templates="a photo of {}",
                                  images_per_prompt=1),
    "ConceptEraser_Compare": dict(steps=3, image_size=64),
    "KSampler": dict(steps=3),
    "EmptyLatentImage": dict(width=64, height=64),
}
START_TIMEOUT, PROMPT_TIMEOUT = 420, 600


class Comfy:
    """A running ComfyUI server and the folders it uses."""

    def __init__(self, base: Path, port: int, process: subprocess.Popen, log: Path):
        self.base, self.url, self.process, self.log = base, f"http://127.0.0.1:{port}", process, log
        self.object_info: dict = {}

    def get(self, path: str):
        with urllib.request.urlopen(self.url + path, timeout=60) as r:
            return json.loads(r.read())

    def post(self, path: str, data: dict):
        req = urllib.request.Request(self.url + path, json.dumps(data).encode(), {"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                body = r.read()
                return json.loads(body) if body.strip() else None
        except urllib.error.HTTPError as e:  # a validation error: show ComfyUI's own message
            raise AssertionError(f"POST {path} -> {e.code}: {e.read().decode()[:2000]}") from None

    def run(self, prompt: dict) -> dict:
        """Queue `prompt`, wait for it, return its history entry (fails with the server's error)."""
        answer = self.post("/prompt", {"prompt": prompt, "client_id": "concept-eraser-test"})
        # ComfyUI runs the output nodes that validate and lists the others here: a test wants them all
        assert not answer.get("node_errors"), json.dumps(answer["node_errors"])[:2000]
        return self.finished(answer["prompt_id"])

    def finished(self, prompt_id: str) -> dict:
        """Wait for `prompt_id`'s history entry (written a moment after the websocket's last event)."""
        deadline = time.time() + PROMPT_TIMEOUT
        while time.time() < deadline:
            entry = self.get(f"/history/{prompt_id}").get(prompt_id)
            if entry and entry.get("status", {}).get("completed") is not None:
                status = entry["status"]
                assert status["status_str"] == "success", json.dumps(status["messages"])[-3000:]
                return entry
            assert self.process.poll() is None, "ComfyUI exited:\n" + self.log.read_text()[-3000:]
            time.sleep(0.25)
        raise AssertionError(f"prompt {prompt_id} did not finish in {PROMPT_TIMEOUT} s")

    def run_watching(self, prompt: dict) -> tuple[dict, list[dict], int]:
        """Like run(), listening on the websocket as the UI does: (history entry, JSON events, binary frames)."""
        import asyncio

        import aiohttp

        async def watch():
            events, binary = [], 0
            async with aiohttp.ClientSession() as session:
                async with session.ws_connect(f"{self.url}/ws?clientId=concept-eraser-watch") as ws:
                    async with session.post(f"{self.url}/prompt", json={"prompt": prompt,
                                                                         "client_id": "concept-eraser-watch"}) as r:
                        prompt_id = (await r.json())["prompt_id"]
                    async for msg in ws:
                        if msg.type == aiohttp.WSMsgType.BINARY:
                            binary += 1
                            continue
                        event = msg.json()
                        events.append(event)
                        if event["type"] in ("execution_success", "execution_error", "execution_interrupted") and \
                                event["data"].get("prompt_id") == prompt_id:
                            return prompt_id, events, binary

        prompt_id, events, binary = asyncio.run(asyncio.wait_for(watch(), PROMPT_TIMEOUT))
        return self.finished(prompt_id), events, binary

    def images(self, entry: dict, node: str) -> list[np.ndarray]:
        out = []
        for item in entry["outputs"][node]["images"]:
            path = self.base / item["type"] / item["subfolder"] / item["filename"]
            out.append(np.asarray(Image.open(path).convert("RGB")).astype(np.int16))
        return out

    def example(self, name: str, fast: bool = True) -> dict:
        """An example workflow as an API prompt; `fast` lowers the settings that only trade quality for time."""
        prompt = to_api(json.loads((EXAMPLES / f"{name}.json").read_text()), self.object_info)
        for node in prompt.values():
            node["inputs"].update(FAST_WIDGETS.get(node["class_type"], {}) if fast else {})
        return prompt


def reference_run(comfy, prompt: dict, method: str) -> np.ndarray:
    """The original-MODEL branch alone, fed through a same-size LatentUpscale: an identity whose
    `method` changes only the cache key, so KSampler really runs again on the cached MODEL."""
    keep = {k: v for k, v in prompt.items() if k not in ("2", "9", "11", "13")}  # no erase node
    latent = prompt["8"]["inputs"]
    keep["15"] = {"class_type": "LatentUpscale", "inputs": {"samples": ["8", 0], "upscale_method": method,
                                                           "width": latent["width"], "height": latent["height"],
                                                           "crop": "disabled"}}
    keep["10"] = {**keep["10"], "inputs": {**keep["10"]["inputs"], "latent_image": ["15", 0]}}
    return np.stack(comfy.images(comfy.run(keep), "14"))


def judged_shapes(images: list[np.ndarray]) -> list[str]:
    """The toy world's judge reading the shape of each saved 8-bit image."""
    import torch

    from erasure_core.toyworld import JUDGE_PATH
    from erasure_core.toyworld.judge import load_judge

    x = torch.from_numpy(np.stack(images)).float().div(255).permute(0, 3, 1, 2)
    return load_judge(JUDGE_PATH).predict(x)["shape"]


def run_controlnet_example(comfy) -> tuple[list[str], list[str]]:
    """The ControlNet example as shipped (the toy world, DT erasure of 'circle', a position-only blob through
    ControlNetApplyAdvanced); asserts the original MODEL draws the same images before and after the erasure
    ran (the cached MODEL is never written to) and returns the judge's shapes (original branch, erased branch)."""
    prompt = comfy.example("erase_with_controlnet", fast=False)
    before = reference_run(comfy, prompt, "nearest-exact")
    entry = comfy.run(prompt)
    original, erased = comfy.images(entry, "14"), comfy.images(entry, "13")
    after = reference_run(comfy, prompt, "bilinear")
    assert np.array_equal(np.stack(original), before) and np.array_equal(after, before), \
        "the cached MODEL must not change"
    assert len(original) == len(erased) == 8
    return judged_shapes(original), judged_shapes(erased)


def start(base: Path):
    """Write the model files into `base`, start ComfyUI on it, yield it once /object_info answers."""
    import checkpoints

    for sub in ("models/checkpoints", "models/loras", "input", "output", "custom_nodes"):
        (base / sub).mkdir(parents=True)
    (base / "custom_nodes" / "concept_eraser").symlink_to(REPO, target_is_directory=True)
    # test-only: an SDXL-architecture toy as MODEL/CLIP/VAE (ComfyUI's loaders detect SDXL at full size only)
    (base / "custom_nodes" / "concept_eraser_test_toy_xl").symlink_to(Path(__file__).parent / "toy_xl_node",
                                                                       target_is_directory=True)
    started = time.time()
    checkpoints.write_checkpoint(base / "models/checkpoints/v1-5-pruned-emaonly.safetensors")
    print(f"model files written in {time.time() - started:.1f} s")
    yield from serve(COMFYUI_DIR, base, ["--base-directory", str(base)])


def serve(comfyui_dir: Path, base: Path, extra_args: list[str], env: dict | None = None):
    """Run `main.py --cpu` of `comfyui_dir` on a free loopback port; yield it once /object_info answers."""
    port, log = free_port(), base / "comfyui.log"
    started = time.time()
    process = subprocess.Popen(
        [sys.executable, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port), "--disable-auto-launch",
         *extra_args], cwd=comfyui_dir, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env)
    server = Comfy(base, port, process, log)
    try:
        deadline = time.time() + START_TIMEOUT
        while time.time() < deadline:
            assert process.poll() is None, "ComfyUI exited:\n" + log.read_text()[-3000:]
            try:
                server.object_info = server.get("/object_info")
                break
            except OSError:
                time.sleep(1)
        else:
            raise AssertionError(f"ComfyUI did not answer in {START_TIMEOUT} s:\n" + log.read_text()[-3000:])
        print(f"ComfyUI answered after {time.time() - started:.1f} s")
        yield server
    finally:
        stop(process, timeout=30)


def attach(url: str, base: Path) -> Comfy:
    """A Comfy handle on an already running server (its log must be base/comfyui.log)."""
    class Running:
        def poll(self):
            return None

    server = Comfy(base, int(url.rsplit(":", 1)[1]), Running(), base / "comfyui.log")
    server.object_info = server.get("/object_info")
    return server
