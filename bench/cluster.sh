#!/usr/bin/env bash
# Cross-node against single-node (issue #12): a nats-server with JetStream, two Tern nodes
# joined to it (publishers on node A, subscribers on node B: tern-bench --sub-port) and one
# Tern without a cluster, all on 127.0.0.1, measured in the same run. Prints one JSON line
# per run (tern-bench's, plus "setup" and "cpu_ms" of every process involved) to stdout.
#
#   cargo build --release -p tern-broker -p tern-bench
#   bench/cluster.sh [DURATION_SECS]        # needs nats-server on the PATH
#   TERN_BIN=other/tern BASE_PORT=21830 bench/cluster.sh 6   # another build; fixed ports
#                                           # BASE_PORT .. BASE_PORT+3 (else free ports)
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${1:-8}
TERN=${TERN_BIN:-target/release/tern}
BENCH=${BENCH_BIN:-target/release/tern-bench}
WORK=$(mktemp -d /tmp/tern-cluster-bench.XXXXXX)
ulimit -n 65536 2>/dev/null || true
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; [[ -n "${KEEP:-}" ]] || rm -rf "$WORK"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
cpu_ms() { awk '{ print ($14 + $15) * 1000 / '"$(getconf CLK_TCK)"' }' "/proc/$1/stat"; }

port() { # n: BASE_PORT+n when BASE_PORT is set, else a free port
    if [[ -n "${BASE_PORT:-}" ]]; then echo $((BASE_PORT + $1)); else free_port; fi
}
NATS_PORT=$(port 0)
nats-server -a 127.0.0.1 -p "$NATS_PORT" -js -sd "$WORK/nats" >"$WORK/nats.log" 2>&1 &
NATS_PID=$!; PIDS+=("$NATS_PID")
for _ in $(seq 100); do # until nats-server listens (at most 10 s)
    (exec 3<>"/dev/tcp/127.0.0.1/$NATS_PORT") 2>/dev/null && break
    sleep 0.1
done

node() { # name mqtt_port cluster(true|false)
    cat >"$WORK/$1.toml" <<EOF
[[listeners]]
kind = "tcp"
bind = "127.0.0.1:$2"

[http]
enabled = false

[sys]
interval_secs = 0

[limits]
max_connections_per_ip = 0
max_connect_rate_per_ip = 0
max_publish_rate_per_client = 0
max_queued_messages = 100000
max_inflight_messages = 1024

[persistence]
enabled = false

[log]
level = "warn"

[cluster]
enabled = $3
node_name = "$1"
nats_urls = ["nats://127.0.0.1:$NATS_PORT"]
EOF
    "$TERN" --config "$WORK/$1.toml" >"$WORK/$1.log" 2>&1 &
    echo "$!"
}
PORT_A=$(port 1); PORT_B=$(port 2); PORT_S=$(port 3)
# (node runs in a subshell: its PIDs are recorded here, for cleanup.)
PID_A=$(node a "$PORT_A" true); PID_B=$(node b "$PORT_B" true); PID_S=$(node single "$PORT_S" false)
PIDS+=("$PID_A" "$PID_B" "$PID_S")
sleep 2

run() { # setup args...
    local setup=$1; shift
    local pids=("$NATS_PID" "$PID_A" "$PID_B" "$PID_S") before=() after=()
    for p in "${pids[@]}"; do before+=("$(cpu_ms "$p")"); done
    local line
    line=$("$BENCH" "$@" --quiet --duration-secs "$DURATION" --warmup-secs 1 --drain-secs 3)
    for p in "${pids[@]}"; do after+=("$(cpu_ms "$p")"); done
    python3 - "$setup" "$line" "${before[@]}" "${after[@]}" <<'PY'
import json, sys
setup, line = sys.argv[1], json.loads(sys.argv[2])
vals = [float(v) for v in sys.argv[3:]]
names = ["nats", "node_a", "node_b", "single"]
before, after = vals[:4], vals[4:]
line["setup"] = setup
line["cpu_ms"] = {n: round(a - b, 1) for n, a, b in zip(names, after, before)}
print(json.dumps(line))
PY
}

for args in "p2p --qos 0 --pairs 100" "p2p --qos 1 --pairs 100" \
            "fanout --qos 0 --publishers 1 --subscribers 100" \
            "p2p --qos 0 --pairs 20 --rate 1000"; do
    # shellcheck disable=SC2086
    run single $args --port "$PORT_S"
    # shellcheck disable=SC2086
    run cross-node $args --port "$PORT_A" --sub-port "$PORT_B"
done
