#!/usr/bin/env python3
"""Real-client interop test: Eclipse Paho Python (paho-mqtt 2.x) against a broker.

Usage: python3 paho_v5.py HOST PORT

Exercises MQTT 5.0 (and a little 3.1.1) through paho-mqtt with
CallbackAPIVersion.VERSION2:

  * CONNECT with clean start + session expiry interval
  * SUBSCRIBE with a Subscription Identifier
  * PUBLISH QoS 0/1/2 carrying Payload Format Indicator, Content Type,
    Response Topic, Correlation Data, User Properties (with a repeated key)
    and Message Expiry Interval; each must arrive exactly once with the
    properties intact
  * retained message delivery, then clearing it with an empty payload
  * No Local subscription option
  * Will message after an abrupt socket close (paho v5 client with will
    properties, and a raw-socket MQTT 3.1.1 CONNECT with a will)
  * an MQTT 3.1.1 paho client publishing/receiving QoS 1

Every run uses a unique topic prefix and client ids (uuid), so concurrent or
repeated runs against the same broker don't interfere. Prints one PASS line per
check; exits 0 if everything passed, 1 on the first failure (with a FAIL
line), 2 if the global timeout (default 20 s, env INTEROP_TIMEOUT) expires.
"""

import os
import signal
import socket
import struct
import sys
import threading
import time
import traceback
import uuid

try:
    import paho.mqtt
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties
    from paho.mqtt.subscribeoptions import SubscribeOptions
except ImportError as exc:  # pragma: no cover - environment problem
    print(f"FAIL: paho-mqtt 2.x is required ({exc}); pip install paho-mqtt", flush=True)
    sys.exit(1)

GLOBAL_TIMEOUT = float(os.environ.get("INTEROP_TIMEOUT", "20"))
WAIT = 5.0  # max wait for something that should happen
QUIET = 1.0  # how long to watch for something that must NOT happen

RUN = uuid.uuid4().hex[:12]
PREFIX = f"tern-interop/paho/{RUN}"

# Sent with every QoS 0/1/2 publish; must arrive unchanged.
PFI = 1
CONTENT_TYPE = "application/json; charset=utf-8"
RESPONSE_TOPIC = f"{PREFIX}/reply"
CORRELATION = b"\x00corr\xffdata-" + RUN.encode()
USER_PROPS = [("k1", "v1"), ("k2", "v2"), ("k1", "v1-again")]  # repeated key k1
EXPIRY = 300
SUB_ID = 42


class Failure(Exception):
    pass


def check(cond, what):
    if not cond:
        raise Failure(what)


def passed(what):
    print(f"PASS: {what}", flush=True)


