#!/usr/bin/env bash
# Run here, on the CPU machine, before a device-machine call of benchmarks/gpu.sh: that machine has Python 3.12 with
# a CUDA torch, transformers, sentence-transformers and accelerate, but no package index and no Fashion-MNIST. This
# fills .gpu/ (ignored by git; about 35 MB) with what it lacks: the wheels of the packages this benchmark imports that
# its image does not hold, and the four Fashion-MNIST IDX files. Then, in the device call, carry .gpu:
#   run(command="bash benchmarks/gpu.sh", carry=[".gpu"], timeout_s=590)
# gpu.sh installs the wheels into /tmp/site and the images where hf_divcl.data.images looks for them.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
rm -rf .gpu && mkdir -p .gpu/whl .gpu/fashion-mnist
# the versions this checkout is tested with (the device image's own torch / transformers stay)
WHEELS=(datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 kornia==0.9.0 kornia_rs==0.2.0)
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 -d .gpu/whl "${WHEELS[@]}"
SRC=${FASHION_MNIST_ROOT:-/usr/share/datasets/fashion-mnist}
for f in train-images-idx3-ubyte.gz train-labels-idx1-ubyte.gz t10k-images-idx3-ubyte.gz t10k-labels-idx1-ubyte.gz; do
  [ -f "$SRC/$f" ] || { echo "missing $SRC/$f: run bash scripts/setup.sh (it installs dataset-fashion-mnist)" >&2; exit 1; }
  cp "$SRC/$f" .gpu/fashion-mnist/
done
du -sh .gpu; ls .gpu/whl
