"""The judge: a small CNN that reads shape, colour and fill style from a toy-world image.

Every erasure claim is measured with it. Each head has a "none" class, so an image that
shows no shape (the empty canvas, a scrambled grid, noise) is not forced into one.
Trained on procedural images, half of them passed through the toy VAE so the judge reads
decoded generations as well as clean drawings, their colours varied within what each colour's
name allows so that it reads a colour by its hue rather than by the renderer's exact RGB (the
toy model's greens are darker and duller than the renderer's).
"""
from __future__ import annotations

import colorsys
import random
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from ..degeneration import LUMA
from ..scrambled_grid import scramble_grid
from .draw import BACKGROUND, IMAGE_SIZE, RGB, blank_canvas, draw_scene
from .world import COLOR_NAMES, NONE, SHAPE_NAMES, STYLE_NAMES, Scene, all_scenes

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


IGNORE = -100  # a label not trained on (cross-entropy skips it): the image is ambiguous for that head

# What the judge must read as "no shape": scrambles at every grid size a Scrambled Grid can have on a 32-px
# image (2 = quarters ... 32 = single pixels, the fills' scramble) and pixel noise at every block size.
SCRAMBLE_GRIDS = tuple(range(2, IMAGE_SIZE + 1))
NOISE_SCALES = (1, 2, 4, 8, 16)


def _labels(shape: str, color: str, style: str) -> tuple[int, int, int]:
    return HEADS["shape"].index(shape), HEADS["color"].index(color), HEADS["style"].index(style)


# How far a drawn colour may move and still be called by its name, so the judge reads a colour by its hue and not
# by the renderer's exact RGB (the toy model draws green darker and duller than the renderer, most in striped and
# dotted shapes, where its green drifts toward yellow): the hue up to nine tenths of the way to the midpoint between
# its own and its neighbour's on either side (so it stays nearer its own name's hue than any other's: red may move
# 22 degrees toward yellow, green 36 toward yellow and 44 toward blue; two thirds read 6% of the toy model's green
# dotted and striped shapes as red or none, nine tenths 4%: those left have a measured hue of 20-78 degrees, red to
# olive, so the judge is right to refuse them "green"), saturation down to 0.4 of the renderer's (a dull green is
# still green; grey, saturation 0, is "none"), value 0.7-1.1 times the renderer's.
HUE_REACH = 0.9
SATURATION_SCALE = (0.4, 1.1)
VALUE_SCALE = (0.7, 1.1)


def _hue(name: str) -> float:
    return colorsys.rgb_to_hsv(*RGB[name])[0]


def hue_limits(name: str) -> tuple[float, float]:
    """How far (as a share of the hue circle) the hue of `name` may move down and up: `HUE_REACH` of the way to the
    midpoint with the nearest colour's hue on each side."""
    own = _hue(name)
    gaps_up = [(_hue(other) - own) % 1.0 for other in RGB if other != name]
    down, up = 1.0 - max(gaps_up), min(gaps_up)
    return HUE_REACH * down / 2, HUE_REACH * up / 2


def jittered_colour(name: str, rng: np.random.Generator) -> np.ndarray:
    """An RGB colour that is still `name`: the renderer's with hue, saturation and value moved within the limits."""
    h, s, v = colorsys.rgb_to_hsv(*RGB[name])
    down, up = hue_limits(name)
    h = (h + rng.uniform(-down, up)) % 1.0
    s = min(1.0, s * rng.uniform(*SATURATION_SCALE))
    v = min(1.0, v * rng.uniform(*VALUE_SCALE))
    return np.array(colorsys.hsv_to_rgb(h, s, v), dtype=np.float32)


def recolour(image: np.ndarray, old: np.ndarray, new: np.ndarray) -> np.ndarray:
    """A drawing (H, W, 3) of colour `old` as if drawn in `new`. Every pixel of a drawing is the canvas plus a share
    of (old - canvas), anti-aliased edges included; that share is kept and the direction replaced."""
    old_dir, new_dir = old - BACKGROUND, new - BACKGROUND
    share = (image - BACKGROUND) @ old_dir / float(old_dir @ old_dir)
    return np.clip(image + share[..., None] * (new_dir - old_dir), 0, 1).astype(np.float32)


