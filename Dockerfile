# syntax=docker/dockerfile:1
#
# siglip-serve container image (BuildKit required: cache mounts, stage selection by build arg).
#
#   docker build -t siglip-serve:cuda .                        # CUDA runtime (default)
#   docker build -t siglip-serve:cpu --build-arg VARIANT=cpu . # Debian slim, --device cpu
#   docker build -t siglip-export --target export .            # optional: the model export tool
#
#   docker run --gpus all -p 50051:50051 -p 9090:9090 -v "$PWD/models/so400m:/models:ro" siglip-serve:cuda
#
# Built and run: the CPU variant, by `make image` and `make image-test` (podman, with local
# stand-ins for the base images where no registry is reachable: docs/container.md). The CUDA
# variant needs nvidia/cuda, which no machine of this project's can pull: docs/container.md says
# how to build and check it where it can be.
#
# How libtorch gets in: there is no separate libtorch download. The build stage installs the
# torch==2.11.0 wheel into a venv and builds against its libtorch (LIBTORCH=<the wheel's torch/>:
# tch 0.24 links exactly torch 2.11; see docs/development.md and build.rs). The binary's RUNPATH
# then points at the build venv's torch/lib, which does not exist in the runtime image, so the
# runtime stage copies the shared libraries and sets LD_LIBRARY_PATH (build.rs makes it a
# RUNPATH, which LD_LIBRARY_PATH overrides).
#
# Layout in the runtime image, kept exactly as in the wheel so that the RPATHs the torch libraries
# carry ($ORIGIN/../../nvidia/{cu13,cudnn,cusparselt,nccl,nvshmem}/lib) resolve with no help:
#   /opt/libtorch/torch/lib/*.so*        libtorch, libtorch_cpu, libc10, libgomp (+ the CUDA ones)
#   /opt/libtorch/nvidia/*/lib/*.so*     CUDA runtime, cuBLAS, cuDNN, NCCL, ... from the nvidia-* wheels
# libcuda.so.1 (the driver) is not in the image: the NVIDIA container toolkit mounts the host's.
#
# The CPU variant carries no CUDA library but the two that libtorch_cpu.so itself needs to load
# (libcudart, libcupti: 5 MB), and a libtorch.so of its own that ties libtorch_cpu.so alone (the
# wheel's also pulls in libtorch_cuda.so, and with it cuDNN, cuBLAS, NCCL: gigabytes).

# VARIANT selects the runtime base: cuda (nvidia/cuda, Ubuntu) or cpu (Debian slim).
ARG VARIANT=cuda
# The CUDA base only has to provide the container-toolkit contract (NVIDIA_* variables,
# NVIDIA_REQUIRE_CUDA=cuda>=13.0, i.e. a driver >= 580): the CUDA user-space libraries come from
# the torch wheel (torch 2.11.0 is built against CUDA 13.0). `-base-` rather than `-runtime-`
# because `-runtime-` would add a second ~1.5 GB copy of cuBLAS/cuFFT/NCCL that nothing loads
# (the torch libraries' RPATH wins over the system library path). Override to pin a digest.
ARG CUDA_IMAGE=nvidia/cuda:13.0.1-base-ubuntu24.04
ARG CPU_IMAGE=debian:bookworm-slim

