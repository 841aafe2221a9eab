# syntax=docker/dockerfile:1
# sentiment-dist on GPUs: TensorFlow 2.21, Horovod 0.28.1 with NCCL all-reduce
# (plus MPI and Gloo controllers), OpenMPI and sshd for multi-node jobs.
#
#   docker build -t sentiment-dist:latest .
#   docker run --gpus all --shm-size=1g sentiment-dist:latest                     # the main job
#   docker run --gpus all --shm-size=1g sentiment-dist:latest \
#       horovodrun -np 4 python -m sentiment_dist.train strategy=horovod          # 4 GPUs, Horovod
#   docker run --gpus all --shm-size=1g -v "$PWD/runs:/app/outputs" sentiment-dist:latest \
#       python -m sentiment_dist.train strategy=mirrored                          # runs kept on the host
#
# Assumptions about the base image, which is not built here:
# - It is Ubuntu with python3 and TensorFlow 2.21.0 installed for it (the tag
#   below must match `tensorflow>=2.21,<2.22` in pyproject.toml; a test checks).
# - Building Horovod's NCCL kernels needs the CUDA compiler and NCCL headers,
#   which a runtime image lacks. They come from NVIDIA's CUDA apt repository:
#   used as configured when the base image has it (images built on nvidia/cuda
#   do), otherwise added with NVIDIA's cuda-keyring package. CUDA_TOOLKIT is the
#   toolkit TensorFlow 2.21 was built with (tf.sysconfig.get_build_info():
#   12.5); NCCL is the newest CUDA 12 build in that repository.
FROM tensorflow/tensorflow:2.21.0-gpu

# Not CUDA_VERSION: images built on nvidia/cuda set that as ENV, which would win.
ARG CUDA_TOOLKIT=12.5
ARG APP_UID=10001

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

ENV DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PIP_BREAK_SYSTEM_PACKAGES=1 \
    PYTHONUNBUFFERED=1

# System packages: compilers and CUDA/NCCL headers for the Horovod build,
# OpenMPI for its MPI controller, ssh for multi-node launches (MPI operator).
# Package versions are left to the distribution: its archive drops superseded
# versions, so exact pins would break the build on the next security update.
# NCCL is pinned to the newest build for CUDA 12 (the repository also holds
# builds for other CUDA majors, which would otherwise win); nvidia/cuda images
# hold their libnccl2, hence --allow-change-held-packages.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && if ! grep -rqs "developer.download.nvidia.com/compute/cuda" /etc/apt/sources.list /etc/apt/sources.list.d/; then \
         . /etc/os-release \
         && distro="ubuntu$(echo "$VERSION_ID" | tr -d .)" \
         && arch=$(uname -m | sed 's/aarch64/sbsa/') \
         && curl -fsSL -o /tmp/cuda-keyring.deb \
              "https://developer.download.nvidia.com/compute/cuda/repos/${distro}/${arch}/cuda-keyring_1.1-1_all.deb" \
         && dpkg -i /tmp/cuda-keyring.deb && rm /tmp/cuda-keyring.deb && apt-get update; \
       fi \
    && nccl=$(apt-cache madison libnccl-dev | awk -v cuda="+cuda${CUDA_TOOLKIT%%.*}." 'index($3, cuda) && !v {v = $3} END {print v}') \
    && test -n "$nccl" \
    && cuda=$(echo "$CUDA_TOOLKIT" | tr . -) \
    && apt-get install -y --no-install-recommends --allow-change-held-packages \
         "cuda-nvcc-${cuda}" "cuda-cudart-dev-${cuda}" \
         libnccl2="$nccl" libnccl-dev="$nccl" \
         g++ make cmake \
         openmpi-bin libopenmpi-dev \
         openssh-client openssh-server \
    && apt-get clean \
    && rm -rf /var/lib/apt/lists/* \
    && { command -v python >/dev/null || ln -s "$(command -v python3)" /usr/local/bin/python; }

# Horovod, built before the package is copied, from launch/build_horovod.sh
# alone, so that editing the package (or the other launchers) does not rebuild
# it. NCCL all-reduce (HOROVOD_GPU_OPERATIONS=NCCL), MPI (mpicxx is present) and
# Gloo. HOROVOD_NCCL_LINK=SHARED links libnccl.so.2, which carries its own CUDA
# runtime, instead of the static library, so an NCCL built for a newer CUDA 12
# release links cleanly. HOROVOD_BUILD_CUDA_CC_LIST: the GPU generations
# TensorFlow 2.21 ships kernels for. The cache mount keeps the built wheel
# between image builds (BuildKit); the build tree is removed.
COPY launch/build_horovod.sh /tmp/build/launch/build_horovod.sh
RUN --mount=type=cache,target=/root/.cache/sentiment-dist \
    HOROVOD_GPU_OPERATIONS=NCCL \
    HOROVOD_CUDA_HOME="/usr/local/cuda-${CUDA_TOOLKIT}" \
    HOROVOD_NCCL_LINK=SHARED \
    HOROVOD_BUILD_CUDA_CC_LIST=60,70,80,89,90 \
    bash /tmp/build/launch/build_horovod.sh python3 \
    && rm -rf /tmp/build

# The package, built in a scratch directory. TensorFlow is already installed
# and satisfies the requirement, so pip leaves it alone; the check makes sure.
WORKDIR /tmp/src
COPY pyproject.toml README.md ./
COPY sentiment_dist ./sentiment_dist
RUN tf_before=$(python3 -c 'import importlib.metadata as m; print(m.version("tensorflow"))') \
    && python3 -m pip install --no-cache-dir . \
    && tf_after=$(python3 -c 'import importlib.metadata as m; print(m.version("tensorflow"))') \
    && test "$tf_before" = "$tf_after" \
    && rm -rf /tmp/src

WORKDIR /app

# A non-root user, with an sshd it can run for multi-node launches: the
# Kubeflow MPI operator mounts the ssh keys at /home/app/.ssh, workers run
# `sshd -De -f /home/app/.sshd_config` and the launcher's horovodrun/mpirun
# reach them on port 2222 (unprivileged, so no capabilities are needed); see
# launch/k8s/mpijob-horovod.yaml. /app is the working directory: runs land in
# /app/outputs unless paths.log_dir says otherwise.
RUN groupadd --gid "${APP_UID}" app \
    && useradd --create-home --uid "${APP_UID}" --gid app --shell /bin/bash app \
    && printf 'Host *\n    Port 2222\n    StrictHostKeyChecking no\n    UserKnownHostsFile /dev/null\n' \
         > /etc/ssh/ssh_config.d/sentiment-dist.conf \
    && printf 'Port 2222\nPidFile /home/app/sshd.pid\nHostKey /home/app/.ssh/id_rsa\nStrictModes no\n' \
         > /home/app/.sshd_config \
    && chown app:app /home/app/.sshd_config /app

COPY conf /app/conf
COPY launch /app/launch
# The installed package finds its Hydra configs here.
ENV SENTIMENT_DIST_CONF=/app/conf

USER ${APP_UID}

# No ENTRYPOINT: any command runs as given (horovodrun ..., python -m
# sentiment_dist.train ..., sshd for MPI workers); the default is the main job.
CMD ["python", "-m", "sentiment_dist"]
