"""Only safetensors are read; damaged files and pickles are refused with a clear message."""
import pickle

import pytest
import torch
from safetensors.torch import save_file

from erasure_core.errors import ErasureInputError
from erasure_core.safe_files import atomic_path, check_safetensors


def test_valid_file_metadata(tmp_path):
    p = tmp_path / "a.safetensors"
    save_file({"x": torch.ones(3)}, str(p), metadata={"k": "v"})
    assert check_safetensors(p, "erasure file") == {"k": "v"}


def test_pickle_is_refused_without_unpickling(tmp_path):
    p = tmp_path / "evil.ckpt"

    class Boom:
        def __reduce__(self):
            return (exec, ("raise SystemExit('unpickled!')",))

    p.write_bytes(pickle.dumps(Boom(), protocol=4))
    with pytest.raises(ErasureInputError, match="pickle"):
        check_safetensors(p, "erasure file")


def test_torch_zip_checkpoint_is_refused(tmp_path):
    p = tmp_path / "model.pt"
    torch.save({"w": torch.ones(2)}, p)
    with pytest.raises(ErasureInputError, match="never opened"):
        check_safetensors(p, "model")


def test_truncated_file_is_refused(tmp_path):
    p = tmp_path / "t.safetensors"
    save_file({"x": torch.ones(1000)}, str(p))
    data = p.read_bytes()
    p.write_bytes(data[: len(data) - 100])
    with pytest.raises(ErasureInputError, match="truncated"):
        check_safetensors(p, "erasure file")


def test_garbage_header_is_refused(tmp_path):
    p = tmp_path / "g.safetensors"
    p.write_bytes((20).to_bytes(8, "little") + b"{not json at all!!}" + b"\x00" * 10)
    with pytest.raises(ErasureInputError, match="corrupt"):
        check_safetensors(p, "erasure file")


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    final = tmp_path / "out.safetensors"
    final.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_path(final) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("crash while saving")
    assert final.read_bytes() == b"old"
    assert list(tmp_path.iterdir()) == [final]
