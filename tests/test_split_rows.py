"""Rows back-propagated one group at a time (erasure_core/split_rows.py): the same loss and gradients as one
call on every row, on a LoRA and on full weights, in fp32 and under bf16 autocast; and a whole erasure with it."""
import pytest
import torch

from erasure_core.errors import ErasureInputError
from erasure_core.methods.cg import CGConfig, cg_loss, erase_cg
from erasure_core.methods.dt import dt_loss
from erasure_core.methods.trajectories import PreserveRows
from erasure_core.split_rows import RowsSplit, _RecomputeInGroups
from erasure_core.trainable import make_trainable


def _rows(model, b, gen):
    x = torch.randn(b, *model.latent_shape, generator=gen)
    t = torch.randint(0, 1000, (b,), generator=gen)
    return x, t


def _cg(model, tuned, b, gen):
    x, t = _rows(model, b, gen)
    concept = model.encode_text(["a red solid circle"] * b)
    uncond = model.encode_text([""]).expand(b, -1, -1)
    target = torch.randn(b, *model.latent_shape, generator=gen)
    frozen = torch.randn(b, *model.latent_shape, generator=gen)
    kx, kt = _rows(model, b, gen)
    keep = PreserveRows(kx, kt, model.encode_text(["a blue striped square"] * b),
                        torch.randn(b, *model.latent_shape, generator=gen))
    return lambda m: cg_loss(m, tuned, x, t, concept, uncond, target, frozen, 0.7, keep, 10.0)


def _dt(model, tuned, b, gen):
    z0, t = _rows(model, b, gen)
    noise = torch.randn(z0.shape, generator=gen)
    kx, kt = _rows(model, b, gen)
    keep = PreserveRows(kx, kt, model.encode_text([""] * b), torch.randn(b, *model.latent_shape, generator=gen))
    return lambda m: dt_loss(m, tuned, z0, model.encode_text(["a red solid circle"] * b), noise, t, keep, 1.0)


class _Recording:
    """The model, noting the rows, grad mode and autocast of every UNet call."""

    def __init__(self, model):
        self.model, self.calls = model, []

    def __getattr__(self, name):
        return getattr(self.model, name)

    def predict_noise(self, unet, x, t, text):
        self.calls.append((len(x), torch.is_grad_enabled(), torch.is_autocast_enabled("cpu")))
        return self.model.predict_noise(unet, x, t, text)


def _loss_and_grads(loss_of, model, params, precision):
    for p in params:
        p.grad = None
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
        loss = loss_of(model)
    loss.backward()
    return float(loss.detach()), [p.grad.clone() for p in params]


@pytest.mark.parametrize("loss, group, rank, precision", [
    (_cg, "cross_attn", None, "fp32"), (_cg, "cross_attn", 4, "fp32"), (_dt, "all", 4, "fp32"),
    (_dt, "all", None, "fp32"), (_cg, "cross_attn", 4, "bf16"),
])
def test_split_rows_give_the_same_loss_and_gradients(toy_model, loss, group, rank, precision, monkeypatch):
    tuned, params = make_trainable(toy_model.unet, group, rank, seed=0)
    loss_of = loss(toy_model, tuned, 3, torch.Generator().manual_seed(0))
    calls = []
    real_backward = _RecomputeInGroups.backward

    def counted(ctx, grad):
        calls.append(len(ctx.groups))
        return real_backward(ctx, grad)

    monkeypatch.setattr(_RecomputeInGroups, "backward", staticmethod(counted))
    joint_loss, joint = _loss_and_grads(loss_of, toy_model, params, precision)
    recording = _Recording(toy_model)
    split_loss, split = _loss_and_grads(loss_of, RowsSplit(recording, 3), params, precision)
    groups = 3 if loss is _cg else 2  # concept, unconditional, preserve / degeneration, preserve
    assert calls == [groups]
    # each group without gradients, then each group again with them, all under the step's autocast
    autocast = precision == "bf16"
    assert recording.calls == [(3, False, autocast)] * groups + [(3, True, autocast)] * groups
    tolerance = 2e-2 if precision == "bf16" else 1e-4  # bf16 rounds each call's sums differently
    assert split_loss == pytest.approx(joint_loss, rel=tolerance)
    norm = torch.sqrt(sum((g ** 2).sum() for g in joint))
    difference = torch.sqrt(sum(((a - b) ** 2).sum() for a, b in zip(joint, split)))
    assert difference <= tolerance * norm, (float(difference), float(norm))
    assert float(norm) > 0


def test_an_erasure_with_split_rows_runs_and_says_so(toy_model):
    from erasure_core.toyworld import evaluate as toy_eval

    config = CGConfig(concepts=["circle"], **{**toy_eval.toy_options(["circle"]), "sample_steps": 4, "steps": 3,
                                              "batch_size": 4, "micro_batch": 2, "split_rows": True})
    result = erase_cg(toy_model, config)
    assert len(result.losses) == 3 and all(v == v for v in result.losses)
    assert "rows back-propagated one group at a time" in result.memory_plan.settings


def test_split_rows_must_be_on_or_off(toy_model):
    with pytest.raises(ErasureInputError, match="^split rows: must be on or off"):
        CGConfig(concepts=["circle"], split_rows="yes").validate()


def test_the_command_line_plans_split_rows(capsys):
    from erasure_core.__main__ import main

    assert main(["erase", "--method", "cg", "--concept", "circle", "--micro-batch", "2", "--split-rows",
                 "--plan-only"]) == 0
    printed = capsys.readouterr().out
    assert "rows back-propagated one group at a time" in printed and "activations (2 rows)" in printed
