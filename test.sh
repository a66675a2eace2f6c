#!/usr/bin/env bash
# The whole test suite: unit tests, in-process proxy tests, and end-to-end tests in network
# namespaces with real iptables. The end-to-end tests need root: as a normal user this script
# runs the test binaries through `sudo -E` when sudo works without a password, and otherwise
# they skip with a message (MESHLET_REQUIRE_ROOT_TESTS=1 turns a skip into a failure).
# Kubernetes manifests (shipped and generated) are validated with kubernetes-validate from PyPI,
# installed once into target/kubernetes-validate when it is not on the PATH
# (MESHLET_REQUIRE_MANIFEST_TESTS=1 makes its absence a failure). The compatibility suite
# (tests/compat.rs) needs real servers and clients from Debian's packages (MESHLET_REQUIRE_COMPAT_TESTS=1
# makes their absence a failure).
set -euo pipefail
cd "$(dirname "$0")"
if [ -z "${MESHLET_KUBERNETES_VALIDATE:-}" ]; then
  venv=target/kubernetes-validate
  if command -v kubernetes-validate >/dev/null 2>&1; then
    MESHLET_KUBERNETES_VALIDATE=$(command -v kubernetes-validate)
  else
    if [ ! -x "$venv/bin/kubernetes-validate" ]; then
      echo "test.sh: installing kubernetes-validate from PyPI into $venv" >&2
      mkdir -p target && rm -rf "$venv"
      python3 -m venv "$venv" && "$venv/bin/pip" install -q kubernetes-validate ||
        echo "test.sh: could not install kubernetes-validate; the manifest tests will skip" >&2
    fi
    if [ -x "$venv/bin/kubernetes-validate" ]; then
      MESHLET_KUBERNETES_VALIDATE=$PWD/$venv/bin/kubernetes-validate
    fi
  fi
  export MESHLET_KUBERNETES_VALIDATE="${MESHLET_KUBERNETES_VALIDATE:-}"
fi
# The compatibility suite's gRPC peers (grpcio from PyPI), likewise in target/compat-venv; its
# other servers and clients are Debian packages (.ci/run installs them; see the README).
if [ -z "${MESHLET_COMPAT_PYTHON:-}" ]; then
  venv=target/compat-venv
  if ! "$venv/bin/python" -c 'import grpc, grpc_health.v1' >/dev/null 2>&1; then
    echo "test.sh: installing grpcio from PyPI into $venv" >&2
    mkdir -p target && rm -rf "$venv"
    python3 -m venv "$venv" && "$venv/bin/pip" install -q grpcio grpcio-health-checking ||
      echo "test.sh: could not install grpcio; the compatibility suite will skip" >&2
  fi
  export MESHLET_COMPAT_PYTHON=$PWD/$venv/bin/python
fi
if [ "$(id -u)" -ne 0 ] && sudo -n true 2>/dev/null; then
  host=$(rustc -vV | sed -n 's/^host: //p' | tr 'a-z-' 'A-Z_')
  export "CARGO_TARGET_${host}_RUNNER=sudo -E"
fi
exec cargo test --workspace "$@"
