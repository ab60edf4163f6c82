"""Sampling a (possibly erased) UNet driven by a diffusers ControlNet, the way ComfyUI applies one.

The erasure lives in the UNet's weights; a ControlNet is a separate network whose residuals are
added to the UNet's skip connections. `ControlledUNet` joins the two behind the UNet's own call
signature, so every sampler that takes a UNet (erasure_core.sampling) samples under control
unchanged, and the model interface needs nothing new.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .erasure_file import apply_erasure, layer_shapes, split_key
from .errors import ErasureInputError

# SD-family ControlNets read their hint at 8x the latent's side (their hint encoder has three stride-2
# convolutions); ComfyUI resizes any control image to that size with this interpolation, and so do we.
HINT_SCALE = 8
HINT_RESIZE = "nearest-exact"


def prepare_hint(images: torch.Tensor, latent_size: tuple[int, int]) -> torch.Tensor:
    """(N, 3, H, W) control images in [0, 1] -> the hint a ControlNet reads for latents of `latent_size`."""
    h, w = latent_size
    return F.interpolate(images.float(), size=(h * HINT_SCALE, w * HINT_SCALE), mode=HINT_RESIZE)


def check_controlnet_fits(model, controlnet: nn.Module) -> None:
    """Refuse a ControlNet made for another model family (e.g. the toy world's SD1 one on an SDXL model)."""
    unet_width, control_width = model.unet.config.cross_attention_dim, controlnet.config.cross_attention_dim
    unet_sdxl, control_sdxl = (getattr(m.config, "addition_embed_type", None) == "text_time"
                               for m in (model.unet, controlnet))
    if unet_width != control_width or unet_sdxl != control_sdxl:
        raise ErasureInputError("controlnet", f"was made for another model family (text width {control_width}, "
                                f"{'SDXL' if control_sdxl else 'SD1.x/2.x'}-type) than the model's UNet (text width "
                                f"{unet_width}, {'SDXL' if unet_sdxl else 'SD1.x/2.x'}-type)",
                                "use a ControlNet made for this model's family")


class ControlledUNet(nn.Module):
    """A UNet with a ControlNet's residuals added, called like the UNet: (sample, t, encoder_hidden_states).

    `hint` holds one control image per sample of a call, or one per group that the call's batch
    repeats (classifier-free guidance doubles the batch: [uncond..., cond...]); the control is
    applied to every branch, as ComfyUI's ControlNetApplyAdvanced and diffusers' pipeline do.
    """

    def __init__(self, unet: nn.Module, controlnet: nn.Module, hint: torch.Tensor, scale: float = 1.0):
        super().__init__()
        self.unet, self.controlnet, self.hint, self.scale = unet, controlnet, hint, scale
        self.config = unet.config

    def forward(self, sample, timestep, encoder_hidden_states, **kwargs):
        hint = self.hint.to(sample.device, sample.dtype)
        if hint.shape[0] != sample.shape[0]:
            hint = hint.repeat(sample.shape[0] // hint.shape[0], 1, 1, 1)
        down, mid = self.controlnet(sample, timestep, encoder_hidden_states=encoder_hidden_states,
                                    controlnet_cond=hint, conditioning_scale=self.scale, return_dict=False)
        return self.unet(sample, timestep, encoder_hidden_states=encoder_hidden_states,
                         down_block_additional_residuals=down, mid_block_additional_residual=mid, **kwargs)


def erase_controlnet(controlnet: nn.Module, erasure: dict[str, torch.Tensor], strength: float = 1.0) -> nn.Module:
    """A copy of `controlnet` with the erasure applied to the layers it shares with the UNet.

    A ControlNet's encoder is a trained copy of the UNet's down and middle blocks, text cross-attention included:
    it reads the prompt too, and its residuals can draw back part of a concept that the erased UNet no longer
    draws. The erasure's weight change on the ControlNet's copies of those layers (same names) closes that path;
    the layers only the UNet has (its up blocks and output) are skipped. `controlnet` is left untouched."""
    shared = layer_shapes(controlnet)
    own = {key: tensor for key, tensor in erasure.items() if split_key(key)[0] in shared}
    if not own:
        raise ErasureInputError("controlnet", "shares no layer with the erasure (made for another model family?)",
                                "use a ControlNet made for the erased model's family")
    return apply_erasure(controlnet, own, strength).requires_grad_(False).eval()


def load_controlnet(path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
    """A diffusers ControlNetModel from a local folder (config.json + safetensors), offline."""
    from diffusers import ControlNetModel

    path = Path(path)
    if not (path / "config.json").exists():
        raise ErasureInputError("controlnet", f"{path} is not a diffusers ControlNet folder (no config.json)",
                                "point at the folder that holds config.json and diffusion_pytorch_model.safetensors")
    if not any(path.glob("*.safetensors")):
        raise ErasureInputError("controlnet", f"{path} holds no .safetensors weights",
                                "convert the ControlNet to .safetensors first (pickles are never opened)")
    controlnet = ControlNetModel.from_pretrained(path, local_files_only=True, use_safetensors=True, torch_dtype=dtype)
    return controlnet.to(device).requires_grad_(False).eval()


def load_control_image(path: str | Path) -> torch.Tensor:
    """A PNG/JPEG control image -> (1, 3, H, W) in [0, 1] (RGB)."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    try:
        with Image.open(path) as image:
            rgb = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    except (FileNotFoundError, UnidentifiedImageError, OSError) as exc:
        raise ErasureInputError("control image", f"{path} could not be read as an image ({exc})",
                                "give a PNG or JPEG file") from None
    return torch.from_numpy(rgb).permute(2, 0, 1)[None]


@dataclass
class Control:
    """A ControlNet, the control image for every prompt, and its strength: what sampling under control needs."""

    controlnet: nn.Module
    image: torch.Tensor  # (1, 3, H, W) in [0, 1]
    scale: float = 1.0
    erase_controlnet: bool = True  # an erased model's ControlNet gets the erasure too (erase_controlnet)

    def for_erasure(self, erasure: dict[str, torch.Tensor]) -> "Control":
        """The control an erased model is sampled with: the ControlNet with the same erasure, unless kept as is."""
        if not self.erase_controlnet:
            return self
        return replace(self, controlnet=erase_controlnet(self.controlnet, erasure))

    def sampling_kwargs(self) -> dict:
        """Keyword arguments for erasure_core.sampling.sample_images."""
        return dict(controlnet=self.controlnet, control_image=self.image, control_scale=self.scale)
