"""Bad input: each answered with a message that names the field and the fix (README "Bad input")."""
import math
import os

import pytest
import torch

from erasure_core.errors import ErasureInputError, ErasureOutOfMemory, NonFiniteLoss
from erasure_core.methods import CGConfig, DTConfig
from erasure_core.methods.dt import check_images
from erasure_core.safe_files import atomic_path
from erasure_core.training import optimise


def _validate(cls=CGConfig, **kw):
    options = dict(concepts=["circle"], steps=10)
    options.update(kw)
    cls(**options).validate()


@pytest.mark.parametrize("concept", ["", "   ", "\n"])
def test_empty_concept(concept):
    with pytest.raises(ErasureInputError, match="^concept: is empty. Fix: type the concept"):
        _validate(concepts=[concept])


def test_alternative_equal_to_concept():
    with pytest.raises(ErasureInputError, match="^alternative: is the concept itself"):
        _validate(alternatives=["Circle "])


def test_one_alternative_per_concept():
    with pytest.raises(ErasureInputError, match="^alternative: 2 alternatives for 1 concepts"):
        _validate(alternatives=["a", "b"])


@pytest.mark.parametrize("grid", [1, 0, -3])
def test_grid_below_two(grid):
    with pytest.raises(ErasureInputError, match="^grid size"):
        _validate(DTConfig, grid=grid)


def test_grid_above_image_side():
    with pytest.raises(ErasureInputError, match="^grid size: 40 is larger than the image side"):
        check_images(torch.rand(2, 3, 32, 32), 40)


def test_images_of_mixed_channel_counts():
    with pytest.raises(ErasureInputError, match="^images: expected RGB"):
        check_images(torch.rand(2, 4, 32, 32), 4)


def test_images_of_mixed_sizes_from_a_list():
    from erasure_core.images import stack_images

    with pytest.raises(ErasureInputError, match="^images: .*sizes differ"):
        stack_images([torch.rand(3, 32, 32), torch.rand(3, 40, 32)])
    with pytest.raises(ErasureInputError, match="^images: .*channel"):
        stack_images([torch.rand(3, 32, 32), torch.rand(1, 32, 32)])


@pytest.mark.parametrize("steps", [0, -5])
def test_steps_not_positive(steps):
    with pytest.raises(ErasureInputError, match="^steps: must be a whole number from 1 to 100000"):
        optimise([torch.nn.Parameter(torch.zeros(1))], lambda s, n: torch.zeros(()), steps, 1e-4, torch.device("cpu"))


@pytest.mark.parametrize("lr", [0.0, -1e-4, math.nan, 5.0, math.inf])
def test_bad_learning_rate(lr):
    with pytest.raises(ErasureInputError, match="^learning rate: must be a number in"):
        optimise([torch.nn.Parameter(torch.zeros(1))], lambda s, n: torch.zeros(()), 3, lr, torch.device("cpu"))


def test_nan_loss_stops_training():
    p = torch.nn.Parameter(torch.ones(2))
    with pytest.raises(NonFiniteLoss, match="lower the learning rate"):
        optimise([p], lambda s, n: p.sum() * (math.nan if s == 2 else 1.0), 5, 1e-3, torch.device("cpu"))


def test_out_of_memory_gives_advice():
    def oom(step, rows):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    with pytest.raises(ErasureOutOfMemory, match="LoRA .*smaller batch size.*gradient checkpointing"):
        optimise([torch.nn.Parameter(torch.zeros(1))], oom, 3, 1e-4, torch.device("cpu"))


def test_output_folder_not_writable(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "access", lambda path, mode: False)
    with pytest.raises(ErasureInputError, match="^output: the folder .* is not writable"):
        with atomic_path(tmp_path / "x.safetensors"):
            pass


def test_unknown_parameter_group():
    with pytest.raises(ErasureInputError, match="^parameter group: unknown group 'everything'"):
        _validate(group="everything")


def test_bad_rank():
    with pytest.raises(ErasureInputError, match="^rank: must be a whole number"):
        _validate(rank=0)


def test_nan_loss_in_an_erasure_leaves_the_model_untouched(toy_model, monkeypatch):
    """Two real updates, then a NaN loss: the run stops with the advice and the input UNet is bit-identical."""
    from erasure_core.methods import cg

    before = {k: v.clone() for k, v in toy_model.unet.state_dict().items()}
    calls, real_loss = [], cg.cg_loss

    def loss_turning_nan(*args, **kwargs):
        calls.append(1)
        return real_loss(*args, **kwargs) * (math.nan if len(calls) == 3 else 1.0)

    monkeypatch.setattr(cg, "cg_loss", loss_turning_nan)
    with pytest.raises(NonFiniteLoss, match="^the loss became nan at step 3; the input model is untouched"):
        cg.erase_cg(toy_model, CGConfig(concepts=["circle"], steps=5, lr=1e-2, sample_steps=2, batch_size=2,
                                        trajectories_per_prompt=1, templates=["a red solid {}"]))
    assert len(calls) == 3
    after = toy_model.unet.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in before.items())
