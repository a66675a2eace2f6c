#!/usr/bin/env bash
# Runs every fuzz target for SECONDS each (default 30) with libFuzzer, as many at once as there
# are CPUs, on stable Rust (`--sanitizer none`: the code is `forbid(unsafe_code)`; coverage
# guidance still applies). Installs cargo-fuzz when missing (unoptimized: it only drives cargo,
# and installs in a fraction of the time). A crash fails the run and leaves its input in
# fuzz/artifacts/<target>/ (reproduce with `cargo fuzz run -s none <target> <file>`).
set -euo pipefail
cd "$(dirname "$0")"
seconds=${1:-30}
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked --quiet --debug
cargo fuzz build -s none
mkdir -p logs
# One libFuzzer process per target, as many at once as there are CPUs (each is single-threaded).
run_one() {
  local target=$1
  mkdir -p "corpus/$target"
  if ! cargo fuzz run -s none "$target" "corpus/$target" -- \
      -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=10 > "logs/$target.log" 2>&1; then
    tail -n 40 "logs/$target.log"
    echo "fuzz target $target FAILED (input in fuzz/artifacts/$target/)" >&2
    return 1
  fi
  echo "fuzz $target: $(grep -o 'Done [0-9]* runs in [0-9]* second(s)' "logs/$target.log" | tail -1)"
}
parallel=$(nproc 2>/dev/null || echo 1)
failed=0
pids=()
for target in $(cargo fuzz list); do
  run_one "$target" &
  pids+=($!)
  if [ ${#pids[@]} -ge "$parallel" ]; then
    wait "${pids[0]}" || failed=1
    pids=("${pids[@]:1}")
  fi
done
for pid in "${pids[@]}"; do wait "$pid" || failed=1; done
exit "$failed"
