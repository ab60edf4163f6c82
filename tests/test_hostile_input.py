"""Hostile input (SECURITY.md): file names that cannot escape their folder, erasure files that cannot exhaust
memory, and every bad value refused before any sampling or training, naming the field and the fix."""
import json
import math
import os
import struct
import unicodedata

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file
from torch import nn

from erasure_core import checks, erasure_file, naming, safe_files
from erasure_core.errors import ErasureInputError, ErasureOutOfMemory
from erasure_core.methods import CGConfig, DTConfig, ESDConfig

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "100"))
HOSTILE_CONCEPTS = ["../../somewhere/x", "/../../../tmp/x", "/", "..", "a/b\\c", "C:\\x", "con", "x" * 500,
                    "名前/../..", " . "]


def fuzz(scale: float = 1.0):
    return settings(max_examples=max(1, int(EXAMPLES * scale)), deadline=None, derandomize=True, database=None)


@pytest.fixture
def no_sampling(monkeypatch):
    """Fails the test if any image or trajectory is sampled: refusals must come before the work."""
    from erasure_core import sampling
    from erasure_core.methods import trajectories

    def sampled(*args, **kwargs):
        raise AssertionError("sampling started before the input was refused")

    monkeypatch.setattr(sampling, "sample_latents", sampled)
    monkeypatch.setattr(trajectories, "sample_latents", sampled)


# -- file names --------------------------------------------------------------------------------------
@pytest.mark.parametrize("concept", HOSTILE_CONCEPTS)
def test_erasure_file_stays_directly_inside_the_output_folder(tmp_path, concept):
    config = CGConfig(concepts=[concept])
    from erasure_core.jobs import output_path

    out = tmp_path / "out"
    path = output_path(out, config, "cg")
    assert path.parent == out.resolve()
    assert len(path.name.encode()) <= 255 - 30  # room for the atomic write's temporary name
    with safe_files.atomic_path(path) as tmp:
        tmp.write_bytes(b"x")
    assert [p.name for p in out.iterdir()] == [path.name]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_real_run_with_an_escaping_concept_writes_only_inside_its_folder(toy_model, tmp_path):
    """The whole job (sample, erase, save, grid, report) with a concept made to escape: three files, all inside."""
    from erasure_core.jobs import run_erasure

    out = tmp_path / "deep" / "out"
    config = CGConfig(concepts=["../../../escaped/x"], steps=1, sample_steps=2, batch_size=1,
                      trajectories_per_prompt=1, templates=["{}"])
    job = run_erasure(toy_model, "cg", config, out, log=lambda m: None)
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(["comparison.png", "report.json", job.erasure_path.name])
    assert job.erasure_path.name.startswith("erase_escaped-x-") and job.erasure_path.parent == out.resolve()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["deep"] and not (tmp_path / "escaped").exists()
    assert job.result.metadata["ss_output_name"] == job.erasure_path.stem


def test_long_and_many_concepts_get_a_name_that_fits(tmp_path):
    from erasure_core.jobs import output_path

    for concepts in (["x" * 500], [f"concept number {i}" for i in range(40)], ["日本語の長い名前" * 30]):
        path = output_path(tmp_path, CGConfig(concepts=concepts), "cg")
        assert len(path.name.encode()) <= 200
        with safe_files.atomic_path(path) as tmp:  # the file system accepts the name and its temporary name
            tmp.write_bytes(b"x")
    assert len(list(tmp_path.iterdir())) == 3


def test_distinct_concepts_keep_distinct_names():
    assert naming.safe_stem("a/b") != naming.safe_stem("a-b")
    assert naming.safe_stem("x" * 500) != naming.safe_stem("x" * 499 + "y")
    assert naming.safe_stem("Van Gogh") == "Van-Gogh" and naming.erasure_stem(["a dog"], "cg") == "erase_a-dog_cg"
    assert naming.safe_stem("con") != "con" and naming.safe_stem("") .startswith("concept-")


def _spaced(text: str) -> str:
    return "-".join(unicodedata.normalize("NFKC", text).split())


