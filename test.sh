#!/usr/bin/env bash
# The whole test suite: unit tests, in-process proxy tests, and end-to-end tests in network
# namespaces with real iptables. The end-to-end tests need root: as a normal user this script
# runs the test binaries through `sudo -E` when sudo works without a password, and otherwise
# they skip with a message (MESHLET_REQUIRE_ROOT_TESTS=1 turns a skip into a failure).
set -euo pipefail
cd "$(dirname "$0")"
if [ "$(id -u)" -ne 0 ] && sudo -n true 2>/dev/null; then
  host=$(rustc -vV | sed -n 's/^host: //p' | tr 'a-z-' 'A-Z_')
  export "CARGO_TARGET_${host}_RUNNER=sudo -E"
fi
exec cargo test --workspace "$@"
