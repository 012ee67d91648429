#!/usr/bin/env bash
# The Dockerfile's base images, made on this machine where they cannot be pulled (no registry
# reachable), and tagged with the names the Dockerfile's FROM lines use, so that the Dockerfile
# itself is the one everyone else builds:
#   debian:bookworm-slim        debootstrap --variant=minbase bookworm, trimmed as the official
#                               slim image is (no docs, man pages or locales; apt caches cleaned)
#   rust:1.95-bookworm          that Debian, plus the compilers and tools the build uses, plus this
#                               machine's own Rust 1.95 toolchain (rustup and its proxies)
#   python:3.11-slim-bookworm   that Debian, plus Debian's Python 3.11 with pip and venv
# docs/container.md lists what differs from the pulled images. A base that exists (pulled, or made
# here from the same recipe) is kept; a local base whose recipe changed (its label
# org.siglip-serve.local-base) is made again. Each is tried as a pull first, for a short while.
set -euo pipefail
cd "$(dirname "$0")"
. ./lib.sh

# Where debootstrap fetches from; the image's own apt sources are the official image's.
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
# Folders made here, removed however the script ends (a toolchain context is 1 GB).
scratch=()
trap 'rm -rf "${scratch[@]}"' EXIT

recipe() { printf '%s' "$*" | sha256sum | cut -c1-16; }

# Whether $1 needs making for recipe $2: not when it exists under that recipe, or exists without
# a recipe label (a real, pulled image), or can be pulled now.
needs_making() {
  if podman image exists "$1"; then
    local key
    key=$(local_key "$1")
    [ -n "$key" ] && [ "$key" != "$2" ]
    return
  fi
  ! timeout 120 "${PODMAN[@]}" pull -q "$1" > /dev/null 2>&1
}

make_debian() {
  local root
  root=$(mktemp -d "${TMPDIR:-/var/tmp}/siglip-debootstrap.XXXXXX")
  scratch+=("$root" "$root.log")
  echo "making $DEBIAN_BASE with debootstrap from $DEBIAN_MIRROR"
  debootstrap --variant=minbase bookworm "$root" "$DEBIAN_MIRROR" > "$root.log" 2>&1 ||
    { tail -20 "$root.log" >&2; return 1; }
  # The official image's sources: bookworm, its updates and the security archive.
  rm -f "$root/etc/apt/sources.list"
  cat > "$root/etc/apt/sources.list.d/debian.sources" << SOURCES
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SOURCES
  # Slim as debuerreotype makes the official image: packages installed later leave their docs
  # out too, and apt keeps no package caches in a layer.
  cat > "$root/etc/dpkg/dpkg.cfg.d/docker" << 'DPKG'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
path-exclude /usr/share/groff/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/linda/*
DPKG
  cat > "$root/etc/apt/apt.conf.d/docker-clean" << 'APT'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
APT
  echo 'Acquire::Languages "none";' > "$root/etc/apt/apt.conf.d/docker-no-languages"
  find "$root/usr/share/doc" -type f ! -name copyright -delete
  find "$root/usr/share/doc" -type l -delete
  rm -rf "$root"/usr/share/{man,info,groff,lintian,linda}/* "$root"/var/lib/apt/lists/* \
    "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb "$root"/var/log/*.log \
    "$root"/var/log/apt/* "$root"/tmp/* "$root"/var/tmp/*
  find "$root/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name locale.alias -exec rm -rf {} +
  # This machine's name and resolver are not the image's: the runtime provides both.
  rm -f "$root/etc/hostname" "$root/etc/resolv.conf"
  tar --numeric-owner -C "$root" -c . | podman import --quiet \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["bash"]' \
    --change "LABEL org.siglip-serve.local-base=$debian_recipe" - "$DEBIAN_BASE" > /dev/null
}

# $1: image, $2: recipe, $3: Containerfile, $4: context folder, then build arguments.
build_base() {
  echo "making $1 from deploy/image/$3"
  podman build --network=host "${ULIMITS[@]}" --format docker --label "org.siglip-serve.local-base=$2" \
    "${@:5}" -f "$PWD/$3" -t "$1" "$4" > /dev/null
}

need_tools
# The recipe is the function that makes it: any change to it makes the image again.
debian_recipe=$(recipe "$(declare -f make_debian)" "$DEBIAN_MIRROR")
if needs_making "$DEBIAN_BASE" "$debian_recipe"; then make_debian; fi
debian_id=$(podman image inspect --format '{{.Id}}' "$DEBIAN_BASE")

# The builder gets this machine's toolchain, installed by rustup: it must be the 1.95 the
# Dockerfile names.
rust_version=$(rustc -vV | sed -n 's/^release: //p')
rust_host=$(rustc -vV | sed -n 's/^host: //p')
case "$rust_version" in
  1.95.*) ;;
  *) echo "rust:1.95-bookworm needs a Rust 1.95 toolchain here; rustc is $rust_version" >&2; exit 1 ;;
esac
rustup=$(command -v rustup) ||
  { echo "rust:1.95-bookworm is made from a rustup installation; this machine has no rustup" >&2; exit 1; }
rust_recipe=$(recipe "$rust_version $rust_host" "$(cat rust-base.Containerfile)" "$debian_id")
if needs_making "$RUST_BASE" "$rust_recipe"; then
  context=$(mktemp -d "${TMPDIR:-/var/tmp}/siglip-rust-base.XXXXXX")
  scratch+=("$context")
  mkdir "$context/toolchain"
  # The active toolchain without its HTML docs (800 MB the official image does not have either).
  tar -C "$(rustc --print sysroot)" --exclude=./share/doc -cf - . | tar -C "$context/toolchain" -xf -
  cp "$rustup" "$context/rustup"
  build_base "$RUST_BASE" "$rust_recipe" rust-base.Containerfile "$context" \
    --build-arg "RUST_VERSION=$rust_version" --build-arg "RUST_HOST=$rust_host"
fi

python_recipe=$(recipe "$(cat python-base.Containerfile)" "$debian_id")
if needs_making "$PYTHON_BASE" "$python_recipe"; then
  context=$(mktemp -d "${TMPDIR:-/var/tmp}/siglip-python-base.XXXXXX")
  scratch+=("$context")
  build_base "$PYTHON_BASE" "$python_recipe" python-base.Containerfile "$context"
fi
podman image list --format '{{.Repository}}:{{.Tag}} {{.Size}}' |
  grep -E "^($DEBIAN_BASE|$RUST_BASE|$PYTHON_BASE) " | sed 's/^/base: /'
