"""SDXL in the core: the Conditioning value type, the diffusers SDXL model (diffusers' own encode_prompt, SDXL's
zeroed empty prompt), every method unchanged on an SDXL-architecture toy, kohya's SDXL file layout, v-prediction with a
zero-terminal-SNR schedule, and the loader's refusals that name the architecture."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from erasure_core.conditioning import Conditioning, zero_empty_prompts
from erasure_core.errors import ErasureInputError

PROMPTS = ["a red solid circle", "", "a blue striped square"]


def test_conditioning_does_what_the_methods_do_with_text_embeddings():
    gen = torch.Generator().manual_seed(0)
    c = Conditioning(context=torch.randn(3, 5, 7, generator=gen), pooled=torch.randn(3, 4, generator=gen))
    assert len(c) == 3 and c.device.type == "cpu"
    rows = c[torch.tensor([2, 0, 2])]  # row indexing (a cache's prompt_index)
    assert torch.equal(rows["context"][0], c["context"][2]) and torch.equal(rows["pooled"][1], c["pooled"][0])
    one = c[1:2].expand(4, -1, -1)  # the unconditional row, expanded to a batch
    assert len(one) == 4 and torch.equal(one["pooled"][3], c["pooled"][1])
    both = torch.cat([c, one])  # rows of several kinds in one UNet call
    assert len(both) == 7 and torch.equal(both["context"][3:], one["context"])
    assert both.to(torch.float64)["context"].dtype == torch.float64
    with pytest.raises(TypeError):
        torch.cat([c, Conditioning(context=torch.zeros(1, 5, 7))])
    with pytest.raises(ValueError):
        Conditioning(context=torch.zeros(2, 5, 7), pooled=torch.zeros(3, 4))
    zeroed = zero_empty_prompts(c, ["x", " ", "y"], keep=("pooled",))
    assert zeroed["context"][1].abs().max() == 0 and torch.equal(zeroed["pooled"], c["pooled"])
    assert torch.equal(zeroed["context"][0], c["context"][0])


def test_diffusers_xl_encodes_like_the_pipeline(toy_xl_model):
    model = toy_xl_model
    cond = model.encode_text(PROMPTS)
    context, _, pooled, _ = model.pipeline().encode_prompt(PROMPTS, device=model.device, do_classifier_free_guidance=False)
    assert torch.equal(cond["context"][0], context[0]) and torch.equal(cond["pooled"][2], pooled[2])
    assert cond["context"][1].abs().max() == 0 and cond["pooled"][1].abs().max() == 0, "force_zeros_for_empty_prompt"
    side = model.image_size
    assert cond["time_ids"].tolist() == [[side, side, 0, 0, side, side]] * 3
    model.force_zeros_for_empty_prompt = False  # a fine-tune that sets it off encodes "" as text
    try:
        assert torch.equal(model.encode_text([""])["context"][0], context[1])
    finally:
        model.force_zeros_for_empty_prompt = True


@pytest.mark.parametrize("method", ["esd", "cg", "dt", "ca", "uce"])
def test_every_method_runs_unchanged_and_writes_kohyas_sdxl_layout(toy_xl_model, method, tmp_path):
    """Each method's own erase_* call, two steps, on an SDXL-architecture toy; the file names layers as kohya's SDXL
    LoRAs do, and applied by name it reproduces the trained copy."""
    from erasure_core import erasure_file
    from erasure_core.methods import METHODS

    model = toy_xl_model
    before = {k: v.clone() for k, v in model.unet.state_dict().items()}
    config_cls, erase = METHODS[method]
    options = dict(concepts=["circle"], steps=2, sample_steps=2, batch_size=2, templates=["a red solid {}"],
                   preserve_prompts=["a blue solid square"], rank=2, lr=1e-3)
    if method in ("cg", "ca", "uce"):
        options["alternatives"] = ["square"]
    if method == "uce":  # a closed-form edit of the keys' and values' full weights
        options.update(rank=None, group="cross_attn_kv")
    result = erase(model, config_cls(**options))
    assert all(torch.equal(v, before[k]) for k, v in model.unet.state_dict().items()), "the input model is untouched"
    assert result.metadata["modelspec.architecture"] == "stable-diffusion-xl-v1-base/lora"
    modules = {erasure_file.split_key(k)[0] for k in result.state_dict}
    assert modules and all(m.startswith(("lora_unet_input_blocks_", "lora_unet_middle_block_", "lora_unet_output_blocks_",
                                         "lora_unet_time_embed_", "lora_unet_label_emb_", "lora_unet_out_"))
                           for m in modules), sorted(modules)[:5]
    path = result.save(tmp_path / "x.safetensors")
    tensors, meta = erasure_file.load_erasure(path)
    merged = erasure_file.apply_erasure(model.unet, tensors, metadata=meta)
    x = torch.randn(2, *model.latent_shape, generator=torch.Generator().manual_seed(0))
    t, c = torch.tensor([100, 800]), model.encode_text(PROMPTS[:2])
    with torch.no_grad():
        assert torch.allclose(model.predict_noise(merged, x, t, c), model.predict_noise(result.tuned_unet, x, t, c),
                              atol=1e-5)


def test_layer_names_are_comfyuis_for_real_sdxl():
    """Every Linear/Conv2d of the real SDXL UNet (diffusers, meta device) gets the ldm name ComfyUI's own map gives."""
    from comfy_paths import import_comfy

    reason = import_comfy()
    if reason:
        pytest.skip(reason)
    import comfy.utils
    from diffusers import UNet2DConditionModel

    from erasure_core.layouts import family_of, file_layer_name

    config = {"num_res_blocks": [2, 2, 2], "channel_mult": [1, 2, 4], "transformer_depth": [0, 0, 2, 2, 10, 10],
              "transformer_depth_output": [0, 0, 0, 2, 2, 2, 10, 10, 10], "transformer_depth_middle": 10}
    comfy_names = comfy.utils.unet_to_diffusers(config)
    from erasure_core.backends.webui import SDXL_DIFFUSERS_CONFIG

    with torch.device("meta"):
        unet = UNet2DConditionModel(**SDXL_DIFFUSERS_CONFIG)
    assert family_of(unet) == "sdxl"
    rename = file_layer_name(unet)
    layers = [n for n, m in unet.named_modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))]
    assert len(layers) == 794
    for name in layers:
        assert rename(name) + ".weight" == comfy_names[name + ".weight"], name


