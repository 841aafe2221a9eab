#!/usr/bin/env bash
# Build and install Horovod 0.28.1 (the last release) against the installed
# TensorFlow, with a cached wheel so the second set-up takes seconds.
#
#   launch/build_horovod.sh [PYTHON]          # default: <repo>/.venv/bin/python
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
# Cache: ${SENTIMENT_DIST_CACHE:-~/.cache/sentiment-dist}/wheels/<key>/, keyed by
# Horovod, TensorFlow and Python versions, GPU operations and MPI.
set -euo pipefail

HOROVOD_VERSION=0.28.1
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
python=${1:-$repo/.venv/bin/python}
say() { echo "build_horovod: $*"; }
fail() { echo "build_horovod: $*" >&2; exit 1; }

[ -x "$python" ] || command -v "$python" >/dev/null || fail "no Python at $python; create the venv first or pass its python"
if "$python" -c "import horovod, horovod.tensorflow; assert horovod.__version__ == '$HOROVOD_VERSION'" 2>/dev/null; then
  say "Horovod $HOROVOD_VERSION is already installed for $python"
  exit 0
fi

tf_version=$("$python" -c 'import tensorflow as tf; print(tf.__version__)' 2>/dev/null) ||
  fail "$python cannot import tensorflow; install the project (pip install -e .) first"
py_tag=$("$python" -c 'import sys; print(f"py{sys.version_info[0]}{sys.version_info[1]}")')
gpu_ops=${HOROVOD_GPU_OPERATIONS:-}
flavour=$(echo "${gpu_ops:-cpu}" | tr '[:upper:]' '[:lower:]')
mpi=$(command -v mpicxx >/dev/null 2>&1 && echo mpi || echo nompi)
cache=${SENTIMENT_DIST_CACHE:-$HOME/.cache/sentiment-dist}/wheels/horovod-${HOROVOD_VERSION}_tf${tf_version}_${py_tag}_${flavour}_${mpi}
wheel=$(ls "$cache"/horovod-*.whl 2>/dev/null | head -n 1 || true)
bin=$(dirname "$python")

if [ -z "$wheel" ]; then
  say "building Horovod $HOROVOD_VERSION for TensorFlow $tf_version ($flavour, $mpi); 2-7 minutes on 2 cores"
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  # --no-build-isolation builds against the installed TensorFlow: give it its build tools
  # (pip leaves those already present alone). CMake 4 rejects the bundled Gloo's
  # cmake_minimum_required(2.8.12), so a missing or 4.x cmake is replaced by a 3.x one.
  "$python" -m pip install --quiet packaging wheel setuptools
  cmake_version=$(PATH="$bin:$PATH" cmake --version 2>/dev/null | sed -n 's/^cmake version \([0-9.]*\).*/\1/p' || true)
  case "$cmake_version" in
    3.1[3-9]*|3.[2-9][0-9]*) say "using cmake $cmake_version" ;;
    *) say "installing cmake 3.x into the target env (found: ${cmake_version:-none})"
       "$python" -m pip install --quiet "cmake>=3.13,<4" ;;
  esac
  "$python" -m pip download --quiet --no-deps --no-binary :all: -d "$work" "horovod==$HOROVOD_VERSION"
  tar -xzf "$work/horovod-$HOROVOD_VERSION.tar.gz" -C "$work"
  src=$work/horovod-$HOROVOD_VERSION
  cmakelists=$src/horovod/tensorflow/CMakeLists.txt
  grep -q 'xla_mpi_ops\.cc' "$cmakelists" || fail "xla_mpi_ops.cc not found in $cmakelists: the source layout changed, revisit the patch"
  sed -i '/xla_mpi_ops\.cc/d' "$cmakelists"
  ! grep -q 'xla_mpi_ops\.cc' "$cmakelists" || fail "could not remove xla_mpi_ops.cc from $cmakelists"
  export HOROVOD_WITH_TENSORFLOW=1 HOROVOD_WITH_GLOO=1 HOROVOD_WITHOUT_PYTORCH=1 HOROVOD_WITHOUT_MXNET=1
  if [ "$mpi" = mpi ]; then export HOROVOD_WITH_MPI=1; else export HOROVOD_WITHOUT_MPI=1; fi
  if [ -n "$gpu_ops" ]; then export HOROVOD_GPU_OPERATIONS="$gpu_ops"; fi
  export MAKEFLAGS="-j$(nproc)"
  start=$SECONDS
  PATH="$bin:$PATH" "$python" -m pip wheel --no-deps --no-build-isolation --wheel-dir "$work/dist" "$src"
  say "built in $((SECONDS - start)) s"
  mkdir -p "$cache"
  built=$(ls "$work"/dist/horovod-*.whl)
  cp "$built" "$cache/.partial.$$"
  mv "$cache/.partial.$$" "$cache/$(basename "$built")"  # atomic: a half-copied wheel is never picked up
  wheel=$cache/$(basename "$built")
else
  say "installing the cached wheel $wheel"
fi

"$python" -m pip install --quiet --no-deps --force-reinstall "$wheel"
# The wheel went in with --no-deps; horovodrun still needs its Python dependencies.
"$python" -m pip install --quiet cloudpickle psutil pyyaml packaging
# Its probes import TensorFlow in six subprocesses (~20 s); their TF log noise is dropped.
check=$(PATH="$bin:$PATH" "$python" -m horovod.runner.launch --check-build 2>&1) ||
  { echo "$check"; fail "horovodrun --check-build failed"; }
sed -n '/^Horovod v/,$p' <<<"$check"
grep -q '\[X\] TensorFlow' <<<"$check" || fail "Horovod was built without TensorFlow"
grep -q '\[X\] Gloo' <<<"$check" || fail "Horovod was built without Gloo"
say "done"