@fuzz()
@given(st.text(max_size=300), st.text(max_size=40))
def test_any_unicode_concept_is_one_file_inside_the_folder_or_a_clear_refusal(tmp_path_factory, concept, other):
    """Arbitrary unicode: refused by validation (empty, control characters) before any work, or one file name
    that lives directly in the folder, fits every file system, and differs for texts that differ."""
    folder = tmp_path_factory.mktemp("names")
    try:
        config = CGConfig(concepts=[concept])
        config.validate()
    except ErasureInputError as exc:
        assert exc.field == "concept"
        return
    from erasure_core.jobs import output_path

    path = output_path(folder, config, "cg")
    assert path.parent == folder.resolve() and "/" not in path.name and "\\" not in path.name
    assert len(path.name.encode()) <= 200 and not path.name.startswith(".")
    with safe_files.atomic_path(path) as tmp:
        tmp.write_bytes(b"x")
    assert [p.name for p in folder.iterdir()] == [path.name]
    stem, other_stem = naming.safe_stem(concept), naming.safe_stem(other)
    if stem == other_stem:  # equal names only for texts equal up to spaces (or a hash collision)
        assert _spaced(concept) == _spaced(other)


def test_path_inside_refuses_links_that_lead_out(tmp_path):
    (tmp_path / "inside").mkdir()
    (tmp_path / "inside" / "link.safetensors").symlink_to(tmp_path / "outside.safetensors")
    with pytest.raises(ErasureInputError, match="not inside"):
        naming.path_inside(tmp_path / "inside", "link.safetensors", "output")


# -- every value checked before any work --------------------------------------------------------------
BAD_VALUES = [
    (CGConfig, dict(lr=1e300), "learning rate"), (CGConfig, dict(lr=math.nan), "learning rate"),
    (CGConfig, dict(steps=10**12), "steps"), (CGConfig, dict(seed=2**70), "seed"), (CGConfig, dict(seed=-1), "seed"),
    (CGConfig, dict(templates=["{} and {}"]), "templates"), (CGConfig, dict(templates=["{x} {}"]), "templates"),
    (CGConfig, dict(templates=["no field"]), "templates"), (CGConfig, dict(templates=["{"]), "templates"),
    (CGConfig, dict(templates=["{0}"]), "templates"), (CGConfig, dict(templates=["{!r}"]), "templates"),
    (CGConfig, dict(drift_weight=math.inf), "drift weight (λ)"), (CGConfig, dict(preserve_weight=math.nan), "preserve weight"),
    (CGConfig, dict(preserve_weight=-1), "preserve weight"), (ESDConfig, dict(eta=math.nan), "eta (η)"),
    (DTConfig, dict(preserve_weight=math.nan), "preserve weight"), (DTConfig, dict(grid=2.5), "grid size"),
    (CGConfig, dict(concepts=["a\x00b"]), "concept"), (CGConfig, dict(concepts=["a\u202eb"]), "concept"),
    (CGConfig, dict(alternatives=["x\x1b[31m"]), "alternative"), (CGConfig, dict(batch_size=0), "batch size"),
    (CGConfig, dict(batch_size=10**9), "batch size"), (CGConfig, dict(sample_steps=10**6), "sampling steps"),
    (CGConfig, dict(guidance=math.nan), "guidance"), (CGConfig, dict(rank=10**9), "rank"),
    (CGConfig, dict(trajectories_per_prompt=0), "trajectories per prompt"),
]


@pytest.mark.parametrize("cls, bad, field", BAD_VALUES, ids=[f"{f}={v}" for _, b, f in BAD_VALUES for v in b.values()])
def test_bad_values_are_refused_before_any_work(toy_model, tmp_path, no_sampling, cls, bad, field):
    from erasure_core.jobs import run_erasure

    options = dict(concepts=["circle"], steps=3)
    options.update(bad)
    method = {CGConfig: "cg", DTConfig: "dt", ESDConfig: "esd"}[cls]
    with pytest.raises(ErasureInputError) as info:
        run_erasure(toy_model, method, cls(**options), tmp_path / "out", log=lambda m: None)
    assert info.value.field == field and "Fix: " in str(info.value)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_output_that_is_a_file_is_refused_before_any_work(toy_model, tmp_path, no_sampling):
    from erasure_core.jobs import run_erasure

    (tmp_path / "taken").write_text("a file")
    with pytest.raises(ErasureInputError, match="^output: .*taken is a file, not a folder"):
        run_erasure(toy_model, "cg", CGConfig(concepts=["circle"]), tmp_path / "taken")


def test_unwritable_output_is_refused_before_any_work(toy_model, tmp_path, no_sampling, monkeypatch):
    """Tried, not guessed (root passes os.access): the probe write fails, the job never starts."""
    from pathlib import Path

    from erasure_core.jobs import run_erasure

    def read_only(self, data):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "write_bytes", read_only)
    with pytest.raises(ErasureInputError, match="^output: the folder .* is not writable \\(Permission denied\\)"):
        run_erasure(toy_model, "cg", CGConfig(concepts=["circle"]), tmp_path / "ro")


