"""Progress from every phase of the core (erasure_core.progress), and cancelling through it."""
from __future__ import annotations

import threading

import pytest
import torch

from erasure_core.errors import ErasureCancelled
from erasure_core.progress import listen, report
from erasure_core.sampling import sample_images


def test_reports_reach_the_listeners_of_their_own_context_only():
    outer, inner, other_thread = [], [], []
    report("nobody listens", 1, 1)  # no listener: nothing happens
    with listen(lambda *a: outer.append(a)):
        with listen(lambda *a: inner.append(a)):
            report("both", 1, 2)
            thread = threading.Thread(target=lambda: report("another thread", 1, 1))
            thread.start()
            thread.join()
        report("outer only", 2, 2)
    report("after", 1, 1)
    assert outer == [("both", 1, 2), ("outer only", 2, 2)] and inner == [("both", 1, 2)]


def test_sampling_reports_every_ddim_step_across_batches(toy_model):
    seen = []
    with listen(lambda *a: seen.append(a)):
        images = sample_images(toy_model, ["a red solid circle"] * 3, [0, 1, 2], steps=4, guidance=1.5,
                               batch_size=2, desc="drawing")
    assert images.shape[0] == 3
    assert seen == [("drawing", i, 8) for i in range(1, 9)]  # 2 batches x 4 steps, counted through


def test_a_listener_cancels_sampling_at_the_next_step(toy_model):
    seen = []

    def cancel_at_second_step(desc, done, total):
        seen.append(done)
        if done == 2:
            raise ErasureCancelled("cancelled while sampling")

    with listen(cancel_at_second_step), pytest.raises(ErasureCancelled):
        sample_images(toy_model, ["a red solid circle"], [0], steps=10, guidance=1.5)
    assert seen == [1, 2]


def test_an_erasure_reports_each_phase_before_training(toy_model, tmp_path):
    """cg: the report's 'before' images, the trajectories and the frozen predictions, training, 'after', saving."""
    from erasure_core.jobs import ReportSettings, run_erasure
    from erasure_core.methods import CGConfig

    torch.manual_seed(0)
    phases, steps = [], []
    config = CGConfig(concepts=["circle"], alternatives=["square"], steps=2, sample_steps=2, trajectories_per_prompt=1,
                      templates=["a red solid {}"], preserve_prompts=["a blue solid square"], guidance=1.5,
                      batch_size=2)

    def phase(desc, done, total):
        if not phases or phases[-1] != desc:
            phases.append(desc)

    with listen(phase):
        out = run_erasure(toy_model, "cg", config, tmp_path, log=lambda m: None,
                          progress=lambda step, total, loss: steps.append(step),
                          report_settings=ReportSettings(steps=2, image_size=16))
    assert phases == ["sampling the 'before' images", "the original model's trajectories of the concept prompts",
                      "the original model's predictions on its trajectories",
                      "the original model's trajectories of the preserve prompts",
                      "the original model's predictions for the preserve prompts",
                      "sampling the 'after' images", "saving"], phases
    assert steps == [1, 2]
    assert out.images.concept_before.shape[-1] == 16  # the report's own size (the toy world draws 32 px)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["comparison.png", "erase_circle_cg.safetensors",
                                                          "report.json"]


def test_no_report_images_when_asked_for_none_and_the_erasure_saved_where_the_host_says(toy_model, tmp_path):
    from erasure_core.jobs import ReportSettings, run_erasure
    from erasure_core.methods import ESDConfig

    config = ESDConfig(concepts=["circle"], steps=1, sample_steps=2, trajectories_per_prompt=1,
                       templates=["a red solid {}"], guidance=1.5, batch_size=2)
    elsewhere = tmp_path / "loras" / "mine.safetensors"
    out = run_erasure(toy_model, "esd", config, tmp_path / "run", log=lambda m: None,
                      report_settings=ReportSettings(steps=0), save=lambda result: result.save(elsewhere))
    assert out.images is None and out.grid_path is None and out.erasure_path == elsewhere and elsewhere.exists()
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["report.json"]  # stored once, elsewhere


def test_the_report_draws_every_concept_of_the_run_each_from_seed_0(toy_model, tmp_path):
    from PIL import Image

    from erasure_core.jobs import ReportSettings, run_erasure
    from erasure_core.methods import UCEConfig
    from erasure_core.sampling import latent_shape_for

    config = UCEConfig(concepts=["circle", "striped"], alternatives=["square", "dotted"], guidance=1.5,
                       templates={"circle": ["a red solid {}", "a blue solid {}"], "striped": ["a red {} square"]})
    out = run_erasure(toy_model, "uce", config, tmp_path, log=lambda m: None,
                      report_settings=ReportSettings(steps=2, image_size=16))
    assert out.images.concept_of == ["circle", "circle", "striped"]
    assert [row[0] for row in out.images.rows_per_concept(8)] == ["circle", "striped"]
    assert Image.open(out.grid_path).height == 6 * (16 * 3 + 4) + 4  # each concept before/after, then without
    alone = sample_images(toy_model, ["a red striped square"], [0], steps=2, guidance=1.5,
                          latent_shape=latent_shape_for(toy_model, 16, "report image size"))
    assert torch.allclose(out.images.concept_before[2:], alone, atol=1e-4)  # its concept's first prompt: seed 0
