"""Fuzzing (hypothesis) of the code that takes untrusted input: the Scrambled Grid and the file loaders.

Every test runs a fixed, derandomized set of examples so CI is reproducible and the whole file stays
within a few seconds; raise FUZZ_EXAMPLES locally for a longer hunt, e.g. `FUZZ_EXAMPLES=5000 pytest ...`.
"""
import builtins
import json
import os
import pickle
import signal
import struct
import threading
from collections import Counter
from contextlib import contextmanager

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import save as save_bytes

from erasure_core.erasure_file import PREFIX, SUFFIXES, load_erasure
from erasure_core.errors import ErasureInputError
from erasure_core.safe_files import check_safetensors
from erasure_core.scrambled_grid import scramble_grid

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "100"))


def fuzz(scale: float = 1.0):
    """Bounded, reproducible budget: no deadline (the CI machine is shared), same examples every run."""
    return settings(max_examples=max(1, int(EXAMPLES * scale)), deadline=None, derandomize=True, database=None)


# -- Scrambled Grid ----------------------------------------------------------------------------------
@st.composite
def batches(draw):
    """A (N, C, H, W) batch of any small size, sides often not multiples of the grid, and a valid grid."""
    n, c = draw(st.integers(1, 3)), draw(st.integers(1, 4))
    h, w = draw(st.integers(2, 40)), draw(st.integers(2, 40))
    grid = draw(st.integers(2, min(h, w)))
    dtype = draw(st.sampled_from([torch.float32, torch.float32, torch.float64, torch.uint8]))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**32 - 1)))
    if dtype == torch.uint8 or draw(st.booleans()):  # few distinct values: repeated pixels and patches
        images = torch.randint(0, 4, (n, c, h, w), generator=gen).to(dtype)
    else:
        images = torch.rand(n, c, h, w, generator=gen, dtype=dtype)
    return images, grid


def _core(h, w, grid):
    """Where the shuffled crop lies: the largest multiple of the grid, centred (see scrambled_grid.py)."""
    ph, pw = h // grid, w // grid
    top, left = (h - ph * grid) // 2, (w - pw * grid) // 2
    return ph, pw, slice(top, top + ph * grid), slice(left, left + pw * grid)


def _patches(image, grid):
    """The multiset of the g*g patches of one (C, H, W) image's crop, each patch as a tuple of its values."""
    ph, pw, rows, cols = _core(image.shape[1], image.shape[2], grid)
    core = image[:, rows, cols]
    return Counter(tuple(core[:, i * ph:(i + 1) * ph, j * pw:(j + 1) * pw].flatten().tolist())
                   for i in range(grid) for j in range(grid))


@fuzz()
@given(batches(), st.integers(0, 2**32 - 1))
def test_grid_is_a_permutation_of_whole_patches(batch, seed):
    """Same shape/dtype, the same pixels per channel, patches moved whole, the border left in place."""
    images, grid = batch
    before = images.clone()
    out = scramble_grid(images, grid, torch.Generator().manual_seed(seed))
    assert out.shape == images.shape and out.dtype == images.dtype
    assert torch.equal(images, before), "the input must not be modified"
    assert torch.equal(out.flatten(2).sort(dim=2).values, images.flatten(2).sort(dim=2).values)
    _, _, rows, cols = _core(images.shape[2], images.shape[3], grid)
    border = torch.ones(images.shape[2:], dtype=torch.bool)
    border[rows, cols] = False
    assert torch.equal(out[..., border], images[..., border])
    for x, y in zip(images, out):
        assert _patches(x, grid) == _patches(y, grid)


@fuzz(0.5)
@given(batches(), st.integers(0, 2**32 - 1))
def test_grid_is_deterministic_for_a_seed(batch, seed):
    """Training data must be reproducible: the same generator seed gives the same output."""
    images, grid = batch
    a = scramble_grid(images, grid, torch.Generator().manual_seed(seed))
    b = scramble_grid(images, grid, torch.Generator().manual_seed(seed))
    assert torch.equal(a, b)


@fuzz(0.5)
@given(st.integers(2, 40), st.integers(2, 40), st.data())
def test_grid_out_of_range_is_refused_naming_the_field(h, w, data):
    """A grid < 2 or larger than the shorter side is a user error, reported on the 'grid size' field."""
    grid = data.draw(st.integers(-5, 1) | st.integers(min(h, w) + 1, 200))
    with pytest.raises(ErasureInputError, match="grid") as info:
        scramble_grid(torch.rand(1, 3, h, w), grid, torch.Generator().manual_seed(0))
    assert info.value.field == "grid size"


