import pytest
import torch

torch.set_num_threads(max(1, torch.get_num_threads()))


@pytest.fixture(scope="session")
def toy_model():
    from erasure_core.model import load_diffusers_model
    from erasure_core.toyworld import MODEL_DIR

    return load_diffusers_model(MODEL_DIR)


@pytest.fixture(scope="session")
def judge():
    from erasure_core.toyworld import JUDGE_PATH
    from erasure_core.toyworld.judge import load_judge

    return load_judge(JUDGE_PATH)


@pytest.fixture(scope="session")
def toy_xl_dir(tmp_path_factory):
    """An SDXL-architecture toy diffusers folder for the tests that compare hosts (any weights do): the XL toy
    world when it is shipped (erasure_core/toyworld/assets/xl/model, or CONCEPT_ERASER_TOY_XL_MODEL), else the
    same architecture untrained: `build_xl` with no steps (deterministic random weights, a few seconds)."""
    import os
    from pathlib import Path

    from erasure_core.toyworld import XL_MODEL_DIR
    from erasure_core.toyworld.build_xl import build_xl

    for candidate in (os.environ.get("CONCEPT_ERASER_TOY_XL_MODEL"), XL_MODEL_DIR):
        if candidate and Path(candidate, "unet", "config.json").exists():
            return Path(candidate)
    out = tmp_path_factory.mktemp("xl_toy_untrained")
    build_xl(out, diffusion_steps=0, log=lambda m: None)
    return out / "model"


@pytest.fixture(scope="session")
def toy_xl_model(toy_xl_dir):
    from erasure_core.model import load_diffusers_model

    return load_diffusers_model(toy_xl_dir)


@pytest.fixture(scope="session")
def trained_xl_model():
    """The shipped XL toy world, for what the judge scores; the tests that need it are skipped until it ships."""
    from erasure_core.model import load_diffusers_model
    from erasure_core.toyworld import XL_MODEL_DIR

    if not (XL_MODEL_DIR / "unet" / "config.json").exists():
        pytest.skip(f"the trained XL toy world is not shipped ({XL_MODEL_DIR})")
    return load_diffusers_model(XL_MODEL_DIR)
