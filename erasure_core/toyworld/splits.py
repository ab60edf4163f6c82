"""Which toy-world concepts may be used to choose settings, and which only to report them.

Every default (learning rates, parameter groups, grids, preserve weights, steps) is chosen by
measurements on the TUNING concepts only (`bench/sweep.py` refuses the others); the quality
table reports every concept and states the HELD-OUT ones apart, so its numbers say how the
defaults carry over to concepts they were not fitted on.

- "circle" and "striped": the object and the fill the defaults were first fitted on.
- "green": the one colour, so colours have defaults of their own. Not "red": the failures that
  showed colours need their own defaults (DT's scramble keeps a red, a guidance erasure of
  "red" wipes the shape) were measured on red, so red stays held out to test the fix. Not
  "yellow": the lightest colour, nearest the canvas, the hardest to tell from an empty image,
  is better held out than fitted. Of green and blue, green: the toy model once mixed green into
  red and blue (README "The toy world"), so defaults that hold for green face the colour the
  model confuses most.
"""
from __future__ import annotations

from ..errors import ErasureInputError
from .world import COLOR_NAMES, SHAPE_NAMES, STYLE_NAMES

# kind of concept -> (the toy world's attribute, its names)
KINDS = {"object": ("shape", SHAPE_NAMES), "style": ("style", STYLE_NAMES), "color": ("color", COLOR_NAMES)}

TUNING = {"object": ("circle",), "style": ("striped",), "color": ("green",)}
HELD_OUT = {kind: tuple(n for n in names if n not in TUNING[kind]) for kind, (_, names) in KINDS.items()}


def kind_of_attribute(attribute: str) -> str:
    """'shape' -> 'object', 'style' -> 'style', 'color' -> 'color'."""
    return next(kind for kind, (attr, _) in KINDS.items() if attr == attribute)


def is_tuning(name: str) -> bool:
    return any(name in names for names in TUNING.values())


def require_tuning(concepts: list[str], what: str = "concept") -> None:
    """Refuse to choose settings on a held-out concept (canonical names, e.g. 'triangle')."""
    held_out = [c for c in concepts if not is_tuning(c)]
    if held_out:
        tuning = ", ".join(n for names in TUNING.values() for n in names)
        raise ErasureInputError(what, f"{', '.join(map(repr, held_out))} is held out: settings are chosen on the "
                                f"tuning concepts only, so that the quality table measures them on concepts they "
                                f"were not fitted on", f"sweep one of the tuning concepts ({tuning})")
