"""erasure_core.heap: after a job, the freed heap goes back to the OS (the webui and ComfyUI's server live on)."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

# In a fresh interpreter, so the heap's layout is known: 500 MiB of blocks small enough for glibc's heap (64 KiB,
# under its 128 KiB mmap threshold), a live block above them (so the heap cannot shrink from its top when they are
# freed), then the blocks freed. A process that ran other tests first has a fragmented heap, where free() alone
# may or may not give the pages back.
SCENARIO = """
import json, torch
from erasure_core.heap import return_free_heap

def anonymous():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith("RssAnon:"))

size = 500 << 20
blocks = [torch.ones(64 << 10, dtype=torch.uint8) for _ in range(size // (64 << 10))]
keep = torch.ones(16)
allocated = anonymous()
del blocks
freed = anonymous()
trimmed = return_free_heap()
print(json.dumps(dict(size=size, allocated=allocated, freed=freed, after=anonymous(), trimmed=trimmed)))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim and /proc are Linux's")
def test_freed_heap_goes_back_to_the_os():
    out = subprocess.run([sys.executable, "-c", SCENARIO], capture_output=True, text=True, check=True)
    m = json.loads(out.stdout.strip().splitlines()[-1])
    mib = {k: round(v / 2**20) for k, v in m.items() if k != "trimmed"}
    assert m["allocated"] - m["freed"] < 0.2 * m["size"], f"free() alone gave the heap back, nothing to test: {mib}"
    assert m["trimmed"] and m["freed"] - m["after"] > 0.8 * m["size"], f"the heap was not given back: {mib}"
