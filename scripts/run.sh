#!/usr/bin/env bash
# Main job on the embedded default: set up, then fine-tune all-MiniLM-L6-v2 on the packaged WordNet sample with
# diversity-window batches (recipes/text_wordnet.yaml), evaluate before and after, and write the model card.
# Output: outputs/text_wordnet/ (model, README.md card, diversity_trajectory.png, gradient_bands.png,
# diversity_log.jsonl). Extra arguments override config keys, e.g. `bash scripts/run.sh --max_steps 20`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 TOKENIZERS_PARALLELISM=false
.venv/bin/python recipes/text_wordnet.py "$@"
