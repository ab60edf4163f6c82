"""Attacks, the audit and the diffusion classifier on the toy world, with tiny budgets (seconds each)."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from erasure_core.attacks import ATTACKS
from erasure_core.attacks.common import EVAL_SEED_OFFSET, concept_latents
from erasure_core.attacks.text import EmbeddingPrompts
from erasure_core.audit import attack_config, run_audit, toy_audit_options, toy_reader
from erasure_core.diffusion_judge import DiffusionClassifier
from erasure_core.errors import ErasureCancelled, ErasureInputError
from erasure_core.model import single_token_words

TEMPLATES = ["a red solid {}", "a blue striped {}"]
TINY = dict(templates=TEMPLATES, steps=2, tokens=1, images_per_template=1, sample_steps=3, guidance=1.5,
            batch_size=2)


def tiny_config(attack: str, **changes):
    fields = ATTACKS[attack][0].__dataclass_fields__
    options = {k: v for k, v in {**TINY, "candidates": 2, "top_k": 2, "strengths": [1.0, 3.0],
                                 "start_candidates": 4, **changes}.items() if k in fields}
    return attack_config(attack, "circle", **options)


def test_embedding_prompts_encode_like_typed_text(toy_model):
    """The marker-word hook gives exactly the text encoder's own encoding of the word whose embedding it puts in."""
    prompts = EmbeddingPrompts(toy_model, ["a red solid {}", "{} a blue dotted square"], 2)
    assert prompts.marker_id not in toy_model.token_ids("a red solid a blue dotted square")
    words = single_token_words(toy_model)
    vectors = prompts.table()[torch.tensor([words["round"], words["blob"]])].requires_grad_(True)
    contexts = prompts.encode(vectors)
    typed = toy_model.encode_text(["a red solid round blob", "round blob a blue dotted square"])
    assert torch.allclose(contexts, typed, atol=1e-6)
    contexts.sum().backward()
    assert vectors.grad is not None and vectors.grad.abs().sum() > 0


def test_single_token_words_are_typed_back_as_themselves(toy_model):
    words = single_token_words(toy_model)
    assert {"circle", "disc", "round", "square", "red"} <= set(words)
    assert all(toy_model.token_ids(w) == [i] for w, i in words.items())


@pytest.mark.parametrize("attack", list(ATTACKS))
def test_attack_is_deterministic_by_seed_and_reports_progress(toy_model, attack):
    config = tiny_config(attack)
    pool = concept_latents(toy_model, config)
    assert len(pool.latents) == len(TEMPLATES)
    steps = []
    first = ATTACKS[attack][1](toy_model, toy_model.unet, config, pool=pool,
                               progress=lambda step, total, loss: steps.append((step, total)))
    again = ATTACKS[attack][1](toy_model, toy_model.unet, config, pool=pool)
    assert torch.equal(first.contexts, again.contexts) and first.found == again.found
    assert first.contexts.shape[0] == len(TEMPLATES) and first.losses
    assert steps and steps[-1][0] == steps[-1][1], "the last progress call says the attack is done"
    other = ATTACKS[attack][1](toy_model, toy_model.unet, dataclasses.replace(config, seed=1), pool=pool)
    if attack != "concept_vector":  # its only choice (η) may well agree; the searches start elsewhere
        assert not torch.equal(first.contexts, other.contexts)


@pytest.mark.parametrize("attack", list(ATTACKS))
def test_cancel_stops_an_attack(toy_model, attack):
    config = tiny_config(attack)
    pool = concept_latents(toy_model, config)
    with pytest.raises(ErasureCancelled):
        ATTACKS[attack][1](toy_model, toy_model.unet, config, pool=pool, should_cancel=lambda: True)


@pytest.mark.parametrize("attack, option, value, field", [
    ("magic", None, None, "attack"),
    ("soft_prompt", "steps", 0, "steps"),
    ("soft_prompt", "tokens", 0, "tokens"),
    ("soft_prompt", "tokens", 99, "tokens"),
    ("soft_prompt", "lr", float("nan"), "learning rate"),
    ("soft_prompt", "templates", ["no slot"], "templates"),
    ("discrete_prompt", "candidates", 0, "candidates"),
    ("concept_vector", "strengths", [], "strengths"),
    ("concept_vector", "tokens", None, None),  # not an error: the attack's default
    ("concept_vector", "lr", 1e-3, "lr"),  # an option the attack does not have
])
def test_bad_attack_options_name_their_field(attack, option, value, field):
    options = {option: value} if option else {}
    if field is None:
        attack_config(attack, "circle", **options)
        return
    with pytest.raises(ErasureInputError) as err:
        attack_config(attack, "circle", **options)
    assert err.value.field == field and err.value.fix


