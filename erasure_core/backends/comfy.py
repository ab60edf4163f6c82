"""The model interface over ComfyUI objects: a MODEL (ModelPatcher), a CLIP and a VAE.

Methods train on a deep copy of the ComfyUI UNet (`erasure_core.trainable`), so the MODEL that
ComfyUI caches is never written to; the result goes back into the graph as patches on a fresh
clone. Import this module only inside ComfyUI (it imports `comfy`).

SDXL-family MODELs (SDXL, its fine-tunes, SSD-1B, Vega: ComfyUI's `model_base.SDXL`) are supported:
their conditioning is the CLIP's penultimate states of both encoders plus `y`, which ComfyUI's own
`encode_adm` computes from the pooled output and the sizes, exactly as its samplers do.

Conventions that keep files portable between hosts: SD1.x/SD2.x erasure tensors leave this module
with diffusers-path kohya keys (`lora_unet_down_blocks_1_attentions_0_...`), SDXL ones with kohya's
SDXL (ldm-path) keys (`lora_unet_input_blocks_4_1_...`, erasure_core.layouts); those are the names
the CLI, the webui and ComfyUI's own LoraLoader all read, and the metadata fingerprint is the one
the diffusers backend computes for the same architecture.
"""
from __future__ import annotations

import contextlib
import functools

import torch
from torch import nn

import comfy.lora
import comfy.model_base
import comfy.model_management as mm
import comfy.utils

from .. import checks, erasure_file
from ..conditioning import Conditioning
from ..errors import ErasureInputError
from ..model import EpsilonFromPrediction
from ..trainable import ordinary_view
from .ldm import meta_diffusers_unet, scheduler_config_for

FINGERPRINT_KEY = "concept_eraser.unet_fingerprint"


def check_interrupt() -> None:
    """Raise ComfyUI's own interrupt exception if the user pressed Cancel (checked per UNet call)."""
    mm.throw_exception_if_processing_interrupted()


def unet_of(patcher) -> nn.Module:
    """The ldm UNetModel inside a MODEL, or a clear error (naming the model type) for those the methods cannot train."""
    base = getattr(patcher, "model", None)
    unet = getattr(base, "diffusion_model", None)
    config = getattr(getattr(base, "model_config", None), "unet_config", None) or {}
    is_unet = unet is not None and type(unet).__name__ == "UNetModel" and config.get("context_dim") \
        and config.get("in_channels", 4) == 4
    plain = config.get("adm_in_channels") is None  # SD1.x/SD2.x: text through cross-attention only
    if not (is_unet and (plain or is_sdxl(patcher))):
        raise ErasureInputError("model", f"a {type(base).__name__} model is not a Stable Diffusion 1.x/2.x or SDXL "
                                "UNet", "connect the MODEL of an SD1.x, SD2.x or SDXL checkpoint (SD3, Flux, the SDXL "
                                "refiner and other architectures are not supported)")
    return unet


def is_sdxl(patcher) -> bool:
    """An SDXL-family MODEL: ComfyUI's SDXL model class (its fine-tunes, SSD-1B and Vega use it too)."""
    return isinstance(getattr(patcher, "model", None), comfy.model_base.SDXL)


def schedule_of(patcher) -> tuple[torch.Tensor, bool]:
    """(ᾱ_t for t = 0..T-1, is v-prediction) from the MODEL's own sampling object: ᾱ = 1/(1+σ²)."""
    sampling = patcher.get_model_object("model_sampling")
    sigmas = getattr(sampling, "sigmas", None)
    if sigmas is None or sigmas.ndim != 1 or len(sigmas) < 2:
        raise ErasureInputError("model", "its noise schedule is not a discrete DDPM schedule",
                                "connect an SD1.x/SD2.x MODEL without a ModelSampling* override")
    kinds = {c.__name__ for c in type(sampling).__mro__}
    if "EPS" not in kinds and "V_PREDICTION" not in kinds:
        raise ErasureInputError("model", f"prediction type {type(sampling).__name__} is not supported",
                                "connect an epsilon- or v-prediction SD1.x/SD2.x MODEL")
    sigmas = sigmas.detach().double().cpu()
    return (1.0 / (1.0 + sigmas ** 2)).float(), "V_PREDICTION" in kinds


