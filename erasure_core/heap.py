"""Giving freed memory back to the operating system after a job.

Training frees gigabytes of activations and cached tensors, but glibc keeps freed heap pages for later
allocations, so a long-lived host process (the webui, ComfyUI's server) would stay as large as its peak after an
erasure and go into its next generation with that much less room. `malloc_trim` returns the free pages.
"""
from __future__ import annotations

import ctypes
import gc
import sys


def return_free_heap() -> bool:
    """Collect garbage, then hand glibc's free heap pages back to the OS; whether glibc did (Linux/glibc only)."""
    gc.collect()
    if not sys.platform.startswith("linux"):
        return False
    try:
        return bool(ctypes.CDLL("libc.so.6").malloc_trim(0))
    except (OSError, AttributeError):  # another C library (musl has no malloc_trim)
        return False