def test_a_full_disk_is_refused_before_any_work(toy_model, tmp_path, no_sampling, monkeypatch):
    from collections import namedtuple

    from erasure_core.jobs import run_erasure

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(checks.shutil, "disk_usage", lambda p: usage(10**9, 10**9 - 1000, 1000))
    with pytest.raises(ErasureInputError, match="^output: the disk of .* has 0 MiB free but the result needs about"):
        run_erasure(toy_model, "dt", DTConfig(concepts=["circle"], group="all"), tmp_path / "out")


def test_disk_full_while_saving_is_a_clear_message_and_leaves_nothing(tmp_path, monkeypatch):
    from safetensors import SafetensorError

    def full(*args, **kwargs):
        open(args[1], "wb").write(b"half")
        raise SafetensorError("Error while serializing: IoError(No space left on device)")

    monkeypatch.setattr(erasure_file, "save_file", full)
    with pytest.raises(ErasureInputError, match="^output: e.safetensors could not be written .*No space left"):
        erasure_file.save_erasure(tmp_path / "e.safetensors", {"lora_unet_x.diff": torch.ones(1)}, {})
    assert list(tmp_path.iterdir()) == []


def test_cpu_out_of_memory_gets_the_advice(toy_model, monkeypatch):
    """torch's CPU allocator raises a RuntimeError; sampling or training, the user gets the same advice as on CUDA."""
    from erasure_core.methods import trajectories
    from erasure_core.methods.cg import erase_cg

    def no_memory(*args, **kwargs):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: not enough memory: "
                           "you tried to allocate 6400000000 bytes.")

    monkeypatch.setattr(trajectories, "sample_latents", no_memory)
    with pytest.raises(ErasureOutOfMemory, match="^out of memory while running cg. Fix: use a LoRA.*memory"):
        erase_cg(toy_model, CGConfig(concepts=["circle"], steps=1))


def test_cpu_out_of_memory_in_training_names_the_step():
    from erasure_core.training import optimise

    def no_memory(step, rows):
        raise RuntimeError("DefaultCPUAllocator: not enough memory: you tried to allocate 2 GB")

    with pytest.raises(ErasureOutOfMemory, match="^out of memory while training \\(step 1\\).*other programs using memory"):
        optimise([nn.Parameter(torch.zeros(1))], no_memory, 3, 1e-4, torch.device("cpu"))


def test_other_runtime_errors_are_not_called_out_of_memory():
    from erasure_core.training import optimise

    def broken(step, rows):
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")

    with pytest.raises(RuntimeError, match="shapes cannot be multiplied"):
        optimise([nn.Parameter(torch.zeros(1))], broken, 3, 1e-4, torch.device("cpu"))