@contextlib.contextmanager
def out_of_place_clip_layers(transformer: nn.Module):
    """ComfyUI's CLIP layers add their residuals in place (`x += attn(norm(x))`), which autograd refuses when
    the text's embeddings need gradients (the attacks'). Inside this block every such layer computes the same
    sum out of place; outside, ComfyUI's own forward is back."""
    layers = [m for m in transformer.modules() if all(hasattr(m, a) for a in ("self_attn", "layer_norm1", "mlp",
                                                                              "layer_norm2"))]

    def forward_of(layer):
        def forward(x, mask=None, optimized_attention=None):
            x = x + layer.self_attn(layer.layer_norm1(x), mask, optimized_attention)
            return x + layer.mlp(layer.layer_norm2(x))
        return forward

    for layer in layers:
        layer.forward = forward_of(layer)
    try:
        yield
    finally:
        for layer in layers:
            del layer.forward


@contextlib.contextmanager
def ordinary_tensors(module: nn.Module, views: dict[int, torch.Tensor]):
    """ComfyUI's loader nodes run under inference mode, and autograd cannot save their weights (inference
    tensors) for a backward pass, which the attacks take through the text encoder. Inside this block every such
    parameter or buffer of `module` is an ordinary view of the same memory (trainable.ordinary_view, made once,
    kept in `views`); ComfyUI's own are put back after."""
    swapped = []
    for sub in module.modules():
        for table in (sub._parameters, sub._buffers):
            for name, value in list(table.items()):
                if value is not None and value.is_inference():
                    if id(value) not in views:
                        view = ordinary_view(value)
                        views[id(value)] = nn.Parameter(view, requires_grad=False) \
                            if isinstance(value, nn.Parameter) else view
                    swapped.append((table, name, value))
                    table[name] = views[id(value)]
    try:
        yield
    finally:
        for table, name, value in swapped:
            table[name] = value


