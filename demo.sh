#!/usr/bin/env bash
# The local demo: builds meshlet (scripts/release-binary.sh), then runs `meshlet demo` (two meshed pods and an outsider in
# network namespaces; needs root, so it asks sudo when you are not root). Extra arguments go to
# `meshlet demo` (e.g. --keep, --cleanup).
set -euo pipefail
cd "$(dirname "$0")"
meshlet=$(scripts/release-binary.sh)
if [ "$(id -u)" -eq 0 ]; then
  exec "$meshlet" demo "$@"
else
  exec sudo "$meshlet" demo "$@"
fi
