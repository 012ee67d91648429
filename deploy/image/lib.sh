# Shared by the image scripts (sourced): podman as it runs on a machine like the CI's.
#
# runc, not crun: crun fails on cgroups in hybrid mode and on rlimits there. The ulimits are
# explicit for the same reason (podman's default nproc cannot be set there). SIGLIP_IMAGE_STORE,
# when set, keeps podman's images and build caches in that folder instead of
# /var/lib/containers (CI points it into its cache, so a fresh clone finds them warm).

# The Dockerfile's VARIANT: cpu, or cuda where nvidia/cuda can be pulled (docs/container.md).
IMAGE_VARIANT=${IMAGE_VARIANT:-cpu}
SIGLIP_IMAGE=${SIGLIP_IMAGE:-localhost/siglip-serve:$IMAGE_VARIANT}
DEBIAN_BASE=docker.io/library/debian:bookworm-slim
RUST_BASE=docker.io/library/rust:1.95-bookworm
PYTHON_BASE=docker.io/library/python:3.11-slim-bookworm
ULIMITS=(--ulimit nofile=1024:4096 --ulimit nproc=4096:4096)

# The podman command line, as an array (`timeout` and the Python checks run it too).
PODMAN=(podman --runtime runc)
if [ -n "${SIGLIP_IMAGE_STORE:-}" ]; then
  mkdir -p "$SIGLIP_IMAGE_STORE/tmp"
  # TMPDIR: where buildah keeps the RUN --mount=type=cache folders (cargo's and pip's caches).
  PODMAN=(env "TMPDIR=$SIGLIP_IMAGE_STORE/tmp" "${PODMAN[@]}" --root "$SIGLIP_IMAGE_STORE/storage"
    --runroot "$SIGLIP_IMAGE_STORE/run")
fi
podman() { "${PODMAN[@]}" "$@"; }

# podman, runc and debootstrap from Debian's packages, installed when missing and this user can.
need_tools() {
  local missing=() tool
  # `type -P`: the programs on PATH (`command -v podman` would find the function above).
  for tool in podman runc debootstrap; do
    type -P "$tool" > /dev/null || missing+=("$tool")
  done
  [ ${#missing[@]} = 0 ] && return 0
  if [ "$(id -u)" != 0 ] || ! command -v apt-get > /dev/null; then
    echo "the image scripts need ${missing[*]} (Debian: apt-get install podman runc debootstrap), as root" >&2
    return 1
  fi
  echo "installing ${missing[*]} (Debian's packages)"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" > /dev/null
}

# The label a local base carries, naming what it was made from; empty for a pulled image.
local_key() { podman image inspect --format '{{index .Labels "org.siglip-serve.local-base"}}' "$1" 2> /dev/null; }