@fuzz(0.3)
@given(st.lists(st.integers(1, 6), min_size=0, max_size=6).filter(lambda s: len(s) != 4))
def test_grid_refuses_non_batches_naming_the_field(shape):
    """Anything but a (N, C, H, W) batch is refused on the 'images' field, not with a reshape error."""
    with pytest.raises(ErasureInputError) as info:
        scramble_grid(torch.rand(shape), 2)
    assert info.value.field == "images"


# -- file loaders --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz")


@contextmanager
def _time_limit(seconds: float = 10.0):
    """A loader looping on a crafted header fails the test instead of hanging CI (POSIX main thread only)."""
    if not hasattr(signal, "SIGALRM") or threading.current_thread() is not threading.main_thread():
        yield
        return

    def _timeout(signum, frame):
        raise TimeoutError(f"a loader took more than {seconds} s")

    previous = signal.signal(signal.SIGALRM, _timeout)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _outcomes(path) -> list[str]:
    """Run both loaders; each must load or raise ErasureInputError. Anything else fails with its type."""
    results = []
    for name, load in (("check_safetensors", lambda: check_safetensors(path, "erasure file")),
                       ("load_erasure", lambda: load_erasure(path))):
        try:
            with _time_limit():
                result = load()
        except ErasureInputError as exc:
            assert exc.field == "erasure file" and "Fix:" in str(exc), str(exc)
            results.append("refused")
            continue
        except BaseException as exc:  # noqa: BLE001 - e.g. a Rust panic surfaces as a BaseException
            if isinstance(exc, KeyboardInterrupt):
                raise
            raise AssertionError(f"{name} raised {type(exc).__name__}: {exc}") from exc
        if name == "check_safetensors":
            assert isinstance(result, dict) and all(isinstance(v, str) for v in result.values()), \
                f"check_safetensors accepted metadata that is not strings to strings: {result!r}"
        else:
            tensors, metadata = result
            assert all(k.startswith(PREFIX) and k.endswith(SUFFIXES) for k in tensors), "non-kohya key loaded"
            assert isinstance(metadata, dict), f"load_erasure returned metadata {metadata!r}"
        results.append("loaded")
    assert results[1] == "refused" or results[0] == "loaded", "load_erasure accepted what the check refused"
    return results


def _write(workdir, data: bytes, name="fuzz.safetensors"):
    path = workdir / name
    path.write_bytes(data)
    return path


def _valid_erasure(rank=2, n=3) -> bytes:
    """A small but real erasure file, as save_erasure writes it (kohya keys, string metadata)."""
    tensors = {}
    for i in range(n):
        key = f"{PREFIX}down_blocks_{i}_attn2_to_k"
        tensors[f"{key}.lora_down.weight"] = torch.rand(rank, 8)
        tensors[f"{key}.lora_up.weight"] = torch.rand(8, rank)
        tensors[f"{key}.alpha"] = torch.tensor(float(rank))
    tensors[f"{PREFIX}mid_block_attentions_0_proj_out.diff"] = torch.rand(4, 4, dtype=torch.float16)
    return save_bytes(tensors, metadata={"ss_network_module": "networks.lora", "concept_eraser.info": "{}"})


VALID = _valid_erasure()


def _split(data: bytes):
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8:8 + n]), data[8 + n:]


def _assemble(header_bytes: bytes, payload: bytes, header_len: int | None = None) -> bytes:
    return struct.pack("<Q", len(header_bytes) if header_len is None else header_len) + header_bytes + payload


def test_the_valid_file_loads(workdir):
    """The baseline the mutations start from is itself accepted, so refusals below are due to the damage."""
    assert _outcomes(_write(workdir, VALID)) == ["loaded", "loaded"]


@fuzz()
@given(st.binary(max_size=600))
def test_random_bytes_never_crash_the_loaders(workdir, data):
    """Arbitrary bytes: a clear refusal (or, by luck, a load), never a stray exception type."""
    _outcomes(_write(workdir, data))


