"""Weight layers are found by what they hold, so a host's own layer classes (Forge's) train like torch's."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from erasure_core import erasure_file
from erasure_core.errors import ErasureInputError
from erasure_core.layers import CONV, LINEAR, layer_kind, weight_layers
from erasure_core.trainable import make_trainable, select_modules, weight_deltas


class HostLinear(nn.Module):
    """What Forge's backend.operations.ForgeOperations.Linear is: a plain Module holding a weight and bias
    it applies with F.linear (not an nn.Linear)."""

    def __init__(self, in_features, out_features, bias=True):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / in_features ** 0.5)
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None

    def forward(self, x):
        return F.linear(x, self.weight, self.bias)


class Block(nn.Module):
    """A few layers with the names the parameter groups look for."""

    def __init__(self, linear=nn.Linear):
        super().__init__()
        self.proj_in = nn.Conv2d(4, 8, 1)
        self.norm = nn.LayerNorm(8)
        self.attn2 = nn.Module()
        self.attn2.to_k, self.attn2.to_v = linear(8, 8, bias=False), linear(8, 8, bias=False)
        self.ff = linear(8, 8)
        self.emb = nn.Embedding(10, 8)

    def forward(self, x):
        h = self.proj_in(x).permute(0, 2, 3, 1)
        h = self.norm(h)
        h = self.ff(self.attn2.to_v(h) + self.attn2.to_k(h))
        return h.permute(0, 3, 1, 2).sum(1, keepdim=True).expand(-1, 4, -1, -1)


def host_copy(block: Block) -> Block:
    """The same weights with every nn.Linear replaced by the host's class."""
    other = Block(HostLinear)
    other.load_state_dict(block.state_dict())
    return other


def test_kinds_by_what_a_module_holds():
    assert layer_kind(nn.Linear(2, 3)) == LINEAR and layer_kind(HostLinear(2, 3)) == LINEAR
    assert layer_kind(nn.Conv2d(2, 3, 3)) == CONV
    for other in (nn.LayerNorm(3), nn.GroupNorm(1, 3), nn.Embedding(4, 3), nn.Conv1d(2, 3, 1), nn.Sequential(nn.Linear(2, 2))):
        assert layer_kind(other) is None, other


def test_a_hosts_layer_classes_select_the_same_layers_and_fingerprint():
    torch.manual_seed(0)
    plain = Block()
    hosted = host_copy(plain)
    names = [n for n, _ in weight_layers(plain)]
    assert names == ["proj_in", "attn2.to_k", "attn2.to_v", "ff"]
    assert [n for n, _ in weight_layers(hosted)] == names
    assert [n for n, _ in select_modules(hosted, "cross_attn")] == ["attn2.to_k", "attn2.to_v"]
    assert erasure_file.unet_fingerprint(hosted) == erasure_file.unet_fingerprint(plain)


def test_fingerprints_of_diffusers_unets_are_unchanged(toy_model):
    """Files saved before layers were found by what they hold carry these; they must still match."""
    from erasure_core.backends.webui import sd1_fingerprint

    assert sd1_fingerprint() == "a558eacf71fca10b"
    assert erasure_file.unet_fingerprint(toy_model.unet) == "1b7ae617830f915f"


@pytest.mark.parametrize("rank", [None, 2])
def test_training_a_hosts_layers_matches_torch_layers(rank):
    """One optimiser step on the host-class copy changes the same weights by the same amounts, and the host's
    module is left untouched (peft needs torch layers: the private copy gets nn.Linear holding the same weights)."""
    torch.manual_seed(0)
    plain = Block()
    hosted = host_copy(plain)
    x = torch.randn(2, 4, 3, 3)
    results = []
    for unet in (plain, hosted):
        original = copy.deepcopy(unet.state_dict())
        torch.manual_seed(1)  # peft draws its LoRA down-weights
        tuned, params = make_trainable(unet, "cross_attn", rank)
        for p in params:  # peft starts LoRA up-weights at zero: give them a value so the step moves everything
            if p.abs().sum() == 0:
                p.data.normal_()
        tuned(x).square().mean().backward()
        torch.optim.SGD(params, lr=0.1).step()
        results.append((tuned(x).detach(), weight_deltas(unet, tuned, "cross_attn") if rank is None else None))
        assert all(torch.equal(v, unet.state_dict()[k]) for k, v in original.items())  # the input is untouched
    assert torch.allclose(results[0][0], results[1][0], atol=1e-6)
    if rank is None:
        for name in ("attn2.to_k", "attn2.to_v"):
            assert torch.allclose(results[0][1][name][0], results[1][1][name][0], atol=1e-6)
            assert results[0][1][name][0].abs().sum() > 0


def test_a_host_layer_holding_more_than_weight_and_bias_is_refused_for_lora():
    block = host_copy(Block())
    block.attn2.to_k.scale_weight = nn.Parameter(torch.ones(1))  # e.g. Forge's scaled fp8 weights
    with pytest.raises(ErasureInputError) as err:
        make_trainable(block, "cross_attn", rank=2)
    assert "scale_weight" in err.value.problem and "rank to 0" in err.value.fix


def test_tensors_a_host_hangs_on_modules_are_shared_by_the_trainable_copy():
    """A1111's Lora network keeps a backup of every weight it patched on the module: a copy must not duplicate it."""
    block = Block()
    block.ff.network_weights_backup = block.ff.weight.detach().clone()
    tuned, _ = make_trainable(block, "cross_attn", rank=None)
    assert tuned.ff.network_weights_backup is block.ff.network_weights_backup
    assert tuned.ff.weight.data_ptr() == block.ff.weight.data_ptr()  # untrained weights share storage too
    assert tuned.attn2.to_k.weight.data_ptr() != block.attn2.to_k.weight.data_ptr()  # trained ones are copied
