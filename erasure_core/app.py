"""The standalone app: `python -m erasure_core.app [--model PATH] [--port N] [--out DIR]`.

The same UI as the webui tab (erasure_core.ui_blocks), for people without a webui. The
default model is the built-in toy world, on which the UI uses the toy world's own prompts.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .errors import ErasureError


def toy_world_paths(model_path: Path) -> tuple[bool, Path | None]:
    """Is this a toy-world model folder, and where is its judge? (a build's model/ beside judge.safetensors)"""
    from .toyworld import JUDGE_PATH, MODEL_DIR, XL_MODEL_DIR

    path = Path(model_path).resolve()
    toy = path in (MODEL_DIR.resolve(), XL_MODEL_DIR.resolve()) or (
        path.name == "model" and (path.parent / "build_info.json").exists())
    judge = path.parent / "judge.safetensors"
    if not judge.exists():
        judge = JUDGE_PATH  # the XL toy world is judged by the toy world's judge
    return toy, (judge if toy and judge.exists() else None)


def make_host(model_path: Path, out_dir: Path, config: str | None = None, device: str = "cpu"):
    """Load the model once, up front, so that a bad --model fails at start and not at the first run."""
    from .model import load_diffusers_model
    from .ui_blocks import Host

    model = load_diffusers_model(model_path, device=device, config=config)
    toy, judge = toy_world_paths(model_path)
    intro = ("# Concept Eraser\nErase a concept from a diffusion model's weights. "
             f"Model: `{model_path}`" + (" (the built-in toy world: try the concept `circle`)." if toy else "."))
    # The before/after images: the toy world's own size and sampler (fast); a real model's at most 256 px, 10 steps.
    size = model.image_size
    return Host(load_model=lambda: model, out_dir=Path(out_dir), toy=toy, judge_path=judge, intro=intro,
                log=lambda m: print(m, flush=True), image_size=size, report_size=size if toy else min(size, 256),
                report_steps=25 if toy else 10)


def main(argv=None) -> int:
    from .toyworld import MODEL_DIR

    parser = argparse.ArgumentParser(prog="python -m erasure_core.app", description="Concept Eraser in a browser.")
    parser.add_argument("--model", default=str(MODEL_DIR), help="diffusers folder or single-file .safetensors "
                        "(default: the toy world)")
    parser.add_argument("--config", help="local diffusers folder describing a single-file checkpoint")
    parser.add_argument("--out", default="concept_eraser_out", help="folder for results (one sub-folder per run)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: this machine only)")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)

    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home
    try:
        host = make_host(Path(args.model), Path(args.out), args.config, args.device)
    except ErasureError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from .ui_blocks import build_blocks

    blocks = build_blocks(host)
    blocks.queue()
    blocks.launch(server_name=args.host, server_port=args.port, inbrowser=False, share=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
