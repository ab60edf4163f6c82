"""The toy world (and its ControlNet) as ComfyUI objects: MODEL, CLIP, VAE and CONTROL_NET built with ComfyUI's
own classes from the shipped diffusers weights; an SDXL-architecture toy (toyworld/build_xl.py) likewise, in
ComfyUI's SDXL model and SDXL CLIP classes. Import only inside ComfyUI (imports `comfy`).

Why not a checkpoint file for CheckpointLoaderSimple / ControlNetLoader: ComfyUI recognises SD1.x
only at full size (model_channels 320, CLIP-L text encoder, SD's VAE), and its UNet, ControlNet
and VAE code hard-code GroupNorm(32 groups); the toy world is 32-64 channels wide with 16 groups,
a 2-layer text encoder with its own vocabulary, and a VAE that halves the side. So the same
classes ComfyUI would build are built here with the toy world's shapes, group count and latent
scale, and its weights are loaded into them (ComfyUI detects SDXL only at full size too); everything
downstream (CLIPTextEncode, KSampler, ControlNetApplyAdvanced, VAEDecode, the erase nodes) is ComfyUI's own.
"""
from __future__ import annotations

import functools
import re
from pathlib import Path

import torch
from torch import nn

import comfy.cldm.cldm
import comfy.controlnet
import comfy.latent_formats
import comfy.model_patcher
import comfy.ops
import comfy.sd
import comfy.sd1_clip
import comfy.supported_models
import comfy.supported_models_base
import comfy.utils

CPU = torch.device("cpu")