class ComfyModel(EpsilonFromPrediction):
    """`erasure_core.model.DiffusionModel` over ComfyUI's MODEL, CLIP and VAE.

    `unet` is the MODEL's own ldm UNet, loaded through ComfyUI's memory management with the
    MODEL's patches applied; it is only read. `image_size` is the pixel size the methods draw
    the frozen model's images at (smaller is faster).
    """

    def __init__(self, patcher, clip=None, vae=None, image_size: int = 512):
        self.patcher, self.clip, self.vae = patcher, clip, vae
        self.unet = unet_of(patcher)
        self.sdxl = is_sdxl(patcher)
        self.alphas_cumprod, self.v_prediction = schedule_of(patcher)
        self.scheduler_config = scheduler_config_for(self.alphas_cumprod, self.v_prediction)
        self.device = patcher.load_device
        factor = int(getattr(vae, "downscale_ratio", 8)) if vae is not None and isinstance(
            getattr(vae, "downscale_ratio", 8), int) else 8
        if image_size % factor or image_size < factor * 2:
            raise ErasureInputError("image size", f"{image_size} px is not a multiple of {factor} (at least "
                                    f"{factor * 2})", f"use e.g. {max(factor * 2, image_size // factor * factor)}")
        side = image_size // factor
        self.latent_shape = (4, side, side)
        self.image_size = image_size
        self._text_cache: dict[str, torch.Tensor] = {}
        self._ordinary_views: dict[int, torch.Tensor] = {}  # ordinary_tensors' views of the CLIP's weights
        self.load()

    def diffusers_equivalent(self) -> nn.Module:
        """For the memory plan: the diffusers UNet of this MODEL's layout, on `meta`."""
        return meta_diffusers_unet(self.unet)

    # -- memory management -------------------------------------------------------------------
    def load(self) -> None:
        """Ask ComfyUI to put the MODEL (with its patches) fully on the device; a no-op when it is."""
        mm.load_models_gpu([self.patcher], force_full_load=True)

    @property
    def dtype(self) -> torch.dtype:
        base = self.patcher.model
        return getattr(base, "manual_cast_dtype", None) or base.get_dtype()

    # -- DiffusionModel ----------------------------------------------------------------------
    def predict(self, unet, latents, timesteps, text_embeddings):
        check_interrupt()
        if unet is self.unet:
            self.load()  # CLIP/VAE calls may have evicted it on small GPUs
        if timesteps.ndim == 0:
            timesteps = timesteps.expand(latents.shape[0])
        dtype = self.dtype
        inputs = dict(text_embeddings.to(self.device, dtype).parts) if isinstance(text_embeddings, Conditioning) \
            else {"context": text_embeddings.to(self.device, dtype)}
        return unet(latents.to(self.device, dtype), timesteps=timesteps.to(self.device).float(), **inputs).float()

    @torch.no_grad()
    def encode_text(self, prompts: list[str]) -> torch.Tensor | Conditioning:
        if self.clip is None:
            raise ErasureInputError("clip", "is not connected", "connect the CLIP output of your checkpoint loader")
        rows = [self._encode_one(p) for p in prompts]
        return torch.cat(rows).to(self.device)

    def _encode_one(self, prompt: str) -> torch.Tensor | Conditioning:
        if prompt not in self._text_cache:
            cond, pooled = self.clip.encode_from_tokens(self.clip.tokenize(prompt), return_pooled=True)
            # Long prompts give 77·k tokens; keep the first window like the diffusers backend does.
            cond = cond[:, :77].float().clone()
            if self.sdxl:
                self._text_cache[prompt] = self._sdxl_conditioning(prompt, cond, pooled.float().clone())
            else:
                self._text_cache[prompt] = cond
        return self._text_cache[prompt]

    def _sdxl_conditioning(self, prompt: str, cond: torch.Tensor, pooled: torch.Tensor) -> Conditioning:
        """SDXL's context and `y`. The empty prompt is zeros (context and pooled), the unconditional input SDXL
        was trained with (diffusers' force_zeros_for_empty_prompt, the webui's zeroed negative prompt); the
        sizes say "drawn at image_size, uncropped", as ComfyUI's samplers pass them for that latent size."""
        if not prompt.strip():
            cond, pooled = torch.zeros_like(cond), torch.zeros_like(pooled)
        side = self.image_size
        y = self.patcher.model.encode_adm(pooled_output=pooled, width=side, height=side, crop_w=0, crop_h=0,
                                          target_width=side, target_height=side)
        return Conditioning(context=cond, y=y.float().clone())

    # -- TokenEmbeddingText (erasure_core/model.py): the embedding-level attacks ---------------------------
    def _text_parts(self):
        """(the CLIP tokenizer, the text model) of the CLIP's first encoder (SD1: clip_l, SD2: clip_h)."""
        if self.clip is None:
            raise ErasureInputError("clip", "is not connected", "connect the CLIP output of your checkpoint loader")
        tokenizer, encoder = self.clip.tokenizer, self.clip.cond_stage_model
        inner_tokenizer = getattr(tokenizer, getattr(tokenizer, "clip", ""), None)
        inner_encoder = getattr(encoder, getattr(encoder, "clip", ""), None)
        if inner_tokenizer is None or inner_encoder is None or not hasattr(inner_encoder, "transformer"):
            raise ErasureInputError("clip", f"a {type(encoder).__name__} text encoder does not expose its token "
                                    "embeddings", "use the concept_vector attack with this CLIP")
        return inner_tokenizer.tokenizer, inner_encoder.transformer

    def token_embedding_module(self) -> nn.Module:
        return self._text_parts()[1].get_input_embeddings()

    def token_ids(self, text: str) -> list[int]:
        return list(self._text_parts()[0](text, add_special_tokens=False)["input_ids"])

    def vocabulary(self) -> dict[str, int]:
        return dict(self._text_parts()[0].get_vocab())

    def encode_text_with_grad(self, prompts: list[str]) -> torch.Tensor:
        if self.clip is None:
            raise ErasureInputError("clip", "is not connected", "connect the CLIP output of your checkpoint loader")
        with out_of_place_clip_layers(self._text_parts()[1]), \
                ordinary_tensors(self.clip.cond_stage_model, self._ordinary_views):
            rows = [self.clip.encode_from_tokens(self.clip.tokenize(p))[:, :77].float() for p in prompts]
        return torch.cat(rows).to(self.device)

    def _need_vae(self):
        if self.vae is None:
            raise ErasureInputError("vae", "is not connected", "connect the VAE output of your checkpoint loader")
        return self.vae

    @torch.no_grad()
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) in [0, 1] -> latents in the UNet's space (process_latent_in applied)."""
        raw = self._need_vae().encode(images.float().permute(0, 2, 3, 1).cpu())
        return self.patcher.model.process_latent_in(raw.float()).to(self.device).clone()

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents in the UNet's space -> (N, 3, H, W) in [0, 1]."""
        raw = self.patcher.model.process_latent_out(latents.float().cpu())
        pixels = self._need_vae().decode(raw)
        pixels = pixels.reshape(-1, *pixels.shape[-3:])  # video VAEs add a frame axis
        return pixels.float().permute(0, 3, 1, 2).clamp(0, 1).clone()


