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
    (SimpleNamespace(is_sd3=True), None, "SD3"),
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


A1111_1_10_1 = {"transformers": "4.30.2", "accelerate": "0.21.0", "huggingface-hub": "0.36.2", "torch": "2.14.1+cu130",
                "safetensors": "0.4.2", "numpy": "1.26.2", "pillow": "9.5.0"}


def test_requirements_leave_torch_to_the_host():
    from erasure_core import dependencies

    names = [name for _, name in dependencies.requirements()]
    assert {"diffusers", "peft", "safetensors"} <= set(names) and "torch" not in names


@pytest.mark.parametrize("host, peft, diffusers", [
    (A1111_1_10_1, "peft>=0.12.0,<0.14", "diffusers>=0.30.0,<0.38"),  # measured in A1111 1.10.1's environment
    ({"transformers": "4.46.1", "accelerate": "0.21.0", "huggingface-hub": "0.26.2"}, "peft>=0.12.0,<0.14",
     "diffusers>=0.30.0,<0.38"),
    ({"transformers": "5.24.0", "accelerate": "1.15.0", "huggingface-hub": "2.4.0"}, "peft>=0.12.0",
     "diffusers>=0.30.0"),
])
def test_ranges_that_import_with_the_hosts_packages(host, peft, diffusers):
    from erasure_core.dependencies import choose

    assert choose("peft>=0.12.0", "peft", host) == peft
    assert choose("diffusers>=0.30.0", "diffusers", host) == diffusers
    assert choose("safetensors>=0.4.2", "safetensors", host) == "safetensors>=0.4.2"


def test_constraints_pin_every_installed_package():
    from erasure_core.dependencies import constraints_text

    text = constraints_text({**A1111_1_10_1, "odd": "unknown version"})
    assert "transformers==4.30.2" in text.splitlines() and "torch==2.14.1+cu130" in text.splitlines()
    assert "odd" not in text  # a legacy version string cannot be pinned


def test_install_asks_only_for_what_is_missing_under_the_constraints(tmp_path, monkeypatch):
    from erasure_core import dependencies

    monkeypatch.delitem(sys.modules, "launch", raising=False)
    install = load_file_as_module(ROOT / "install.py", "ce_install_under_test")
    install.main()  # outside the webui: nothing happens
    monkeypatch.setattr(dependencies, "installed_versions", lambda: dict(A1111_1_10_1))
    calls = []

    def run_pip(command, desc):
        constraints = command.split('-c "', 1)[1].split('"', 1)[0]
        calls.append((command, Path(constraints).read_text().splitlines()))

    asked = install.install(SimpleNamespace(run_pip=run_pip), dependencies)
    assert asked == ["diffusers>=0.30.0,<0.38", "peft>=0.12.0,<0.14"]  # safetensors, numpy, ... are there
    [(command, pins)] = calls
    assert command.startswith("install -c ") and command.endswith('"diffusers>=0.30.0,<0.38" "peft>=0.12.0,<0.14"')
    assert "transformers==4.30.2" in pins and "safetensors==0.4.2" in pins and "torch==2.14.1+cu130" in pins
    monkeypatch.setattr(dependencies, "installed_versions", lambda: {**A1111_1_10_1, "diffusers": "0.31.0",
                                                                     "peft": "0.13.2", "transformers": "4.46.1"})
    assert install.install(SimpleNamespace(run_pip=run_pip), dependencies) == [] and len(calls) == 1  # Forge


def test_a_pip_failure_is_one_line_and_the_webui_starts_on(monkeypatch, capsys):
    from erasure_core import dependencies

    install = load_file_as_module(ROOT / "install.py", "ce_install_failing_pip")

    def run_pip(command, desc):  # what the webui's launch.run_pip raises when pip fails
        raise RuntimeError("Couldn't install Concept Eraser requirements.\nCommand: ...\nError code: 1")

    monkeypatch.setitem(sys.modules, "launch", SimpleNamespace(run_pip=run_pip))
    monkeypatch.setattr(dependencies, "installed_versions", lambda: dict(A1111_1_10_1))
    monkeypatch.setattr(dependencies, "import_problem", lambda: None)
    install.main()
    [line] = capsys.readouterr().out.splitlines()
    assert line.startswith("Concept Eraser: installing its requirements failed (Couldn't install") and "Fix:" in line


