#!/usr/bin/env bash
# The GPU half of bench/speed.py when a GPU is lent for a few minutes: each part bounded by its own time limit
# (every row is saved as it ends, so a part cut short keeps what it measured), then the parts merged into
# OUT/speed.{json,md}.   OUT=bench/results/gpu_NAME bash bench/gpu.sh [seconds per part, default 150]
set -u
OUT=${OUT:?set OUT to the results folder}
LIMIT=${1:-150}
export PYTHONUNBUFFERED=1
mkdir -p "$OUT/parts"
L=$OUT/log.txt
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >> "$L" 2>&1
python3 -c "import torch, diffusers; print('versions', torch.__version__, diffusers.__version__, torch.cuda.is_available())" >> "$L" 2>&1
part() {
    local name=$1; shift; local started=$SECONDS
    timeout -k 5 "$LIMIT" python3 bench/speed.py "$@" --out "$OUT/parts/$name" >> "$L" 2>&1
    echo "PART $name: $* rc $? in $((SECONDS - started)) s" >> "$L"
}
part memory_sdxl --memory --worlds sdxl
part memory_sd15 --memory --worlds sd15
part sdxl --worlds sdxl
part sd15 --worlds sd15
python3 bench/speed.py --merge "$OUT"/parts/*/speed.json --out "$OUT" >> "$L" 2>&1
