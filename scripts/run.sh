#!/usr/bin/env bash
# Main job on the embedded default: set up, then diagnose all-MiniLM-L6-v2 on the packaged WordNet sample.
# Extra arguments go to `hf-divcl diagnose` (e.g. --data wordnet --batch-size 128).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 TOKENIZERS_PARALLELISM=false
mkdir -p outputs
.venv/bin/hf-divcl diagnose --plot outputs/diagnose.png --output-json outputs/diagnose.json "$@"