class Client:
    """A paho client with a background network loop and a message inbox."""

    def __init__(self, name, host, port, protocol=mqtt.MQTTv5):
        self.name = name
        self.host = host
        self.port = port
        self.protocol = protocol
        self.client_id = f"tern-{name}-{RUN}"
        self.c = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=protocol,
            clean_session=True if protocol != mqtt.MQTTv5 else None,
        )
        # Never reconnect behind our back: a reconnect would hide broker bugs.
        self.c.reconnect_delay_set(min_delay=60, max_delay=60)
        self.cond = threading.Condition()
        self.messages = []
        self.connack = None
        self.suback = {}
        self.puback = {}
        self.c.on_connect = self._on_connect
        self.c.on_subscribe = self._on_subscribe
        self.c.on_publish = self._on_publish
        self.c.on_message = self._on_message

    # --- callbacks (network thread) ---
    def _on_connect(self, client, userdata, flags, reason_code, properties):
        with self.cond:
            self.connack = (flags, reason_code, properties)
            self.cond.notify_all()

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties):
        with self.cond:
            self.suback[mid] = reason_codes
            self.cond.notify_all()

    def _on_publish(self, client, userdata, mid, reason_code, properties):
        with self.cond:
            self.puback[mid] = reason_code
            self.cond.notify_all()

    def _on_message(self, client, userdata, msg):
        with self.cond:
            self.messages.append(msg)
            self.cond.notify_all()

    # --- helpers (main thread) ---
    def _wait(self, pred, timeout, what):
        deadline = time.monotonic() + timeout
        with self.cond:
            while not pred():
                left = deadline - time.monotonic()
                check(left > 0, f"[{self.name}] timed out after {timeout}s waiting for {what}")
                self.cond.wait(left)

    def connect(self, clean_start=True, session_expiry=None, keepalive=30):
        props = None
        kwargs = {}
        if self.protocol == mqtt.MQTTv5:
            kwargs["clean_start"] = clean_start
            if session_expiry is not None:
                props = Properties(PacketTypes.CONNECT)
                props.SessionExpiryInterval = session_expiry
                kwargs["properties"] = props
        self.c.connect(self.host, self.port, keepalive=keepalive, **kwargs)
        self.c.loop_start()
        self._wait(lambda: self.connack is not None, WAIT, "CONNACK")
        flags, rc, _props = self.connack
        check(not rc.is_failure, f"[{self.name}] CONNACK refused: {rc}")
        return self.connack

    def subscribe(self, topic, qos=2, no_local=False, sub_id=None):
        props = None
        if self.protocol == mqtt.MQTTv5:
            opts = SubscribeOptions(qos=qos, noLocal=no_local)
            if sub_id is not None:
                props = Properties(PacketTypes.SUBSCRIBE)
                props.SubscriptionIdentifier = sub_id
            rc, mid = self.c.subscribe(topic, options=opts, properties=props)
        else:
            rc, mid = self.c.subscribe(topic, qos=qos)
        check(rc == mqtt.MQTT_ERR_SUCCESS, f"[{self.name}] subscribe({topic}) failed to send: {rc}")
        self._wait(lambda: mid in self.suback, WAIT, f"SUBACK for {topic}")
        codes = self.suback[mid]
        check(len(codes) == 1, f"[{self.name}] SUBACK for {topic}: expected 1 reason code, got {codes}")
        granted = codes[0]
        check(not granted.is_failure, f"[{self.name}] SUBACK for {topic} refused: {granted}")
        check(granted.value == qos, f"[{self.name}] SUBACK for {topic}: granted {granted.value}, wanted QoS {qos}")

    def publish(self, topic, payload, qos, retain=False, properties=None):
        info = self.c.publish(topic, payload, qos=qos, retain=retain, properties=properties)
        check(info.rc == mqtt.MQTT_ERR_SUCCESS, f"[{self.name}] publish to {topic} failed: {info.rc}")
        info.wait_for_publish(timeout=WAIT)
        check(info.is_published(), f"[{self.name}] QoS {qos} publish to {topic} not completed within {WAIT}s")
        if qos > 0:
            self._wait(lambda: info.mid in self.puback, WAIT, f"PUBACK/PUBCOMP for mid {info.mid}")
            rc = self.puback[info.mid]
            if hasattr(rc, "is_failure"):
                check(not rc.is_failure, f"[{self.name}] QoS {qos} publish to {topic} rejected: {rc}")
        return info

    def wait_messages(self, topic, n, timeout=WAIT):
        """Wait until at least n messages on `topic` arrived; return them all."""
        self._wait(lambda: len(self.on(topic)) >= n, timeout, f"{n} message(s) on {topic}")
        return self.on(topic)

    def on(self, topic):
        return [m for m in self.messages if m.topic == topic]

    def close(self):
        try:
            self.c.disconnect()
        except Exception:
            pass
        self.c.loop_stop()


def props_of(msg):
    p = getattr(msg, "properties", None)
    return p if p is not None else Properties(PacketTypes.PUBLISH)


def publish_props():
    p = Properties(PacketTypes.PUBLISH)
    p.PayloadFormatIndicator = PFI
    p.ContentType = CONTENT_TYPE
    p.ResponseTopic = RESPONSE_TOPIC
    p.CorrelationData = CORRELATION
    p.UserProperty = list(USER_PROPS)
    p.MessageExpiryInterval = EXPIRY
    return p


def settle():
    """Give the broker time to deliver any (unexpected) duplicates/extras."""
    time.sleep(QUIET)


# ---------------------------------------------------------------------------
# checks
# ---------------------------------------------------------------------------