# -- erasure files -----------------------------------------------------------------------------------
class TinyUnet(nn.Module):
    """Two addressable layers: a Linear (32 -> 16, with bias) and a 3x3 Conv2d (4 -> 8, no bias)."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(32, 16)
        self.conv = nn.Conv2d(4, 8, 3, bias=False)


LIN, CONV = "lora_unet_lin", "lora_unet_conv"


@pytest.mark.parametrize("tensors, problem", [
    ({f"{LIN}.lora_up.weight": torch.zeros(40000, 1), f"{LIN}.lora_down.weight": torch.zeros(1, 40000)},
     "LoRA tensors .* for a weight of shape \\(16, 32\\)"),  # would multiply out to 6.4 GB
    ({f"{LIN}.lora_up.weight": torch.zeros(16, 4), f"{LIN}.lora_down.weight": torch.zeros(3, 32)}, "lora_up of shape"),
    ({f"{LIN}.lora_down.weight": torch.zeros(4, 32)}, "has no .lora_up.weight"),
    ({f"{LIN}.lora_up.weight": torch.zeros(16, 4)}, "has no .lora_down.weight"),
    ({f"{LIN}.lora_up.weight": torch.zeros(16, 4), f"{LIN}.lora_down.weight": torch.zeros(4, 32),
      f"{LIN}.alpha": torch.ones(3)}, "alpha of shape"),
    ({f"{LIN}.diff": torch.full((16, 32), math.nan)}, "NaN or infinite"),
    ({f"{LIN}.diff": torch.ones(16, 32), f"{LIN}.diff_b": torch.tensor([math.inf] * 16)}, "NaN or infinite"),
    ({f"{LIN}.diff": torch.ones(16, 31)}, "a .diff of shape"),
    ({f"{CONV}.diff": torch.ones(8, 4, 3, 3), f"{CONV}.diff_b": torch.ones(8)}, "layer has no bias"),
    ({f"{LIN}.diff": torch.ones(16, 32, dtype=torch.int64)}, "not floating-point"),
    ({f"{LIN}.diff": torch.ones(16, 32), f"{LIN}.lora_up.weight": torch.zeros(16, 4)}, "both a full delta"),
    ({f"{CONV}.lora_up.weight": torch.zeros(8, 2, 3, 3), f"{CONV}.lora_down.weight": torch.zeros(2, 4, 3, 3)},
     "lora_up of shape"),
    ({"lora_unet_nothing.diff": torch.ones(1)}, "does not exist in this model"),
])
def test_damaged_or_hostile_layers_are_refused_before_any_arithmetic(tensors, problem):
    unet = TinyUnet()
    before = {k: v.clone() for k, v in unet.state_dict().items()}
    with pytest.raises(ErasureInputError, match=problem) as info:
        erasure_file.apply_erasure(unet, tensors)
    assert info.value.field == "erasure file" and "Fix: " in str(info.value)
    assert all(torch.equal(v, unet.state_dict()[k]) for k, v in before.items())


def test_a_conv_lora_applies():
    unet = TinyUnet()
    up, down = torch.randn(8, 2, 1, 1), torch.randn(2, 4, 3, 3)
    merged = erasure_file.apply_erasure(unet, {f"{CONV}.lora_up.weight": up, f"{CONV}.lora_down.weight": down,
                                               f"{CONV}.alpha": torch.tensor(1.0)})
    expected = unet.conv.weight + (up.reshape(8, 2) @ down.reshape(2, -1)).reshape(8, 4, 3, 3) * 0.5
    assert torch.allclose(merged.conv.weight, expected, atol=1e-6)


@st.composite
def hostile_erasures(draw):
    """State dicts for TinyUnet with random shapes, ranks, dtypes and values (NaN, inf, huge)."""
    tensors = {}
    for key in draw(st.lists(st.sampled_from([LIN, CONV, "lora_unet_x"]), min_size=1, max_size=2, unique=True)):
        kind = draw(st.sampled_from(["diff", "lora"]))
        dims = st.lists(st.integers(0, 40), min_size=1, max_size=4)
        values = st.sampled_from([0.0, 1.0, -3.5, 1e30, math.nan, math.inf])
        dtype = draw(st.sampled_from([torch.float32, torch.float16, torch.int32]))

        def tensor():
            shape = draw(dims)
            return torch.full(shape, draw(values)).to(dtype) if math.prod(shape) < 5000 else torch.zeros(1)

        names = [".diff", ".diff_b"] if kind == "diff" else [".lora_up.weight", ".lora_down.weight", ".alpha"]
        for suffix in draw(st.lists(st.sampled_from(names), min_size=1, max_size=3, unique=True)):
            tensors[key + suffix] = tensor()
    return tensors


@fuzz()
@given(hostile_erasures(), st.sampled_from([1.0, 0.5, -2.0]))
def test_applying_any_erasure_merges_or_refuses_cleanly(tensors, strength):
    """Whatever the shapes, ranks and values: a merged UNet of the same shapes, or an ErasureInputError."""
    unet = TinyUnet()
    try:
        merged = erasure_file.apply_erasure(unet, tensors, strength)
    except ErasureInputError as exc:
        assert exc.field == "erasure file"
        return
    for name, p in merged.named_parameters():
        assert p.shape == unet.get_parameter(name).shape
    assert all(torch.isfinite(p).all() or not torch.isfinite(t.float()).all() for p in merged.parameters()
               for t in tensors.values())


def test_nan_strength_is_refused():
    with pytest.raises(ErasureInputError, match="^strength"):
        erasure_file.apply_erasure(TinyUnet(), {f"{LIN}.diff": torch.ones(16, 32)}, strength=math.nan)


def _header_file(path, header: dict) -> None:
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw)


def test_a_header_of_many_empty_tensors_is_refused_by_count(tmp_path):
    """1.4 M empty tensors took a minute and 2.7 GB to refuse; more tensors than an erasure has is refused at once."""
    path = tmp_path / "many.safetensors"
    _header_file(path, {f"lora_unet_{i}.diff": {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]}
                        for i in range(erasure_file.MAX_TENSORS + 1)})
    with pytest.raises(ErasureInputError, match=f"holds {erasure_file.MAX_TENSORS + 1} tensors"):
        erasure_file.load_erasure(path)


def test_a_huge_header_is_refused_before_it_is_parsed(tmp_path, monkeypatch):
    path = tmp_path / "huge.safetensors"
    path.write_bytes(struct.pack("<Q", safe_files.MAX_HEADER_BYTES + 1) + b" " * (safe_files.MAX_HEADER_BYTES + 1))
    monkeypatch.setattr(safe_files.json, "loads", lambda *a: pytest.fail("the header was parsed"))
    with pytest.raises(ErasureInputError, match="header of 16 MB, more than any model"):
        erasure_file.load_erasure(path)


# -- files as written ---------------------------------------------------------------------------------
def test_saved_files_are_readable_by_other_users_and_flushed(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(safe_files.os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd)))
    old = os.umask(0o022)
    try:
        path = erasure_file.save_erasure(tmp_path / "e.safetensors", {"lora_unet_x.diff": torch.ones(1)}, {})
    finally:
        os.umask(old)
    assert oct(path.stat().st_mode & 0o777) == oct(0o644)
    assert len(synced) >= 1  # the file before the rename (and the folder after it, on POSIX)


def test_stale_temporary_files_of_a_crash_are_cleaned_on_the_next_save(tmp_path):
    dead = tmp_path / ".e.safetensors.ce999999999-0123abcd.part"  # a process id that cannot be running
    alive = tmp_path / f".e.safetensors.ce{os.getppid()}-0123abcd.part"  # a write still in progress elsewhere
    foreign = tmp_path / ".other.part"  # not this project's naming
    for p in (dead, alive, foreign):
        p.write_bytes(b"half")
    save_file({"x": torch.ones(1)}, str(tmp_path / "seed.safetensors"))
    erasure_file.save_erasure(tmp_path / "e.safetensors", {"lora_unet_x.diff": torch.ones(1)}, {})
    assert not dead.exists() and alive.exists() and foreign.exists()
    assert (tmp_path / "e.safetensors").exists()


@pytest.mark.parametrize("cls, bad", [(CGConfig, dict(seed=2**70)), (CGConfig, dict(preserve_weight=math.nan)),
                                      (CGConfig, dict(concepts=["a\x00b"])), (DTConfig, dict(grid=1)),
                                      (CGConfig, dict(steps=0))])
def test_the_readme_quotes_these_messages_verbatim(cls, bad):
    from pathlib import Path

    options = dict(concepts=["circle"])
    options.update(bad)
    with pytest.raises(ErasureInputError) as info:
        cls(**options).validate()
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert f"`{info.value}`" in readme


@pytest.mark.parametrize("flags, message", [
    (["--lr", "1e300"], "learning rate: must be a number in (0, 0.1]"), (["--lr", "nan"], "learning rate"),
    (["--steps", str(10**12)], "steps: must be a whole number from 1 to 100000"),
    (["--seed", str(2**70)], "seed: must be a whole number"), (["--template", "{} and {}"], "templates: "),
    (["--template", "{x} {}"], "templates: "), (["--eta", "nan"], "eta (η): must be a number"),
    (["--drift-weight", "inf"], "drift weight (λ)"), (["--preserve-weight", "nan"], "preserve weight"),
])
def test_the_command_line_refuses_bad_values_in_one_line_before_any_work(tmp_path, no_sampling, capsys, flags,
                                                                          message):
    from erasure_core.__main__ import main

    method = "esd" if "--eta" in flags else "cg"
    code = main(["erase", "--method", method, "--concept", "circle", "--out", str(tmp_path / "out"), *flags])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and message in err and "Fix: " in err
    assert "Traceback" not in err and not (tmp_path / "out").exists()


def test_the_command_line_refuses_an_output_that_is_a_file(tmp_path, no_sampling, capsys):
    from erasure_core.__main__ import main

    (tmp_path / "taken").write_text("x")
    assert main(["erase", "--method", "cg", "--concept", "circle", "--out", str(tmp_path / "taken")]) == 2
    assert "taken is a file, not a folder" in capsys.readouterr().err
    code = main(["erase", "--method", "cg", "--concept", "circle", "--out", str(tmp_path / "o"),
                 "--save-merged", str(tmp_path / "taken")])
    assert code == 2 and "save merged: " in capsys.readouterr().err
