"""The speed options change how fast a loss is computed, never what it is."""
import pytest
import torch
import torch.nn.functional as F

from erasure_core.errors import ErasureInputError
from erasure_core.methods.cg import cg_loss
from erasure_core.methods.trajectories import PreserveRows
from erasure_core.methods.common import add_noise
from erasure_core.methods.dt import DTConfig, dt_loss, erase_dt
from erasure_core.trainable import make_trainable


def _quick_dt(model, **kw):
    return erase_dt(model, DTConfig(concepts=["circle"], templates=["a red solid {}"], steps=3, lr=1e-3, batch_size=2,
                                    images_per_prompt=1, preserve_images_per_prompt=1, sample_steps=4,
                                    preserve_prompts=["a blue square"], **kw))


def _rows(model, n, seed):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, *model.latent_shape, generator=g), torch.randint(0, 1000, (n,), generator=g),
            model.encode_text(["a red solid circle", "a blue square", "", "a green dotted cross"][:n]))


def test_dt_loss_in_one_call_equals_one_call_per_term(toy_model):
    tuned, _ = make_trainable(toy_model.unet, "all")
    z0, t, ctx = _rows(toy_model, 2, 0)
    kx, kt, kctx = _rows(toy_model, 3, 1)
    keep_eps = torch.randn(3, *toy_model.latent_shape)
    noise = torch.randn(z0.shape, generator=torch.Generator().manual_seed(1))
    x_t = add_noise(toy_model.alphas_cumprod, z0, noise, t)
    with torch.no_grad():
        degenerate = F.mse_loss(toy_model.predict_noise(tuned, x_t, t, ctx), noise)
        preserve = F.mse_loss(toy_model.predict_noise(tuned, kx, kt, kctx), keep_eps)
        joint = dt_loss(toy_model, tuned, z0, ctx, noise, t, PreserveRows(kx, kt, kctx, keep_eps), 4.0)
        alone = dt_loss(toy_model, tuned, z0, ctx, noise, t)
    assert torch.allclose(joint, degenerate + 4.0 * preserve, rtol=1e-5, atol=1e-7)
    assert torch.allclose(alone, degenerate, rtol=1e-5, atol=1e-7)


def test_cg_loss_in_one_call_equals_one_call_per_term(toy_model):
    tuned, _ = make_trainable(toy_model.unet, "cross_attn")
    x_t, t, ctx = _rows(toy_model, 2, 0)
    kx, kt, kctx = _rows(toy_model, 2, 1)
    uncond = toy_model.encode_text(["", ""])
    target, frozen_uncond, keep_eps = (torch.randn(2, *toy_model.latent_shape) for _ in range(3))
    eps = lambda x, tt, c: toy_model.predict_noise(tuned, x, tt, c)  # noqa: E731
    with torch.no_grad():
        separate = (F.mse_loss(eps(x_t, t, ctx) - eps(x_t, t, uncond), target)
                    + 0.5 * F.mse_loss(eps(x_t, t, uncond), frozen_uncond)
                    + 10 * F.mse_loss(eps(kx, kt, kctx), keep_eps))
        joint = cg_loss(toy_model, tuned, x_t, t, ctx, uncond, target, frozen_uncond, 0.5,
                        PreserveRows(kx, kt, kctx, keep_eps), 10.0)
    assert torch.allclose(joint, separate, rtol=1e-5, atol=1e-7)


def test_checkpointing_gives_the_same_erasure(toy_model):
    plain, checkpointed = _quick_dt(toy_model), _quick_dt(toy_model, checkpointing=True)
    assert plain.losses == pytest.approx(checkpointed.losses, rel=1e-4)
    assert checkpointed.tuned_unet.is_gradient_checkpointing and not toy_model.unet.is_gradient_checkpointing


def test_a_lora_erasure_depends_on_its_seed_not_on_the_global_random_state(toy_model):
    torch.manual_seed(1)
    first = _quick_dt(toy_model, rank=8)
    torch.manual_seed(2)
    second = _quick_dt(toy_model, rank=8)
    assert first.losses == second.losses
    assert _quick_dt(toy_model, rank=8, seed=1).losses != first.losses


