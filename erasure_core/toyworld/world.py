"""The toy world's vocabulary: what exists in it and the words for each thing.

Every attribute has a canonical name and a few wordings the toy model is trained on,
so that an erasure of "circle" can later be measured on "disc" (paraphrase robustness).
The first wording is the canonical one and is used most often in training.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

SHAPES: dict[str, list[str]] = {
    "circle": ["circle", "disc", "round blob"],
    "square": ["square", "box", "block"],
    "triangle": ["triangle", "wedge", "pyramid"],
    "cross": ["cross", "plus sign", "plus"],
}
COLORS: dict[str, list[str]] = {
    "red": ["red", "crimson", "scarlet"],
    "green": ["green", "emerald", "lime"],
    "blue": ["blue", "azure", "cobalt"],
    "yellow": ["yellow", "golden", "lemon"],
}
STYLES: dict[str, list[str]] = {
    "solid": ["solid", "plain", "filled"],
    "striped": ["striped", "stripy", "banded"],
    "dotted": ["dotted", "spotted", "polka dot"],
}

SHAPE_NAMES = list(SHAPES)
COLOR_NAMES = list(COLORS)
STYLE_NAMES = list(STYLES)
NONE = "none"  # the judge's answer when an image shows no such attribute

# Caption templates. {style} may be dropped for solid fills ("a red circle").
TEMPLATES = [
    "a {color} {style} {shape}",
    "a {style} {color} {shape}",
    "{color} {shape}, {style}",
    "a {shape} that is {color} and {style}",
]
SHORT_TEMPLATES = ["a {color} {shape}", "{color} {shape}", "a {shape} in {color}"]


@dataclass(frozen=True)
class Scene:
    """What one procedural image shows (canonical names)."""

    shape: str
    color: str
    style: str


def all_scenes() -> list[Scene]:
    return [Scene(s, c, st) for s in SHAPE_NAMES for c in COLOR_NAMES for st in STYLE_NAMES]


def wording(table: dict[str, list[str]], name: str, rng: random.Random, canonical_weight: float = 2.0) -> str:
    """A wording for `name`; the canonical one is `canonical_weight` times as likely as each other."""
    words = table[name]
    weights = [canonical_weight] + [1.0] * (len(words) - 1)
    return rng.choices(words, weights=weights)[0]


def caption(scene: Scene, rng: random.Random) -> str:
    """A random training caption for a scene, with varied wordings and templates."""
    color = wording(COLORS, scene.color, rng)
    shape = wording(SHAPES, scene.shape, rng)
    if scene.style == "solid" and rng.random() < 0.4:
        return rng.choice(SHORT_TEMPLATES).format(color=color, shape=shape)
    style = wording(STYLES, scene.style, rng)
    return rng.choice(TEMPLATES).format(color=color, style=style, shape=shape)


def canonical_prompt(scene: Scene, shape_word: str | None = None, style_word: str | None = None) -> str:
    """The fixed evaluation prompt for a scene: first template, canonical words unless overridden."""
    return TEMPLATES[0].format(
        color=COLORS[scene.color][0],
        style=style_word or STYLES[scene.style][0],
        shape=shape_word or SHAPES[scene.shape][0],
    )


def vocabulary_words() -> list[str]:
    """Every word that can occur in a caption (for building the tokenizer)."""
    words: set[str] = set()
    texts = [t for t in TEMPLATES + SHORT_TEMPLATES]
    for table in (SHAPES, COLORS, STYLES):
        for wordings in table.values():
            texts.extend(wordings)
    for text in texts:
        for token in text.replace("{", " ").replace("}", " ").replace(",", " , ").split():
            if token not in ("color", "style", "shape"):
                words.add(token)
    return sorted(words)


ATTRIBUTE_TABLES = {"shape": SHAPES, "style": STYLES, "color": COLORS}


def find_concept(text: str) -> tuple[str, str] | None:
    """'disc' -> ('shape', 'circle'): which attribute a toy-world word names and its canonical name; None if none."""
    word = text.strip().lower()
    for attribute, table in ATTRIBUTE_TABLES.items():
        for name, wordings in table.items():
            if word in wordings:
                return attribute, name
    return None
