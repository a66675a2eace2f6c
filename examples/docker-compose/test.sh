#!/usr/bin/env bash
# End to end: builds the image offline, runs the compose demo under a project name of its own,
# runs scenario.sh, and removes everything it made (containers, networks, volumes, the image
# tags, and the base image if it made it), also on failure or interruption.
set -euo pipefail
cd "$(dirname "$0")"
root=$(cd ../.. && pwd)
run_id="mltest$$"
export MESHLET_IMAGE="meshlet:$run_id"
base=meshlet-base:bookworm
made_base=0
docker image inspect "$base" >/dev/null 2>&1 || made_base=1
cleanup() {
  docker-compose -p "$run_id" down -v --remove-orphans --timeout 2 >/dev/null 2>&1 || true
  docker image rm -f "$MESHLET_IMAGE" >/dev/null 2>&1 || true
  if [ "$made_base" = 1 ]; then docker image rm -f "$base" >/dev/null 2>&1 || true; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

"$root/docker/build-offline.sh" "$MESHLET_IMAGE"
docker run --rm "$MESHLET_IMAGE" --version
[ "$(docker run --rm --entrypoint id "$MESHLET_IMAGE" -u)" = 1337 ] || { echo "the image does not run as 1337" >&2; exit 1; }

docker-compose -p "$run_id" up -d --quiet-pull 2>&1 | tail -n 20
# The proxies are ready once /ready answers 200 inside each pod.
for pod in echo-proxy worker-proxy; do
  for _ in $(seq 1 100); do
    if docker-compose -p "$run_id" exec -T "${pod%-proxy}-app" \
         curl -fsS --max-time 1 -o /dev/null http://127.0.0.1:15021/ready 2>/dev/null; then
      continue 2
    fi
    sleep 0.2
  done
  docker-compose -p "$run_id" logs >&2
  echo "$pod did not become ready" >&2
  exit 1
done
./scenario.sh "$run_id"
