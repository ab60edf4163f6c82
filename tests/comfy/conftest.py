"""ComfyUI test setup: a real ComfyUI tree from $COMFYUI_DIR (default <repo>/.comfyui) on sys.path,
headless (CPU). Every test here is skipped, with the reason, when that ComfyUI cannot be imported;
`tests/comfy_setup.sh` installs one."""
from __future__ import annotations

import asyncio
import importlib.util
import os
import sys
from pathlib import Path

import pytest
import torch

from comfy_paths import REPO, import_comfy


@pytest.fixture(scope="session")
def comfy_env(tmp_path_factory):
    reason = import_comfy()
    if reason:
        pytest.skip(reason)
    import folder_paths

    root = tmp_path_factory.mktemp("comfy")
    folder_paths.set_output_directory(str(root / "output"))
    folder_paths.set_temp_directory(str(root / "temp"))
    (root / "loras").mkdir()
    folder_paths.add_model_folder_path("loras", str(root / "loras"), is_default=True)
    torch.set_num_threads(min(2, torch.get_num_threads()))
    return root


@pytest.fixture(scope="session")
def pack(comfy_env):
    """The pack loaded the way ComfyUI loads it: the repo folder as a package, then comfy_entrypoint()."""
    spec = importlib.util.spec_from_file_location("concept_eraser", REPO / "__init__.py",
                                                  submodule_search_locations=[str(REPO)])
    module = importlib.util.module_from_spec(spec)
    sys.modules["concept_eraser"] = module
    spec.loader.exec_module(module)
    extension = asyncio.run(module.comfy_entrypoint())
    nodes = asyncio.run(extension.get_node_list())
    return {cls.GET_SCHEMA().node_id: cls for cls in nodes}


@pytest.fixture(scope="session")
def toy_diffusers(comfy_env):
    from comfy_tiny import toy_model_dir

    from erasure_core.model import load_diffusers_model

    return load_diffusers_model(toy_model_dir())


@pytest.fixture(scope="session")
def tiny(comfy_env, toy_diffusers):
    """(MODEL, CLIP, VAE): real comfy objects, the MODEL with the toy world's UNet weights."""
    from comfy_tiny import build_clip, build_model, build_vae

    return build_model(toy_diffusers.unet), build_clip(), build_vae()


@pytest.fixture(scope="session")
def tiny_xl(comfy_env, toy_xl_model):
    """(MODEL, CLIP, VAE): an SDXL-architecture toy (tests/conftest.py: toy_xl_dir) in ComfyUI's SDXL model and
    CLIP classes, and its VAE in ComfyUI's."""
    from erasure_core.backends.comfy_toyworld import build_vae, build_xl_clip, build_xl_model

    return (build_xl_model(toy_xl_model.unet, toy_xl_model.vae_scale),
            build_xl_clip(toy_xl_model.text_encoder, toy_xl_model.text_encoder_2,
                          Path(toy_xl_model.source) / "tokenizer"),
            build_vae(toy_xl_model.vae))


@pytest.fixture(scope="session")
def comfy(comfy_env, tmp_path_factory):
    """One ComfyUI server for the server and browser tests (start-up is the slow part)."""
    import comfy_server

    url, base = os.environ.get("CONCEPT_ERASER_COMFY_URL"), os.environ.get("CONCEPT_ERASER_COMFY_BASE")
    if url and base:  # development: reuse a server started by comfy_server.start (same layout)
        yield comfy_server.attach(url, Path(base))
        return
    yield from comfy_server.start(tmp_path_factory.mktemp("server"))