def test_empty_concept_is_refused_before_any_work():
    with pytest.raises(ErasureInputError, match="^concept: is empty"):
        attack_config("soft_prompt", "  ")


def test_audit_reads_held_out_seeds_and_the_classifier_agrees_on_plain_prompts(toy_model, judge):
    """The audit of the original model: images on seeds the attack never learnt from, read by the judge and
    the diffusion classifier; the classifier reads circles and squares the way the judge does."""
    config = tiny_config("concept_vector", strengths=[1.0])
    _, neutral = toy_audit_options("circle")
    out = run_audit(toy_model, toy_model, "concept_vector", config, toy_reader(judge, "circle"), per_template=2,
                    neutral=neutral, log=lambda m: None)
    assert out.report["eval_seeds"] == [EVAL_SEED_OFFSET, EVAL_SEED_OFFSET + 3]
    assert len(out.images) == 4 and out.strongest.shape[1:] == out.images.shape[1:]
    assert 0.0 <= out.report["asr"] <= 1.0
    classifier = DiffusionClassifier(toy_model, "circle", ["a red solid {}", "a blue dotted {}"], neutral, samples=8)
    from erasure_core.sampling import sample_latents

    prompts = ["a red solid circle", "a blue dotted circle", "a red solid square", "a blue dotted triangle"]
    latents = sample_latents(toy_model, prompts, [7, 8, 9, 10], steps=25, guidance=1.5)
    shows, margin = classifier.read(latents, torch.tensor([0, 1, 0, 1]))
    assert shows.tolist() == [True, True, False, False], margin


# -- the robust erasure option ------------------------------------------------------------------------------------
def tiny_dt(adversarial=None, **changes):
    from erasure_core.methods.dt import DTConfig

    options = dict(concepts=["circle"], templates=["a red solid {}", "a blue dotted {}"], steps=3, batch_size=2,
                   images_per_prompt=1, preserve_images_per_prompt=1, sample_steps=4,
                   preserve_prompts=["a blue square"], adversarial=adversarial)
    return DTConfig(**{**options, **changes})


ADVERSARY = {"every": 2, "steps": 2, "tokens": 1, "batch_size": 2, "start_candidates": 4}


@pytest.mark.parametrize("method", ["dt", "cg"])
def test_robust_option_attacks_during_training_and_changes_the_erasure(toy_model, method):
    """The adversary runs at steps 0 and 2 (its time reported), its finds condition some concept rows, so the
    erasure differs from the same run without it; the input model is untouched."""
    from erasure_core.methods import METHODS
    from erasure_core.methods.cg import CGConfig

    erase = METHODS[method][1]

    def config(adversarial):
        if method == "dt":
            return tiny_dt(adversarial)
        return CGConfig(concepts=["circle"], templates=["a red solid {}", "a blue dotted {}"], steps=3, batch_size=2,
                        trajectories_per_prompt=1, sample_steps=4, adversarial=adversarial)

    def run(adversarial):
        torch.manual_seed(0)  # a LoRA's initial weights come from torch's global generator (peft)
        return erase(toy_model, config(adversarial))

    before = {k: v.clone() for k, v in toy_model.unet.state_dict().items()}
    plain = run(None)
    robust = run(dict(ADVERSARY, share=1.0))
    assert plain.adversarial_seconds == 0.0 and 0.0 < robust.adversarial_seconds < robust.seconds
    assert any(not torch.equal(plain.state_dict[k], robust.state_dict[k]) for k in plain.state_dict)
    again = run(dict(ADVERSARY, share=1.0))
    assert all(torch.equal(robust.state_dict[k], again.state_dict[k]) for k in robust.state_dict), "deterministic"
    assert all(torch.equal(before[k], v) for k, v in toy_model.unet.state_dict().items())


@pytest.mark.parametrize("value, field", [
    ({"every": 0}, "adversarial every"),
    ({"share": 1.5}, "adversarial share"),
    ({"lr": -1.0}, "learning rate"),
    ({"magic": 1}, "adversarial"),
    ("yes", "adversarial"),
])
def test_bad_robust_options_name_their_field(value, field):
    with pytest.raises(ErasureInputError) as err:
        tiny_dt(value).validate()
    assert err.value.field == field and err.value.fix


def test_robust_option_is_refused_by_methods_without_it():
    from erasure_core.methods.esd import ESDConfig

    with pytest.raises(ErasureInputError, match="^adversarial: ESD has no robust option"):
        ESDConfig(concepts=["circle"], adversarial=True).validate()