def colour_varied_scene(scene: Scene, rng: np.random.Generator) -> np.ndarray:
    """A drawing of `scene` in a colour moved within what its colour's name allows (`jittered_colour`)."""
    old = np.array(RGB[scene.color], dtype=np.float32)
    return recolour(draw_scene(scene, rng), old, jittered_colour(scene.color, rng))


def scramble_fill(style: str, grid: int) -> str | None:
    """The fill a scramble of a `style` image shows: its own while a patch holds whole periods of the texture
    (patches of 8 px or more hold a 6-px stripe or dot period), "none" once patches are smaller than a stripe (3 px
    wide) and a dot (3.6 px across): 2 px or less; None (not trained on) between, where a patch can still hold a
    stripe or a dot."""
    patch = IMAGE_SIZE // grid
    if patch >= 8:
        return style
    if patch <= 2:
        return NONE
    return None


def scrambled_scene(scene: Scene, grid: int, rng: np.random.Generator, gen: torch.Generator,
                    vary_colour: bool = False):
    """A scene cut into grid x grid patches and shuffled, and its labels: no shape; its colour, because every
    pixel keeps its colour (a scramble of a red shape is still red); its fill per `scramble_fill`. The scene is
    drawn in the renderer's colour, or with `vary_colour` in one its colour's name allows (for training)."""
    drawing = colour_varied_scene(scene, rng) if vary_colour else draw_scene(scene, rng)
    clean = torch.from_numpy(drawing).permute(2, 0, 1)[None]
    image = scramble_grid(clean, grid, gen)
    if torch.equal(image, clean):  # the identity permutation (1 in 24 at grid 2) still shows the shape
        return clean[0].permute(1, 2, 0).numpy(), (scene.shape, scene.color, scene.style)
    return image[0].permute(1, 2, 0).numpy(), (NONE, scene.color, scramble_fill(scene.style, grid))


def pixel_noise(rng: np.random.Generator, scale: int, size: int = IMAGE_SIZE) -> np.ndarray:
    """Noise in square blocks of `scale` px: uniform colours, or the canvas with Gaussian noise of a random
    strength (what a partly denoised or degenerated generation can look like)."""
    cells = size // scale
    if rng.random() < 0.5:
        noise = rng.uniform(0, 1, size=(cells, cells, 3))
    else:
        noise = BACKGROUND + rng.normal(0, rng.uniform(0.05, 0.5), size=(cells, cells, 3))
    return np.clip(np.kron(noise, np.ones((scale, scale, 1))), 0, 1).astype(np.float32)


def greyscale(image: np.ndarray) -> np.ndarray:
    """(H, W, 3) without its hue (DT's "desaturate" degeneration on one numpy image): shape and fill, no colour."""
    luma = image @ np.array(LUMA, dtype=np.float32)
    return np.repeat(luma[..., None], 3, axis=-1)


def judge_example(rng: np.random.Generator, prng: random.Random) -> tuple[np.ndarray, tuple]:
    """One training image and its (shape, colour, fill) names; a name of None is not trained on."""
    scene = all_scenes()[prng.randrange(len(all_scenes()))]
    r = prng.random()
    if r < 0.50:
        return colour_varied_scene(scene, rng), (scene.shape, scene.color, scene.style)
    if r < 0.56:
        return greyscale(draw_scene(scene, rng)), (scene.shape, NONE, scene.style)
    if r < 0.80:
        # Every grid size, the coarse ones (whose pieces are large) twice as often.
        grids = SCRAMBLE_GRIDS if prng.random() < 0.5 else SCRAMBLE_GRIDS[:3]
        gen = torch.Generator().manual_seed(prng.randrange(2**31))
        return scrambled_scene(scene, prng.choice(grids), rng, gen, vary_colour=True)
    if r < 0.90:
        return blank_canvas(rng), (NONE, NONE, NONE)
    return pixel_noise(rng, prng.choice(NOISE_SCALES)), (NONE, NONE, NONE)


