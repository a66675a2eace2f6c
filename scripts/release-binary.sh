#!/usr/bin/env bash
# The one release build of meshlet, which the demo, the offline image and the benchmarks all
# use: a static binary (it runs on any base image, whatever its libc), with line tables for
# profiles. Prints its path; the image takes a stripped copy of it. A second run is a no-op.
#
# Its own target directory (target/image), so that it also works while another cargo command
# holds target/ (the compose test builds the image from inside `cargo test`).
set -euo pipefail
cd "$(dirname "$0")/.."
host=$(rustc -vV | sed -n 's/^host: //p')
RUSTFLAGS="-C target-feature=+crt-static" CARGO_TARGET_DIR=target/image \
  cargo build --release --locked --quiet --bin meshlet --target "$host" >&2
echo "$PWD/target/image/$host/release/meshlet"