# -- the hosts: command line and tab (the ComfyUI node: tests/comfy/test_comfy_toyworld.py) ----------------------
def test_command_line_audit_writes_report_grid_and_embedding(tmp_path, capsys):
    """The CLI's audit of the original toy model: held-out seeds, both judges, the files it promises."""
    import json

    from erasure_core.__main__ import main

    assert main(["audit", "--concept", "circle", "--attack", "soft_prompt", "--steps", "2", "--tokens", "1",
                 "--template", "a red solid {}", "--images-per-template", "2", "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "soft_prompt" in printed and "agreement" in printed and "judge: toy world judge" in printed
    report = json.loads((tmp_path / "audit_soft_prompt.json").read_text())
    assert report["images"] == 2 and report["eval_seeds"] == [EVAL_SEED_OFFSET, EVAL_SEED_OFFSET + 1]
    assert report["budget"].startswith("2 steps, 1 tokens") and 0.0 <= report["asr"] <= 1.0
    assert (tmp_path / "audit_soft_prompt.png").stat().st_size > 0
    from safetensors.torch import load_file

    embedding = load_file(tmp_path / "audit_soft_prompt_embedding.safetensors")["emb_params"]
    assert embedding.shape[0] == 1 and torch.isfinite(embedding).all()


def test_command_line_audit_refuses_bad_input_before_any_work(tmp_path, capsys):
    from erasure_core.__main__ import main

    assert main(["audit", "--concept", "circle", "--steps", "0"]) != 0
    assert "steps" in capsys.readouterr().err


def test_tab_audits_the_file_the_erase_section_saved(toy_model, tmp_path):
    """The Audit section's runner: a file saved by a short erasure is attacked; status, gallery, progress."""
    from pathlib import Path

    from erasure_core.toyworld import JUDGE_PATH
    from erasure_core.ui_audit import ATTACK_NAMES, AuditRunner
    from erasure_core.ui_blocks import EraseRunner, Host

    assert ATTACK_NAMES == tuple(ATTACKS)
    host = Host(load_model=lambda: toy_model, out_dir=tmp_path, toy=True, judge_path=JUDGE_PATH, log=lambda m: None)
    # a short erasure (2 DDIM steps for its trajectories, no before/after images): the file is what is audited
    saved = EraseRunner(host).run("esd", "circle", "", "", 2, 1e-4, "cross_attn", 0, 0, sample_steps=2,
                                  report_steps=0, batch_size=2).saved_path
    assert saved, "the erase section saved a file"
    calls = []
    status, gallery = AuditRunner(host).run(saved, "circle", "concept_vector", 1, 1, 0,
                                            progress=lambda value, desc=None: calls.append((value, desc)))
    assert status.startswith(f"concept_vector attack (5 strengths × 1 batches) on {Path(saved).name}: ASR "), status
    assert "Judge: toy world judge" in status
    assert len(gallery) == 8 and gallery[0][1].split(" · ")[0] in ("concept", "not")
    assert any("attacking: step 5/5" in (c[1] or "") for c in calls)
    assert any("the attack's images on held-out seeds: 25/" in (c[1] or "") for c in calls), "sampling's progress"
    missing, nothing = AuditRunner(host).run(str(tmp_path / "nope.safetensors"), "circle", "soft_prompt", 1, 1, 0)
    assert missing.startswith("Error in erasure file") and nothing == []
    host.should_cancel = lambda: True
    cancelled, _ = AuditRunner(host).run("", "circle", "concept_vector", 1, 1, 0)
    assert cancelled.startswith("Cancelled: cancelled while the original model's images"), cancelled  # its first step


def test_an_sdxl_model_is_refused_by_the_audit_and_the_robust_option_before_any_work():
    """The attacks search one text-context tensor (SD1.x, SD2.x); SDXL's conditioning is refused with the fix."""
    from types import SimpleNamespace

    from erasure_core.conditioning import Conditioning
    from erasure_core.methods.cg import CGConfig
    from erasure_core.methods.common import prepare

    def encode_text(prompts):
        return Conditioning(context=torch.zeros(len(prompts), 77, 2048), pooled=torch.zeros(len(prompts), 1280))

    sdxl = SimpleNamespace(encode_text=encode_text)  # anything past the check would fail on this stand-in
    with pytest.raises(ErasureInputError, match="^model: the audit works on SD1.x and SD2.x") as err:
        run_audit(sdxl, sdxl, "concept_vector", tiny_config("concept_vector"), log=lambda m: None)
    assert err.value.fix
    config = CGConfig(concepts=["circle"], adversarial=True)
    config.validate()
    with pytest.raises(ErasureInputError, match="^model: the robust option works on SD1.x and SD2.x"):
        prepare(sdxl, "cg", config)
