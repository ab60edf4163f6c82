"""The real-webui tests' own helpers: what counts as install.py moving a package of the webui's."""
from webui_process import moved_packages


def test_a_changed_or_removed_package_counts_as_moved_and_an_added_one_does_not():
    before = {"safetensors": "0.4.2", "anyio": "3.7.1", "clip": "file:///x/clip"}
    assert moved_packages(before, {**before, "diffusers": "0.37.1"}) == {}
    moved = moved_packages(before, {"safetensors": "0.8.0", "clip": "file:///x/clip"})
    assert moved == {"safetensors": ("0.4.2", "0.8.0"), "anyio": ("3.7.1", None)}