def test_a_package_that_does_not_import_gives_one_line_with_the_fix(monkeypatch):
    from erasure_core import dependencies

    assert dependencies.import_problem() is None  # this environment has everything
    monkeypatch.setattr(dependencies, "NEEDED_IMPORTS", (("peft", ("NoSuchName",)),))
    monkeypatch.setattr(dependencies, "installed_versions", lambda: dict(A1111_1_10_1))
    line = dependencies.import_problem()
    assert "\n" not in line and "from peft import NoSuchName" in line
    assert 'pip install "peft>=0.12.0,<0.14"' in line and "transformers 4.30.2" in line


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


class FakeState:
    """The parts of the webui's shared.state a job uses."""

    def __init__(self):
        self.interrupted = self.skipped = self.stopping_generation = False
        self.job, self.textinfo, self.sampling_step, self.sampling_steps, self.calls = "", None, 0, 0, []

    def begin(self, job="(unknown)"):
        self.calls.append("begin")
        self.job, self.interrupted, self.skipped = job, False, False

    def end(self):
        self.calls.append("end")
        self.job = ""


def stand_in_webui(monkeypatch, tmp_path, sd_model=None, sd_models=None):
    """`modules` with what the tab reaches: paths, shared (state, cmd_opts), call_queue's lock, sd_models, devices
    (its torch_gc is recorded in the job state's calls)."""
    import threading

    modules = types.ModuleType("modules")
    modules.paths = SimpleNamespace(data_path=str(tmp_path), models_path=str(tmp_path / "models"))
    modules.shared = SimpleNamespace(sd_model=sd_model, cmd_opts=SimpleNamespace(), state=FakeState())
    modules.call_queue = SimpleNamespace(queue_lock=threading.Lock())
    modules.sd_models = sd_models or SimpleNamespace()
    modules.devices = SimpleNamespace(torch_gc=lambda: modules.shared.state.calls.append("torch_gc"))
    for name in ("paths", "shared", "call_queue", "sd_models", "devices"):
        monkeypatch.setitem(sys.modules, f"modules.{name}", getattr(modules, name))
    monkeypatch.setitem(sys.modules, "modules", modules)
    return modules


def test_tab_builds_with_a_stand_in_webui(monkeypatch, tmp_path):
    pytest.importorskip("gradio")
    modules = stand_in_webui(monkeypatch, tmp_path)
    script = load_file_as_module(ROOT / "scripts" / "concept_eraser_tab.py", "concept_eraser_tab_build")
    [(blocks, title, elem_id)] = script.on_ui_tabs()
    assert title == "Concept Eraser" and elem_id == "concept_eraser"
    host = blocks.ce_runner.host
    assert host.out_dir == tmp_path / "outputs" / "concept_eraser"
    # No checkpoint loaded: the run reports it, naming the fix, instead of failing; it ran as a webui job.
    status = blocks.ce_runner.run("cg", "van gogh", "", "", 5, 1e-3, "cross_attn", 0, 0).status
    assert status.startswith("Error in model") and "checkpoint" in status
    assert modules.shared.state.calls == ["begin", "end", "torch_gc"]


def test_an_erasure_is_a_webui_job(monkeypatch, tmp_path):
    import threading

    modules = stand_in_webui(monkeypatch, tmp_path)
    state = modules.shared.state
    with webui.webui_job() as show:
        assert state.job == "Concept Eraser" and state.calls == ["begin"]
        got_lock = []
        thread = threading.Thread(target=lambda: got_lock.append(modules.call_queue.queue_lock.acquire(timeout=0.2)))
        thread.start()
        thread.join()
        assert got_lock == [False]  # a txt2img (which takes the same lock) waits
        show("sampling the 'before' images", 3, 10)
        assert (state.textinfo, state.sampling_step, state.sampling_steps) == (
            "Concept Eraser: sampling the 'before' images", 3, 10)
        state.skipped = True
        assert webui.interrupted(state)  # Skip stops an erasure too
    # After the job the webui's own collection runs (then erasure_core.heap gives the freed heap back).
    assert state.calls == ["begin", "end", "torch_gc"] and not state.skipped and not state.interrupted
    assert modules.call_queue.queue_lock.acquire(blocking=False)