def test_qos_with_properties(host, port, sub):
    pub = Client("pub", host, port)
    pub.connect(clean_start=True, session_expiry=60)
    try:
        sent = {}
        for qos in (0, 1, 2):
            topic = f"{PREFIX}/props/q{qos}"
            payload = f'{{"qos":{qos},"run":"{RUN}","text":"h\u00e9llo"}}'.encode()
            sent[qos] = (topic, payload)
            pub.publish(topic, payload, qos, properties=publish_props())
        for qos, (topic, payload) in sent.items():
            sub.wait_messages(topic, 1)
        settle()
        for qos, (topic, payload) in sent.items():
            msgs = sub.on(topic)
            check(len(msgs) == 1, f"QoS {qos}: expected exactly 1 delivery on {topic}, got {len(msgs)}")
            m = msgs[0]
            p = props_of(m)
            check(m.payload == payload, f"QoS {qos}: payload mismatch: {m.payload!r} != {payload!r}")
            check(m.qos == qos, f"QoS {qos}: delivered with QoS {m.qos}")
            check(not m.retain, f"QoS {qos}: live message delivered with retain flag set")
            check(getattr(p, "PayloadFormatIndicator", None) == PFI,
                  f"QoS {qos}: PayloadFormatIndicator {getattr(p, 'PayloadFormatIndicator', None)!r} != {PFI}")
            check(getattr(p, "ContentType", None) == CONTENT_TYPE,
                  f"QoS {qos}: ContentType {getattr(p, 'ContentType', None)!r} != {CONTENT_TYPE!r}")
            check(getattr(p, "ResponseTopic", None) == RESPONSE_TOPIC,
                  f"QoS {qos}: ResponseTopic {getattr(p, 'ResponseTopic', None)!r} != {RESPONSE_TOPIC!r}")
            check(getattr(p, "CorrelationData", None) == CORRELATION,
                  f"QoS {qos}: CorrelationData {getattr(p, 'CorrelationData', None)!r} != {CORRELATION!r}")
            # [MQTT-3.3.2-18]: the server MUST keep the order of user properties.
            ups = [tuple(x) for x in getattr(p, "UserProperty", [])]
            check(ups == USER_PROPS, f"QoS {qos}: UserProperty {ups!r} != {USER_PROPS!r} (order must be kept)")
            sids = getattr(p, "SubscriptionIdentifier", None)
            check(sids == [SUB_ID], f"QoS {qos}: SubscriptionIdentifier {sids!r} != [{SUB_ID}]")
            exp = getattr(p, "MessageExpiryInterval", None)
            check(exp is not None, f"QoS {qos}: MessageExpiryInterval missing")
            check(0 < exp <= EXPIRY, f"QoS {qos}: MessageExpiryInterval {exp} not in (0, {EXPIRY}]")
            passed(f"v5 QoS {qos} delivered once with all properties intact "
                   f"(sub id {sids}, expiry {exp}<={EXPIRY})")
    finally:
        pub.close()


def test_retained(host, port):
    topic = f"{PREFIX}/retained"
    payload = b"retained-" + RUN.encode()
    pub = Client("retpub", host, port)
    pub.connect()
    try:
        rp = Properties(PacketTypes.PUBLISH)
        rp.ContentType = "text/plain"
        rp.UserProperty = [("r", "1")]
        pub.publish(topic, payload, 1, retain=True, properties=rp)

        s1 = Client("retsub1", host, port)
        s1.connect()
        try:
            s1.subscribe(topic, qos=1, sub_id=7)
            msgs = s1.wait_messages(topic, 1)
            settle()
            msgs = s1.on(topic)
            check(len(msgs) == 1, f"retained: expected 1 message for new subscriber, got {len(msgs)}")
            m = msgs[0]
            check(m.payload == payload, f"retained: payload {m.payload!r} != {payload!r}")
            check(m.retain, "retained: message to new subscriber does not have the retain flag set")
            check(m.qos == 1, f"retained: delivered with QoS {m.qos}, expected 1")
            p = props_of(m)
            check(getattr(p, "ContentType", None) == "text/plain",
                  f"retained: ContentType {getattr(p, 'ContentType', None)!r} not kept")
            check([tuple(x) for x in getattr(p, "UserProperty", [])] == [("r", "1")],
                  f"retained: UserProperty {getattr(p, 'UserProperty', None)!r} not kept")
            check(getattr(p, "SubscriptionIdentifier", None) == [7],
                  f"retained: SubscriptionIdentifier {getattr(p, 'SubscriptionIdentifier', None)!r} != [7]")
        finally:
            s1.close()
        passed("retained message delivered to a new subscriber with retain flag set")

        # Clear: retained publish with an empty payload.
        pub.publish(topic, b"", 1, retain=True)
        s2 = Client("retsub2", host, port)
        s2.connect()
        try:
            s2.subscribe(topic, qos=1)
            settle()
            msgs = s2.on(topic)
            check(not msgs, f"retained: after clearing, new subscriber still got {[(m.payload, m.retain) for m in msgs]}")
        finally:
            s2.close()
        passed("empty retained publish clears the retained message")
    finally:
        pub.close()


