"""A real webui (Automatic1111 or Forge) built by tests/webui/setup_webui.sh, with this extension installed the way
a user installs it, started on the CPU, and driven through its HTTP API."""
from __future__ import annotations

import base64
import io
import json
import os
import shutil
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
KINDS = ("a1111", "forge")
# The webui's CPU flags (../shared/a1111/README.md): full precision on the CPU, no model download, the API on.
FLAGS = {
    "a1111": ["--skip-torch-cuda-test", "--use-cpu", "all", "--no-half", "--precision", "full",
              "--no-download-sd-model", "--api", "--no-hashing", "--skip-version-check"],
    # Forge: the UNet stored in bf16, so SDXL's full-size UNet is 4.8 GiB, not 9.6: with its text encoders, the
    # webui and the test suite around it, a 24 GB machine keeps room.
    "forge": ["--always-cpu", "--all-in-fp32", "--unet-in-bf16", "--skip-torch-cuda-test", "--no-half", "--precision",
              "full", "--no-download-sd-model", "--api", "--no-hashing", "--skip-version-check"],
}


def webui_root() -> Path:
    """Where setup_webui.sh put the webuis: $CE_WEBUI_ROOT, else <repo>/.webui (ignored by git)."""
    return Path(os.environ.get("CE_WEBUI_ROOT", REPO / ".webui"))


def built(kind: str) -> Path | None:
    dest = webui_root() / kind
    return dest if (dest / "env.sh").exists() and (dest / "venv" / "bin" / "python").exists() else None


def launcher_env(dest: Path) -> dict[str, str]:
    """This environment plus what env.sh exports (REQS_FILE, the repositories' commits, the offline HF cache)."""
    out = subprocess.run(["bash", "-c", f'source "{dest}/env.sh" && env -0'], capture_output=True, check=True).stdout
    env = dict(line.split("=", 1) for line in out.decode().split("\0") if "=" in line)
    env.pop("PYTHONPATH", None)  # the webui's Python must not see this repository's test environment
    env.update(GRADIO_ANALYTICS_ENABLED="False", PYTHONUNBUFFERED="1")
    return env


def pip_freeze(dest: Path) -> dict[str, str]:
    """{name: version (or the requirement line)} of the webui's environment."""
    out = subprocess.run([str(dest / "venv/bin/python"), "-m", "pip", "freeze", "--all"], capture_output=True,
                         text=True, check=True).stdout
    pins = {}
    for line in out.splitlines():
        name, _, version = line.partition("==") if "==" in line else line.partition(" @ ")
        pins[name.strip().lower().replace("_", "-")] = version.strip()
    return pins


def moved_packages(before: dict[str, str], after: dict[str, str]) -> dict[str, tuple[str, str | None]]:
    """{package: (version before, version after or None when removed)} for every package that changed."""
    return {name: (version, after.get(name)) for name, version in before.items() if after.get(name) != version}


def forget_checkpoint(webui: Path) -> None:
    """Drop the checkpoint an earlier run selected from the webui's config.json: each run selects its own (Forge
    ignores a selection equal to the saved one, even when that file was missing at its start)."""
    config = webui / "config.json"
    if config.exists():
        settings = json.loads(config.read_text())
        settings.pop("sd_model_checkpoint", None)
        config.write_text(json.dumps(settings, indent=4))


def install_extension(webui: Path, name: str = "concept-eraser") -> Path:
    """The extension as a user's `git clone` into extensions/ holds it: the repository's files, nothing ignored."""
    target = webui / "extensions" / name
    shutil.rmtree(target, ignore_errors=True)
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                           capture_output=True, check=True).stdout.decode().split("\0")
    for rel in filter(None, files):
        source = REPO / rel
        if source.is_file():
            (target / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / rel)
    return target


@dataclass
class Webui:
    kind: str
    dest: Path
    port: int
    process: subprocess.Popen
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def folder(self) -> Path:
        return self.dest / "webui"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def get(self, route: str, timeout: float = 600):
        with urllib.request.urlopen(self.url + route, timeout=timeout) as response:
            return json.load(response)

    def post(self, route: str, body: dict | None = None, timeout: float = 1800):
        request = urllib.request.Request(self.url + route, json.dumps(body or {}).encode(),
                                         {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=timeout) as response:
            text = response.read()
        return json.loads(text) if text else None

    def txt2img(self, prompt: str, size: int = 64, steps: int = 2, seed: int = 1):
        """One image through /sdapi/v1/txt2img as a numpy array (uint8, H x W x 3)."""
        import numpy as np
        from PIL import Image

        body = {"prompt": prompt, "steps": steps, "width": size, "height": size, "sampler_name": "Euler",
                "seed": seed, "cfg_scale": 7, "batch_size": 1, "n_iter": 1}
        reply = self.post("/sdapi/v1/txt2img", body)
        return np.asarray(Image.open(io.BytesIO(base64.b64decode(reply["images"][0]))).convert("RGB"))


def start(kind: str, dest: Path, port: int, log_path: Path, timeout: float = 900) -> Webui:
    """`launch.py` without --skip-install (so extensions' install.py run, as for a user); returns once the API
    answers. The checkpoint in models/Stable-diffusion is loaded by the first request that needs it."""
    log = open(log_path, "w")
    process = subprocess.Popen([str(dest / "venv/bin/python"), "launch.py", *FLAGS[kind], "--port", str(port)],
                               cwd=dest / "webui", env=launcher_env(dest), stdout=log, stderr=subprocess.STDOUT)
    webui = Webui(kind, dest, port, process, log_path)
    deadline = time.time() + timeout
    while time.time() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the {kind} webui exited with {process.returncode}:\n{webui.log()[-4000:]}")
        try:
            webui.get("/sdapi/v1/options", timeout=5)
            return webui
        except OSError:
            time.sleep(2)
    stop(webui)
    raise RuntimeError(f"the {kind} webui did not answer within {timeout:.0f} s:\n{webui.log()[-4000:]}")


def stop(webui: Webui, timeout: float = 30) -> None:
    webui.process.terminate()
    try:
        webui.process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        webui.process.kill()
        webui.process.wait()
