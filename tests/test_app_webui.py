"""The webui side without a webui: refusals, install.py and the tab script, with stand-ins for `modules`/`launch`."""
from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from erasure_core.backends import webui
from erasure_core.errors import ErasureInputError

ROOT = Path(__file__).resolve().parent.parent


def load_file_as_module(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("model, opts, words", [
    (None, None, "no checkpoint"),
    (SimpleNamespace(), SimpleNamespace(lowvram=True), "--lowvram"),
    (SimpleNamespace(), SimpleNamespace(lowvram=False, medvram=True), "--medvram"),
    (SimpleNamespace(is_sdxl=True), None, "SDXL"),
    (SimpleNamespace(parameterization="v"), None, "SD2"),
])
def test_refusals_name_the_fix(model, opts, words):
    with pytest.raises(ErasureInputError) as err:
        webui.check_supported(model, opts)
    assert words in str(err.value) and err.value.fix


@pytest.mark.parametrize("dtype", [torch.float8_e4m3fn, torch.uint8])
def test_quantized_storage_is_refused(dtype):
    layer = nn.Linear(4, 4)
    layer.weight = nn.Parameter(layer.weight.detach().to(dtype), requires_grad=False)
    with pytest.raises(ErasureInputError) as err:
        webui.check_storage(layer)
    assert "quantized" in err.value.problem and "FP8" in err.value.fix
    webui.check_storage(nn.Linear(4, 4).half())  # fp16 is fine: fp32 masters are made of what is trained


def test_forge_patcher_backup_gives_clean_weights():
    unet = nn.Sequential(nn.Linear(2, 2))
    clean = unet[0].weight.detach().clone()
    with torch.no_grad():
        unet[0].weight.add_(1)  # a LoRA patched in
    forge = SimpleNamespace(forge_objects=SimpleNamespace(unet=SimpleNamespace(
        backup={"diffusion_model.0.weight": SimpleNamespace(weight=clean, inplace_update=False)})))
    backups = webui.lora_backups(unet, forge)
    assert torch.equal(webui.clean_unet(unet, backups)[0].weight, clean)


def test_lora_folder():
    assert webui.lora_folder(SimpleNamespace(lora_dir="/x/Lora"), "/m") == Path("/x/Lora")
    assert webui.lora_folder(SimpleNamespace(), "/m") == Path("/m/Lora")


def test_install_uses_the_webui_helpers_and_never_torch(tmp_path, monkeypatch):
    monkeypatch.delitem(sys.modules, "launch", raising=False)
    install = load_file_as_module(ROOT / "install.py", "ce_install_under_test")  # outside the webui: no-op
    names = [name for _, name in install.requirements()]
    assert names and "torch" not in names
    reqs = tmp_path / "requirements.txt"
    reqs.write_text("torch>=2\ndiffusers>=0.30  # comment\n\npillow\n")
    monkeypatch.setattr(install, "REQUIREMENTS", str(reqs))
    calls = []
    launch = SimpleNamespace(is_installed=lambda name: name == "pillow",
                             run_pip=lambda cmd, desc: calls.append(cmd))
    assert install.install(launch) == ["diffusers>=0.30"]
    assert calls == ['install "diffusers>=0.30"']


def test_tab_script_is_harmless_outside_the_webui_and_registers_inside(monkeypatch):
    monkeypatch.delitem(sys.modules, "modules", raising=False)
    script = load_file_as_module(ROOT / "scripts" / "concept_eraser_tab.py", "concept_eraser_tab_test")
    assert script.register() is False
    assert not any(name == "comfy" or name.startswith("comfy.") for name in sys.modules if "erasure" in name)

    registered = []
    modules = types.ModuleType("modules")
    modules.script_callbacks = SimpleNamespace(on_ui_tabs=registered.append)
    monkeypatch.setitem(sys.modules, "modules", modules)
    monkeypatch.setitem(sys.modules, "modules.script_callbacks", modules.script_callbacks)
    assert script.register() is True and registered == [script.on_ui_tabs]


def test_tab_builds_with_a_stand_in_webui(monkeypatch, tmp_path):
    pytest.importorskip("gradio")
    modules = types.ModuleType("modules")
    modules.paths = SimpleNamespace(data_path=str(tmp_path), models_path=str(tmp_path / "models"))
    modules.shared = SimpleNamespace(sd_model=None, cmd_opts=SimpleNamespace(), state=SimpleNamespace(interrupted=False))
    for name in ("paths", "shared"):
        monkeypatch.setitem(sys.modules, f"modules.{name}", getattr(modules, name))
    monkeypatch.setitem(sys.modules, "modules", modules)
    script = load_file_as_module(ROOT / "scripts" / "concept_eraser_tab.py", "concept_eraser_tab_build")
    [(blocks, title, elem_id)] = script.on_ui_tabs()
    assert title == "Concept Eraser" and elem_id == "concept_eraser"
    host = blocks.ce_runner.host
    assert host.out_dir == tmp_path / "outputs" / "concept_eraser"
    # No checkpoint loaded: the run reports it, naming the fix, instead of failing.
    status = blocks.ce_runner.run("cg", "van gogh", "", "", 5, 1e-3, "cross_attn", 0, 0).status
    assert status.startswith("Error in model") and "checkpoint" in status
