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
for target in $(cargo fuzz list); do
  echo "fuzzing $target for ${seconds}s"
  mkdir -p "corpus/$target"
  cargo fuzz run -s none "$target" "corpus/$target" -- \
    -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=10 -print_final_stats=0
done
