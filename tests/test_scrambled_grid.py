"""Scrambled Grid: same pixels, new arrangement, deterministic, defined on odd sizes."""
import pytest
import torch

from erasure_core.errors import ErasureInputError
from erasure_core.scrambled_grid import scramble_grid


def _images(n=3, c=3, h=32, w=32, seed=0):
    return torch.rand(n, c, h, w, generator=torch.Generator().manual_seed(seed))


def _sorted_pixels(x):
    return x.flatten(2).sort(dim=2).values


def test_same_multiset_of_pixels_different_arrangement():
    x = _images()
    y = scramble_grid(x, 4, torch.Generator().manual_seed(1))
    assert torch.equal(_sorted_pixels(x), _sorted_pixels(y))
    assert not torch.equal(x, y)


def test_patches_are_moved_whole():
    x = _images(n=1)
    y = scramble_grid(x, 4, torch.Generator().manual_seed(3))
    patches_in = {tuple(x[0, :, r:r + 8, c:c + 8].flatten().tolist()) for r in range(0, 32, 8) for c in range(0, 32, 8)}
    patches_out = {tuple(y[0, :, r:r + 8, c:c + 8].flatten().tolist()) for r in range(0, 32, 8) for c in range(0, 32, 8)}
    assert patches_in == patches_out


def test_deterministic_for_a_seed_and_varies_with_it():
    x = _images()
    a = scramble_grid(x, 4, torch.Generator().manual_seed(7))
    b = scramble_grid(x, 4, torch.Generator().manual_seed(7))
    c = scramble_grid(x, 4, torch.Generator().manual_seed(8))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_each_image_gets_its_own_permutation():
    x = _images(n=1).repeat(4, 1, 1, 1)
    y = scramble_grid(x, 4, torch.Generator().manual_seed(0))
    assert len({tuple(img.flatten().tolist()) for img in y}) > 1


@pytest.mark.parametrize("h,w,g", [(33, 35, 4), (30, 31, 7), (17, 9, 2)])
def test_odd_sizes_keep_border_in_place(h, w, g):
    x = _images(n=2, h=h, w=w)
    y = scramble_grid(x, g, torch.Generator().manual_seed(0))
    assert y.shape == x.shape
    assert torch.equal(_sorted_pixels(x), _sorted_pixels(y))
    ph, pw = h // g, w // g
    top, left = (h - ph * g) // 2, (w - pw * g) // 2
    mask = torch.ones(h, w, dtype=torch.bool)
    mask[top:top + ph * g, left:left + pw * g] = False
    assert torch.equal(x[..., mask], y[..., mask])


def test_input_is_not_modified():
    x = _images()
    before = x.clone()
    scramble_grid(x, 4, torch.Generator().manual_seed(0))
    assert torch.equal(x, before)


@pytest.mark.parametrize("g", [1, 0, 33])
def test_bad_grid_names_the_field(g):
    with pytest.raises(ErasureInputError, match="grid"):
        scramble_grid(_images(), g)
