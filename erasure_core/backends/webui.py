"""The model interface over the webui's loaded model (Automatic1111, reForge, Forge), and saving there.

Everything that touches `modules.*` is imported inside functions, so this module imports (and is
tested) outside the webui; the functions take the webui's objects as arguments. What it does:
- reaches the ldm UNet (`sd_model.model.diffusion_model`; Forge 2: `forge_objects.unet`), the
  text encoder (`get_learned_conditioning`, outputs cloned out of inference mode), the VAE
  (`encode_first_stage`/`decode_first_stage`) and the schedule (`alphas_cumprod`);
- SDXL (A1111's sgm `DiffusionEngine`, Forge's `StableDiffusionXL`): the conditioning is the host's
  own `{"crossattn", "vector"}` (a `Conditioning(context, y)` here), asked for at the training image
  size, with the empty prompt zeroed by the host itself (its negative-prompt rule); v-prediction
  SDXL fine-tunes are converted to epsilon;
- refuses what training cannot work with: --lowvram/--medvram hooks, fp8/4-bit/GGUF storage,
  SD2.x, SD3, Flux, the SDXL refiner and inpainting models, each with the fix;
- reads clean weights when LoRAs are active (the webui merges them into the live weights);
- saves the erasure into the webui's Lora folder with the metadata its Lora list needs, and
  optionally as a merged checkpoint into its Stable-diffusion folder.
The loaded model is never written to: methods train a copy.
"""
from __future__ import annotations

import copy
import functools
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path

import torch
from torch import nn

from .. import erasure_file
from ..conditioning import Conditioning
from ..errors import ErasureInputError
from ..heap import return_free_heap
from ..layouts import family_of
from ..naming import unique_path
from ..trainable import host_tensors
from .ldm import LdmModel, to_diffusers_keys, unet_layout

TRAINABLE_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

