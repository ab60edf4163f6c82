"""Loading is offline only: a missing local config is a clear error, never a download."""
import pytest
import torch
from safetensors.torch import save_file

from erasure_core.errors import ErasureInputError
from erasure_core.model import load_diffusers_model


def test_missing_path(tmp_path):
    with pytest.raises(ErasureInputError, match="model: .* does not exist"):
        load_diffusers_model(tmp_path / "nope")


def test_folder_without_model_index(tmp_path):
    with pytest.raises(ErasureInputError, match="model_index.json"):
        load_diffusers_model(tmp_path)


def test_single_file_without_config_is_refused_before_any_download(tmp_path):
    ckpt = tmp_path / "model.safetensors"
    save_file({"model.diffusion_model.out.2.weight": torch.zeros(4, 320, 3, 3)}, str(ckpt))
    with pytest.raises(ErasureInputError, match="config: .*local diffusers folder"):
        load_diffusers_model(ckpt)


def test_pickle_checkpoint_is_refused(tmp_path):
    ckpt = tmp_path / "model.ckpt"
    torch.save({"state_dict": {}}, ckpt)
    with pytest.raises(ErasureInputError, match="never opened"):
        load_diffusers_model(ckpt)
