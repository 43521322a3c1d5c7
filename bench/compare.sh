#!/usr/bin/env bash
# One command to measure Tern against Mosquitto and rumqttd on this machine:
#   bench/compare.sh                 # full suite, ~10 minutes, writes bench/results/latest.md
#   bench/compare.sh --suite quick   # smoke sizes, ~2 minutes
#   bench/compare.sh --only fanout --repeat 3
# Any flag of `tern-bench compare --help` passes through.
set -euo pipefail
cd "$(dirname "$0")/.."
# 10,000 idle connections need as many descriptors in the generator and in the broker.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
export RUST_BACKTRACE=0
cargo build --release -p tern-broker -p tern-bench
exec target/release/tern-bench compare "$@"
