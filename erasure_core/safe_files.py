"""Reading and writing users' files safely: safetensors only, atomic writes.

Nothing here ever unpickles: a .ckpt/.pt/.bin offered as input is refused by its header,
not by trying to load it.
"""
from __future__ import annotations

import json
import os
import reprlib
import shutil
import struct
import tempfile
from contextlib import contextmanager
from pathlib import Path

from .errors import ErasureInputError

PICKLE_MAGIC = (b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05", b"PK\x03\x04")  # pickle protocols, torch zip
MAX_HEADER_BYTES = 100_000_000  # the safetensors format's own limit on the JSON header


def check_safetensors(path: Path, field: str) -> dict:
    """Validate a safetensors header without loading tensors; return the header's metadata.

    Refuses pickle/zip checkpoints and truncated or corrupted files with a message naming `field`.
    """
    path = Path(path)
    if not path.is_file():
        raise ErasureInputError(field, f"{path} is not a file", "give the path of a .safetensors file")
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if head[:2] in PICKLE_MAGIC or head[:4] in PICKLE_MAGIC:
            raise ErasureInputError(field, f"{path.name} is a pickle/PyTorch checkpoint, which can run code when loaded "
                                    "and is never opened here", "convert it to .safetensors first")
        if len(head) < 8:
            raise ErasureInputError(field, f"{path.name} is too short to be a safetensors file ({size} bytes)",
                                    "the file is truncated; save or download it again")
        (header_len,) = struct.unpack("<Q", head)
        if header_len <= 0 or header_len > MAX_HEADER_BYTES or 8 + header_len > size:
            raise ErasureInputError(field, f"{path.name} has a corrupt or truncated safetensors header",
                                    "the file is damaged; save or download it again")
        try:
            header = json.loads(f.read(header_len))
        except (ValueError, RecursionError):  # bad UTF-8 or JSON, over-long numbers, absurd nesting
            raise ErasureInputError(field, f"{path.name} has a corrupt safetensors header (not JSON)",
                                    "the file is damaged or not safetensors; save it again as .safetensors") from None
    end = _header_data_end(header, path, field)
    if 8 + header_len + end > size:
        raise ErasureInputError(field, f"{path.name} is truncated: its tensors need {8 + header_len + end} bytes but the "
                                f"file has {size}", "the file is incomplete; save or download it again")
    return header.get("__metadata__") or {}


def _is_index(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


def _header_data_end(header, path: Path, field: str) -> int:
    """Check the header's structure (JSON that parses can still be the wrong shape); return where the data ends."""
    def corrupt(what: str) -> ErasureInputError:
        return ErasureInputError(field, f"{path.name} has a corrupt safetensors header ({what})",
                                 "the file is damaged or not safetensors; save or download it again")

    if not isinstance(header, dict):
        kind = {list: "array", str: "string", bool: "boolean", type(None): "null"}.get(type(header), "number")
        raise corrupt(f"a JSON {kind} instead of an object")
    end = 0
    for key, info in header.items():
        name = reprlib.repr(key)  # a damaged header can hold very long names and values: quote them short
        if key == "__metadata__":
            if info is not None and not (isinstance(info, dict)
                                         and all(isinstance(v, str) for v in info.values())):
                raise corrupt("__metadata__ must map strings to strings")
            continue
        if not isinstance(info, dict):
            raise corrupt(f"tensor {name} is not described by an object")
        offsets, shape = info.get("data_offsets"), info.get("shape")
        if not isinstance(info.get("dtype"), str):
            raise corrupt(f"tensor {name} has no dtype string")
        if not (isinstance(shape, list) and all(_is_index(d) for d in shape)):
            raise corrupt(f"tensor {name} has an invalid shape {reprlib.repr(shape)}")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_index(o) for o in offsets)
                and offsets[0] <= offsets[1]):
            raise corrupt(f"tensor {name} has invalid data_offsets {reprlib.repr(offsets)}")
        end = max(end, offsets[1])
    return end


@contextmanager
def atomic_path(final: Path):
    """Yield a temporary path next to `final`; on success it is renamed onto `final` in one step.

    On any exception (cancel, crash, disk full) the temporary file is removed and `final` is
    left as it was, so no half-written result ever appears under the real name.
    """
    final = Path(final)
    folder = final.parent
    folder.mkdir(parents=True, exist_ok=True)
    if not os.access(folder, os.W_OK):
        raise ErasureInputError("output", f"the folder {folder} is not writable", "choose a folder you can write to")
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".part", dir=folder)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, final)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def atomic_folder(final: Path):
    """Like `atomic_path` for a folder (a diffusers model): written under a temporary name, then
    swapped in, so an interrupted export never leaves a half-written model under the real name."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    if not os.access(final.parent, os.W_OK):
        raise ErasureInputError("output", f"the folder {final.parent} is not writable",
                                "choose a folder you can write to")
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".part", dir=final.parent))
    try:
        yield tmp
        if final.exists():  # replace an older export: move it aside first, drop it only after the swap
            old = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".old", dir=final.parent))
            os.replace(final, old / final.name)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
