#!/usr/bin/env bash
# Builds the meshlet image without a registry: a Debian base made with mmdebstrap from this
# machine's apt sources (imported as meshlet-base:bookworm), a static release binary built on
# the host, and the Dockerfile's `prebuilt` target, built with --network=none.
#
#   docker/build-offline.sh [TAG]     (default meshlet:dev)
#
# Needs root (or rootless mmdebstrap), mmdebstrap, docker. The base is reused when present;
# MESHLET_REBUILD_BASE=1 makes it again.
set -euo pipefail
cd "$(dirname "$0")/.."
tag=${1:-meshlet:dev}
base=${MESHLET_BASE_IMAGE:-meshlet-base:bookworm}

if [ "${MESHLET_REBUILD_BASE:-0}" = 1 ] || ! docker image inspect "$base" >/dev/null 2>&1; then
  command -v mmdebstrap >/dev/null || { echo "needs mmdebstrap (apt-get install -y mmdebstrap)" >&2; exit 1; }
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  echo "making $base with mmdebstrap (iptables nft and legacy, curl)"
  # The machine's own apt sources (deb822 or one-line), so this works wherever apt does.
  sources=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/*.list 2>/dev/null || true)
  [ -n "$sources" ] || { echo "no apt sources in /etc/apt" >&2; exit 1; }
  printf '%s\n' "$sources" | mmdebstrap --quiet --variant=minbase \
    --include=iptables,curl,ca-certificates,iproute2 \
    --dpkgopt='path-exclude=/usr/share/{doc,man,locale,info}/*' \
    bookworm "$tmp/rootfs.tar" -
  docker import --change 'CMD ["/bin/bash"]' "$tmp/rootfs.tar" "$base" >/dev/null
fi

# The project's one release binary (static: it runs on any base, whatever its libc version).
strip -o target/image/meshlet "$(scripts/release-binary.sh)"

DOCKER_BUILDKIT=0 docker build --quiet --network=none --build-arg "BASE=$base" --target prebuilt -t "$tag" . >/dev/null
echo "built $tag: $(docker image inspect "$tag" --format '{{.Size}}' | awk '{printf "%.0f MB", $1/1e6}')"