def judge_batch(rng: np.random.Generator, prng: random.Random, size: int):
    """Images (N,3,H,W) in [0,1] and labels (N,3): shapes (some without their colour), scrambles of every grid
    size, empty canvases and pixel noise of every block size."""
    images, labels = [], []
    for _ in range(size):
        image, names = judge_example(rng, prng)
        images.append(image)
        labels.append(tuple(IGNORE if n is None else HEADS[h].index(n) for h, n in zip(HEADS, names)))
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
        # Brightness (0.85-1.1) and per-channel gains (0.95-1.05) vary, so a generation's slightly darker or shifted
        # colour still reads as its colour (not as "none"); then pixel noise of a random strength per image, none to
        # 0.03, so clean drawings read as well as noisy ones.
        x = x * (0.85 + 0.25 * torch.rand(len(x), 1, 1, 1)) * (0.95 + 0.1 * torch.rand(len(x), 3, 1, 1))
        strength = torch.rand(len(x), 1, 1, 1) * 0.03
        x = (x + torch.randn_like(x) * strength).clamp(0, 1)
        logits = judge(x)
        loss = sum(F.cross_entropy(logits[name], y[:, i], ignore_index=IGNORE) for i, name in enumerate(HEADS))
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


@torch.no_grad()
def negative_accuracy(judge: Judge, per_case: int = 48, seed: int = 54321) -> dict[str, float]:
    """How the judge reads what is not a clean shape, on fresh images (a seed never trained on); each value is
    the worst case over grid sizes or noise scales:
    - scramble_shape_none: scrambles (grid 2..32) read as no shape
    - scramble_fill_none: scrambles whose patches are smaller than a stripe and a dot (2 px or less, DT's fill
      scramble among them) read as no fill
    - scramble_color_kept: scrambles read as their colour (every pixel keeps it)
    - noise_none: pixel noise of every block size read as no shape, no colour and no fill
    - blank_none: empty canvases read as no shape, no colour and no fill
    - grey_color_none: shapes without their hue read as no colour, with their shape and fill right
    """
    rng, prng = np.random.default_rng(seed), random.Random(seed)
    scenes = all_scenes()

    def read(images: list[np.ndarray]) -> dict[str, list[str]]:
        return judge.predict(torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2))

    shape_none, fill_none, color_kept = [], [], []
    for grid in SCRAMBLE_GRIDS:
        chosen = [scenes[prng.randrange(len(scenes))] for _ in range(per_case)]
        gen = torch.Generator().manual_seed(seed + grid)
        pairs = [scrambled_scene(s, grid, rng, gen) for s in chosen]
        pred = read([image for image, _ in pairs])
        shape_none.append(np.mean([p == NONE for p in pred["shape"]]))
        color_kept.append(np.mean([p == s.color for p, s in zip(pred["color"], chosen)]))
        if scramble_fill(STYLE_NAMES[0], grid) == NONE:
            fill_none.append(np.mean([p == NONE for p in pred["style"]]))
    noise_none = []
    for scale in NOISE_SCALES:
        pred = read([pixel_noise(rng, scale) for _ in range(per_case)])
        noise_none.append(np.mean([all(pred[h][i] == NONE for h in HEADS) for i in range(per_case)]))
    pred = read([blank_canvas(rng) for _ in range(per_case)])
    blank_none = np.mean([all(pred[h][i] == NONE for h in HEADS) for i in range(per_case)])
    chosen = [scenes[i % len(scenes)] for i in range(per_case)]
    pred = read([greyscale(draw_scene(s, rng)) for s in chosen])
    grey = np.mean([pred["color"][i] == NONE and pred["shape"][i] == s.shape and pred["style"][i] == s.style
                    for i, s in enumerate(chosen)])
    return {"scramble_shape_none": float(min(shape_none)), "scramble_fill_none": float(min(fill_none)),
            "scramble_color_kept": float(min(color_kept)), "noise_none": float(min(noise_none)),
            "blank_none": float(blank_none), "grey_color_none": float(grey)}
