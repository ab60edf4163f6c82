"""Reading and writing users' files safely: safetensors only, atomic writes.

Nothing here ever unpickles: a .ckpt/.pt/.bin offered as input is refused by its header,
not by trying to load it.
"""
from __future__ import annotations

import json
import os
import re
import reprlib
import secrets
import shutil
import struct
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

from .errors import ErasureInputError

PICKLE_MAGIC = (b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05", b"PK\x03\x04")  # pickle protocols, torch zip
# A full SDXL checkpoint's header is about 250 KB (2,500 tensors); 16 MB is 60,000+ tensors. Beyond these
# limits a file is refused before its header is parsed or walked (a 92 MB header of 1.4 M empty tensors
# would otherwise take a minute and gigabytes to refuse).
MAX_HEADER_BYTES = 16_000_000
MAX_TENSORS = 100_000


def check_safetensors(path: Path, field: str, max_tensors: int = MAX_TENSORS) -> dict:
    """Validate a safetensors header without loading tensors; return the header's metadata.

    Refuses pickle/zip checkpoints, truncated or corrupted files, and headers with more than
    `max_tensors` tensors, with a message naming `field`.
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
        if header_len > MAX_HEADER_BYTES:
            raise ErasureInputError(field, f"{path.name} has a safetensors header of {header_len / 1e6:.0f} MB, more "
                                    f"than any model or erasure needs ({MAX_HEADER_BYTES / 1e6:.0f} MB)",
                                    "use a Stable Diffusion model or erasure file; this one is damaged or hostile")
        try:
            header = json.loads(f.read(header_len))
        except (ValueError, RecursionError):  # bad UTF-8 or JSON, over-long numbers, absurd nesting
            raise ErasureInputError(field, f"{path.name} has a corrupt safetensors header (not JSON)",
                                    "the file is damaged or not safetensors; save it again as .safetensors") from None
    count = len(header) - ("__metadata__" in header) if isinstance(header, dict) else 0
    if count > max_tensors:
        raise ErasureInputError(field, f"{path.name} holds {count} tensors, more than a file of this kind can have "
                                f"({max_tensors})", "use the right file; this one is damaged or not what it seems")
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


PART_SUFFIX = ".part"
_PART_NAME = re.compile(r"^\..+\.ce(\d+)-[0-9a-f]{8}\.part$")  # ".<final name>.ce<pid>-<random>.part"
STALE_PART_SECONDS = 24 * 3600


def _part_name(final: Path) -> str:
    return f".{final.name}.ce{os.getpid()}-{secrets.token_hex(4)}{PART_SUFFIX}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):  # exists but not ours, or a platform without signals
        return True
    return True


def remove_stale_parts(folder: Path) -> list[Path]:
    """Delete temporary files of this project's own naming left by a crashed write (its process is gone, or
    it is over a day old); files of other programs and writes still in progress are left alone."""
    removed = []
    try:
        entries = list(Path(folder).iterdir())
    except OSError:
        return removed
    now = time.time()
    for entry in entries:
        match = _PART_NAME.match(entry.name)
        if not match or not entry.is_file() or entry.is_symlink():
            continue
        try:
            stale = not _pid_alive(int(match[1])) or now - entry.stat().st_mtime > STALE_PART_SECONDS
            if stale and int(match[1]) != os.getpid():
                entry.unlink()
                removed.append(entry)
        except OSError:
            continue
    return removed


def new_file_mode() -> int:
    """0o666 less the process's umask: the mode any program's new file gets (0o644 under umask 022). Writers
    such as safetensors create their file owner-only; the result is given this mode before it is renamed."""
    try:  # Linux reports the umask without changing it
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # elsewhere: read it by setting it, and put it back at once
    os.umask(mask)
    return 0o666 & ~mask


def _fsync_folder(folder: Path) -> None:
    """Make a rename durable (POSIX); a no-op where folders cannot be opened (Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_path(final: Path):
    """Yield a temporary path next to `final`; on success it is flushed to disk and renamed onto `final` in
    one step.

    On any exception (cancel, crash, disk full) the temporary file is removed and `final` is
    left as it was, so no half-written result ever appears under the real name. The file gets the
    permissions of any new file (0644 under the usual umask), so a webui or ComfyUI running as
    another user can read it; temporary files a crash left behind are removed on the next write.
    """
    final = Path(final)
    folder = final.parent
    folder.mkdir(parents=True, exist_ok=True)
    if not os.access(folder, os.W_OK):
        raise ErasureInputError("output", f"the folder {folder} is not writable", "choose a folder you can write to")
    remove_stale_parts(folder)
    tmp = folder / _part_name(final)
    os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    try:
        yield tmp
        os.chmod(tmp, new_file_mode())
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, final)
        _fsync_folder(folder)
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
