"""Reading and writing users' files safely: safetensors only, atomic writes.

Nothing here ever unpickles: a .ckpt/.pt/.bin offered as input is refused by its header,
not by trying to load it.
"""
from __future__ import annotations

import json
import os
import struct
import tempfile
from contextlib import contextmanager
from pathlib import Path

from .errors import ErasureInputError

PICKLE_MAGIC = (b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05", b"PK\x03\x04")  # pickle protocols, torch zip


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
        if header_len <= 0 or 8 + header_len > size:
            raise ErasureInputError(field, f"{path.name} has a corrupt or truncated safetensors header",
                                    "the file is damaged; save or download it again")
        try:
            header = json.loads(f.read(header_len))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise ErasureInputError(field, f"{path.name} has a corrupt safetensors header (not JSON)",
                                    "the file is damaged or not safetensors; save it again as .safetensors") from None
    end = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        end = max(end, info["data_offsets"][1])
    if 8 + header_len + end > size:
        raise ErasureInputError(field, f"{path.name} is truncated: its tensors need {8 + header_len + end} bytes but the "
                                f"file has {size}", "the file is incomplete; save or download it again")
    return header.get("__metadata__", {}) or {}


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
