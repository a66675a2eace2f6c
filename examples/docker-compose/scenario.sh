#!/usr/bin/env bash
# The tutorial's checks against a running compose demo, with a packet capture of the compose
# network (needs root and tcpdump for the capture; without them the capture is skipped).
#
#   examples/docker-compose/scenario.sh [PROJECT]      (default meshlet-demo)
set -euo pipefail
cd "$(dirname "$0")"
project=${1:-meshlet-demo}
compose() { docker-compose -p "$project" "$@"; }
fail() { echo "FAIL: $*" >&2; exit 1; }

# The capture: on the host side of the compose network's bridge, all traffic between the pods.
pcap=$(mktemp /tmp/meshlet-compose-XXXXXX.pcap)
capture_pid=
net_id=$(docker network inspect -f '{{.Id}}' "${project}_mesh" 2>/dev/null || true)
bridge="br-${net_id:0:12}"
if [ "$(id -u)" = 0 ] && command -v tcpdump >/dev/null && ip link show "$bridge" >/dev/null 2>&1; then
  tcpdump -i "$bridge" -U -n -s 0 -w "$pcap" tcp 2>/dev/null &
  capture_pid=$!
  sleep 1
fi
trap '[ -n "$capture_pid" ] && kill "$capture_pid" 2>/dev/null; rm -f "$pcap"' EXIT

echo "1. worker -> http://echo:8080/headers (by service name, as the tutorial does)"
body=$(compose exec -T worker-app curl -sS --max-time 10 -w '\nstatus %{http_code}' http://echo:8080/headers)
echo "$body" | sed 's/^/   /'
# Checks read the text from a here-string, never a pipe: with pipefail, `echo | grep -q` fails
# when grep stops at its match before echo has written the rest (SIGPIPE, status 141).
grep -q '^status 200$' <<<"$body" || fail "expected 200"
grep -q 'x-forwarded-client-cert: By=spiffe://cluster.local/ns/default/sa/echo;URI=spiffe://cluster.local/ns/default/sa/pod-worker' \
  <<<"$body" || fail "the app did not see the caller's SPIFFE ID"

echo "2. worker -> /headers-1 (not allowed by the policy)"
body=$(compose exec -T worker-app curl -sS --max-time 10 -w '\nstatus %{http_code}' http://echo:8080/headers-1)
echo "$body" | sed 's/^/   /'
grep -q '^status 403$' <<<"$body" && grep -q 'Access denied' <<<"$body" || fail "expected 403 Access denied"

if [ -n "$capture_pid" ]; then
  sleep 1
  kill -INT "$capture_pid"; wait "$capture_pid" 2>/dev/null || true; capture_pid=
  echo "3. the wire between the two pods during 1 and 2 ($bridge): $(stat -c %s "$pcap") bytes captured"
  grep -q -a 'meshlet' "$pcap" || fail "no meshlet ALPN on the wire"
  # supported_versions extension holding TLS 1.3 (0x0304), as the server selects it.
  LC_ALL=C grep -q -a -P '\x00\x2b\x00\x02\x03\x04' "$pcap" || fail "TLS 1.3 not negotiated"
  for plain in '/headers' 'x-forwarded-client-cert' 'Access denied'; do
    if LC_ALL=C grep -q -a -F "$plain" "$pcap"; then fail "'$plain' crossed the wire in plaintext"; fi
  done
  echo "   TLS 1.3 with the meshlet ALPN; no request line or header in plaintext"
else
  echo "3. capture skipped (needs root, tcpdump and the host's view of the compose bridge)"
fi
echo "4. outsider -> http://echo:8080/headers (no identity)"
if out=$(compose exec -T outsider curl -sS --max-time 10 http://echo:8080/headers 2>&1); then
  fail "the outsider got an answer: $out"
fi
echo "   refused: $out"
proxy_log=$(compose logs --no-color echo-proxy 2>/dev/null)
grep -q 'connection refused.*198.18.20.30' <<<"$proxy_log" || fail "the refusal is not in echo-proxy's log"
echo "   echo-proxy: $(grep 'connection refused' <<<"$proxy_log" | grep -o 'reason=[^ ]*' | tail -1)"

echo "all checks passed"
