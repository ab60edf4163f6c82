"""Text encoders wait on the CPU while a method trains on a GPU (erasure_core/offload.py): the move and the way
back (on failure too), every training method's loop inside it, and the plan that leaves them out."""
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from erasure_core import memory, offload
from erasure_core.methods import METHODS, CAConfig, CGConfig, DTConfig, ESDConfig
from erasure_core.toyworld import evaluate as toy_eval


class _Encoder(nn.Linear):
    """A text encoder that notes where it is sent (no GPU here: the move itself is a no-op on the CPU)."""

    def __init__(self):
        super().__init__(2, 2)
        self.sent_to = []

    def to(self, device):
        self.sent_to.append(str(device))
        return self


def test_the_text_encoders_go_to_the_cpu_and_come_back_even_on_failure():
    first, second = _Encoder(), _Encoder()
    model = SimpleNamespace(device=torch.device("cuda"), text_encoder=first, text_encoder_2=second)
    with pytest.raises(RuntimeError, match="training failed"):
        with offload.text_encoders_on_cpu(model):
            assert first.sent_to == second.sent_to == ["cpu"]
            raise RuntimeError("training failed")
    assert first.sent_to == second.sent_to == ["cpu", "cuda"]


def test_nothing_moves_on_the_cpu_or_for_a_hosts_model():
    encoder = _Encoder()
    with offload.text_encoders_on_cpu(SimpleNamespace(device=torch.device("cpu"), text_encoder=encoder)):
        pass
    with offload.text_encoders_on_cpu(SimpleNamespace(device=torch.device("cuda"), unet=nn.Linear(2, 2))):
        pass  # a host's model (ComfyUI, the webui) holds no text encoder of its own
    assert encoder.sent_to == []


@pytest.mark.parametrize("method, cls", [("dt", DTConfig), ("cg", CGConfig), ("esd", ESDConfig), ("ca", CAConfig)])
def test_every_training_loop_runs_with_the_text_encoders_away(toy_model, monkeypatch, method, cls):
    module = __import__(f"erasure_core.methods.{method}", fromlist=["optimise"])
    state = {"away": False, "trained_away": None}

    class Away:
        def __init__(self, model, config=None):
            assert model is toy_model

        def __enter__(self):
            state["away"] = True

        def __exit__(self, *exc):
            state["away"] = False

    def optimise(*args, **kwargs):
        state["trained_away"] = state["away"]
        raise StopIteration

    monkeypatch.setattr(module, "text_encoders_on_cpu", Away)
    monkeypatch.setattr(module, "optimise", optimise)
    options = {**toy_eval.toy_options(["circle"]), "sample_steps": 2, "images_per_prompt": 1} if method == "dt" \
        else {**toy_eval.toy_options(["circle"]), "sample_steps": 2}
    config = cls(concepts=["circle"], alternatives=["square"] if method == "ca" else [], **options)
    with pytest.raises(StopIteration):
        METHODS[method][1](toy_model, config)
    assert state == {"away": False, "trained_away": True}


def test_the_plan_leaves_the_text_encoders_out_of_training_on_a_gpu():
    model = memory.ShapeOnlyModel.sdxl()
    encoders = memory.module_bytes(model.text_encoder) + memory.module_bytes(model.text_encoder_2)
    config = CGConfig(concepts=["a dog"], rank=8, micro_batch=1, split_rows=True)
    config.validate()
    on_gpu = memory.plan_memory(model, "cg", config, available=None)
    model.device = torch.device("cpu")
    on_cpu = memory.plan_memory(model, "cg", config, available=None)
    assert on_cpu.parts["frozen model (loaded)"] - on_gpu.parts["frozen model (loaded)"] == encoders
    assert on_gpu.resident == on_cpu.resident  # loaded before the run all the same: they free memory while training
    assert "text encoders on the CPU while training (1.52 GiB)" in on_gpu.settings


def test_the_robust_option_keeps_the_text_encoders_its_attacks_train_through():
    """Its soft-prompt attacks encode text at training steps: the encoders stay, and the plan counts them."""
    encoder = _Encoder()
    model = SimpleNamespace(device=torch.device("cuda"), text_encoder=encoder)
    robust = CGConfig(concepts=["a dog"], adversarial=True)
    robust.validate()
    with offload.text_encoders_on_cpu(model, robust):
        pass
    assert encoder.sent_to == []
    assert offload.offloadable_text_encoders(model, CGConfig(concepts=["a dog"])) == [encoder]
    sd15 = memory.ShapeOnlyModel.sd15()
    plain, robust = CGConfig(concepts=["a dog"], rank=8), CGConfig(concepts=["a dog"], rank=8, adversarial=True)
    plain.validate()
    robust.validate()
    kept = memory.plan_memory(sd15, "cg", robust, available=None)
    away = memory.plan_memory(sd15, "cg", plain, available=None)
    assert kept.parts["frozen model (loaded)"] - away.parts["frozen model (loaded)"] == \
        memory.module_bytes(sd15.text_encoder)
    assert "text encoders on the CPU" not in kept.settings and "text encoders on the CPU" in away.settings
