#!/usr/bin/env bash
# `make image`: the Dockerfile's CPU variant (VARIANT=cpu; IMAGE_VARIANT=cuda for the other), built
# with podman as the Dockerfile stands, after bases.sh has made any base image that cannot be
# pulled. Prints the image's size by layer; last line: image_build: image=… size_mb=… seconds=…
#
# What the build downloads: Debian's packages (plain HTTP), the torch wheel (PyPI, through pip's
# settings here) and crates (crates.io). Two of this machine's settings are lent to the steps that
# download, as the Dockerfile's optional build secrets (mounted for one step, never in a layer):
# `ca-certificates.crt`, the CA bundle this machine trusts (for pip and cargo behind a
# TLS-intercepting proxy), and `pip.conf`, pip's settings here (its files and PIP_* variables) less
# those naming local folders, which the build cannot see.
set -euo pipefail
cd "$(dirname "$0")/../.."
. deploy/image/lib.sh
start=$SECONDS
mkdir -p build/image

bash deploy/image/bases.sh

# pip's settings as pip itself sees them (`pip config list`: its files' [global] settings, then
# the PIP_* variables, which win).
declare -A pip_settings=()
pip_config=$(python3 -m pip config list 2> /dev/null || true)
while IFS='=' read -r key value; do
  pip_settings[$key]=$value
done < <(sed -n "s/^global\.\([a-z-]*\)='\(.*\)'$/\1=\2/p" <<< "$pip_config" &&
  sed -n "s/^:env:\.\([a-z-]*\)='\(.*\)'$/\1=\2/p" <<< "$pip_config")
secrets=()
ca=${pip_settings[cert]:-/etc/ssl/certs/ca-certificates.crt}
unset 'pip_settings[cert]'
if [ -f "$ca" ]; then
  secrets+=(--secret "id=ca-certificates.crt,src=$ca")
  pip_settings[cert]=/etc/ssl/certs/ca-certificates.crt
fi
# The settings may hold an index's credentials: readable by this user only, and gone after the
# build.
pip_conf=$(umask 077 && mktemp "${TMPDIR:-/tmp}/siglip-pip.XXXXXX.conf")
trap 'rm -f "$pip_conf"' EXIT
{
  echo "[global]"
  for key in "${!pip_settings[@]}"; do
    case "${pip_settings[$key]}" in
      /* | file:*) [ "$key" = cert ] || {
        echo "pip setting $key=${pip_settings[$key]} names a local path: left out of the build" >&2
        continue
      } ;;
    esac
    echo "$key = ${pip_settings[$key]}"
  done
} > "$pip_conf"
secrets+=(--secret "id=pip.conf,src=$pip_conf")

echo "building $SIGLIP_IMAGE (log: build/image/build.log)"
# The build stage first, under a tag of its own: its layers (the torch wheel's, the cargo build's)
# are then in use, and a prune removes only what no tagged image uses any more.
build=(podman build --network=host "${ULIMITS[@]}" --format docker --build-arg "VARIANT=$IMAGE_VARIANT"
  "${secrets[@]}")
if ! { "${build[@]}" --target build -t "$SIGLIP_IMAGE-build" . && "${build[@]}" -t "$SIGLIP_IMAGE" .; } \
  > build/image/build.log 2>&1; then
  tail -40 build/image/build.log >&2
  echo "image_build: FAILED after $((SECONDS - start)) s (build/image/build.log)" >&2
  exit 1
fi
# Earlier builds' layers, in a store of this project's own (the default store is everybody's).
if [ -n "${SIGLIP_IMAGE_STORE:-}" ]; then
  podman image prune --force > /dev/null
fi

echo "layers (size, step):"
podman history --no-trunc --format '{{.Size}}	{{.CreatedBy}}' "$SIGLIP_IMAGE" |
  sed -e 's|/bin/sh -c ||' -e 's/#(nop) //' | cut -c1-100 | sed 's/^/  /'
size_mb=$(podman image inspect --format '{{.Size}}' "$SIGLIP_IMAGE" | awk '{printf "%.0f", $1 / 1e6}')
echo "image_build: image=$SIGLIP_IMAGE size_mb=$size_mb seconds=$((SECONDS - start))"