@fuzz()
@given(st.sampled_from([b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05", b"PK\x03\x04"]), st.binary(max_size=200))
def test_pickle_and_zip_prefixes_are_refused(workdir, magic, rest):
    """A file that starts like a pickle or a torch zip checkpoint is refused as such, whatever follows."""
    path = _write(workdir, magic + rest)
    assert _outcomes(path) == ["refused", "refused"]
    with pytest.raises(ErasureInputError, match="pickle"):
        check_safetensors(path, "erasure file")


@fuzz()
@given(st.integers(0, len(VALID) - 1))
def test_a_truncated_erasure_file_is_always_refused(workdir, cut):
    """Cut anywhere (in the length, the header or the data): always refused, never half-loaded."""
    assert _outcomes(_write(workdir, VALID[:cut])) == ["refused", "refused"]


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.integers(-2**70, 2**70)
    | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=8,
)
dtypes = st.sampled_from(["F32", "F16", "BF16", "F64", "I64", "U8", "BOOL", "F8_E4M3", "f32", "", "Q99"]) | st.text(max_size=6)


@st.composite
def mutated_headers(draw):
    """A valid header with one field damaged: offsets, dtype, shape, an entry, the metadata or the whole."""
    header, payload = _split(VALID)
    names = sorted(k for k in header if k != "__metadata__")
    name = draw(st.sampled_from(names))
    kind = draw(st.sampled_from(["offsets", "offset_shift", "dtype", "shape", "drop_field", "entry", "new_entry",
                                 "metadata", "whole", "extra_payload"]))
    if kind == "offsets":
        header[name]["data_offsets"] = draw(json_values | st.lists(st.integers(-2**65, 2**65), max_size=3))
    elif kind == "offset_shift":  # plausible-looking but wrong numbers: overlaps, gaps, past the end
        begin, end = header[name]["data_offsets"]
        header[name]["data_offsets"] = [begin + draw(st.integers(-64, 64)), end + draw(st.integers(-64, 64))]
    elif kind == "dtype":
        header[name]["dtype"] = draw(dtypes | json_values)
    elif kind == "shape":
        header[name]["shape"] = draw(st.lists(st.integers(-2, 2**64), max_size=4) | json_values)
    elif kind == "drop_field":
        del header[name][draw(st.sampled_from(["dtype", "shape", "data_offsets"]))]
    elif kind == "entry":
        header[name] = draw(json_values)
    elif kind == "new_entry":
        header[draw(st.text(max_size=40))] = draw(json_values)
    elif kind == "metadata":
        header["__metadata__"] = draw(json_values)
    elif kind == "whole":
        header = draw(json_values)
    elif kind == "extra_payload":
        payload += draw(st.binary(min_size=1, max_size=64))
    return _assemble(json.dumps(header).encode(), payload)


@fuzz(2)
@given(mutated_headers())
def test_damaged_headers_never_crash_the_loaders(workdir, data):
    """JSON that parses but has the wrong shape or numbers is refused with a message, not a KeyError/TypeError."""
    _outcomes(_write(workdir, data))


@fuzz()
@given(st.data())
def test_bad_header_lengths_and_non_json_headers_are_refused(workdir, data):
    """A wrong length field (0, off by a little, or huge) or a header that is not JSON/UTF-8 is refused."""
    header, payload = _split(VALID)
    header_bytes = json.dumps(header).encode()
    if data.draw(st.booleans()):
        length = data.draw(st.sampled_from([0, 2**63, 2**64 - 1, 100_000_001]) | st.integers(0, 2**64 - 1)
                           | st.integers(len(header_bytes) - 8, len(header_bytes) + 8).filter(
                               lambda n: n >= 0 and n != len(header_bytes)))
        assert _outcomes(_write(workdir, _assemble(header_bytes, payload, header_len=length)))[1] == "refused"
    else:  # a few pathological cases that broke the JSON step before: deep nesting, a 5000-digit number
        junk = data.draw(st.binary(min_size=1, max_size=300)
                         | st.sampled_from([b"[" * 50_000, b'{"a": ' + b"9" * 5000 + b"}", b"\xff\xfe{}", b"{}}"]))
        _outcomes(_write(workdir, _assemble(junk, payload)))


class _Marker:
    """Unpickling this creates a file: proof, if it ever appears, that a loader ran a pickle."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return builtins.open, (self.path, "w")


def test_the_marker_pickle_really_runs_when_unpickled(workdir):
    """Sanity check of the probe below: plain pickle.loads does create the marker file."""
    marker = workdir / "sanity_marker"
    pickle.loads(pickle.dumps(_Marker(marker), protocol=4)).close()
    assert marker.exists()
    marker.unlink()


@fuzz()
@given(st.integers(0, 5), st.binary(max_size=16), st.binary(max_size=64), st.booleans())
def test_no_pickle_is_ever_executed(workdir, protocol, prefix, suffix, as_torch_zip):
    """Pickles (any protocol, also inside a torch .pt zip, with junk around them) are never unpickled."""
    marker = workdir / "pickle_ran"
    marker.unlink(missing_ok=True)
    if as_torch_zip:
        path = workdir / "evil.pt"
        torch.save({"state_dict": _Marker(marker)}, path)
        path.write_bytes(prefix + path.read_bytes() + suffix)
    else:
        path = _write(workdir, prefix + pickle.dumps(_Marker(marker), protocol=protocol) + suffix, "evil.ckpt")
    _outcomes(path)
    assert not marker.exists(), "a loader unpickled the file"