def test_bf16_on_cpu_trains(toy_model):
    result = _quick_dt(toy_model, precision="bf16")
    assert all(loss == loss and loss > 0 for loss in result.losses)


def test_unknown_precision_is_refused(toy_model):
    with pytest.raises(ErasureInputError, match="precision"):
        _quick_dt(toy_model, precision="fp8")


def test_trainable_copy_shares_only_the_frozen_weights(toy_model):
    """The copy costs memory only for what it trains; the original's weights and flags are untouched."""
    unet = toy_model.unet
    flags = {n: p.requires_grad for n, p in unet.named_parameters()}
    before = {n: p.detach().clone() for n, p in unet.named_parameters()}
    tuned, params = make_trainable(unet, "cross_attn")
    trained = {p.data_ptr() for p in params}
    original = dict(unet.named_parameters())
    shared = [n for n, p in tuned.named_parameters() if p.data_ptr() == original[n].data_ptr()]
    assert len(shared) + len(params) == len(original) and trained.isdisjoint(p.data_ptr() for p in original.values())
    assert all(not p.requires_grad for n, p in tuned.named_parameters() if n in shared)
    with torch.no_grad():
        for p in params:
            p.add_(1.0)  # a training step's worth of change
    assert all(torch.equal(p, before[n]) for n, p in unet.named_parameters())
    assert {n: p.requires_grad for n, p in unet.named_parameters()} == flags

    lora, lora_params = make_trainable(unet, "cross_attn", rank=2)
    base = [p for n, p in lora.named_parameters() if "lora_" not in n]
    assert all(p.data_ptr() in {q.data_ptr() for q in original.values()} for p in base)
    assert len(lora_params) > 0


def test_inference_tensors_are_shared_not_copied():
    """A host's weights made under inference mode take part in training as ordinary views of the same memory:
    no copy, autograd accepts them, and a training step leaves them as they were."""
    with torch.inference_mode():
        layer = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Linear(3, 3))
    from erasure_core.trainable import shared_copy

    before = [p.clone() for p in layer.parameters()]
    copy = shared_copy(layer, ["1"])
    assert not copy[0].weight.is_inference() and copy[0].weight.data_ptr() == layer[0].weight.data_ptr()
    assert copy[1].weight.data_ptr() != layer[1].weight.data_ptr()  # a trained module is copied
    copy[1].requires_grad_(True)
    x = torch.randn(2, 3, requires_grad=True)
    copy(x).sum().backward()  # autograd accepts the shared weights
    assert x.grad is not None and copy[1].weight.grad is not None
    with torch.no_grad():
        copy[1].weight.add_(1.0)
    assert all(torch.equal(a, b) for a, b in zip(before, layer.parameters())), "the host's weights changed"


def test_training_uses_the_fused_adamw_and_it_steps_like_the_reference():
    """The shared loop's AdamW is the fused kernel where torch has one (CPU since 2.4), and it takes the same
    step as torch's default implementation."""
    from erasure_core.training import adamw

    torch.manual_seed(0)
    start = [torch.randn(5, 7), torch.randn(7)]
    grads = [torch.randn_like(p) for p in start]
    fused_params = [torch.nn.Parameter(p.clone()) for p in start]
    reference_params = [torch.nn.Parameter(p.clone()) for p in start]
    fused, reference = adamw(fused_params, 1e-2), torch.optim.AdamW(reference_params, lr=1e-2, weight_decay=0.0)
    assert fused.defaults["fused"] is True
    for _ in range(3):
        for params, opt in ((fused_params, fused), (reference_params, reference)):
            for p, g in zip(params, grads):
                p.grad = g.clone()
            opt.step()
    for a, b, before in zip(fused_params, reference_params, start):
        assert torch.allclose(a, b, atol=1e-6)
        assert not torch.equal(a, before)