###############################################################################################
# build: Rust toolchain + a venv with the torch 2.11.0 wheel (for its libtorch).
###############################################################################################
FROM rust:1.95-bookworm AS build
SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# python3-venv for the venv that provides libtorch. Unpinned: Debian stable replaces pinned
# versions with security updates, which would break the build; the suite (bookworm) is the pin.
# nasm is deliberately NOT installed: mozjpeg-sys would then build its SIMD JPEG decoder, which is
# not the decoder the parity figures (tests/PARITY.md) were measured with (built without nasm).
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3-venv \
 && rm -rf /var/lib/apt/lists/*

# Optional build secrets, for a build behind a TLS-intercepting proxy or from a private index:
# `ca-certificates.crt` (a CA bundle) and `pip.conf`, e.g.
#   docker build --secret id=ca-certificates.crt,src=/etc/ssl/certs/ca-certificates.crt \
#                --secret id=pip.conf,src=$HOME/.config/pip/pip.conf ...
# Each is mounted only into the steps that download, and never lands in a layer; absent, the
# base image's own CA bundle and pip's defaults apply (deploy/image/build.sh passes this machine's).
#
# The wheel of torch 2.11.0 (PyPI unless pip.conf says otherwise). CUDA: with its nvidia-*
# dependencies, as `make` installs it. CPU: the wheel alone and the CUDA runtime pieces that
# libtorch_cpu.so needs to load (the versions torch 2.11.0 requires), its CUDA libraries deleted,
# and libtorch.so replaced by an empty library that needs libtorch_cpu.so alone: what the binary
# and AOTInductor packages link (`-ltorch`) then loads no CUDA. Deleted in the step that installs
# them, so no layer keeps them.
ARG VARIANT
ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH
# '$ORIGIN' is the linker's, not the shell's.
# hadolint ignore=SC2016
RUN --mount=type=cache,target=/root/.cache/pip \
    --mount=type=secret,id=pip.conf,target=/etc/pip.conf \
    --mount=type=secret,id=ca-certificates.crt,target=/etc/ssl/certs/ca-certificates.crt \
    python3 -m venv /opt/venv \
 && ln -s "$(python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" /opt/site-packages \
 && if [ "$VARIANT" = cpu ]; then \
      pip install --no-deps torch==2.11.0 nvidia-cuda-runtime==13.0.96 nvidia-cuda-cupti==13.0.85 \
      && lib=/opt/site-packages/torch/lib \
      && rm "$lib"/libtorch_cuda*.so "$lib"/libc10_cuda.so "$lib"/libcaffe2_nvrtc.so \
            "$lib"/libtorch_nvshmem.so "$lib"/libtorch_python.so "$lib"/libtorch_global_deps.so \
            "$lib"/libtorch.so \
      && gcc -shared -x c /dev/null -o "$lib/libtorch.so" -Wl,-soname,libtorch.so \
            -Wl,--no-as-needed -L"$lib" -ltorch_cpu -Wl,-rpath,'$ORIGIN' \
      && find /opt/site-packages/nvidia -name '*.so*' ! -name libcudart.so.13 ! -name libcupti.so.13 \
            -delete; \
    else \
      pip install torch==2.11.0; \
    fi

# Stage the shared libraries for the runtime image (see the layout above): torch/lib without
# libtorch_python.so (it needs libpython; the server does not use it), and every shared library of
# the nvidia-* wheels (CUDA: a superset of what the binary links, as cuDNN and NVRTC also dlopen
# some; CPU: the two that libtorch_cpu.so needs).
# Headers and static archives are left behind. Before the sources: a change to them rebuilds
# the binary, not this layer (460 MB for the CPU variant, gigabytes for CUDA).
RUN site=/opt/site-packages \
 && mkdir -p /stage/libtorch/torch/lib \
 && cp -a "$site"/torch/lib/*.so* /stage/libtorch/torch/lib/ \
 && rm -f /stage/libtorch/torch/lib/libtorch_python.so \
 && if [ -d "$site/nvidia" ]; then \
      find "$site/nvidia" -path '*/lib/*' -name '*.so*' -printf 'nvidia/%P\0' \
        | tar -C "$site" --null -T - -cf - | tar -C /stage/libtorch -xf - ; \
    fi

WORKDIR /src
COPY Cargo.toml Cargo.lock build.rs ./
COPY proto ./proto
COPY src ./src
# target/ is a cache mount (incremental rebuilds), so the binary is copied out in the same step;
# one folder in it per variant, as torch-sys remembers which libraries it linked. LIBTORCH rather
# than LIBTORCH_USE_PYTORCH (which imports torch to find it): the CPU variant's trimmed torch does
# not import. The copy loses its debug sections (150 MB of the 180: the release profile keeps line
# tables, mostly the C and C++ dependencies'): a backtrace in the image names functions, not lines.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    --mount=type=secret,id=ca-certificates.crt,target=/etc/ssl/certs/ca-certificates.crt \
    LIBTORCH=/opt/site-packages/torch cargo build --release --locked --target-dir "target/$VARIANT" \
 && strip --strip-debug -o /stage/siglip-serve "target/$VARIANT/release/siglip-serve" \
 && LD_LIBRARY_PATH=/stage/libtorch/torch/lib /stage/siglip-serve --version

###############################################################################################
# export (optional, `--target export`): the Python export tool, for a one-off Job or an
# initContainer that writes a model directory into the models volume. Needs the model hub.
#   mkdir -p models/so400m && docker run --rm --user "$(id -u):$(id -g)" \
#     -v "$PWD/models/so400m:/models" siglip-export \
#     export --checkpoint google/siglip-so400m-patch14-384 --dtype float32,bfloat16 --out /models
# `compile` (AOTInductor) needs a C++ compiler, hence g++; this image compiles for the CPU
# (`--device cpu`). `--device cuda` also needs the CUDA toolkit (headers and nvcc, found through
# CUDA_HOME) and the GPU model that will serve (the package holds machine code for it): run it on
# such a machine, or from an image built on nvidia/cuda's -devel flavour with these requirements.
# The caches go to /tmp: an arbitrary --user has no home directory (nor a passwd entry, which
# Inductor's default cache path would look up).
###############################################################################################
FROM python:3.11-slim-bookworm AS export
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends g++ \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY python/requirements.txt ./requirements.txt
RUN --mount=type=cache,target=/root/.cache/pip \
    --mount=type=secret,id=pip.conf,target=/etc/pip.conf \
    --mount=type=secret,id=ca-certificates.crt,target=/etc/ssl/certs/ca-certificates.crt \
    pip install -r requirements.txt
# The package itself (python/pyproject.toml: the `siglip-export` command), without dependencies:
# they are the pinned requirements above. Its sources, and what setuptools builds next to them,
# go once it is installed.
COPY python/pyproject.toml ./src/pyproject.toml
COPY python/siglip_export ./src/siglip_export
RUN --mount=type=cache,target=/root/.cache/pip \
    --mount=type=secret,id=pip.conf,target=/etc/pip.conf \
    --mount=type=secret,id=ca-certificates.crt,target=/etc/ssl/certs/ca-certificates.crt \
    pip install --no-deps ./src \
 && rm -rf ./src \
 && siglip-export --help > /dev/null
RUN groupadd --system --gid 10001 siglip \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin siglip
ENV HF_HOME=/tmp/hf \
    TORCHINDUCTOR_CACHE_DIR=/tmp/torchinductor \
    TRITON_CACHE_DIR=/tmp/triton
USER 10001:10001
ENTRYPOINT ["siglip-export"]
CMD ["--help"]

###############################################################################################
# runtime bases
###############################################################################################
# CUDA: picks the GPU when one is visible (SIGLIP_DEVICE=auto), else runs on the CPU.
FROM ${CUDA_IMAGE} AS runtime-cuda
ENV SIGLIP_DEVICE=auto

# CPU: Debian slim, and the libraries of libtorch's CPU side only (the build stage's CPU variant).
FROM ${CPU_IMAGE} AS runtime-cpu
ENV SIGLIP_DEVICE=cpu

###############################################################################################
# runtime (default target)
###############################################################################################
# runtime-${VARIANT} names one of the two stages above, not a registry image (so no tag: DL3006).
# hadolint ignore=DL3006
FROM runtime-${VARIANT} AS runtime
SHELL ["/bin/bash", "-o", "pipefail", "-c"]

RUN groupadd --system --gid 10001 siglip \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin siglip \
 && mkdir -p /models

COPY --from=build /stage/libtorch /opt/libtorch
COPY --from=build /stage/siglip-serve /usr/local/bin/siglip-serve

# Every server flag is an environment variable (docs/flags.md); these are the container's defaults.
# SIGLIP_METRICS_ADDR: Prometheus endpoint (the metrics listener).
ENV LD_LIBRARY_PATH=/opt/libtorch/torch/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH} \
    SIGLIP_MODEL_DIR=/models \
    SIGLIP_GRPC_ADDR=0.0.0.0:50051 \
    SIGLIP_METRICS_ADDR=0.0.0.0:9090 \
    SIGLIP_LOG_JSON=true \
    RUST_LOG=info

# Fails the build if a library is missing (the loader resolves every NEEDED entry at start).
RUN if ldd /usr/local/bin/siglip-serve | grep 'not found'; then exit 1; fi \
 && siglip-serve --version

# The model directory (manifest.json, towers, tokenizer files) is mounted here, read-only is fine;
# write it with the export tool (the `export` target above, or `siglip-export` locally).
VOLUME ["/models"]
# 50051: gRPC (siglip.v1.Siglip, grpc.health.v1, reflection). 9090: Prometheus metrics.
EXPOSE 50051 9090

USER 10001:10001

# Docker's own health check (Kubernetes ignores it and uses the probes in deploy/). It asks the
# gRPC health service through `siglip-serve health` (exit 0 only for SERVING), which answers
# SERVING only after the model is loaded and warmed up: the start period covers a large model's
# load on CPU. No --addr: the address comes from SIGLIP_HEALTH_ADDR (default
# http://127.0.0.1:50051), so a container serving TLS (SIGLIP_TLS_CERT/KEY) sets
# SIGLIP_HEALTH_ADDR=https://127.0.0.1:50051 and SIGLIP_CLIENT_TLS_CA / _SERVER_NAME (and, with
# SIGLIP_TLS_CLIENT_CA, a client certificate in SIGLIP_CLIENT_TLS_CERT / _KEY) in its environment.
HEALTHCHECK --interval=15s --timeout=5s --start-period=600s --retries=3 \
  CMD ["siglip-serve", "health"]

ENTRYPOINT ["siglip-serve"]
CMD ["serve"]
