#!/usr/bin/env bash
# `make image`: the Dockerfile's CPU variant (VARIANT=cpu; IMAGE_VARIANT=cuda for the other), built
# with podman as the Dockerfile stands, after bases.sh has made any base image that cannot be pulled. Prints the image's size by
# layer; last line: image_build: image=… size_mb=… seconds=…
#
# The build reaches PyPI, crates.io and Debian through this machine's settings, lent to the steps
# that download as the Dockerfile's optional build secrets (mounted for one step, never in a
# layer): `ca-certificates.crt`, the CA bundle this machine trusts, and `pip.conf`, pip's settings
# here (its files and PIP_* variables) less those naming local folders, which the build cannot see.
set -euo pipefail
cd "$(dirname "$0")/../.."
. deploy/image/lib.sh
start=$SECONDS
mkdir -p build/image

bash deploy/image/bases.sh

secrets=()
# pip's settings as pip itself sees them (`pip config list`: its files' [global] settings, then
# the PIP_* variables, which win).
declare -A pip_settings=()
while IFS='=' read -r key value; do
  pip_settings[$key]=$value
done < <(python3 -m pip config list 2> /dev/null |
  sed -n -e "s/^global\.\([a-z-]*\)='\(.*\)'$/\1=\2/p" && python3 -m pip config list 2> /dev/null |
  sed -n -e "s/^:env:\.\([a-z-]*\)='\(.*\)'$/\1=\2/p")
ca=${pip_settings[cert]:-/etc/ssl/certs/ca-certificates.crt}
if [ -f "$ca" ]; then
  secrets+=(--secret "id=ca-certificates.crt,src=$ca")
  pip_settings[cert]=/etc/ssl/certs/ca-certificates.crt
fi
pip_conf=$PWD/build/image/pip.conf
{
  echo "[global]"
  for key in "${!pip_settings[@]}"; do
    case "$key=${pip_settings[$key]}" in
      cert=*) echo "$key = ${pip_settings[$key]}" ;;
      *=/*) echo "pip setting $key=${pip_settings[$key]} names a local path: left out of the build" >&2 ;;
      *) echo "$key = ${pip_settings[$key]}" ;;
    esac
  done
} > "$pip_conf"
secrets+=(--secret "id=pip.conf,src=$pip_conf")

echo "building $IMAGE (log: build/image/build.log)"
# The build stage first, under a tag of its own: its layers (the torch wheel's, the cargo build's)
# are then in use, and the prune below removes only what no tagged image uses any more, the layers
# of earlier builds, never the cache the next build needs.
build=(podman build --network=host "${ULIMITS[@]}" --format docker --build-arg "VARIANT=$IMAGE_VARIANT"
  "${secrets[@]}")
if ! { "${build[@]}" --target build -t "$IMAGE-build" . && "${build[@]}" -t "$IMAGE" .; } \
  > build/image/build.log 2>&1; then
  tail -40 build/image/build.log >&2
  echo "image_build: FAILED after $((SECONDS - start)) s (build/image/build.log)" >&2
  exit 1
fi
podman image prune --force > /dev/null

echo "layers (size, step):"
podman history --no-trunc --format '{{.Size}}	{{.CreatedBy}}' "$IMAGE" |
  sed -e 's|/bin/sh -c ||' -e 's/#(nop) //' | cut -c1-100 | sed 's/^/  /'
size_mb=$(podman image inspect --format '{{.Size}}' "$IMAGE" | awk '{printf "%.0f", $1 / 1e6}')
echo "image_build: image=$IMAGE size_mb=$size_mb seconds=$((SECONDS - start))"
