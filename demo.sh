#!/usr/bin/env bash
# The local demo: builds meshlet, then runs `meshlet demo` (two meshed pods and an outsider in
# network namespaces; needs root, so it asks sudo when you are not root). Extra arguments go to
# `meshlet demo` (e.g. --keep, --cleanup).
set -euo pipefail
cd "$(dirname "$0")"
cargo build --release --quiet
if [ "$(id -u)" -eq 0 ]; then
  exec ./target/release/meshlet demo "$@"
else
  exec sudo ./target/release/meshlet demo "$@"
fi
