#!/usr/bin/env bash
# Build and install Horovod 0.28.1 (the last release) against the installed
# TensorFlow, with a cached wheel so the second set-up takes seconds.
#
#   launch/build_horovod.sh [PYTHON]          # default: .venv/bin/python
#
# Why a patch: TF 2.21's wheel no longer ships the XLA headers that
# horovod/tensorflow/xla_mpi_ops.cc includes, so that one source is dropped
# from horovod/tensorflow/CMakeLists.txt (Horovod's XLA ops are optional).
#
# Controllers and GPU collectives:
#   - Gloo is always built (horovodrun --gloo, no MPI needed).
#   - MPI is built when mpicxx is on PATH (OpenMPI in the Docker image).
#   - NCCL: set HOROVOD_GPU_OPERATIONS=NCCL on GPU machines (the Docker image
#     does); the cache key records it so CPU and NCCL wheels never mix.
set -euo pipefail

HOROVOD_VERSION=0.28.1
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
python=${1:-$repo/.venv/bin/python}
say() { echo "build_horovod: $*"; }

if "$python" -c "import horovod, horovod.tensorflow; assert horovod.__version__ == '$HOROVOD_VERSION'" 2>/dev/null; then
  say "Horovod $HOROVOD_VERSION is already installed for $python"
  exit 0
fi

tf_version=$("$python" -c 'import tensorflow as tf; print(tf.__version__)' 2>/dev/null)
py_tag=$("$python" -c 'import sys; print(f"py{sys.version_info[0]}{sys.version_info[1]}")')
gpu_ops=${HOROVOD_GPU_OPERATIONS:-}
flavour=$([ "$gpu_ops" = NCCL ] && echo nccl || echo cpu)
mpi=$(command -v mpicxx >/dev/null 2>&1 && echo mpi || echo nompi)
cache=${SENTIMENT_DIST_CACHE:-$HOME/.cache/sentiment-dist}/wheels/horovod-${HOROVOD_VERSION}_tf${tf_version}_${py_tag}_${flavour}_${mpi}
wheel=$(ls "$cache"/horovod-*.whl 2>/dev/null | head -n 1 || true)

if [ -z "$wheel" ]; then
  say "building Horovod $HOROVOD_VERSION for TensorFlow $tf_version ($flavour, $mpi); about 7 minutes on 2 cores"
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  # --no-build-isolation builds against the installed TensorFlow: give it its build tools.
  # CMake 4 refuses the cmake_minimum_required of the bundled Gloo.
  "$python" -m pip install --quiet "cmake>=3.13,<4" packaging wheel setuptools
  "$python" -m pip download --quiet --no-deps --no-binary :all: -d "$work" "horovod==$HOROVOD_VERSION"
  tar -xzf "$work/horovod-$HOROVOD_VERSION.tar.gz" -C "$work"
  src=$work/horovod-$HOROVOD_VERSION
  cmakelists=$src/horovod/tensorflow/CMakeLists.txt
  grep -q 'xla_mpi_ops.cc' "$cmakelists" || { say "xla_mpi_ops.cc not found in $cmakelists: the source layout changed"; exit 1; }
  sed -i '/xla_mpi_ops\.cc/d' "$cmakelists"
  if grep -q 'xla_mpi_ops.cc' "$cmakelists"; then say "could not remove xla_mpi_ops.cc"; exit 1; fi
  export HOROVOD_WITH_TENSORFLOW=1 HOROVOD_WITH_GLOO=1 HOROVOD_WITHOUT_PYTORCH=1 HOROVOD_WITHOUT_MXNET=1
  if [ "$mpi" = mpi ]; then export HOROVOD_WITH_MPI=1; else export HOROVOD_WITHOUT_MPI=1; fi
  [ -n "$gpu_ops" ] && export HOROVOD_GPU_OPERATIONS="$gpu_ops"
  export MAKEFLAGS="-j$(nproc)"
  PATH="$(dirname "$python"):$PATH" "$python" -m pip wheel --no-deps --no-build-isolation --wheel-dir "$work/dist" "$src"
  mkdir -p "$cache"
  built=$(ls "$work"/dist/horovod-*.whl)
  cp "$built" "$cache/.partial.whl"
  mv "$cache/.partial.whl" "$cache/$(basename "$built")"  # atomic: a half-copied wheel is never picked up
  wheel=$cache/$(basename "$built")
else
  say "installing the cached wheel $wheel"
fi

"$python" -m pip install --quiet --no-deps --force-reinstall "$wheel"
# horovodrun's own dependencies (its launcher needs these, not the C++ core).
"$python" -m pip install --quiet cloudpickle psutil pyyaml
check=$(PATH="$(dirname "$python"):$PATH" "$(dirname "$python")/horovodrun" --check-build)
echo "$check"
echo "$check" | grep -q '\[X\] TensorFlow' || { say "Horovod was built without TensorFlow"; exit 1; }
echo "$check" | grep -q '\[X\] Gloo' || { say "Horovod was built without Gloo"; exit 1; }
say "done"