def test_v_prediction_with_zero_terminal_snr(toy_xl_model):
    """A v-prediction fine-tune with a zero-terminal-SNR schedule: the interface returns epsilon, the sampler
    (DDIM, trailing spacing) draws finite images from it."""
    from erasure_core.model import DiffusersXLModel
    from erasure_core.sampling import sample_images

    toy = toy_xl_model
    schedule = {**toy.scheduler_config, "prediction_type": "v_prediction", "rescale_betas_zero_snr": True,
                "timestep_spacing": "trailing"}
    model = DiffusersXLModel(unet=toy.unet, vae=toy.vae, text_encoder=toy.text_encoder, tokenizer=toy.tokenizer,
                             text_encoder_2=toy.text_encoder_2, tokenizer_2=toy.tokenizer_2, scheduler_config=schedule)
    assert model.v_prediction and model.scheduler_config["prediction_type"] == "v_prediction"
    assert model.alphas_cumprod[-1] < 1e-6  # zero terminal SNR
    x, t = torch.randn(2, *model.latent_shape), torch.tensor([500, 999])
    c = model.encode_text(PROMPTS[:2])
    with torch.no_grad():
        v = toy.predict_noise(toy.unet, x, t, c)  # the raw UNet output (the toy is epsilon: read it as v)
        a = model.alphas_cumprod[t].view(-1, 1, 1, 1)
        assert torch.allclose(model.predict_noise(model.unet, x, t, c), a.sqrt() * v + (1 - a).sqrt() * x, atol=1e-6)
    images = sample_images(model, PROMPTS[:1], [0], steps=4, guidance=1.5)
    assert torch.isfinite(images).all()


