"""File names made from user text (a concept, a prefix), safe on Linux, macOS and Windows.

Every host names its files through this module, so a concept such as `../../x`, `/`, a NUL byte
or 500 characters can never steer a file outside its folder, create a sub-folder, or fail with
"File name too long" after the training is done:
- `safe_stem(text)`: one path component: letters, digits, `_`, `-` and `.` (any script), no
  separators, no leading dot, no reserved Windows name, at most `MAX_STEM_BYTES` UTF-8 bytes; a short
  hash of the full text is appended whenever characters were dropped or cut, so distinct texts
  keep distinct names;
- `erasure_stem(concepts, method)`: `erase_<concepts>_<method>`, the erasure file's stem everywhere;
- `path_inside(folder, name, field)`: `folder/name`, refused if it resolves anywhere but directly
  inside `folder` (links included);
- `unique_path(folder, stem)`: the first free `stem.safetensors`, `stem_2.safetensors`, …
"""
from __future__ import annotations

import hashlib
import os
import re
import unicodedata
from pathlib import Path

from .errors import ErasureInputError

# 255 bytes is the file-name limit of ext4, APFS and NTFS; the stem leaves room for a counter, the
# suffix and the temporary name of an atomic write (".<name>.ce<pid>-<hex>.part").
MAX_STEM_BYTES = 120
HASH_CHARS = 8
WINDOWS_RESERVED = {"con", "prn", "aux", "nul", *(f"com{i}" for i in range(10)), *(f"lpt{i}" for i in range(10))}
_UNSAFE = re.compile(r"[^\w.-]+")  # \w: letters and digits of every script, and "_"
_SPACES = re.compile(r"\s+")


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:HASH_CHARS]


def _cut_to_bytes(text: str, limit: int) -> str:
    """The longest prefix of `text` whose UTF-8 encoding fits in `limit` bytes (never a broken character)."""
    return text.encode("utf-8")[:limit].decode("utf-8", "ignore")


def safe_stem(text: str, max_bytes: int = MAX_STEM_BYTES) -> str:
    """A file-name stem for `text`; never empty, never a path. 'Van Gogh' -> 'Van-Gogh', '../x' -> 'x-1b4f…'."""
    normal = unicodedata.normalize("NFKC", str(text))
    readable = _SPACES.sub("-", normal.strip())  # spaces become "-": a lossless, expected change
    slug = _UNSAFE.sub("-", readable)
    slug = re.sub(r"-{2,}", "-", slug).strip("-._")  # no leading dot (hidden files), no trailing dot (Windows)
    lossy = slug != readable
    if len(slug.encode("utf-8")) > max_bytes - HASH_CHARS - 1:
        slug, lossy = _cut_to_bytes(slug, max_bytes - HASH_CHARS - 1).rstrip("-._"), True
    if not slug:
        return f"concept-{text_hash(str(text))}"
    if slug.split(".")[0].lower() in WINDOWS_RESERVED:
        slug, lossy = f"{slug}_", True
    return f"{slug}-{text_hash(str(text))}" if lossy else slug


def is_portable(name: str) -> bool:
    """Whether `name` is, as it is, a file or folder name valid on Linux, macOS and Windows (spaces allowed):
    what `safe_stem` would keep unchanged."""
    spaced = _SPACES.sub("-", unicodedata.normalize("NFKC", name).strip())
    return bool(name) and name == name.strip() and safe_stem(name) == spaced


def erasure_stem(concepts: list[str], method: str) -> str:
    """`erase_<concept>[_<concept>…]_<method>`: the stem of an erasure file in every host."""
    if not re.fullmatch(r"[a-z0-9_]{1,16}", method):
        raise ErasureInputError("method", f"{method!r} is not a method name", "use dt, cg or esd")
    budget = MAX_STEM_BYTES - len("erase__") - len(method)
    return f"erase_{safe_stem('_'.join(concepts), budget)}_{method}"


def path_inside(folder: str | Path, name: str, field: str) -> Path:
    """`folder/name` when it resolves directly inside `folder` (after links); else an ErasureInputError."""
    root = Path(os.path.realpath(folder))
    target = Path(os.path.realpath(root / name))
    if target.parent != root or name in ("", ".", ".."):
        raise ErasureInputError(field, f"{name!r} would be written at {target}, not inside {root}",
                                "use a plain file name without '/', '\\' or '..'")
    return target


def unique_path(folder: str | Path, stem: str, suffix: str = ".safetensors", field: str = "output") -> Path:
    """The first of `stem.suffix`, `stem_2.suffix`, … that does not exist yet, inside `folder`."""
    path, n = path_inside(folder, f"{stem}{suffix}", field), 1
    while path.exists():
        n += 1
        path = path_inside(folder, f"{stem}_{n}{suffix}", field)
    return path
