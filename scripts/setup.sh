#!/usr/bin/env bash
# Set up hf_divcl on a fresh Debian-like machine: data packages, a virtual environment in .venv,
# the CPU build of torch and the package itself with its dev/vision/plot extras. Idempotent and quick on reruns.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
VENV=${HF_DIVCL_VENV:-.venv}

# 1. Real offline data sets ship as Debian packages (WordNet 3.0, Fashion-MNIST).
need_apt=()
[ -d /usr/share/wordnet ] || need_apt+=(wordnet-base)
[ -d /usr/share/datasets/fashion-mnist ] || need_apt+=(dataset-fashion-mnist)
if [ ${#need_apt[@]} -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" = 0 ] || SUDO="sudo"
  if command -v apt-get >/dev/null 2>&1; then
    echo "[setup] installing data packages: ${need_apt[*]}"
    $SUDO apt-get update -qq && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" \
      || echo "[setup] WARNING: could not install ${need_apt[*]}; the embedded WordNet sample will be used."
  else
    echo "[setup] WARNING: apt-get not found; install ${need_apt[*]} yourself for the full data sets."
  fi
fi

# 2. Virtual environment with the local CPU torch build first (an unpinned torch would pull CUDA wheels).
stamp="$VENV/.hf_divcl-setup"
want=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q "torch==2.13.0"
"$VENV/bin/python" -m pip install -q -e ".[dev,vision,plot]"
echo "$want" > "$stamp"
echo "[setup] ready: $VENV"
