"""erasure_core.heap: after a job, the freed heap goes back to the OS (the webui and ComfyUI's server live on)."""
from __future__ import annotations

import sys

import pytest
import torch

from erasure_core.heap import return_free_heap


def anonymous_resident_bytes() -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith("RssAnon:"))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim and /proc are Linux's")
def test_freed_heap_goes_back_to_the_os():
    size = 500 << 20
    blocks = [torch.ones(64 << 10, dtype=torch.uint8) for _ in range(size // (64 << 10))]  # heap-sized blocks
    keep = torch.ones(16)  # a live block above them: the heap cannot shrink from its top by itself
    del blocks
    held = anonymous_resident_bytes()
    assert return_free_heap()
    given_back = held - anonymous_resident_bytes()
    assert given_back > 0.8 * size, f"{given_back / 2**20:.0f} MiB given back of {size >> 20} MiB freed"
    del keep
