#!/usr/bin/env bash
# Real-client interop test: Eclipse Mosquitto command line clients against a broker.
#
# Usage: bash mosquitto_clients.sh HOST PORT
#
# Uses mosquitto_pub / mosquitto_sub (Mosquitto 2.x) with -V mqttv311 and -V mqttv5:
#   * QoS 0/1/2 publish -> subscribe; payload, QoS and "exactly once" are checked by
#     publishing the payload and an END marker on one connection and expecting
#     exactly [payload, END] at the subscriber
#   * retained (-r): a new subscriber gets it with the retain flag; cleared with -r -n,
#     after which a new subscriber gets only a live marker message
#   * will (--will-topic/--will-payload/--will-qos) of a mosquitto_sub killed with SIGKILL
#   * MQTT 5 properties: -D publish user-property (repeated key), content-type and
#     message-expiry-interval, seen through mosquitto_sub -F '%P|%C|%E|%p'
#
# Each check prints a PASS or FAIL line; exit status is non-zero if any check failed.
# Every wait is bounded (mosquitto_sub -W, `timeout` around mosquitto_pub, polling
# with deadlines). Only processes started by this script are killed, by PID.

set -uo pipefail

if [[ $# -ne 2 ]]; then
    echo "usage: $0 HOST PORT" >&2
    exit 64
fi
HOST=$1
PORT=$2
SUB_WAIT=10 # seconds a subscriber may live (mosquitto_sub -W)
READY_WAIT=5 # seconds to wait for a subscriber's SUBACK
PUB_WAIT=10 # seconds a mosquitto_pub may take

for tool in mosquitto_pub mosquitto_sub timeout stdbuf od; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        echo "FAIL: '$tool' not found (apt-get install mosquitto-clients coreutils)"
        exit 1
    fi
done

RUN=$(od -An -N6 -tx1 /dev/urandom | tr -d ' \n')
PREFIX="tern-interop/mosq/$RUN"
TMP=$(mktemp -d "${TMPDIR:-/tmp}/tern-mosq-interop.XXXXXX")
PIDS=()
PASSED=0
FAILED=0

cleanup() {
    local pid
    {
        for pid in "${PIDS[@]}"; do
            kill -KILL "$pid" && wait "$pid"
        done
    } 2>/dev/null
    rm -rf "$TMP"
}
trap cleanup EXIT

pass() {
    echo "PASS: $*"
    PASSED=$((PASSED + 1))
}

fail() {
    echo "FAIL: $*"
    FAILED=$((FAILED + 1))
}

# Show a captured client log (indented) after a failure.
show() {
    [[ -f "$TMP/$1.out" ]] && sed 's/^/    | /' "$TMP/$1.out" | tail -n 25
}

pub() {
    timeout -s KILL "$PUB_WAIT" mosquitto_pub -h "$HOST" -p "$PORT" "$@"
}

# start_sub NAME FORMAT ARGS... : start mosquitto_sub in the background with debug
# output, message lines formatted as "MSG|<FORMAT>", and wait for its SUBACK.
# Sets SUB_PID. Returns non-zero if the SUBACK doesn't arrive in time.
start_sub() {
    local name=$1 format=$2
    shift 2
    # stdbuf: line-buffered stdout so the SUBACK debug line is visible at once
    # (stdbuf execs mosquitto_sub, so $! is mosquitto_sub's own PID).
    stdbuf -oL mosquitto_sub -h "$HOST" -p "$PORT" -d -F "MSG|$format" "$@" >"$TMP/$name.out" 2>&1 &
    SUB_PID=$!
    PIDS+=("$SUB_PID")
    wait_for_line "$name" "received SUBACK" "$READY_WAIT"
}

# wait_for_line NAME PATTERN SECONDS: poll a client's log for a fixed string.
wait_for_line() {
    local name=$1 pattern=$2 deadline=$((SECONDS + $3))
    while ! grep -qF -- "$pattern" "$TMP/$name.out" 2>/dev/null; do
        if ((SECONDS >= deadline)); then
            return 1
        fi
        sleep 0.05
    done
}

# wait_exit PID SECONDS: wait (bounded) for a background client; sets EXIT_RC.
wait_exit() {
    local pid=$1 deadline=$((SECONDS + $2))
    while kill -0 "$pid" 2>/dev/null; do
        if ((SECONDS >= deadline)); then
            kill -KILL "$pid" 2>/dev/null || true
            wait "$pid" 2>/dev/null
            EXIT_RC=124
            return 1
        fi
        sleep 0.05
    done
    wait "$pid"
    EXIT_RC=$?
}

# The message lines a subscriber printed (without the MSG| prefix).
messages() {
    grep '^MSG|' "$TMP/$1.out" | cut -d'|' -f2-
}

# expect_messages NAME DESC EXPECTED: wait for subscriber NAME to exit and compare
# its message lines with EXPECTED (newline separated).
expect_messages() {
    local name=$1 desc=$2 expected=$3 got
    if ! wait_exit "$SUB_PID" $((SUB_WAIT + 5)); then
        fail "$desc: subscriber did not exit"
        show "$name"
        return
    fi
    got=$(messages "$name")
    if [[ "$got" == "$expected" && $EXIT_RC -eq 0 ]]; then
        pass "$desc"
    else
        fail "$desc: expected [${expected//$'\n'/, }], got [${got//$'\n'/, }] (mosquitto_sub exit $EXIT_RC)"
        show "$name"
    fi
}

echo "mosquitto clients: $(mosquitto_sub --help 2>&1 | grep -o -m1 'version [0-9.]*') -> $HOST:$PORT (prefix $PREFIX)"

# Preflight: fail fast (instead of every check timing out) if no broker answers.
if start_sub preflight '%p' -V mqttv311 -t "$PREFIX/preflight" -C 1 -W "$SUB_WAIT"; then
    { kill -KILL "$SUB_PID" && wait "$SUB_PID"; } 2>/dev/null
else
    echo "FAIL: no MQTT broker answering (CONNECT/SUBSCRIBE) at $HOST:$PORT within ${READY_WAIT}s"
    show preflight
    exit 1
fi

for V in mqttv311 mqttv5; do
    # --- QoS 0/1/2 ---------------------------------------------------------------
    for QOS in 0 1 2; do
        name="pubsub-$V-q$QOS"
        topic="$PREFIX/$V/q$QOS"
        payload="payload-$V-q$QOS-$RUN"
        if ! start_sub "$name" '%q|%r|%p' -V "$V" -q "$QOS" -t "$topic" -C 2 -W "$SUB_WAIT"; then
            fail "$V QoS $QOS: subscriber got no SUBACK within ${READY_WAIT}s"
            show "$name"
            continue
        fi
        # One connection, two messages: payload then END (ordered, so a duplicate
        # of the payload would show up instead of END).
        if ! printf '%s\nEND\n' "$payload" | pub -V "$V" -q "$QOS" -t "$topic" -l >"$TMP/$name.pub" 2>&1; then
            fail "$V QoS $QOS: mosquitto_pub failed: $(cat "$TMP/$name.pub")"
            continue
        fi
        expect_messages "$name" "$V QoS $QOS publish/subscribe (payload, QoS, exactly once)" \
            "$QOS|0|$payload"$'\n'"$QOS|0|END"
    done

    # --- retained ----------------------------------------------------------------
    topic="$PREFIX/$V/retained"
    payload="retained-$V-$RUN"
    if pub -V "$V" -q 1 -r -t "$topic" -m "$payload" >"$TMP/ret-$V.pub" 2>&1; then
        name="retained-$V"
        if start_sub "$name" '%q|%r|%p' -V "$V" -q 1 -t "$topic" -C 1 -W "$SUB_WAIT"; then
            expect_messages "$name" "$V retained message delivered to new subscriber with retain flag" \
                "1|1|$payload"
        else
            fail "$V retained: subscriber got no SUBACK"
            show "$name"
        fi
        # Clear it, then a new subscriber must see only a live marker message.
        if pub -V "$V" -q 1 -r -n -t "$topic" >"$TMP/ret-$V.pub" 2>&1; then
            name="retained-cleared-$V"
            if start_sub "$name" '%q|%r|%p' -V "$V" -q 1 -t "$topic" -C 1 -W "$SUB_WAIT"; then
                if pub -V "$V" -q 1 -t "$topic" -m "live-$RUN" >"$TMP/ret-$V.pub" 2>&1; then
                    expect_messages "$name" "$V retained message cleared by -r -n" "1|0|live-$RUN"
                else
                    fail "$V retained clear: marker publish failed: $(cat "$TMP/ret-$V.pub")"
                fi
            else
                fail "$V retained clear: subscriber got no SUBACK"
                show "$name"
            fi
        else
            fail "$V retained: clearing publish (-r -n) failed: $(cat "$TMP/ret-$V.pub")"
        fi
    else
        fail "$V retained: publish failed: $(cat "$TMP/ret-$V.pub")"
    fi

    # --- will --------------------------------------------------------------------
    topic="$PREFIX/$V/will"
    payload="will-$V-$RUN"
    name="will-watch-$V"
    if start_sub "$name" '%q|%r|%p' -V "$V" -q 1 -t "$topic" -C 1 -W "$SUB_WAIT"; then
        watcher=$SUB_PID
        if start_sub "will-client-$V" '%p' -V "$V" -t "$PREFIX/$V/will-client-idle" \
            --will-topic "$topic" --will-payload "$payload" --will-qos 1 -W $((SUB_WAIT + 20)); then
            kill -KILL "$SUB_PID" 2>/dev/null
            wait "$SUB_PID" 2>/dev/null
            SUB_PID=$watcher
            expect_messages "$name" "$V will published after client killed with SIGKILL" "1|0|$payload"
        else
            fail "$V will: client with will got no SUBACK"
            show "will-client-$V"
        fi
    else
        fail "$V will: watcher got no SUBACK"
        show "$name"
    fi
done

# --- MQTT 5 properties via -D / -F ---------------------------------------------------
topic="$PREFIX/mqttv5/props"
payload="props-$RUN"
name="props-v5"
if start_sub "$name" '%P|%C|%E|%p' -V mqttv5 -q 1 -t "$topic" -C 1 -W "$SUB_WAIT"; then
    if pub -V mqttv5 -q 1 -t "$topic" -m "$payload" \
        -D publish user-property k1 v1 \
        -D publish user-property k1 v1-again \
        -D publish user-property k2 v2 \
        -D publish content-type text/plain \
        -D publish message-expiry-interval 300 >"$TMP/$name.pub" 2>&1; then
        if wait_exit "$SUB_PID" $((SUB_WAIT + 5)); then
            got=$(messages "$name")
            IFS='|' read -r up ct exp body <<<"$got"
            if [[ "$up" == "k1:v1 k1:v1-again k2:v2" && "$ct" == "text/plain" && "$body" == "$payload" \
                && "$exp" =~ ^[0-9]+$ && "$exp" -gt 0 && "$exp" -le 300 && $EXIT_RC -eq 0 ]]; then
                pass "mqttv5 user properties (repeated key, order kept), content type, expiry $exp<=300"
            else
                fail "mqttv5 properties: got '$got' (want 'k1:v1 k1:v1-again k2:v2|text/plain|<1..300>|$payload', exit $EXIT_RC)"
                show "$name"
            fi
        else
            fail "mqttv5 properties: subscriber did not exit"
            show "$name"
        fi
    else
        fail "mqttv5 properties: publish failed: $(cat "$TMP/$name.pub")"
    fi
else
    fail "mqttv5 properties: subscriber got no SUBACK"
    show "$name"
fi

echo "mosquitto_clients: $PASSED passed, $FAILED failed"
[[ $FAILED -eq 0 && $PASSED -gt 0 ]]
