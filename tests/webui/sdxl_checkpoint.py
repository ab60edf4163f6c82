"""A small SDXL-architecture checkpoint with random weights for the real Automatic1111, in the single-file sgm layout
it loads from models/Stable-diffusion, with the .yaml beside it that A1111 reads first (modules/sd_models_config:
a config next to the checkpoint wins over guessing one from the keys).

SDXL's real conditioning, at full size: CLIP-L (`conditioner.embedders.0.transformer.*`) and OpenCLIP bigG's text
tower (`conditioner.embedders.1.model.*`, 695M parameters), context 2048, pooled 1280, the size/crop embedders. The
UNet is SDXL's layout (three levels, attention from the second, linear projections, 2816 vector input) made narrow:
64 channels instead of 320, one transformer per block instead of 2/10, so that a webui on two CPU cores erases from
it in a minute. fp16, about 1.8 GB. A1111's own SDXL config (its repositories' `sd_xl_base.yaml`) is the template:
only the UNet's width and depth change. With --full the UNet is SDXL base's own size (2.6B parameters, 6.8 GB in
all): Forge ignores the .yaml and recognises SDXL by the UNet's shapes (huggingface_guess), so it needs that one.

    python tests/webui/sdxl_checkpoint.py WEBUI_FOLDER OUT.safetensors [--full]
    (needs the ComfyUI of tests/comfy_setup.sh)
"""
from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SD_VAE = dict(double_z=True, z_channels=4, resolution=256, in_channels=3, out_ch=3, ch=128, ch_mult=[1, 2, 4, 4],
              num_res_blocks=2, attn_resolutions=[], dropout=0.0)
# What changes in A1111's sd_xl_base.yaml's UNet: the width (320 -> 64) and the transformers per level (1, not 2/10).
NARROW_UNET = {"model_channels": 64, "transformer_depth": [1, 1, 1], "use_checkpoint": False}


def sdxl_yaml(webui_folder: Path, full: bool = False) -> dict:
    """A1111's SDXL base config with the narrow UNet (or its own, without gradient checkpointing)."""
    import yaml

    base = webui_folder / "repositories" / "generative-models" / "configs" / "inference" / "sd_xl_base.yaml"
    config = yaml.safe_load(base.read_text())
    config["model"]["params"]["network_config"]["params"].update({"use_checkpoint": False} if full else NARROW_UNET)
    return config


def unet_shapes(unet_params: dict) -> dict:
    """The sgm UNet's tensor shapes, from ComfyUI's ldm UNetModel (the same layout and names)."""
    import comfy.ops
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    from checkpoints import meta_shapes

    levels, blocks = len(unet_params["channel_mult"]), unet_params["num_res_blocks"]
    # sgm builds transformers only at the downsampling factors in attention_resolutions; ComfyUI reads depth 0 there
    depth = [d if 2 ** level in unet_params["attention_resolutions"] else 0
             for level, d in enumerate(unet_params["transformer_depth"])]
    config = {k: v for k, v in unet_params.items() if k not in ("attention_resolutions", "spatial_transformer_attn_type",
                                                                "use_checkpoint")}
    config.update(image_size=32, num_res_blocks=[blocks] * levels,
                  transformer_depth=[d for d in depth for _ in range(blocks)],
                  transformer_depth_output=[d for d in depth for _ in range(blocks + 1)], transformer_depth_middle=depth[-1])
    return meta_shapes(lambda: UNetModel(**config, operations=comfy.ops.disable_weight_init))


def bigg_shapes() -> dict:
    """OpenCLIP ViT-bigG-14's text tower as SDXL checkpoints store it, renamed by ComfyUI's own SDXL saver."""
    import comfy.supported_models
    import torch
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    from checkpoints import meta_shapes

    config = CLIPTextConfig(hidden_size=1280, intermediate_size=5120, num_attention_heads=20, num_hidden_layers=32,
                            vocab_size=49408, max_position_embeddings=77, hidden_act="gelu", projection_dim=1280)
    shapes = meta_shapes(lambda: CLIPTextModelWithProjection(config))
    meta = {f"clip_g.transformer.{k if k.startswith(('text_model.', 'text_projection')) else 'text_model.' + k}":
            torch.empty(v, device="meta") for k, v in shapes.items() if "position_ids" not in k}
    saved = comfy.supported_models.SDXL({}).process_clip_state_dict_for_saving(meta)
    return {k: v.shape for k, v in saved.items()}


def write_sdxl(webui_folder: Path, path: Path, full: bool = False, seed: int = 0) -> Path:
    sys.path[:0] = [str(HERE.parent), str(HERE.parent / "comfy")]
    from comfy_paths import import_comfy

    reason = import_comfy()
    if reason:
        raise RuntimeError(reason)
    import yaml
    from comfy.ldm.models.autoencoder import AutoencoderKL
    from safetensors.torch import save_file

    from checkpoints import clip_l_shapes, meta_shapes, random_like

    config = sdxl_yaml(Path(webui_folder), full)
    unet = unet_shapes(config["model"]["params"]["network_config"]["params"])
    vae = meta_shapes(lambda: AutoencoderKL(ddconfig=SD_VAE, embed_dim=4))
    sd = {f"model.diffusion_model.{k}": v for k, v in random_like(unet, seed).items()}
    sd.update({f"first_stage_model.{k}": v for k, v in random_like(vae, seed + 1).items()})
    sd.update({f"conditioner.embedders.0.transformer.{k}": v for k, v in random_like(clip_l_shapes(), seed + 2).items()})
    sd.update(random_like(bigg_shapes(), seed + 3))
    path = Path(path)
    save_file(sd, str(path))
    path.with_suffix(".yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return path


if __name__ == "__main__":
    print(write_sdxl(Path(sys.argv[1]), Path(sys.argv[2]), full="--full" in sys.argv[3:]))
