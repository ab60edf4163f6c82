"""Small checks of user input, shared by every method and host; each raises ErasureInputError naming the
field and the fix. They run in `EraseConfig.validate()` and before a job writes anything, so a bad value
is refused before any sampling or training, never with a traceback after it."""
from __future__ import annotations

import math
import os
import shutil
import string
import unicodedata
from pathlib import Path

from .errors import ErasureInputError

MAX_STEPS = 100_000  # far beyond any erasure (200-1000 is typical); stops a typo of 10**12 steps
MAX_SEED = 2**62  # torch generators take 64 bits; the core adds offsets of up to ~10**6 to a seed
MAX_WEIGHT = 1000.0  # loss weights (preserve, drift λ, η): the useful range is 0-100
MAX_BATCH = 1024
MAX_SAMPLING_STEPS = 1000
MAX_PER_PROMPT = 256  # images/trajectories per prompt
MAX_RANK = 4096


def whole_number(field: str, value, low: int, high: int, fix: str) -> int:
    """An int in [low, high]; bools, NaN, fractions and numbers outside the range are refused."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (isinstance(value, float) and (
            not math.isfinite(value) or value != int(value))):
        raise ErasureInputError(field, f"must be a whole number from {low} to {high}, got {value!r}", fix)
    if not low <= int(value) <= high:
        raise ErasureInputError(field, f"must be a whole number from {low} to {high}, got {value!r}", fix)
    return int(value)


def real_number(field: str, value, low: float, high: float, fix: str, low_open: bool = False) -> float:
    """A finite float in [low, high] (or (low, high] with `low_open`)."""
    ok = (not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
          and (value > low if low_open else value >= low) and value <= high)
    if not ok:
        interval = f"{'(' if low_open else '['}{low:g}, {high:g}]"
        raise ErasureInputError(field, f"must be a number in {interval}, got {value!r}", fix)
    return float(value)


def weight(field: str, value, default: float) -> float:
    return real_number(field, value, 0.0, MAX_WEIGHT, f"use a number from 0 to {MAX_WEIGHT:g}, e.g. {default:g}")


def learning_rate(value) -> float:
    return real_number("learning rate", value, 0.0, 0.1, "use e.g. 1e-4 (full weights) or 1e-3 (LoRA)", low_open=True)


def steps(value) -> int:
    return whole_number("steps", value, 1, MAX_STEPS, "use e.g. 200")


def seed(value) -> int:
    return whole_number("seed", value, 0, MAX_SEED, "use a whole number such as 0")


def control_character(text: str) -> str | None:
    """The first control/format character in `text` (NUL, escape codes, bidi overrides), else None."""
    for ch in text:
        if unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Co", "Cn") and ch not in "\n\t":
            return f"U+{ord(ch):04X}"
    return None


def prompt_text(field: str, text, empty_fix: str = "type the concept to erase, e.g. 'circle'") -> str:
    """A non-empty prompt-like text (concept, alternative, preserve prompt) without control characters."""
    if not isinstance(text, str) or not text.strip():
        raise ErasureInputError(field, "is empty", empty_fix)
    bad = control_character(text)
    if bad:
        raise ErasureInputError(field, f"{text[:40]!r} contains the control character {bad}",
                                "type plain text (letters, digits, punctuation)")
    return text.strip()


def prompt_template(template) -> str:
    """A template with exactly one '{}' where the concept goes ('{{' and '}}' are literal braces)."""
    fix = "use templates such as 'a photo of {}' (exactly one {}; write {{ or }} for a literal brace)"
    if not isinstance(template, str):
        raise ErasureInputError("templates", f"{template!r} is not text", fix)
    try:
        fields = [(name, spec, conv) for _, name, spec, conv in string.Formatter().parse(template) if name is not None]
    except ValueError as exc:  # a lone '{' or '}'
        raise ErasureInputError("templates", f"{template!r} is not a valid template ({exc})", fix) from None
    if len(fields) != 1 or fields[0] != ("", "", None):
        raise ErasureInputError("templates", f"{template!r} must contain '{{}}' exactly once (and no other "
                                "{...} field)", fix)
    bad = control_character(template)
    if bad:
        raise ErasureInputError("templates", f"{template[:40]!r} contains the control character {bad}", fix)
    return template


def output_folder(folder: str | Path, need_bytes: int = 0, field: str = "output") -> Path:
    """A folder that exists (or can be made), can be written (tried, not guessed) and has room for
    `need_bytes` more; checked before any work, so nothing is lost at save time."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ErasureInputError(field, f"{folder} is a file, not a folder", "choose a folder (or a new name)")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".concept_eraser_write_test_{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise ErasureInputError(field, f"the folder {folder} is not writable ({exc.strerror or exc})",
                                "choose a folder you can write to") from None
    free = shutil.disk_usage(folder).free
    if need_bytes and free < need_bytes:
        raise ErasureInputError(field, f"the disk of {folder} has {free / 2**20:.0f} MiB free but the result needs "
                                f"about {need_bytes / 2**20:.0f} MiB", "free some disk space or choose another folder")
    return folder
