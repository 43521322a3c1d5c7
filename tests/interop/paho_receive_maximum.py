#!/usr/bin/env python3
"""Real-client interop test: paho-mqtt 2.x reads the reason code of a server DISCONNECT
it provoked while still publishing.

Usage: python3 paho_receive_maximum.py HOST PORT

The broker must advertise a small Receive Maximum (the Rust test starts it with 2). paho
does not apply the server's Receive Maximum to its own QoS 2 PUBLISH, so with a large
max_inflight_messages it sends many more unacknowledged QoS 2 PUBLISH than allowed; the
broker answers DISCONNECT 0x93 (Receive Maximum exceeded) and closes. The client runs its
network loop by hand (no loop thread): publish() writes at once, so it writes its whole
burst without reading, then loops to read. It is still writing after the DISCONNECT: if
the broker closed the socket with unread input, the kernel would reset it, paho's write
would fail (EPIPE/ECONNRESET) and on_disconnect would report a lost connection (0x80)
instead of 0x93.

Prints PASS/FAIL lines; exits 0 if the check passed, 1 on failure, 2 if the global timeout
(default 20 s, env INTEROP_TIMEOUT) expires.
"""

import os
import signal
import sys
import threading
import time
import traceback
import uuid

try:
    import paho.mqtt
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion
except ImportError as exc:  # pragma: no cover - environment problem
    print(f"FAIL: paho-mqtt 2.x is required ({exc}); pip install paho-mqtt", flush=True)
    sys.exit(1)

GLOBAL_TIMEOUT = float(os.environ.get("INTEROP_TIMEOUT", "20"))
WAIT = 5.0
RUN = uuid.uuid4().hex[:12]
TOPIC = f"tern-interop/paho-rm/{RUN}"
RECEIVE_MAXIMUM_EXCEEDED = 0x93
PUBLISHES = 100


def run(host, port):
    client = mqtt.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=f"tern-rm-{RUN}",
        protocol=mqtt.MQTTv5,
    )
    # Send far more QoS 2 than the broker allows.
    client.max_inflight_messages_set(PUBLISHES)
    connected = threading.Event()
    disconnected = threading.Event()
    result = {}

    def on_connect(client, userdata, flags, reason_code, properties):
        result["connack"] = reason_code
        receive_maximum = getattr(properties, "ReceiveMaximum", None)
        result["receive_maximum"] = receive_maximum
        connected.set()

    def on_disconnect(client, userdata, flags, reason_code, properties):
        result.setdefault("disconnect", reason_code)
        disconnected.set()

    client.on_connect = on_connect
    client.on_disconnect = on_disconnect
    client.connect(host, port, keepalive=30, clean_start=True)
    try:
        if not loop_until(client, connected):
            return "no CONNACK"
        if result["connack"].is_failure:
            return f"CONNACK refused: {result['connack']}"
        maximum = result["receive_maximum"]
        if maximum is None or maximum >= PUBLISHES:
            return f"the broker must advertise a small Receive Maximum, got {maximum}"
        payload = b"x" * 32768
        for i in range(PUBLISHES):
            if disconnected.is_set():
                break
            client.publish(TOPIC, payload, qos=2)
            if i == maximum + 1:
                # Past the maximum: the broker's DISCONNECT is on its way; write on a
                # little later, as a client busy with its burst would.
                time.sleep(0.05)
        if not loop_until(client, disconnected):
            return f"no disconnect after {PUBLISHES} QoS 2 PUBLISH past Receive Maximum {maximum}"
        code = result["disconnect"]
        if code.value != RECEIVE_MAXIMUM_EXCEEDED:
            return (f"on_disconnect got {code} ({code.value:#x}), not the broker's "
                    f"DISCONNECT 0x93 (Receive Maximum exceeded)")
        print(f"PASS: DISCONNECT {code} (0x93) read after publishing past Receive Maximum "
              f"{maximum}", flush=True)
        return None
    finally:
        client.disconnect()


def loop_until(client, event):
    """Runs paho's network loop on this thread until `event` is set or WAIT passes."""
    deadline = time.monotonic() + WAIT
    while not event.is_set() and time.monotonic() < deadline:
        client.loop(timeout=0.05)
    return event.is_set()


def main():
    if len(sys.argv) != 3:
        print(f"usage: {sys.argv[0]} HOST PORT", file=sys.stderr)
        return 64
    host, port = sys.argv[1], int(sys.argv[2])

    def on_timeout(signum, frame):
        print(f"FAIL: global timeout of {GLOBAL_TIMEOUT:g}s expired", flush=True)
        traceback.print_stack(frame)
        os._exit(2)

    signal.signal(signal.SIGALRM, on_timeout)
    signal.setitimer(signal.ITIMER_REAL, GLOBAL_TIMEOUT)
    print(f"paho-mqtt {paho.mqtt.__version__} -> {host}:{port}", flush=True)
    try:
        failure = run(host, port)
    except Exception as exc:
        print(f"FAIL: unexpected error: {exc!r}", flush=True)
        traceback.print_exc()
        return 1
    if failure is not None:
        print(f"FAIL: {failure}", flush=True)
        return 1
    return 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    os._exit(code)
