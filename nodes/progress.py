"""Progress on the node: ComfyUI's progress bar with a loss-curve preview, loss text, and an event
for the pack's web extension (web/concept_eraser.js draws the live curve from it)."""
from __future__ import annotations

import sys

from PIL import Image, ImageDraw

import comfy.utils

EVENT = "concept_eraser.loss"


def prompt_server():
    """The running PromptServer, or None headless (never import `server` ourselves: see research notes)."""
    server = getattr(sys.modules.get("server"), "PromptServer", None)
    return getattr(server, "instance", None)


def loss_curve_image(losses: list[float], size: tuple[int, int] = (320, 160)) -> Image.Image:
    """A small line plot of the loss so far (drawn with PIL: no plotting library needed)."""
    w, h = size
    img = Image.new("RGB", size, (24, 24, 28))
    draw = ImageDraw.Draw(img)
    if losses:
        lo, hi = min(losses), max(losses)
        span = (hi - lo) or 1.0  # a constant loss still draws (as a flat line)
        n = max(len(losses) - 1, 1)
        pts = [(8 + (w - 16) * i / n, h - 20 - (h - 36) * (v - lo) / span) for i, v in enumerate(losses)]
        draw.line(pts if len(pts) > 1 else pts * 2, fill=(90, 200, 250), width=2)
        draw.text((8, 4), f"loss {losses[-1]:.4f}  (step {len(losses)})", fill=(230, 230, 230))
        draw.text((8, h - 16), f"min {lo:.4f}  max {hi:.4f}", fill=(160, 160, 160))
    return img


class Reporter:
    """The `progress(step, total, loss)` callback the core's training loop calls after each step, and
    `phase(desc, done, total)`, the listener for the core's other phases (erasure_core.progress: the
    original model's images and trajectories before training), so the bar moves from the start."""

    def __init__(self, node_id: str | None, title: str, total: int, previews: int = 20):
        self.node_id, self.title = node_id, title
        self.bar = comfy.utils.ProgressBar(total, node_id=node_id)
        self.every = max(1, total // previews)  # a preview image costs a JPEG over the websocket
        self.losses: list[float] = []

    def text(self, message: str) -> None:
        server = prompt_server()
        if server is not None and self.node_id is not None:
            server.send_progress_text(message, self.node_id)

    def phase(self, desc: str, done: int, total: int) -> None:
        self.bar.update_absolute(done, total)
        self.text(f"{self.title}: {desc} ({done}/{total})")

    def __call__(self, step: int, total: int, loss: float) -> None:
        self.losses.append(float(loss))
        preview = None
        if step % self.every == 0 or step == total:
            preview = ("JPEG", loss_curve_image(self.losses), 512)
        self.bar.update_absolute(step, total, preview)
        self.text(f"{self.title}: step {step}/{total} · loss {loss:.4f}")
        server = prompt_server()
        if server is not None:
            server.send_sync(EVENT, {"node": self.node_id, "step": step, "total": total, "loss": float(loss)})