def test_no_local(host, port, sub):
    t_nl = f"{PREFIX}/nolocal/on"
    t_l = f"{PREFIX}/nolocal/off"
    c = Client("nolocal", host, port)
    c.connect()
    try:
        c.subscribe(t_nl, qos=1, no_local=True)
        c.subscribe(t_l, qos=1, no_local=False)
        c.publish(t_nl, b"should-not-echo", 1)
        c.publish(t_l, b"should-echo", 1)
        c.wait_messages(t_l, 1)
        sub.wait_messages(t_nl, 1)  # other subscribers still get it
        settle()
        check(len(c.on(t_l)) == 1, f"no local: control topic delivered {len(c.on(t_l))} times, expected 1")
        check(not c.on(t_nl), "no local: publisher received its own message on a No Local subscription")
        check(len(sub.on(t_nl)) == 1, f"no local: other subscriber got {len(sub.on(t_nl))} copies, expected 1")
    finally:
        c.close()
    passed("No Local suppresses own messages (control subscription and other subscribers still receive)")


def test_will_paho(host, port, sub):
    topic = f"{PREFIX}/will/paho"
    payload = b"paho-will-" + RUN.encode()
    w = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2,
                    client_id=f"tern-will-{RUN}", protocol=mqtt.MQTTv5)
    wp = Properties(PacketTypes.WILLMESSAGE)
    wp.ContentType = "text/x-will"
    wp.UserProperty = [("will", "yes")]
    w.will_set(topic, payload, qos=1, retain=False, properties=wp)
    connected = []
    w.on_connect = lambda cl, ud, fl, rc, pr: connected.append(rc)
    w.connect(host, port, keepalive=30, clean_start=True)
    deadline = time.monotonic() + WAIT
    # Drive the network loop by hand (no thread) so nothing reconnects later.
    while not connected and time.monotonic() < deadline:
        w.loop(timeout=0.1)
    check(connected, "will: paho client with a will did not get a CONNACK")
    check(not connected[0].is_failure, f"will: CONNACK refused: {connected[0]}")
    sock = w.socket()
    # Abrupt close: linger 0 => TCP RST, and no DISCONNECT packet.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()
    msgs = sub.wait_messages(topic, 1)
    settle()
    msgs = sub.on(topic)
    check(len(msgs) == 1, f"will: expected 1 will message, got {len(msgs)}")
    m = msgs[0]
    p = props_of(m)
    check(m.payload == payload, f"will: payload {m.payload!r} != {payload!r}")
    check(m.qos == 1, f"will: QoS {m.qos}, expected 1")
    check(getattr(p, "ContentType", None) == "text/x-will",
          f"will: ContentType {getattr(p, 'ContentType', None)!r} not passed through")
    check([tuple(x) for x in getattr(p, "UserProperty", [])] == [("will", "yes")],
          f"will: UserProperty {getattr(p, 'UserProperty', None)!r} not passed through")
    passed("v5 will (with will properties) published after abrupt socket close")


def _utf8(s):
    b = s.encode()
    return struct.pack("!H", len(b)) + b


def _remaining_length(n):
    out = bytearray()
    while True:
        byte = n % 128
        n //= 128
        if n:
            byte |= 0x80
        out.append(byte)
        if not n:
            return bytes(out)