def test_forge_loads_the_selected_checkpoint_itself(monkeypatch, tmp_path):
    class FakeInitialModel:  # Forge's placeholder before the first generation
        cond_stage_model = None

    loaded = SimpleNamespace(forge_objects=SimpleNamespace(unet="patcher"))
    shared = SimpleNamespace(sd_model=FakeInitialModel())
    reloads = []

    def forge_model_reload():
        reloads.append(1)
        shared.sd_model = loaded
        return loaded, True

    assert not webui.checkpoint_loaded(shared.sd_model)
    webui.ensure_checkpoint_loaded(shared, SimpleNamespace(forge_model_reload=forge_model_reload))
    webui.ensure_checkpoint_loaded(shared, SimpleNamespace(forge_model_reload=forge_model_reload))
    assert shared.sd_model is loaded and reloads == [1]  # loaded once, the host's own way
    a1111 = SimpleNamespace(sd_model=SimpleNamespace(model=SimpleNamespace(diffusion_model=nn.Linear(1, 1))))
    webui.ensure_checkpoint_loaded(a1111, SimpleNamespace())  # A1111 loads its model itself: nothing to do


def test_any_failure_shows_as_text_with_where_to_look(tmp_path):
    from erasure_core.ui_blocks import EraseRunner, Host

    logged = []

    def broken():
        raise RuntimeError("the model file vanished")

    host = Host(load_model=broken, out_dir=tmp_path, log=logged.append, log_hint="the webui's console")
    status = EraseRunner(host).run("cg", "a dog", "", "", 2, 1e-3, "cross_attn", 0, 0).status
    assert status == ("Error: RuntimeError: the model file vanished\n"
                      "Where to look: the full traceback is in the webui's console.")
    assert "Traceback" in logged[0] and "the model file vanished" in logged[0]


class InPlaceBlock(nn.Module):
    """Adds to its activations in place after a LayerNorm saved them, as Forge's transformer blocks do."""

    def __init__(self, in_place: bool):
        super().__init__()
        self.in_place, self.norm, self.proj = in_place, nn.LayerNorm(4), nn.Linear(4, 4)

    def forward(self, x, timesteps=None, context=None):
        h = x.permute(0, 2, 3, 1) * 1.0
        n = self.proj(self.norm(h))
        if self.in_place:
            h += n
            h += self.norm(h)
        else:
            h = h + n
            h = h + self.norm(h)
        return h.permute(0, 3, 1, 2)


def test_a_unet_adding_in_place_trains_with_the_gradients_of_one_that_does_not():
    from erasure_core.backends.ldm import LdmModel

    torch.manual_seed(0)
    weights, grads = InPlaceBlock(False).state_dict(), {}
    for in_place, flag in ((False, False), (True, True), (True, False)):
        unet = InPlaceBlock(in_place)
        unet.load_state_dict(weights)
        model = LdmModel(unet=unet, alphas_cumprod=torch.linspace(0.99, 0.01, 10), text_fn=None, encode_fn=None,
                         decode_fn=None, inplace_activations=flag)
        x = torch.randn(2, 4, 3, 3, generator=torch.Generator().manual_seed(1))
        loss = model.predict_noise(unet, x, torch.tensor(3), torch.zeros(2, 1, 4)).square().mean()
        if in_place and not flag:
            with pytest.raises(RuntimeError, match="inplace operation"):
                loss.backward()
            continue
        loss.backward()
        grads[in_place] = unet.proj.weight.grad
    assert torch.allclose(grads[False], grads[True])
