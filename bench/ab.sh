#!/usr/bin/env bash
# Same-run A/B of two Tern builds on the single-node hot path: fan-out QoS 0 (1 -> 1000)
# and p2p QoS 1 (100 pairs), alternating fresh brokers with one config; one line per run:
# binary, scenario, QoS, delivered msg/s, latency p99 us, broker CPU us per delivery.
#
#   BEFORE_BIN=/path/to/tern-before bench/ab.sh [REPEATS]
set -euo pipefail
cd "$(dirname "$0")/.."
AFTER_BIN=${AFTER_BIN:-target/release/tern}
BEFORE_BIN=${BEFORE_BIN:?set BEFORE_BIN to the Tern build to compare with}
BENCH=${BENCH_BIN:-target/release/tern-bench}
REPEATS=${1:-3}
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
CONFIG=$(mktemp /tmp/tern-ab.XXXXXX.toml)
trap 'rm -f "$CONFIG"' EXIT
cat >"$CONFIG" <<EOF
[[listeners]]
kind = "tcp"
bind = "127.0.0.1:$PORT"
[http]
enabled = false
[sys]
interval_secs = 0
[persistence]
enabled = false
[log]
level = "warn"
[limits]
max_connections_per_ip = 0
max_connect_rate_per_ip = 0
max_publish_rate_per_client = 0
max_queued_messages = 100000
max_inflight_messages = 1024
EOF
for _ in $(seq "$REPEATS"); do
  for bin in "$AFTER_BIN" "$BEFORE_BIN"; do
    for args in "fanout --qos 0 --publishers 1 --subscribers 1000" "p2p --qos 1 --pairs 100"; do
      "$bin" --config "$CONFIG" >/dev/null 2>&1 & pid=$!
      sleep 0.7
      # shellcheck disable=SC2086
      out=$(timeout 90 "$BENCH" $args --port "$PORT" --duration-secs 6 --warmup-secs 1 \
        --drain-secs 3 --broker-pid "$pid" --quiet 2>/dev/null || true)
      kill "$pid"; wait "$pid" 2>/dev/null || true
      python3 -c 'import json,sys; d=json.loads(sys.argv[1]); a=sys.argv[3].split(); print(sys.argv[2], a[0], a[2], round(d["delivered_per_sec"]), d["latency_us"]["p99"], d["broker"]["cpu_us_per_delivery"])' "$out" "$bin" "$args" || echo "$bin $args: no result"
    done
  done
done