def unet_config_for(d: dict) -> dict:
    """ComfyUI's unet_config for a diffusers UNet2DConditionModel config: SD1-type, or SDXL-type (`text_time`)."""
    levels = len(d["block_out_channels"])
    layers = d["layers_per_block"]
    attn = [t.startswith("CrossAttn") for t in d["down_block_types"]]
    depth = d.get("transformer_layers_per_block", 1)
    depth = [depth] * levels if isinstance(depth, int) else list(depth)
    down_depth = [depth[i] if attn[i] else 0 for i in range(levels)]
    heads = d["attention_head_dim"]  # diffusers' SD1 and SDXL configs name the head count so
    config = {
        "image_size": d.get("sample_size"), "in_channels": d["in_channels"], "out_channels": d["out_channels"],
        "model_channels": d["block_out_channels"][0], "num_res_blocks": [layers] * levels,
        "channel_mult": [c // d["block_out_channels"][0] for c in d["block_out_channels"]],
        "transformer_depth": [down_depth[i] for i in range(levels) for _ in range(layers)],
        # output blocks: layers + 1 per level, listed from the highest resolution (comfy pops from the end)
        "transformer_depth_output": [down_depth[i] for i in range(levels) for _ in range(layers + 1)],
        "transformer_depth_middle": depth[-1], "context_dim": d["cross_attention_dim"],
        "use_linear_in_transformer": bool(d.get("use_linear_projection", False)), "use_spatial_transformer": True,
        "legacy": False, "adm_in_channels": None, "use_checkpoint": False,
        "use_temporal_attention": False, "use_temporal_resblock": False,
        "num_heads": heads if isinstance(heads, int) else heads[0], "num_head_channels": -1,
    }
    if d.get("addition_embed_type") == "text_time":
        # SDXL: one head width at every level (ComfyUI's num_head_channels), and the `y` input (pooled + sizes)
        heads = [heads] * levels if isinstance(heads, int) else list(heads)
        head_channels = {c // h for c, h in zip(d["block_out_channels"], heads)}
        if len(head_channels) != 1:
            raise ValueError(f"ComfyUI's SDXL UNet has one head width at every level, this one has {head_channels}")
        config.update(adm_in_channels=d["projection_class_embeddings_input_dim"], num_classes="sequential",
                      num_heads=-1, num_head_channels=head_channels.pop())
    return config


def group_norm_ops(groups: int):
    """ComfyUI's weight-init-free ops with GroupNorm(`groups`, ...) instead of its hard-coded 32 groups."""
    class Ops(comfy.ops.disable_weight_init):
        class GroupNorm(comfy.ops.disable_weight_init.GroupNorm):
            def __init__(self, num_groups, num_channels, *args, **kwargs):
                super().__init__(groups, num_channels, *args, **kwargs)
    return Ops


def set_group_norms(module: nn.Module, groups: int) -> nn.Module:
    """Give every GroupNorm in `module` `groups` groups (for ComfyUI modules that call torch's GroupNorm directly)."""
    for m in module.modules():
        if isinstance(m, nn.GroupNorm):
            m.num_groups = groups
    return module


def build_model(diffusers_unet, latent_scale: float = 0.18215):
    """A ComfyUI MODEL (ModelPatcher) holding exactly `diffusers_unet`'s weights; latents scaled by `latent_scale`."""
    return _patcher_holding(comfy.supported_models.SD15(unet_config_for(dict(diffusers_unet.config))), diffusers_unet,
                            latent_scale)


def build_xl_model(diffusers_unet, latent_scale: float):
    """A ComfyUI SDXL MODEL (comfy.model_base.SDXL, whose encode_adm makes `y` from the pooled embedding and the
    sizes) holding exactly an SDXL-type diffusers UNet's weights; latents scaled by `latent_scale`."""
    config = unet_config_for(dict(diffusers_unet.config))
    model_config = comfy.supported_models.SDXL(config)
    model_config.unet_config.update(num_heads=-1, num_head_channels=config["num_head_channels"])  # not SDXL's 64
    return _patcher_holding(model_config, diffusers_unet, latent_scale)


def _patcher_holding(model_config, diffusers_unet, latent_scale: float):
    model_config.custom_operations = group_norm_ops(diffusers_unet.config.norm_num_groups)
    model_config.latent_format = comfy.latent_formats.SD15(scale_factor=latent_scale)
    model_config.set_inference_dtype(torch.float32, None)
    base = model_config.get_model({})
    names = comfy.utils.unet_to_diffusers(base.model_config.unet_config)
    base.diffusion_model.load_state_dict({names[k]: v for k, v in diffusers_unet.state_dict().items()}, strict=True)
    base.diffusion_model.requires_grad_(False)
    return comfy.model_patcher.ModelPatcher(base, load_device=CPU, offload_device=CPU)


def build_controlnet(diffusers_controlnet):
    """A ComfyUI CONTROL_NET (comfy.controlnet.ControlNet over comfy.cldm's ControlNet) holding exactly a diffusers
    ControlNetModel's weights; ControlNetApplyAdvanced applies it as any SD1.x ControlNet."""
    d = dict(diffusers_controlnet.config)
    unet_config = unet_config_for({**d, "out_channels": d["in_channels"]})  # the UNet it was made from
    names = comfy.utils.unet_to_diffusers(unet_config)
    config = {k: v for k, v in unet_config.items() if k not in ("out_channels", "transformer_depth_output")}
    names["controlnet_mid_block.weight"], names["controlnet_mid_block.bias"] = ("middle_block_out.0.weight",
                                                                               "middle_block_out.0.bias")
    sd = diffusers_controlnet.state_dict()
    for key in sd:  # the parts ComfyUI names its own way (as comfy.controlnet does for diffusers files)
        if m := re.fullmatch(r"controlnet_down_blocks\.(\d+)\.(weight|bias)", key):
            names[key] = f"zero_convs.{m[1]}.0.{m[2]}"
    blocks = len(diffusers_controlnet.controlnet_cond_embedding.blocks)
    for s in ("weight", "bias"):
        names[f"controlnet_cond_embedding.conv_in.{s}"] = f"input_hint_block.0.{s}"
        for i in range(blocks):
            names[f"controlnet_cond_embedding.blocks.{i}.{s}"] = f"input_hint_block.{2 * (i + 1)}.{s}"
        names[f"controlnet_cond_embedding.conv_out.{s}"] = f"input_hint_block.{2 * (blocks + 1)}.{s}"
    control = comfy.cldm.cldm.ControlNet(hint_channels=d["conditioning_channels"], dtype=torch.float32, device=CPU,
                                         operations=group_norm_ops(d["norm_num_groups"]), **config)
    control.load_state_dict({names[k]: v for k, v in sd.items()}, strict=True)
    return comfy.controlnet.ControlNet(control.requires_grad_(False), load_device=CPU, manual_cast_dtype=None)


def ldm_vae_state_dict(diffusers_vae) -> dict[str, torch.Tensor]:
    """A diffusers AutoencoderKL's weights under ldm names (ComfyUI's key map, renumbered for its depth)."""
    from comfy.diffusers_convert import convert_vae_state_dict

    # ComfyUI's map numbers decoder levels for SD's four (ldm up.3 = diffusers up_blocks.0); ldm numbers this depth's.
    shift = 4 - len(diffusers_vae.config.block_out_channels)
    return {re.sub(r"^decoder\.up\.(\d+)\.", lambda m: f"decoder.up.{int(m[1]) - shift}.", k): v
            for k, v in convert_vae_state_dict(diffusers_vae.state_dict()).items()}


def build_vae(diffusers_vae):
    """A ComfyUI VAE (its own AutoencoderKL code) holding exactly a diffusers AutoencoderKL's weights."""
    c = dict(diffusers_vae.config)
    levels = len(c["block_out_channels"])
    sd = ldm_vae_state_dict(diffusers_vae)
    ddconfig = {"double_z": True, "z_channels": c["latent_channels"], "resolution": c["sample_size"],
                "in_channels": c["in_channels"], "out_ch": c["out_channels"], "ch": c["block_out_channels"][0],
                "ch_mult": [b // c["block_out_channels"][0] for b in c["block_out_channels"]],
                "num_res_blocks": c["layers_per_block"], "attn_resolutions": [], "dropout": 0.0}
    vae = comfy.sd.VAE(sd=sd, config={"params": {"ddconfig": ddconfig, "embed_dim": c["latent_channels"]}},
                       device=CPU, dtype=torch.float32)
    set_group_norms(vae.first_stage_model, c["norm_num_groups"])
    vae.downscale_ratio = vae.upscale_ratio = 2 ** (levels - 1)
    vae.latent_channels = c["latent_channels"]
    return vae


def build_clip(text_encoder, tokenizer_dir: str | Path):
    """A ComfyUI CLIP (its SD1 tokenizer and CLIP code) holding a transformers CLIPTextModel and its tokenizer."""
    from transformers import CLIPTokenizerFast

    cfg = text_encoder.config
    text_config = dict(hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
                       num_attention_heads=cfg.num_attention_heads, num_hidden_layers=cfg.num_hidden_layers,
                       vocab_size=cfg.vocab_size, max_position_embeddings=cfg.max_position_embeddings,
                       hidden_act=cfg.hidden_act, layer_norm_eps=cfg.layer_norm_eps, projection_dim=cfg.projection_dim,
                       bos_token_id=cfg.bos_token_id, eos_token_id=cfg.eos_token_id, pad_token_id=cfg.pad_token_id)
    special = {"start": cfg.bos_token_id, "end": cfg.eos_token_id, "pad": cfg.pad_token_id}

    class TextModel(comfy.sd1_clip.SDClipModel):
        def __init__(self, device="cpu", dtype=None, model_options={}):
            super().__init__(device=device, dtype=dtype, textmodel_json_config=text_config, special_tokens=special,
                             return_projected_pooled=False, model_options=model_options)

    tokenizer = functools.partial(comfy.sd1_clip.SDTokenizer, tokenizer_path=str(tokenizer_dir),
                                  max_length=cfg.max_position_embeddings, embedding_size=cfg.hidden_size,
                                  tokenizer_class=CLIPTokenizerFast)
    target = comfy.supported_models_base.ClipTarget(functools.partial(comfy.sd1_clip.SD1Tokenizer, tokenizer=tokenizer),
                                                    functools.partial(comfy.sd1_clip.SD1ClipModel, clip_model=TextModel))
    clip = comfy.sd.CLIP(target, model_options={"dtype": torch.float32})
    sd = {(k if k.startswith("text_model.") else "text_model." + k): v for k, v in text_encoder.state_dict().items()}
    sd["text_projection.weight"] = torch.eye(cfg.hidden_size)  # unused: SD1 conditions on the hidden states
    key = "text_model.embeddings.token_embedding.weight"
    sd[key] = _clip_l_rows(sd[key])
    clip.load_sd(sd)
    return clip


def build_xl_clip(text_encoder, text_encoder_2, tokenizer_dir: str | Path):
    """A ComfyUI SDXL CLIP (its SDXL tokenizer and CLIP code: clip_l's penultimate hidden state; clip_g's penultimate
    hidden state and projected pooled output) holding an SDXL-type model's two transformers text encoders and their
    tokenizer, padding with the end token as the diffusers pipeline does."""
    import comfy.sdxl_clip
    from transformers import CLIPTokenizerFast

    encoders = {"l": text_encoder, "g": text_encoder_2}
    cfg = text_encoder.config
    special = {"start": cfg.bos_token_id, "end": cfg.eos_token_id, "pad": cfg.eos_token_id}

    def tokenizer(key):
        return comfy.sd1_clip.SDTokenizer(tokenizer_path=str(tokenizer_dir), max_length=cfg.max_position_embeddings,
                                          pad_with_end=True, embedding_size=encoders[key].config.hidden_size,
                                          embedding_key=f"clip_{key}", tokenizer_class=CLIPTokenizerFast)

    class Tokenizer(comfy.sdxl_clip.SDXLTokenizer):
        def __init__(self, embedding_directory=None, tokenizer_data={}):
            self.clip_l, self.clip_g = tokenizer("l"), tokenizer("g")

    class TextModels(comfy.sdxl_clip.SDXLClipModel):
        def __init__(self, device="cpu", dtype=None, model_options={}):
            nn.Module.__init__(self)
            common = dict(layer="hidden", layer_idx=-2, device=device, dtype=dtype, layer_norm_hidden_state=False,
                          special_tokens=special)
            self.clip_l = comfy.sd1_clip.SDClipModel(textmodel_json_config=_text_config(encoders["l"]),
                                                     return_projected_pooled=False, **common,
                                                     model_options={**model_options, "model_name": "clip_l"})
            self.clip_g = comfy.sd1_clip.SDClipModel(textmodel_json_config=_text_config(encoders["g"]),
                                                     return_projected_pooled=True, **common,
                                                     model_options={**model_options, "model_name": "clip_g"})
            self.dtypes = {dtype}

    clip = comfy.sd.CLIP(comfy.supported_models_base.ClipTarget(Tokenizer, TextModels),
                         model_options={"dtype": torch.float32})
    for key, encoder in encoders.items():
        sd = {(k if k.startswith(("text_model.", "text_projection")) else "text_model." + k): v
              for k, v in encoder.state_dict().items()}
        sd.setdefault("text_projection.weight", torch.eye(encoder.config.hidden_size))  # clip_l: unused
        transformer = getattr(clip.cond_stage_model, f"clip_{key}").transformer
        rows = "text_model.embeddings.token_embedding.weight"
        sd[rows] = _clip_l_rows(sd[rows])
        missing, unexpected = transformer.load_state_dict(sd, strict=False)
        if unexpected or [k for k in missing if "position_ids" not in k]:
            raise ValueError(f"the text encoder does not fit ComfyUI's CLIP: missing {missing}, "
                             f"unexpected {unexpected}")
    return clip


def _text_config(text_encoder) -> dict:
    """A transformers CLIP text config as the dict ComfyUI's CLIP text model reads."""
    return {k: v for k, v in text_encoder.config.to_dict().items() if not k.startswith("_")}


def _clip_l_rows(token_embedding: torch.Tensor) -> torch.Tensor:
    """ComfyUI's CLIP always has CLIP-L's 49408 token rows; the toy vocabulary's ids are the first rows."""
    return torch.cat([token_embedding, token_embedding.new_zeros(49408 - token_embedding.shape[0],
                                                                 token_embedding.shape[1])])


def load_toy_world():
    """(MODEL, CLIP, VAE) of the shipped toy world."""
    from ..model import load_diffusers_model
    from ..toyworld import MODEL_DIR

    toy = load_diffusers_model(MODEL_DIR)
    return (build_model(toy.unet, latent_scale=toy.vae_scale), build_clip(toy.text_encoder, MODEL_DIR / "tokenizer"),
            build_vae(toy.vae))


def load_toy_controlnet():
    """The shipped toy world's ControlNet as a ComfyUI CONTROL_NET."""
    from ..controlnet import load_controlnet
    from ..toyworld import CONTROLNET_DIR

    return build_controlnet(load_controlnet(CONTROLNET_DIR))

