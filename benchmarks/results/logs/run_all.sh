#!/usr/bin/env bash
# The measurements behind the closing note of the progress-window work, run one after another on 2 CPU cores
# (sized to finish inside one working session on a shared machine).
set -x
cd "$(dirname "$0")/../../.."
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
L=benchmarks/results/logs
while pgrep -f benchmarks/progress_calibration.py > /dev/null; do sleep 10; done
.venv/bin/python benchmarks/time_to_quality.py --task vision --steps 160 --eval-every 40 --batch-size 64 \
  --seeds 0 1 2 3 4 --policies random progress progress_follow --follow-every 40 \
  --output benchmarks/results/time_to_quality_vision.json > $L/ttq_vision.log 2>&1
.venv/bin/python benchmarks/time_to_quality.py --task text --batch-size 16 --steps 300 --eval-every 100 \
  --seeds 0 1 2 3 4 --policies random progress \
  --output benchmarks/results/time_to_quality_text.json > $L/ttq_text.log 2>&1
