"""Server end to end: ComfyUI's main.py --cpu on loopback with the pack in custom_nodes/, every
example workflow submitted through POST /prompt, results read back from /history.

Models: random-weight files that CheckpointLoaderSimple detects as SD1.5 (see checkpoints.py for why
they are shallow rather than full size), and the toy world with its ControlNet (the pack's Toy World
loaders). Widget values that only set quality (steps, sizes) are lowered after conversion to API
format, except in the ControlNet example, which runs as shipped so its result can be judged.
"""
from __future__ import annotations

import numpy as np
import pytest

import comfy_server


def test_pack_loaded(comfy):
    info = comfy.object_info
    ours = {k for k, v in info.items() if v["category"] == "Concept Eraser"}
    assert ours == comfy_server.PACK_NODE_IDS, ours
    assert "IMPORT FAILED" not in "\n".join(l for l in comfy.log.read_text().splitlines() if "concept_eraser" in l)
    assert "/extensions/concept_eraser/concept_eraser.js" in comfy.get("/extensions")


def test_core_nodes_all_imported(comfy):
    """ComfyUI's own requirements are installed: every core node imports (Canny needs kornia)."""
    log = comfy.log.read_text()
    assert "IMPORT FAILED" not in log and "did not import correctly" not in log, log[-3000:]
    assert "Canny" in comfy.object_info


def test_compare_example(comfy):
    entry, events, binary = comfy.run_watching(comfy.example("erase_and_compare"))
    losses = [e["data"] for e in events if e["type"] == "concept_eraser.loss"]
    assert [e["step"] for e in losses] == [1, 2, 3] and losses[0]["node"] == "2", "live loss for web/ extension"
    assert any(e["type"] == "progress" and e["data"]["node"] == "2" for e in events), "progress bar on the node"
    assert binary >= 3, "previews (loss curve) and progress text arrive as binary frames"
    grid = comfy.images(entry, "4")[0]
    h, w = 64, 64
    rows = [(grid[r * (h + 4):r * (h + 4) + h, :w], grid[r * (h + 4):r * (h + 4) + h, w + 4:]) for r in range(3)]
    changes = [np.abs(after - before).mean() for before, after in rows]
    print("mean |after - before| per row (concept, preserved, preserved):", changes)
    assert changes[0] > 0.5, "the concept's image changes"


def test_save_then_lora_loader_in_fresh_graph(comfy):
    saved = comfy.run(comfy.example("save_erasure"))
    files = list((comfy.base / "models/loras/erasures").glob("no_dog_*.safetensors"))
    assert [f.name for f in files] == ["no_dog_00001.safetensors"]
    in_graph = comfy.images(saved, "9")[0]
    comfy.object_info = comfy.get("/object_info")  # the new file now appears in LoraLoader's list
    assert "erasures/no_dog_00001.safetensors" in comfy.object_info["LoraLoader"]["input"]["required"]["lora_name"][0]
    loaded = comfy.images(comfy.run(comfy.example("load_erasure_with_lora_loader")), "9")[0]
    assert np.abs(loaded - in_graph).max() <= 2, "the file carries exactly the erasure"


def test_cancel_stops_an_erasure(comfy):
    """The UI's Cancel (POST /interrupt) stops a long erasure within a step; nothing is saved."""
    import asyncio

    import aiohttp

    prompt = comfy.example("save_erasure")
    prompt["2"]["inputs"].update(steps=5000, seed=123)  # far too long to finish; a new seed: no cache hit

    async def run_and_cancel():
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(f"{comfy.url}/ws?clientId=concept-eraser-cancel") as ws:
                async with session.post(f"{comfy.url}/prompt",
                                        json={"prompt": prompt, "client_id": "concept-eraser-cancel"}) as r:
                    prompt_id = (await r.json())["prompt_id"]
                step = None
                async for msg in ws:
                    if msg.type != aiohttp.WSMsgType.TEXT:
                        continue
                    event = msg.json()
                    if event["type"] == "concept_eraser.loss" and step is None:
                        step = event["data"]["step"]
                        await session.post(f"{comfy.url}/interrupt")
                    elif event["type"] == "concept_eraser.loss":
                        last = event["data"]["step"]
                        assert last <= step + 2, "cancel is honoured within a step or two"
                    if event["type"] in ("execution_success", "execution_error", "execution_interrupted") and \
                            event["data"].get("prompt_id") == prompt_id:
                        return event["type"]

    before = set((comfy.base / "models/loras").rglob("*.safetensors"))
    assert asyncio.run(asyncio.wait_for(run_and_cancel(), 300)) == "execution_interrupted"
    assert set((comfy.base / "models/loras").rglob("*.safetensors")) == before, "nothing written"


@pytest.mark.parametrize("attack", ["soft_prompt", "discrete_prompt"])
def test_audit_node_through_the_server(comfy, attack):
    """Audit Erasure queued as users queue it: the toy world, a short CG erasure, the audit (an attack that
    back-propagates through ComfyUI's CLIP and the erased UNet, which the server's loaders made under inference
    mode; a small budget), its strongest images into a PreviewImage; the node shows them itself too."""
    erase = dict(concept="circle", alternative="", templates="a red solid {}", preserve="", steps=2,
                 learning_rate=5e-4, rank=0, batch_size=2, sampling_steps=3, image_size=32, seed=0,
                 trajectories_per_prompt=1, drift_weight=1.0, parameter_group="cross_attn")
    audit = dict(concept="circle", attack=attack, steps=2, tokens=1,
                 templates="a red solid {}\na blue dotted {}", neutral="square\ntriangle", images_per_template=2,
                 sampling_steps=3, cfg=1.5, image_size=32, seed=0)
    prompt = {
        "1": {"class_type": "ConceptEraser_ToyWorldLoader", "inputs": {}},
        "2": {"class_type": "ConceptEraser_EraseCG", "inputs": {"model": ["1", 0], "clip": ["1", 1], **erase}},
        "3": {"class_type": "ConceptEraser_Audit", "inputs": {"original": ["1", 0], "erased": ["2", 0],
                                                               "clip": ["1", 1], "vae": ["1", 2], **audit}},
        "4": {"class_type": "PreviewImage", "inputs": {"images": ["3", 1]}},
    }
    entry = comfy.run(prompt)
    previews = comfy.images(entry, "4")
    assert len(previews) == 4 and previews[0].shape == (32, 32, 3), [p.shape for p in previews]  # 2 templates x 2
    assert len(comfy.images(entry, "3")) == 4, "the node's own preview"
