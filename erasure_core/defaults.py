"""The one source of default settings: the library's configs, the command line, the ComfyUI nodes, the
webui tab and the app all start from these, per method and kind of concept.

Every value was chosen with `bench/sweep.py` on the toy world's tuning concepts only
(`erasure_core/toyworld/splits.py`: "circle", "striped", "green"), and `bench/quality.py` reports
them on every concept (README "Choosing the defaults" and "Quality"). Pure data and small functions:
the UI imports this module without importing torch.
"""
from __future__ import annotations

import re

KINDS = ("object", "style", "color")  # what a concept is: a thing, a look (style, texture, fill), a colour

STEPS = 300  # the length and batch every table and sweep of README "Quality" and "Choosing the defaults" ran
BATCH_SIZE = 16
# How a run fits its device (erasure_core/memory.py), the same for every method and kind: the memory plan is made
# before any work and, when the run does not fit, "auto" applies result-neutral changes first (checkpointing,
# micro-batches) and says which; checkpointing and bf16 activations on CUDA, not on the CPU (README "Will it
# fit?"); the whole batch in one UNet call unless the plan splits it.
MEMORY = dict(memory="auto", checkpointing="auto", precision="auto", micro_batch=None)

# Where cg, ca and uce send a concept without an alternative (methods/common.py: `anchor`), per kind: an object to
# the empty prompt; a style to its prompt without the style's words: on striped, "empty" erased it and the shape with
# it (cg, uce: kept 0; ca: 0.375 left, kept 0.094), "without concept" erased it with kept 1.000 (cg, ca) and 0.969
# (uce) and no preserved drop. A colour stays "empty": on green "without concept" left 0.583 of it (cg and uce; the
# toy model has no colourless prompt to fall back on); EraseConfig.warnings says to name another colour.
ANCHOR = {"object": "empty", "style": "without concept", "color": "empty"}

# method -> kind -> settings. Steps, batch size and the memory settings are the same for every method (above);
# rank None trains (or edits) the group's full weights, r a LoRA of rank r.
SETTINGS: dict[str, dict[str, dict]] = {
    "dt": {
        # A LoRA of rank 8 over the whole UNet: full weights of all of SD1.5's UNet need ~14 GB for weights,
        # gradients and AdamW states, more than an 8 GB GPU; on "circle" rank 8 at lr 1e-3 erased 0.000 and kept
        # preserved accuracy at the original's 0.958 (divergence 0.022), as well as full weights at lr 1e-4 did.
        "object": dict(grid=4, group="all", rank=8, lr=1e-3, preserve_weight=4.0, images_per_prompt=2),
        # Full weights of the cross-attention layers (they fit 8 GB as they are): the setting measured on striped.
        "style": dict(grid=32, group="cross_attn", rank=None, lr=5e-4, preserve_weight=16.0, images_per_prompt=2),
        # No setting erases a colour (on "green": scramble erased 0.708 -> shape gone too, desaturate 0.625 with
        # shape and fill kept 0.917); desaturate is the one that at least keeps the rest. DTConfig.warnings says so.
        "color": dict(grid=4, group="all", rank=8, lr=1e-3, preserve_weight=4.0, images_per_prompt=2,
                      degeneration="desaturate"),
    },
    "cg": {kind: dict(group="cross_attn", rank=None, lr=5e-4, preserve_weight=10.0, drift_weight=1.0,
                      anchor=ANCHOR[kind]) for kind in KINDS},
    # ESD-x (cross-attention) for every kind: ESD-u, the paper's group for objects, needs full weights of nearly the
    # whole UNet (more than 8 GB on SD1.5) and as a rank-8 LoRA did worse on circle. No lr erased and preserved: on
    # circle 1e-5 left 0.79 of the circles, 2e-5 erased all and kept preserved at 0.750 (original 0.958), 3e-5 0.583;
    # on striped 3e-5 erased all with 0.72 preserved (1e-4: 0.16). Colours: no lr erased green (2e-5, 3e-5, 5e-5
    # left 1.00, 0.92, 0.54 of it green and cost 0.10-0.76 preserved), so they keep the style setting.
    "esd": {
        "object": dict(group="cross_attn", rank=None, lr=2e-5, eta=1.0),
        "style": dict(group="cross_attn", rank=None, lr=3e-5, eta=1.0),
        "color": dict(group="cross_attn", rank=None, lr=3e-5, eta=1.0),
    },
    # Concept Ablation (model-based): 1e-5 and 3e-5 do not erase circle, striped or green; 1e-4 erases green fully,
    # striped at a 0.047 preserved drop, circle but 3 of 24 at 0.042: the one that erases, for every kind.
    "ca": {kind: dict(group="cross_attn_kv", rank=None, lr=1e-4, anchor=ANCHOR[kind]) for kind in KINDS},
    # A closed-form edit of full weights (no steps, batch or learning rate of its own): the paper's code's constants.
    "uce": {kind: dict(group="cross_attn_kv", rank=None, lamb=0.5, erase_scale=1.0, preserve_scale=0.1,
                       anchor=ANCHOR[kind]) for kind in KINDS},
}

# Words that name a colour: a concept made only of them is a colour whatever the model.
COLOR_WORDS = frozenset((
    "red green blue yellow orange purple violet pink brown black white grey gray cyan magenta teal turquoise "
    "crimson scarlet emerald lime azure cobalt golden lemon navy maroon beige gold silver indigo light dark pale "
    "bright deep"
).split())


def settings(method: str, kind: str = "object") -> dict:
    """Steps, batch size, the memory settings and the method's own settings for a kind of concept (a new dict)."""
    return {"steps": STEPS, "batch_size": BATCH_SIZE, **MEMORY, **SETTINGS[method][kind]}


def kind_from_words(concepts: list[str]) -> str | None:
    """The kind the concepts' words name: the toy world's own words, or colour words; None when they do not tell
    (a style cannot be told from its name) or name different kinds."""
    from .toyworld.world import find_concept

    kinds = set()
    for concept in concepts:
        toy = find_concept(concept)
        if toy is not None:
            kinds.add({"shape": "object", "style": "style", "color": "color"}[toy[0]])
        elif all(w in COLOR_WORDS for w in re.findall(r"[a-z]+", concept.lower()) or ["?"]):
            kinds.add("color")
        else:
            return None
    return kinds.pop() if len(kinds) == 1 else None


def guess_kind(concepts: list[str]) -> str:
    """The kind the words name, else "object"."""
    return kind_from_words(concepts) or "object"


def options_for(method: str, concepts: list[str], kind: str | None = None, toy: bool = False) -> dict:
    """Keyword arguments for the method's config: the defaults for the concepts' kind, and on the toy world its
    own prompts and sampler. Every host lays the user's own choices over these."""
    kind = kind or guess_kind(concepts)
    options = {**settings(method, kind), "kind": kind}
    if toy:
        from .toyworld.evaluate import toy_options

        options.update(toy_options(concepts))
    return options
