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
# The compatibility suite's Python peers need grpcio and websockets from PyPI, likewise in
# target/compat-venv; its other servers and clients are Debian packages (.ci/run installs them;
# see the README).
if [ -z "${MESHLET_COMPAT_PYTHON:-}" ]; then
  venv=target/compat-venv
  if ! "$venv/bin/python" -c 'import grpc, grpc_health.v1, websockets' >/dev/null 2>&1; then
    echo "test.sh: installing grpcio and websockets from PyPI into $venv" >&2
    mkdir -p target && rm -rf "$venv"
    python3 -m venv "$venv" && "$venv/bin/pip" install -q grpcio grpcio-health-checking websockets ||
      echo "test.sh: could not install grpcio; the compatibility suite will skip" >&2
  fi
  export MESHLET_COMPAT_PYTHON=$PWD/$venv/bin/python
fi
if [ "$(id -u)" -ne 0 ] && sudo -n true 2>/dev/null; then
  host=$(rustc -vV | sed -n 's/^host: //p' | tr 'a-z-' 'A-Z_')
  export "CARGO_TARGET_${host}_RUNNER=sudo -E"
fi
if [ $# -gt 0 ]; then
  exec cargo test --workspace "$@"
fi
# The whole suite also holds connections idle for minutes (tests/compat.rs,
# connections_held_idle_for_minutes_behave_as_unmeshed: about 10 minutes, mostly waiting). It
# runs beside the rest, from its own built binary, so it adds no time of its own.
slow=connections_held_idle_for_minutes_behave_as_unmeshed
bin=$(cargo test --test compat --no-run --message-format=json -q |
  python3 -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "compat" and m.get("executable"):
        print(m["executable"])')
runner_var="CARGO_TARGET_$(rustc -vV | sed -n 's/^host: //p' | tr 'a-z-' 'A-Z_')_RUNNER"
mkdir -p target
${!runner_var:-} "$bin" --ignored --exact "$slow" --nocapture >target/compat-slow.log 2>&1 &
slow_pid=$!
status=0
cargo test --workspace || status=$?
echo "test.sh: waiting for $slow (log: target/compat-slow.log)" >&2
slow_status=0
wait "$slow_pid" || slow_status=$?
cat target/compat-slow.log
if [ "$slow_status" -ne 0 ]; then
  echo "test.sh: $slow failed" >&2
  status=$slow_status
fi
exit "$status"
