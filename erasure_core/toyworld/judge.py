"""The judge: a small CNN that reads shape, colour and fill style from a toy-world image.

Every erasure claim is measured with it. Each head has a "none" class, so an image that
shows no shape (the empty canvas, a scrambled grid, noise) is not forced into one.
Trained on procedural images, half of them passed through the toy VAE so the judge reads
decoded generations as well as clean drawings.
"""
from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from ..scrambled_grid import scramble_grid
from .draw import blank_canvas, draw_scene
from .world import COLOR_NAMES, NONE, SHAPE_NAMES, STYLE_NAMES, all_scenes

HEADS = {"shape": SHAPE_NAMES + [NONE], "color": COLOR_NAMES + [NONE], "style": STYLE_NAMES + [NONE]}


class Judge(nn.Module):
    def __init__(self):
        super().__init__()

        def block(cin, cout):
            return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.GroupNorm(8, cout), nn.SiLU(),
                                 nn.Conv2d(cout, cout, 3, padding=1), nn.GroupNorm(8, cout), nn.SiLU())

        self.features = nn.Sequential(block(3, 32), nn.MaxPool2d(2), block(32, 64), nn.MaxPool2d(2),
                                      block(64, 96), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.heads = nn.ModuleDict({name: nn.Linear(96, len(classes)) for name, classes in HEADS.items()})

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """images: (N, 3, H, W) in [0, 1] -> logits per head."""
        z = self.features(images * 2 - 1)
        return {name: head(z) for name, head in self.heads.items()}

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> dict[str, list[str]]:
        """Names per head, e.g. {"shape": ["circle", "none"], ...}."""
        self.eval()
        logits = self(images.float())
        return {name: [HEADS[name][i] for i in out.argmax(1).tolist()] for name, out in logits.items()}


def _labels(shape: str, color: str, style: str) -> tuple[int, int, int]:
    return HEADS["shape"].index(shape), HEADS["color"].index(color), HEADS["style"].index(style)


def judge_batch(rng: np.random.Generator, prng: random.Random, size: int):
    """Images (N,3,H,W) in [0,1] and labels (N,3): shapes, scrambled shapes, empty canvases, noise."""
    scenes = all_scenes()
    images, labels = [], []
    for _ in range(size):
        r = prng.random()
        scene = scenes[prng.randrange(len(scenes))]
        if r < 0.70:
            images.append(draw_scene(scene, rng))
            labels.append(_labels(scene.shape, scene.color, scene.style))
        elif r < 0.85:
            # A scrambled shape keeps its colour and local texture but shows no shape.
            img = torch.from_numpy(draw_scene(scene, rng)).permute(2, 0, 1)[None]
            gen = torch.Generator().manual_seed(prng.randrange(2**31))
            img = scramble_grid(img, prng.choice([4, 8]), gen)[0].permute(1, 2, 0).numpy()
            images.append(img)
            labels.append(_labels(NONE, scene.color, scene.style))
        elif r < 0.95:
            images.append(blank_canvas(rng))
            labels.append(_labels(NONE, NONE, NONE))
        else:
            noise = rng.uniform(0, 1, size=(8, 8, 3)).astype(np.float32)
            images.append(np.kron(noise, np.ones((4, 4, 1), dtype=np.float32)))
            labels.append(_labels(NONE, NONE, NONE))
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
    return x, torch.tensor(labels)


def train_judge(vae, steps: int, seed: int, log=print, batch: int = 64) -> Judge:
    torch.manual_seed(seed)
    rng, prng = np.random.default_rng(seed + 2), random.Random(seed + 2)
    judge = Judge()
    opt = torch.optim.AdamW(judge.parameters(), lr=2e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps, pct_start=0.1)
    for step in range(steps):
        x, y = judge_batch(rng, prng, batch)
        if vae is not None:
            # Half the batch as the VAE reconstructs it: generations are decoded by this VAE.
            half = batch // 2
            with torch.no_grad():
                recon = vae.decode(vae.encode(x[:half] * 2 - 1).latent_dist.mean).sample
            x = torch.cat([(recon.clamp(-1, 1) + 1) / 2, x[half:]])
        x = (x + torch.randn_like(x) * 0.02).clamp(0, 1)
        logits = judge(x)
        loss = sum(F.cross_entropy(logits[name], y[:, i]) for i, name in enumerate(HEADS))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 100 == 0 or step == steps - 1:
            log(f"judge step {step}/{steps} loss {loss.item():.4f}")
    return judge.eval()


def save_judge(judge: Judge, path: Path) -> None:
    save_file({k: v.contiguous() for k, v in judge.state_dict().items()}, str(path))


def load_judge(path: Path) -> Judge:
    judge = Judge()
    judge.load_state_dict(load_file(str(path)))
    return judge.eval()


@torch.no_grad()
def heldout_accuracy(judge: Judge, count: int = 960, seed: int = 12345) -> dict[str, float]:
    """Accuracy per head on fresh clean procedural images of every scene (a seed never trained on)."""
    rng = np.random.default_rng(seed)
    scenes = all_scenes()
    chosen = [scenes[i % len(scenes)] for i in range(count)]
    x = torch.from_numpy(np.stack([draw_scene(s, rng) for s in chosen])).permute(0, 3, 1, 2)
    pred = judge.predict(x)
    return {
        "shape": float(np.mean([p == s.shape for p, s in zip(pred["shape"], chosen)])),
        "color": float(np.mean([p == s.color for p, s in zip(pred["color"], chosen)])),
        "style": float(np.mean([p == s.style for p, s in zip(pred["style"], chosen)])),
    }
