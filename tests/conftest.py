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