# -- erasure tensors <-> graph ------------------------------------------------------------------
def ldm_to_diffusers_names(patcher) -> dict[str, str]:
    """{ldm module path: diffusers module path} for every weight of this UNet."""
    pairs = comfy.utils.unet_to_diffusers(patcher.model.model_config.unet_config)
    return {ldm[: -len(".weight")]: diff[: -len(".weight")] for diff, ldm in pairs.items() if diff.endswith(".weight")}


def to_diffusers_keys(state_dict: dict[str, torch.Tensor], patcher) -> dict[str, torch.Tensor]:
    """Rename kohya keys of ldm module paths (what training on the ComfyUI UNet gives) to diffusers paths; SDXL
    files keep their ldm paths, kohya's SDXL layout (erasure_core.layouts)."""
    if is_sdxl(patcher):
        return dict(state_dict)
    rename = {erasure_file.module_key(ldm): erasure_file.module_key(diff)
              for ldm, diff in ldm_to_diffusers_names(patcher).items()}
    out = {}
    for key, tensor in state_dict.items():
        module, suffix = erasure_file.split_key(key)
        out[rename.get(module, module) + suffix] = tensor
    return out


def diffusers_unet_config(unet_config: dict) -> dict:
    """The diffusers UNet2DConditionModel config with the same layers as an SD1/SD2 ldm unet_config."""
    mult, nrb = unet_config["channel_mult"], unet_config["num_res_blocks"]
    depth = unet_config["transformer_depth"]
    levels = len(mult)
    attn = [depth[sum(nrb[:i])] > 0 for i in range(levels)]
    return dict(
        sample_size=unet_config.get("image_size", 64), in_channels=unet_config["in_channels"],
        out_channels=unet_config["out_channels"], layers_per_block=nrb[0],
        block_out_channels=[unet_config["model_channels"] * m for m in mult],
        down_block_types=["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attn],
        up_block_types=["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)],
        cross_attention_dim=unet_config["context_dim"], attention_head_dim=8,
        transformer_layers_per_block=[max(1, depth[sum(nrb[:i])]) for i in range(levels)],
        use_linear_projection=bool(unet_config.get("use_linear_in_transformer", False)), norm_num_groups=8,
    )


@functools.lru_cache(maxsize=8)
def _fingerprint(config_json: str) -> str:
    import json

    from diffusers import UNet2DConditionModel

    with torch.device("meta"):  # shapes only: no memory, no init
        unet = UNet2DConditionModel(**diffusers_unet_config(json.loads(config_json)))
    return erasure_file.unet_fingerprint(unet)


def fingerprint(patcher) -> str | None:
    """The fingerprint the diffusers backend computes for the same architecture (None if unknown)."""
    import json

    if is_sdxl(patcher):  # layout-independent for SDXL: computed from this UNet's own (ldm) layer names
        return erasure_file.unet_fingerprint(patcher.model.diffusion_model)
    try:
        return _fingerprint(json.dumps(patcher.model.model_config.unet_config, sort_keys=True, default=str))
    except Exception:  # an architecture diffusers cannot express: skip the check rather than block the user
        return None


def portable_metadata(metadata: dict[str, str], patcher) -> dict[str, str]:
    meta = dict(metadata)
    fp = fingerprint(patcher)
    if fp:
        meta[FINGERPRINT_KEY] = fp
    else:
        meta.pop(FINGERPRINT_KEY, None)
    return meta


def check_fingerprint(metadata: dict[str, str], patcher, field: str = "erasure file") -> None:
    want, have = (metadata or {}).get(FINGERPRINT_KEY), fingerprint(patcher)
    if want and have and want != have:
        raise ErasureInputError(field, "it was made for a model with a different UNet architecture",
                                "apply it to the model family it was made for (same base model)")


def check_tensors(state_dict: dict[str, torch.Tensor], patcher) -> None:
    """Every layer of an erasure checked against this MODEL's UNet (shapes, ranks, finite values) before
    ComfyUI multiplies anything out; files name layers by diffusers or ldm paths, both accepted."""
    rename = ldm_to_diffusers_names(patcher)
    shapes = {}
    for name, module in erasure_file.layers(patcher.model.diffusion_model):
        shape = (tuple(module.weight.shape), None if module.bias is None else tuple(module.bias.shape))
        shapes[erasure_file.module_key(name)] = shape
        if name in rename:
            shapes[erasure_file.module_key(rename[name])] = shape
    erasure_file.check_erasure(state_dict, shapes)


def patched_clone(patcher, state_dict: dict[str, torch.Tensor], strength: float = 1.0):
    """A fresh clone of `patcher` carrying the erasure as weight patches; `patcher` is untouched."""
    checks.real_number("strength", strength, -100.0, 100.0, "use e.g. 1.0 (0 = no change)")
    check_tensors(state_dict, patcher)
    key_map = comfy.lora.model_lora_keys_unet(patcher.model, {})
    patches = comfy.lora.load_lora(state_dict, key_map, log_missing=False)
    modules = {erasure_file.split_key(k)[0] for k in state_dict}
    if len(patches) < len(modules):
        raise ErasureInputError("erasure", f"only {len(patches)} of its {len(modules)} layers exist in this MODEL",
                                "apply it to the model family it was made for (same base model)")
    clone = patcher.clone()
    clone.add_patches(patches, strength)
    return clone


def erased_controlnet(control_net, state_dict: dict[str, torch.Tensor], patcher, strength: float = 1.0):
    """A copy of a CONTROL_NET whose copy of the UNet's down and middle blocks carries the erasure as weight
    patches (erasure_core.controlnet.erase_controlnet, in ComfyUI's terms); `patcher` (a MODEL of the family the
    erasure was made for) gives the layer names. `control_net` is untouched."""
    checks.real_number("strength", strength, -100.0, 100.0, "use e.g. 1.0 (0 = no change)")
    wrapped = getattr(control_net, "control_model_wrapped", None)
    if wrapped is None:
        raise ErasureInputError("control_net", f"a {type(control_net).__name__} has no copy of the UNet's encoder",
                                "use a ControlNet (SD1.x/SDXL), not a T2I-Adapter or control LoRA")
    check_tensors(state_dict, patcher)
    shared = set(wrapped.model.state_dict())
    key_map = {k: v[len("diffusion_model."):] for k, v in comfy.lora.model_lora_keys_unet(patcher.model, {}).items()
               if isinstance(v, str) and v.startswith("diffusion_model.") and v[len("diffusion_model."):] in shared}
    patches = comfy.lora.load_lora(state_dict, key_map, log_missing=False)
    if not patches:
        raise ErasureInputError("control_net", "shares no layer with the erasure (made for another model family?)",
                                "use a ControlNet made for the erased model's family")
    copy = control_net.copy()
    copy.control_model_wrapped = wrapped.clone()
    copy.control_model_wrapped.add_patches(patches, strength)
    return copy
