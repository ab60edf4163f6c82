"""A full-size Stable Diffusion 1.5 checkpoint with random weights, in the single-file ldm layout the webuis
load from models/Stable-diffusion (`model.diffusion_model.*`, `first_stage_model.*`,
`cond_stage_model.transformer.*`, fp16, about 2 GB). Layer shapes come from ComfyUI's ldm classes (the
webuis' own layout) and CLIP-L's; values from tests/comfy/checkpoints.random_like.

    python tests/webui/sd15_checkpoint.py OUT.safetensors      (needs the ComfyUI of tests/comfy_setup.sh)
"""
from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SD15_VAE = dict(double_z=True, z_channels=4, resolution=256, in_channels=3, out_ch=3, ch=128, ch_mult=[1, 2, 4, 4],
                num_res_blocks=2, attn_resolutions=[], dropout=0.0)


def write_sd15(path: Path, seed: int = 0) -> Path:
    sys.path[:0] = [str(HERE.parent), str(HERE.parent / "comfy")]
    from comfy_paths import import_comfy

    reason = import_comfy()
    if reason:
        raise RuntimeError(reason)
    import comfy.ops
    from comfy.ldm.models.autoencoder import AutoencoderKL
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel
    from safetensors.torch import save_file

    from checkpoints import clip_l_shapes, meta_shapes, random_like
    from erasure_core.backends.comfy_toyworld import unet_config_for
    from erasure_core.backends.webui import SD1_DIFFUSERS_CONFIG

    unet_config = dict(unet_config_for(dict(SD1_DIFFUSERS_CONFIG)), num_heads=8)
    unet = meta_shapes(lambda: UNetModel(**unet_config, operations=comfy.ops.disable_weight_init))
    vae = meta_shapes(lambda: AutoencoderKL(ddconfig=SD15_VAE, embed_dim=4))
    sd = {f"model.diffusion_model.{k}": v for k, v in random_like(unet, seed).items()}
    sd.update({f"first_stage_model.{k}": v for k, v in random_like(vae, seed + 1).items()})
    sd.update({f"cond_stage_model.transformer.{k}": v for k, v in random_like(clip_l_shapes(), seed + 2).items()})
    save_file(sd, str(path))
    return Path(path)


if __name__ == "__main__":
    print(write_sd15(Path(sys.argv[1])))
