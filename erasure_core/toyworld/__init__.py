"""The toy world: a small trained text-to-image model and a judge, shipped for measuring erasure."""
from pathlib import Path

ASSETS = Path(__file__).parent / "assets"
MODEL_DIR = ASSETS / "model"
JUDGE_PATH = ASSETS / "judge.safetensors"
BUILD_INFO = ASSETS / "build_info.json"
CONTROLNET_DIR = ASSETS / "controlnet"
XL_ASSETS = ASSETS / "xl"
XL_MODEL_DIR = XL_ASSETS / "model"
