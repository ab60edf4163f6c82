#!/usr/bin/env bash
# A real webui with its own Python environment, for tests/webui/: Automatic1111 v1.10.1 or Forge (dfdcbab),
# built from the sources in ../shared/a1111 (see its README) with nothing downloaded but PyPI packages.
#
#   usage: tests/webui/setup_webui.sh a1111|forge DEST
#          DEST/webui (the webui), DEST/venv (its Python), DEST/env.sh (what its launcher needs offline)
#   env:   CE_WEBUI_SOURCES (default: ../shared/a1111 beside the repository), PYTHON3 (default: python3)
# The environment is the webui's own: its requirements_versions.txt with one relaxed pin (setuptools 69.5.1
# cannot be installed beside torch 2.14.1, which needs >= 77; 80.9 still has pkg_resources) and torch at
# the project's test pins. Nothing from an earlier build is reused: DEST is made afresh.
set -euo pipefail
kind="${1:?usage: setup_webui.sh a1111|forge DEST}"
dest="${2:?usage: setup_webui.sh a1111|forge DEST}"
repo="$(cd "$(dirname "$0")/../.." && pwd)"
src="${CE_WEBUI_SOURCES:-$repo/../shared/a1111}"
PYTHON3="${PYTHON3:-python3}"
step() { local label="$1"; shift; local t0=$SECONDS; "$@"; echo "setup_webui($kind): $label took $((SECONDS - t0)) s"; }

rm -rf "$dest"
mkdir -p "$dest/webui" "$dest/clip" "$dest/hf"
dest="$(cd "$dest" && pwd)"
W="$dest/webui" V="$dest/venv"
unpack() {
  case "$kind" in
    a1111) tar xzf "$src/webui-v1.10.1.tar.gz" -C "$W" && tar xzf "$src/repositories.tar.gz" -C "$W" ;;
    forge) tar xzf "$src/forge-dfdcbab.tar.gz" -C "$W" && tar xzf "$src/forge-repositories.tar.gz" -C "$W" \
             && tar xzf "$src/repositories.tar.gz" -C "$W" ;;
    *) echo "unknown webui kind: $kind (a1111 or forge)" >&2; return 2 ;;
  esac
  tar xzf "$src/openai-clip-d50d76d.tar.gz" -C "$dest/clip"
  sed 's/^setuptools==69.5.1.*/setuptools==80.9.0/' "$W/requirements_versions.txt" > "$W/requirements_relaxed.txt"
  printf 'torch==2.14.1\ntorchvision==0.29.1\n' > "$dest/torch-constraints.txt"
}
step "unpacking" unpack

pip=("$V/bin/python" -m pip install -q -c "$dest/torch-constraints.txt")
step "venv + torch" bash -c "'$PYTHON3' -m venv '$V' && '$V/bin/python' -m pip install -q torch==2.14.1 torchvision==0.29.1"
step "setuptools + CLIP" bash -c "$(printf '%q ' "${pip[@]}") setuptools==80.9.0 && $(printf '%q ' "${pip[@]}") --no-build-isolation '$dest/clip'"
[ "$kind" = a1111 ] && step "open_clip" "${pip[@]}" open_clip_torch==2.20.0
step "the webui's requirements" "${pip[@]}" -r "$W/requirements_relaxed.txt"

hashes=""
for repository in "$W"/repositories/*/; do
  name="$(basename "$repository")"
  var=""
  case "$name" in
    stable-diffusion-stability-ai) var=STABLE_DIFFUSION_COMMIT_HASH ;;
    generative-models) var=STABLE_DIFFUSION_XL_COMMIT_HASH ;;
    k-diffusion) var=K_DIFFUSION_COMMIT_HASH ;;
    BLIP) var=BLIP_COMMIT_HASH ;;
    stable-diffusion-webui-assets) var=ASSETS_COMMIT_HASH ;;
    huggingface_guess) var=HUGGINGFACE_GUESS_HASH ;;
  esac
  [ -n "$var" ] && hashes+="export $var=$(git -C "$repository" rev-parse HEAD)"$'\n'
done
# Live previews would download their approximate decoder on the first generation.
if [ "$kind" = a1111 ]; then  # the ldm config asks for openai/clip-vit-large-patch14's tokenizer by name
  step "offline CLIP tokenizer" "$V/bin/python" "$src/tools/make_clip_cache.py" "$dest/hf" >/dev/null
  echo '{"live_previews_enable": false}' > "$W/config.json"
else  # Forge ships its tokenizers; these two built-in extensions' install.py would break the environment
  echo '{"live_previews_enable": false, "disabled_extensions": ["forge_legacy_preprocessors", "sd_forge_controlnet"]}' \
    > "$W/config.json"
fi
cat > "$dest/env.sh" <<ENV
export REQS_FILE=requirements_relaxed.txt
export HF_HOME="$dest/hf" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
$hashes
ENV
echo "setup_webui($kind): ready at $dest"
