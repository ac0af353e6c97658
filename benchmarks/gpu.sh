#!/usr/bin/env bash
# One prepared GPU benchmark (about 6–8 minutes on one H200, never needed by tests or CI): the vision
# time-to-quality benchmark at a larger scale — all 60,000 Fashion-MNIST training images, a wider ViT, B = 512,
# five batch policies, three seeds — plus the diagnostics cost at B = 1024 on the GPU.
# Needs a CUDA build of torch in .venv (scripts/setup.sh installs the CPU build; on a GPU machine run
# `.venv/bin/pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cu126` first).
# Results: benchmarks/results/gpu/*.json and *.png (or $OUT/ when set, as on a lent device machine).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
DEST=${OUT:-benchmarks/results/gpu}
mkdir -p "$DEST"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
"$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device visible'; print(torch.cuda.get_device_name())"
timeout 420 "$PY" benchmarks/time_to_quality.py --task vision --rows 60000 --batch-size 512 --steps 300 \
  --eval-every 50 --lr 1e-3 --output "$DEST/time_to_quality_vision_gpu.json"
timeout 90 "$PY" benchmarks/spectral_cost.py --batch-sizes 1024 --device cuda --output "$DEST/spectral_cost_gpu.json" || true
ls -l "$DEST"
