#!/usr/bin/env bash
# Self-test of the interop programs: start a throwaway Mosquitto 2.x on 127.0.0.1
# (random free port, anonymous, no persistence), run paho_v5.py, mqttjs_v5.js and
# mosquitto_clients.sh against it, stop it again (by PID).
#
# Usage: bash tests/interop/run_against_mosquitto.sh [path/to/mosquitto]
#
# Needs: mosquitto, mosquitto-clients, python3 + paho-mqtt, node + `npm ci` done in
# this directory. Exit status is non-zero if any of the three programs failed.

set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
MOSQUITTO=${1:-$(command -v mosquitto || echo /usr/sbin/mosquitto)}
[[ -x "$MOSQUITTO" ]] || { echo "mosquitto not found (apt-get install mosquitto)" >&2; exit 1; }

TMP=$(mktemp -d "${TMPDIR:-/tmp}/tern-interop-mosq.XXXXXX")
chmod 755 "$TMP" # mosquitto drops privileges when started as root
MOSQ_PID=
# shellcheck disable=SC2317 # invoked via trap
cleanup() {
    if [[ -n "$MOSQ_PID" ]] && kill "$MOSQ_PID" 2>/dev/null; then
        wait "$MOSQ_PID" 2>/dev/null || true
    fi
    rm -rf "$TMP"
}
trap cleanup EXIT

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Start mosquitto; retry with a new port if another process grabbed ours meanwhile.
for attempt in 1 2 3; do
    PORT=$(free_port)
    printf 'listener %s 127.0.0.1\nallow_anonymous true\npersistence false\nlog_dest stderr\nlog_type all\n' \
        "$PORT" >"$TMP/mosquitto.conf"
    "$MOSQUITTO" -c "$TMP/mosquitto.conf" >"$TMP/mosquitto.log" 2>&1 &
    MOSQ_PID=$!
    for _ in $(seq 50); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then
            break 2
        fi
        kill -0 "$MOSQ_PID" 2>/dev/null || break
        sleep 0.1
    done
    kill "$MOSQ_PID" 2>/dev/null || true
    wait "$MOSQ_PID" 2>/dev/null || true
    MOSQ_PID=
    echo "mosquitto did not come up on port $PORT (attempt $attempt):" >&2
    tail -n 5 "$TMP/mosquitto.log" >&2
done
[[ -n "$MOSQ_PID" ]] || { echo "could not start mosquitto" >&2; exit 1; }
echo "mosquitto $("$MOSQUITTO" -h 2>&1 | grep -o -m1 'version [0-9.]*') pid $MOSQ_PID on 127.0.0.1:$PORT"

rc=0
for prog in "python3 $HERE/paho_v5.py" "node $HERE/mqttjs_v5.js" "bash $HERE/mosquitto_clients.sh"; do
    echo "--- $prog 127.0.0.1 $PORT"
    # shellcheck disable=SC2086 # intentional word splitting of "interpreter script"
    if ! $prog 127.0.0.1 "$PORT"; then
        rc=1
    fi
done
if [[ $rc -ne 0 ]]; then
    echo "--- mosquitto log (tail)"
    tail -n 40 "$TMP/mosquitto.log"
    echo "interop self-test against mosquitto: FAILED"
else
    echo "interop self-test against mosquitto: all passed"
fi
exit $rc