def fake_folder(tmp_path, class_name: str, text_encoder=("transformers", "CLIPTextModel")):
    folder = tmp_path / class_name
    folder.mkdir()
    (folder / "model_index.json").write_text(json.dumps({"_class_name": class_name, "text_encoder": list(text_encoder)}))
    return folder


@pytest.mark.parametrize("class_name, name", [("StableDiffusion3Pipeline", "SD3"), ("FluxPipeline", "Flux"),
                                              ("PixArtAlphaPipeline", "PixArt"), ("SomeNewPipeline", "SomeNewPipeline")])
def test_other_diffusers_architectures_are_refused_by_name(tmp_path, class_name, name):
    from erasure_core.model import load_diffusers_model

    with pytest.raises(ErasureInputError, match=rf"model: {name} models are not supported\. Fix: use a Stable "
                                                r"Diffusion 1\.x/2\.x and SDXL"):
        load_diffusers_model(fake_folder(tmp_path, class_name))


def test_sdxl_refiner_folder_is_refused(tmp_path):
    from erasure_core.model import load_diffusers_model

    with pytest.raises(ErasureInputError, match="SDXL refiner"):
        load_diffusers_model(fake_folder(tmp_path, "StableDiffusionXLImg2ImgPipeline", text_encoder=(None, None)))


@pytest.mark.parametrize("key, name", [("model.diffusion_model.joint_blocks.0.x_block.attn.qkv.weight", "SD3"),
                                       ("model.diffusion_model.double_blocks.0.img_attn.qkv.weight", "Flux"),
                                       ("double_blocks.0.img_attn.qkv.weight", "Flux")])
def test_single_file_architectures_are_refused_by_name_before_any_config(tmp_path, key, name):
    from erasure_core.model import load_diffusers_model

    ckpt = tmp_path / "model.safetensors"
    save_file({key: torch.zeros(2, 2)}, str(ckpt))
    with pytest.raises(ErasureInputError, match=rf"model: {name} models are not supported"):
        load_diffusers_model(ckpt)


def test_single_file_family_must_match_its_config(tmp_path):
    from erasure_core.model import load_diffusers_model
    from erasure_core.toyworld import MODEL_DIR

    ckpt = tmp_path / "xl.safetensors"
    save_file({"model.diffusion_model.label_emb.0.0.weight": torch.zeros(2, 2),
               "conditioner.embedders.1.model.ln_final.weight": torch.zeros(2)}, str(ckpt))
    with pytest.raises(ErasureInputError, match=r"config: xl\.safetensors is an SDXL checkpoint but .* describes an "
                                                r"SD1\.x/SD2\.x model"):
        load_diffusers_model(ckpt, config=MODEL_DIR)


def test_an_sd1_controlnet_is_refused_on_an_sdxl_model_before_any_work(toy_xl_model):
    from erasure_core.controlnet import Control, load_controlnet
    from erasure_core.jobs import run_erasure
    from erasure_core.methods import METHODS
    from erasure_core.sampling import sample_images
    from erasure_core.toyworld import CONTROLNET_DIR

    toy_controlnet = load_controlnet(CONTROLNET_DIR)  # the toy world's, an SD1 ControlNet

    with pytest.raises(ErasureInputError, match="controlnet: was made for another model family"):
        sample_images(toy_xl_model, ["a red circle"], [0], controlnet=toy_controlnet,
                      control_image=torch.zeros(1, 3, 32, 32))
    config = METHODS["cg"][0](concepts=["circle"], alternatives=["square"], steps=1)
    with pytest.raises(ErasureInputError, match="controlnet: was made for another model family"):
        run_erasure(toy_xl_model, "cg", config, control=Control(toy_controlnet, torch.zeros(1, 3, 32, 32)),
                    log=lambda m: pytest.fail(f"work started: {m}"))
