#!/usr/bin/env bash
# Second part of the session's benchmark chain: the calibration's first-order/lookahead check with the final levels.
set -x
cd "$(dirname "$0")/../../.."
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
while pgrep -f run_all.sh > /dev/null; do sleep 10; done
.venv/bin/python benchmarks/progress_calibration.py --temperatures 0.5 --output benchmarks/results/progress_calibration_tight.json > benchmarks/results/logs/progress_calibration_tight.log 2>&1
