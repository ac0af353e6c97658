#!/usr/bin/env bash
# One prepared GPU benchmark (sized for one 10-minute command on one H200, never needed by tests or CI): the
# paper's regime — SimCLR from scratch on 16,384 Fashion-MNIST images, B = 128, 1,600 steps (12.5 epochs) with a
# plateau schedule (warm-up, constant, decay over the last 10 %) so that "final" is not the decay — random vs
# window="explore", the re-calibrated progress window and Pool-P3 in the gradient window, three seeds, paired;
# then the diagnostics cost at B = 1024 on the GPU.
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
timeout 480 "$PY" benchmarks/time_to_quality.py --task vision --rows 16384 --batch-size 128 --steps 1600 \
  --eval-every 200 --lr 1e-3 --schedule plateau --policies random explore progress_follow pool --seeds 0 1 2 \
  --output "$DEST/time_to_quality_vision_paper_regime_gpu.json"
timeout 90 "$PY" benchmarks/spectral_cost.py --batch-sizes 1024 --device cuda --output "$DEST/spectral_cost_gpu.json" || true
ls -l "$DEST"
