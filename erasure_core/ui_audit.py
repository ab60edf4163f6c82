"""The Audit section of the Concept Eraser UI: attack an erasure file and show the attack success rate and the
attack's strongest images. Self-contained: `build_audit_section(host, saved)` is called inside the Blocks of
`ui_blocks.build_blocks`; the logic is `AuditRunner`, testable without a browser. Like the rest of the UI it
imports torch and the core only inside the callbacks.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from .errors import ErasureCancelled, ErasureError, ErasureInputError
from .progress import listen
from .ui_blocks import HostRunner

ATTACK_NAMES = ("soft_prompt", "discrete_prompt", "concept_vector")  # erasure_core.attacks.ATTACKS (tests check)
ATTACK_HELP = ("**soft_prompt**: learnt token embeddings in the concept's place (textual inversion) · "
               "**discrete_prompt**: words searched to put before the concept's prompt (UnlearnDiffAtk) · "
               "**concept_vector**: the concept's direction added to prompts without it (Ring-A-Bell). "
               "In the webui, soft_prompt and discrete_prompt are refused (its model does not expose the text "
               "encoder's token embeddings).")


class AuditRunner(HostRunner):
    """One audit at a time for a host; Cancel sets an event the attack checks each step."""

    def _sampling_listener(self, progress: Callable):
        """Shows the sampling's DDIM steps (erasure_core.progress) and stops there on Cancel."""
        def show(desc: str, done: int, total: int) -> None:
            if self._should_cancel():
                raise ErasureCancelled(f"cancelled while {desc}; nothing was written")
            progress((done, total), desc=f"{desc}: {done}/{total}")
        return show

    def run(self, erasure_path, concept, attack, steps, tokens, seed, progress: Callable | None = None):
        """(status text, gallery items) of an audit of `erasure_path` (empty: the original model itself)."""
        from .ui_blocks import error_message, to_display, whole_number

        if not self._lock.acquire(blocking=False):
            return "An audit is already running: wait for it to finish, or press Cancel.", []
        self.cancel_event.clear()
        progress = progress if progress is not None else (lambda *a, **k: None)
        try:
            from .audit import attack_config, run_audit

            options = dict(steps=whole_number("steps", steps, 1, "use e.g. 150"),
                           tokens=whole_number("tokens", tokens, 1, "use e.g. 2"),
                           seed=whole_number("seed", seed if seed not in (None, "") else 0, 0, "use e.g. 0"))
            reader, toy = None, {}
            if self.host.toy:
                from .audit import toy_audit_options

                toy, _ = toy_audit_options(concept or "")
            options.update(toy)
            fields = attack_fields(attack)
            config = attack_config(attack, concept, **{k: v for k, v in options.items() if k in fields})
            path = Path(erasure_path.strip()) if erasure_path and erasure_path.strip() else None
            if path is not None and not path.is_file():
                raise ErasureInputError("erasure file", f"{path} does not exist", "give the path of a saved erasure "
                                        "(.safetensors), or leave it empty to attack the original model")
            progress(0.0, desc="waiting for the running job to finish")  # the webui's queue: a generation may run
            with self.host.job(), listen(self._sampling_listener(progress)):
                progress(0.0, desc="loading the model")
                model = self.host.load_model()
                unet = model.unet
                if path is not None:
                    from .erasure_file import apply_erasure, load_erasure

                    state_dict, metadata = load_erasure(path)
                    unet = apply_erasure(model.unet, state_dict, metadata=metadata)
                if self.host.toy and self.host.judge_path is not None:
                    from .audit import toy_reader
                    from .toyworld.judge import load_judge

                    reader = toy_reader(load_judge(self.host.judge_path), config.concept)

                def on_step(step: int, total: int, loss: float) -> None:
                    progress((step, total), desc=f"attacking: step {step}/{total}, loss {loss:.4f}")

                out = run_audit(model, model.with_unet(unet), attack, config, reader, progress=on_step,
                                should_cancel=self._should_cancel, log=self.host.log)
            r = out.report
            status = (f"{attack} attack ({r['budget']}) on {path.name if path else 'the original model'}: "
                      f"ASR {r['asr']:.3f} ({int(round(r['asr'] * r['images']))} of {r['images']} images on held-out "
                      f"seeds show {config.concept!r}).\nFound: {r['found']}\nJudge: {r['judge']}")
            labels = [f"{'concept' if s else 'not'} · {v:.3f}" for s, v in
                      zip(out.shows_concept[out.scores.argsort(descending=True)], out.scores.sort(descending=True).values)]
            return status, list(zip(to_display(out.strongest), labels))
        except ErasureError as exc:
            return error_message(exc), []
        finally:
            self._lock.release()


def attack_fields(attack: str) -> set[str]:
    from .attacks import ATTACKS

    if attack not in ATTACKS:
        raise ErasureInputError("attack", f"unknown attack {attack!r}", f"choose one of {', '.join(ATTACKS)}")
    return set(ATTACKS[attack][0].__dataclass_fields__)


def build_audit_section(host, saved=None, runner: AuditRunner | None = None) -> AuditRunner:
    """The Audit widgets, inside the caller's Blocks; `saved` (the erase section's saved-file box) fills the file."""
    import gradio as gr

    runner = runner or AuditRunner(host)
    with gr.Accordion("Audit an erasure (attack it, measure the attack success rate)", open=False):
        gr.Markdown(ATTACK_HELP)
        with gr.Row():
            with gr.Column(scale=1):
                erasure = gr.Textbox(label="Erasure file (.safetensors; empty: the original model)",
                                     elem_id="ce_audit_file")
                concept = gr.Textbox(label="Erased concept", placeholder="circle" if host.toy else "van gogh",
                                     elem_id="ce_audit_concept")
                attack = gr.Radio(list(ATTACK_NAMES), value="soft_prompt", label="Attack", elem_id="ce_audit_attack")
                with gr.Row():
                    steps = gr.Number(value=150, precision=0, label="Steps (budget)", elem_id="ce_audit_steps")
                    tokens = gr.Number(value=2, precision=0, label="Tokens (budget)", elem_id="ce_audit_tokens")
                    seed = gr.Number(value=0, precision=0, label="Seed", elem_id="ce_audit_seed")
                with gr.Row():
                    run_button = gr.Button("Audit", variant="primary", elem_id="ce_audit_run")
                    cancel_button = gr.Button("Cancel audit", elem_id="ce_audit_cancel")
            with gr.Column(scale=1):
                status = gr.Textbox(label="Audit result", lines=4, interactive=False, elem_id="ce_audit_status")
                gallery = gr.Gallery(label="Strongest attack images", columns=4, elem_id="ce_audit_gallery")

    def run(erasure, concept, attack, steps, tokens, seed, progress=gr.Progress(track_tqdm=False)):
        return runner.run(erasure, concept, attack, steps, tokens, seed, progress=progress)

    run_button.click(run, inputs=[erasure, concept, attack, steps, tokens, seed], outputs=[status, gallery])
    cancel_button.click(runner.cancel, inputs=None, outputs=None, queue=False)
    if saved is not None:  # the file just saved by the erase section is the one to audit
        saved.change(lambda path: path, inputs=saved, outputs=erasure)
    return runner