# The diffusers UNet with SD1.x's layers: its fingerprint goes into files made here, so the CLI
# and ComfyUI recognise them as SD1.x erasures.
SD1_DIFFUSERS_CONFIG = dict(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=[320, 640, 1280, 1280],
    down_block_types=["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
    up_block_types=["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3, cross_attention_dim=768, attention_head_dim=8,
)
# SDXL base's diffusers UNet (its fingerprint is the same as its ldm layout's: erasure_file.unet_fingerprint).
SDXL_DIFFUSERS_CONFIG = dict(
    sample_size=128, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=[320, 640, 1280],
    down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"], cross_attention_dim=2048,
    attention_head_dim=[5, 10, 20], transformer_layers_per_block=[1, 2, 10], use_linear_projection=True,
    addition_embed_type="text_time", addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816,
)


# -- refusals ------------------------------------------------------------------------------------
def check_supported(sd_model, cmd_opts=None) -> None:
    """Raise ErasureInputError for setups training cannot work with, naming the fix."""
    if sd_model is None:
        raise ErasureInputError("model", "no checkpoint is loaded", "choose a Stable Diffusion 1.x or SDXL checkpoint "
                                "at the top of the webui")
    if cmd_opts is not None and (getattr(cmd_opts, "lowvram", False) or getattr(cmd_opts, "medvram", False)) \
            or getattr(sd_model, "lowvram", False):
        raise ErasureInputError("webui options", "--lowvram/--medvram move UNet blocks on and off the GPU during each "
                                "call, which breaks training", "restart the webui without --lowvram/--medvram "
                                "(a LoRA rank 4 erasure of SD1.x needs about 6 GB of VRAM)")
    unsupported = [("is_sd3", "SD3"), ("is_flux", "Flux"), ("is_chroma", "Chroma"), ("is_sdxl_inpaint", "SDXL inpainting")]
    for flag, name in unsupported:
        if getattr(sd_model, flag, False):
            raise ErasureInputError("model", f"{name} checkpoints are not supported", "load a Stable Diffusion 1.x or "
                                    "SDXL checkpoint")
    if getattr(sd_model, "is_sdxl", False) and is_refiner(sd_model):
        raise ErasureInputError("model", "the SDXL refiner is not supported (one text encoder, aesthetic-score "
                                "conditioning)", "load an SDXL base checkpoint or a fine-tune of it")
    sd2 = getattr(sd_model, "is_sd2", False) or (getattr(sd_model, "parameterization", "eps") != "eps"
                                                 and not getattr(sd_model, "is_sdxl", False))
    if sd2:
        raise ErasureInputError("model", "SD2.x checkpoints are not supported in the webui yet", "load a Stable "
                                "Diffusion 1.x or SDXL checkpoint (or use the ComfyUI nodes for SD2.x)")
    v_prediction(sd_model)  # refuses prediction types other than epsilon and v


def is_refiner(sd_model) -> bool:
    """The SDXL refiner: Forge's StableDiffusionXLRefiner, or an sgm conditioner with an aesthetic-score input."""
    if "Refiner" in type(sd_model).__name__:
        return True
    embedders = getattr(getattr(sd_model, "conditioner", None), "embedders", None) or []
    return any(getattr(e, "input_key", None) == "aesthetic_score" for e in embedders)


def v_prediction(sd_model) -> bool:
    """Whether the loaded model predicts v (A1111: `parameterization`; Forge 2: its predictor's prediction_type)."""
    forge_unet = getattr(getattr(sd_model, "forge_objects", None), "unet", None)
    predictor = getattr(getattr(forge_unet, "model", None), "predictor", None)
    kind = getattr(predictor, "prediction_type", None) or getattr(sd_model, "parameterization", "eps")
    if kind not in ("eps", "epsilon", "v", "v_prediction"):
        raise ErasureInputError("model", f"its prediction type {kind!r} is not supported", "load an epsilon- or "
                                "v-prediction Stable Diffusion 1.x or SDXL checkpoint")
    return kind in ("v", "v_prediction")


def check_storage(unet: nn.Module) -> None:
    """Refuse fp8 / 4-bit / GGUF storage: there is no full-precision weight to train from."""
    for name, p in unet.named_parameters():
        if p.dtype not in TRAINABLE_DTYPES or type(p).__name__ not in ("Parameter", "Tensor"):
            raise ErasureInputError(
                "model", f"its weights are stored as {p.dtype} ({type(p).__name__}, e.g. {name}): quantized "
                "(fp8, nf4, GGUF) weights cannot be trained", "set Settings → Optimizations → FP8 weight to "
                "'Disable' (Forge: choose a 16-bit checkpoint and 'Diffusion in Low Bits: Automatic'), then reload")


# -- reaching the model ----------------------------------------------------------------------------
def find_unet(sd_model) -> nn.Module:
    """The ldm UNet of A1111/reForge (`model.diffusion_model`) or Forge 2 (`forge_objects.unet`)."""
    forge = getattr(sd_model, "forge_objects", None)
    if forge is not None and getattr(forge, "unet", None) is not None:
        return forge.unet.model.diffusion_model
    inner = getattr(sd_model, "model", None)
    unet = getattr(inner, "diffusion_model", None)
    if unet is None:
        raise ErasureInputError("model", f"{type(sd_model).__name__} has no ldm UNet (model.diffusion_model)",
                                "load a Stable Diffusion 1.x checkpoint")
    return unet


def find_alphas(sd_model) -> torch.Tensor:
    ac = getattr(sd_model, "alphas_cumprod", None)
    if ac is None:  # Forge 2 keeps the schedule on the model's sampling object
        forge = getattr(sd_model, "forge_objects", None)
        sampling = getattr(getattr(getattr(forge, "unet", None), "model", None), "predictor", None) or getattr(
            getattr(getattr(forge, "unet", None), "model", None), "model_sampling", None)
        ac = getattr(sampling, "alphas_cumprod", None)
        if ac is None and getattr(sampling, "sigmas", None) is not None:
            ac = 1.0 / (1.0 + sampling.sigmas.double() ** 2)
    if ac is None:
        raise ErasureInputError("model", "its noise schedule (alphas_cumprod) was not found",
                                "load a Stable Diffusion 1.x checkpoint")
    return torch.as_tensor(ac).detach().float().cpu()


def lora_backups(unet: nn.Module, sd_model=None) -> dict[str, tuple[torch.Tensor, torch.Tensor | None]]:
    """{module name: (clean weight, clean bias)} for modules whose live weights carry merged LoRAs."""
    backups = {}
    for name, module in unet.named_modules():  # A1111/reForge Lora network: backups on the module
        weight = getattr(module, "network_weights_backup", None)
        if getattr(module, "network_current_names", ()) and isinstance(weight, torch.Tensor):
            backups[name] = (weight, getattr(module, "network_bias_backup", None))
    patcher = getattr(getattr(sd_model, "forge_objects", None), "unet", None)
    for key, value in (getattr(patcher, "backup", None) or {}).items():  # Forge 2: the patcher's backup
        value = getattr(value, "weight", value)
        if key.startswith("diffusion_model.") and key.endswith(".weight") and isinstance(value, torch.Tensor):
            name = key[len("diffusion_model."):-len(".weight")]
            backups[name] = (value, backups.get(name, (None, None))[1])
    return backups


def clean_unet(unet: nn.Module, backups: dict) -> nn.Module:
    """`unet` itself when no LoRA is merged in; else a copy holding the clean weights: the backups themselves
    where there are backups, the live parameters elsewhere, so it costs no weight memory (the webui keeps a
    backup of every layer once a LoRA was used)."""
    if not backups:
        return unet
    memo = {id(p): p for p in unet.parameters()}
    memo.update({id(b): b for b in unet.buffers()})
    memo.update(host_tensors(unet))
    for name, (weight, bias) in backups.items():
        module = unet.get_submodule(name)
        memo[id(module.weight)] = nn.Parameter(weight.to(module.weight), requires_grad=False)
        if bias is not None and getattr(module, "bias", None) is not None:
            memo[id(module.bias)] = nn.Parameter(bias.to(module.bias), requires_grad=False)
    return copy.deepcopy(unet, memo)


def prompt_batch(prompts: list[str], image_size: int, negative: bool = False):
    """The webui's own prompt batch (`SdConditioning`: a list carrying the image size and whether it is a negative
    prompt, which SDXL's conditioning reads), or the plain list outside the webui."""
    try:
        from modules.prompt_parser import SdConditioning
    except ImportError:
        return list(prompts)
    return SdConditioning(list(prompts), is_negative_prompt=negative, width=image_size, height=image_size)


def text_function(sd_model, autocast=nullcontext, image_size: int = 512):
    """prompts -> (B, 77, C) for SD1.x; for SDXL a Conditioning(context, y) from the host's {"crossattn", "vector"}.

    SDXL's empty prompt goes in as a negative prompt, which the host itself turns into zeros (context and pooled,
    sizes kept): the unconditional input SDXL was trained with, as in the host's own sampling."""
    def host_encode(prompts: list[str], negative: bool):
        with autocast():
            return sd_model.get_learned_conditioning(prompt_batch(prompts, image_size, negative))

    def encode(prompts: list[str]) -> torch.Tensor | Conditioning:
        if not getattr(sd_model, "is_sdxl", False):
            cond = host_encode(prompts, False)
            return (cond["crossattn"] if isinstance(cond, dict) else cond)[:, :77]
        empty = [not p.strip() for p in prompts]
        rows = {}  # prompt index -> its row, from one host call per kind
        for negative in (False, True):
            chosen = [i for i, e in enumerate(empty) if e == negative]
            if chosen:
                cond = host_encode([prompts[i] for i in chosen], negative)
                part = Conditioning(context=cond["crossattn"][:, :77], y=cond["vector"])
                rows.update({i: part[j:j + 1] for j, i in enumerate(chosen)})
        return torch.cat([rows[i] for i in range(len(prompts))])
    return encode


def image_functions(sd_model, autocast=nullcontext):
    """(encode, decode) between images in [0, 1] and the UNet's scaled latents."""
    def encode(images: torch.Tensor) -> torch.Tensor:
        with autocast():
            enc = sd_model.encode_first_stage(images * 2 - 1)
        if hasattr(enc, "mode"):  # an ldm posterior: its mean, deterministic
            return enc.mode() * sd_model.scale_factor
        return sd_model.get_first_stage_encoding(enc)

    def decode(latents: torch.Tensor) -> torch.Tensor:
        with autocast():
            x = sd_model.decode_first_stage(latents.to(next(find_unet(sd_model).parameters()).dtype))
        return (x.float() + 1) / 2
    return encode, decode


def native_image_size(sd_model) -> int:
    return 1024 if getattr(sd_model, "is_sdxl", False) else 512


def model_from_webui(sd_model, cmd_opts=None, autocast=nullcontext, image_size: int | None = None) -> LdmModel:
    """The core's model interface over the webui's loaded model; refuses what cannot be trained. `image_size`
    defaults to the model's native size (SD1.x 512, SDXL 1024)."""
    check_supported(sd_model, cmd_opts)
    image_size = image_size or native_image_size(sd_model)
    unet = find_unet(sd_model)
    unet_layout(unet)
    check_storage(unet)
    unet = clean_unet(unet, lora_backups(unet, sd_model))
    encode, decode = image_functions(sd_model, autocast)
    device = next(unet.parameters()).device
    in_channels = int(getattr(unet, "in_channels", 4))
    return LdmModel(unet=unet, alphas_cumprod=find_alphas(sd_model),
                    text_fn=text_function(sd_model, autocast, image_size), encode_fn=encode, decode_fn=decode,
                    latent_shape=(in_channels, image_size // 8, image_size // 8), device=device,
                    inplace_activations=getattr(sd_model, "forge_objects", None) is not None,
                    v_prediction=v_prediction(sd_model))


# -- saving ---------------------------------------------------------------------------------------
def sd1_fingerprint() -> str:
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):  # shapes only
        return erasure_file.unet_fingerprint(UNet2DConditionModel(**SD1_DIFFUSERS_CONFIG))


def file_fingerprint(unet: nn.Module) -> str:
    """The fingerprint the diffusers backend writes for this architecture: SD1.x's diffusers UNet; for SDXL the
    layout-independent one of this UNet itself (erasure_file.unet_fingerprint)."""
    return erasure_file.unet_fingerprint(unet) if family_of(unet) == "sdxl" else sd1_fingerprint()


def portable_file(result, unet: nn.Module, checkpoint_name: str | None = None,
                  fingerprint: str | None = None) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The erasure's tensors with the project's keys (SD1.x: diffusers paths; SDXL: kohya's ldm paths, as trained
    here) and metadata the webui's Lora list reads (the architecture was set from the UNet's family)."""
    state_dict = to_diffusers_keys(result.state_dict, unet) if family_of(unet) == "sd1" else dict(result.state_dict)
    meta = dict(result.metadata)
    meta["modelspec.date"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    if checkpoint_name:
        meta["ss_sd_model_name"] = checkpoint_name
    if fingerprint:
        meta["concept_eraser.unet_fingerprint"] = fingerprint
    else:
        meta.pop("concept_eraser.unet_fingerprint", None)  # the ldm one would not match any diffusers UNet
    return state_dict, meta


def save_to_lora_dir(result, unet: nn.Module, lora_dir: Path, checkpoint_name: str | None = None,
                     fingerprint: str | None = None) -> Path:
    """Write the erasure into the webui's Lora folder (never overwriting) and return its path."""
    lora_dir = Path(lora_dir)
    lora_dir.mkdir(parents=True, exist_ok=True)
    state_dict, meta = portable_file(result, unet, checkpoint_name, fingerprint)
    return erasure_file.save_erasure(unique_path(lora_dir, meta["ss_output_name"]), state_dict, meta)


def merge_into_checkpoint(checkpoint: Path, ldm_state_dict: dict[str, torch.Tensor], unet: nn.Module,
                          out_path: Path) -> Path:
    """A copy of a .safetensors checkpoint with the erasure merged into its UNet (ldm keys)."""
    from safetensors.torch import load_file, save_file

    from ..safe_files import atomic_path, check_safetensors

    check_safetensors(Path(checkpoint), "checkpoint")
    weights = load_file(str(checkpoint))
    for name, (dw, db) in erasure_file.module_deltas(ldm_state_dict, unet).items():
        for key, delta in ((f"model.diffusion_model.{name}.weight", dw), (f"model.diffusion_model.{name}.bias", db)):
            if delta is None:
                continue
            if key not in weights:
                raise ErasureInputError("checkpoint", f"{Path(checkpoint).name} has no {key}",
                                        "merge into the checkpoint the erasure was made from")
            weights[key] = (weights[key].float() + delta.float().reshape(weights[key].shape)).to(weights[key].dtype)
    with atomic_path(Path(out_path)) as tmp:
        save_file(weights, str(tmp), metadata={"concept_eraser.merged_from": Path(checkpoint).name})
    return Path(out_path)


# -- the webui host --------------------------------------------------------------------------------
def lora_folder(cmd_opts, models_path: str | Path) -> Path:
    return Path(getattr(cmd_opts, "lora_dir", None) or Path(models_path) / "Lora")


def checkpoint_loaded(sd_model) -> bool:
    """Whether `sd_model` is a loaded checkpoint, not Forge's placeholder from before the first generation."""
    return sd_model is not None and (getattr(sd_model, "forge_objects", None) is not None
                                     or getattr(getattr(sd_model, "model", None), "diffusion_model", None) is not None)


def ensure_checkpoint_loaded(shared, sd_models) -> None:
    """Load the selected checkpoint the host's own way where it loads lazily (Forge: before the first
    generation `shared.sd_model` is a FakeInitialModel and `forge_model_reload` loads the selected one)."""
    reload = getattr(sd_models, "forge_model_reload", None)
    if not checkpoint_loaded(shared.sd_model) and reload is not None:
        reload()


def show_in_state(state, desc: str, done: int, total: int) -> None:
    """Progress in the webui's job state, where its console, progress API and other extensions read it."""
    state.textinfo = f"Concept Eraser: {desc}"
    state.sampling_step, state.sampling_steps = done, total


@contextmanager
def webui_job(title: str = "Concept Eraser"):
    """Run inside the webui's job queue, as its own buttons do (modules.call_queue.wrap_gradio_gpu_call):
    under the queue lock, so no txt2img/img2img (UI or API) runs on the model meanwhile, between
    `shared.state.begin()` and `end()`, so Interrupt/Skip and the progress API see the job. Yields the
    progress callback `(desc, done, total)`; afterwards the flags are cleared for the next job and the memory
    the job freed is given back (release_job_memory)."""
    from modules import shared
    from modules.call_queue import queue_lock

    with queue_lock:
        shared.state.begin(job=title)
        shared.state.job_count = 1
        try:
            yield functools.partial(show_in_state, shared.state)
        finally:
            shared.state.end()
            shared.state.skipped = shared.state.interrupted = False
            if hasattr(shared.state, "stopping_generation"):
                shared.state.stopping_generation = False
            release_job_memory()


def release_job_memory() -> None:
    """After a job, what it freed goes back: the webui's own collection (gc and the CUDA cache), then the free
    heap to the OS, so the next generation has the room it had before the erasure."""
    try:
        from modules import devices

        devices.torch_gc()
    except (ImportError, AttributeError):
        pass
    return_free_heap()


def interrupted(state) -> bool:
    """The webui's Interrupt or Skip (both stop an erasure: it has no next image to skip to)."""
    return bool(getattr(state, "interrupted", False) or getattr(state, "skipped", False))


class WebuiSession:
    """Holds the model of the current run, so that saving can name its layers. Inside the webui only."""

    def __init__(self):
        self.model: LdmModel | None = None

    def load_model(self) -> LdmModel:
        from modules import sd_models, shared

        try:  # the webui's autocast matches its fp16/bf16 setup
            from modules.devices import autocast
        except ImportError:
            autocast = nullcontext
        ensure_checkpoint_loaded(shared, sd_models)
        forge_unet = getattr(getattr(shared.sd_model, "forge_objects", None), "unet", None)
        if forge_unet is not None:  # Forge 2 keeps models off the GPU until asked
            try:
                from backend import memory_management

                memory_management.load_models_gpu([forge_unet])
            except ImportError:
                pass
        self.model = model_from_webui(shared.sd_model, shared.cmd_opts, autocast)
        return self.model

    def save(self, result) -> Path:
        """Write the erasure into the webui's Lora folder (its only copy) and return the path."""
        from modules import paths, shared

        info = getattr(shared.sd_model, "sd_checkpoint_info", None)
        name = getattr(info, "name_for_extra", None) or getattr(info, "name", None)
        return save_to_lora_dir(result, self.model.unet, lora_folder(shared.cmd_opts, paths.models_path), name,
                                file_fingerprint(self.model.unet))


def webui_host():
    """The UI's Host inside the webui: its loaded model, its Lora folder, its job queue and Interrupt state."""
    from modules import paths, shared

    from ..ui_blocks import Host

    session = WebuiSession()
    intro = ("Erase a concept from the **currently loaded** Stable Diffusion 1.x or SDXL checkpoint. The result is saved "
             "into your Lora folder; use it like any LoRA, e.g. `<lora:erase_van-gogh_cg:1>`. The checkpoint file "
             "itself is never changed. The webui's Interrupt and Skip stop an erasure, as Cancel does; while it "
             "runs, generations wait for it.")
    return Host(load_model=session.load_model, out_dir=Path(paths.data_path) / "outputs" / "concept_eraser",
                save=session.save, should_cancel=lambda: interrupted(shared.state), title="Concept Eraser",
                intro=intro, job=webui_job, image_size=512, report_size=256, report_steps=10,
                log=lambda message: print(message, flush=True), log_hint="the console the webui runs in")