def test_will_raw_v311(host, port, sub):
    """A hand-built MQTT 3.1.1 CONNECT with a QoS 1 will, then a TCP reset."""
    topic = f"{PREFIX}/will/raw311"
    payload = b"raw-will-" + RUN.encode()
    flags = 0x02 | 0x04 | (1 << 3)  # clean session | will flag | will QoS 1
    body = _utf8("MQTT") + bytes([4, flags]) + struct.pack("!H", 30)
    body += _utf8(f"tern-rawwill-{RUN}") + _utf8(topic) + struct.pack("!H", len(payload)) + payload
    pkt = bytes([0x10]) + _remaining_length(len(body)) + body
    s = socket.create_connection((host, port), timeout=WAIT)
    try:
        s.sendall(pkt)
        connack = b""
        while len(connack) < 4:
            chunk = s.recv(4 - len(connack))
            check(chunk, f"will(raw 3.1.1): connection closed before CONNACK (got {connack!r})")
            connack += chunk
        check(connack == b"\x20\x02\x00\x00", f"will(raw 3.1.1): unexpected CONNACK {connack.hex()}")
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    finally:
        s.close()
    sub.wait_messages(topic, 1)
    settle()
    msgs = sub.on(topic)
    check(len(msgs) == 1, f"will(raw 3.1.1): expected 1 will message, got {len(msgs)}")
    check(msgs[0].payload == payload, f"will(raw 3.1.1): payload {msgs[0].payload!r} != {payload!r}")
    check(msgs[0].qos == 1, f"will(raw 3.1.1): QoS {msgs[0].qos}, expected 1")
    passed("3.1.1 will (raw socket CONNECT) published after TCP reset")


def test_v311(host, port, sub):
    topic = f"{PREFIX}/v311"
    payload = b"v311-qos1-" + RUN.encode()
    c = Client("v311", host, port, protocol=mqtt.MQTTv311)
    flags, rc, _ = c.connect()
    try:
        check(not flags.session_present, "v3.1.1: clean session CONNACK has session present set")
        c.subscribe(topic, qos=1)
        c.publish(topic, payload, 1)
        c.wait_messages(topic, 1)
        sub.wait_messages(topic, 1)
        settle()
        msgs = c.on(topic)
        check(len(msgs) == 1, f"v3.1.1: expected 1 delivery, got {len(msgs)}")
        check(msgs[0].payload == payload, f"v3.1.1: payload {msgs[0].payload!r} != {payload!r}")
        check(msgs[0].qos == 1, f"v3.1.1: delivered with QoS {msgs[0].qos}, expected 1")
        # Cross-version: the v5 subscriber sees the 3.1.1 publish, tagged with its sub id.
        v5 = sub.on(topic)
        check(len(v5) == 1 and v5[0].payload == payload,
              f"v3.1.1 -> v5: v5 subscriber got {[m.payload for m in v5]!r}")
        check(getattr(props_of(v5[0]), "SubscriptionIdentifier", None) == [SUB_ID],
              "v3.1.1 -> v5: subscription identifier missing on cross-version delivery")
    finally:
        c.close()
    passed("MQTT 3.1.1 paho client publishes/receives QoS 1 (and v5 subscriber receives it too)")


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

    print(f"paho-mqtt {paho.mqtt.__version__} -> {host}:{port} (prefix {PREFIX})", flush=True)
    sub = None
    try:
        sub = Client("sub", host, port)
        flags, rc, props = sub.connect(clean_start=True, session_expiry=60)
        check(not flags.session_present, "clean start CONNACK has session present set")
        passed(f"v5 connect with clean start + session expiry ({rc})")
        sub.subscribe(f"{PREFIX}/#", qos=2, sub_id=SUB_ID)
        passed(f"v5 subscribe {PREFIX}/# with subscription identifier {SUB_ID}")

        test_qos_with_properties(host, port, sub)
        test_retained(host, port)
        test_no_local(host, port, sub)
        test_will_paho(host, port, sub)
        test_will_raw_v311(host, port, sub)
        test_v311(host, port, sub)
    except Failure as exc:
        print(f"FAIL: {exc}", flush=True)
        return 1
    except OSError as exc:
        print(f"FAIL: network error talking to {host}:{port}: {exc!r}", flush=True)
        return 1
    except Exception as exc:
        print(f"FAIL: unexpected error: {exc!r}", flush=True)
        traceback.print_exc()
        return 1
    finally:
        if sub is not None:
            sub.close()
    print("paho_v5: all checks passed", flush=True)
    return 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    # Skip interpreter teardown: a wedged paho thread must not keep us alive.
    os._exit(code)
