#!/usr/bin/env bash
# Runs every fuzz target for SECONDS each (default 30) with libFuzzer, on stable Rust
# (`--sanitizer none`: the code is `forbid(unsafe_code)`; coverage guidance still applies).
# Installs cargo-fuzz when missing. A crash fails the run and leaves its input in
# fuzz/artifacts/<target>/ (reproduce with `cargo fuzz run -s none <target> <file>`).
set -euo pipefail
cd "$(dirname "$0")"
seconds=${1:-30}
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked --quiet
cargo fuzz build -s none
mkdir -p logs
for target in $(cargo fuzz list); do
  mkdir -p "corpus/$target"
  if ! cargo fuzz run -s none "$target" "corpus/$target" -- \
      -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=10 > "logs/$target.log" 2>&1; then
    tail -n 40 "logs/$target.log"
    echo "fuzz target $target FAILED (input in fuzz/artifacts/$target/)" >&2
    exit 1
  fi
  echo "fuzz $target: $(grep -o 'Done [0-9]* runs in [0-9]* second(s)' "logs/$target.log" | tail -1)"
done
