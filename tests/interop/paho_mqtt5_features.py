#!/usr/bin/env python3
"""Real-client interop test of MQTT 5 features (issue #13) with paho-mqtt 2.x.

Usage: python3 paho_mqtt5_features.py HOST PORT MODE

MODE is one of:
  response      Request Response Information 1 gets a Response Information prefix in
                CONNACK; request/response through it works between two paho clients.
  capabilities  The broker runs with maximum_qos = 1, retain_available = false and
                wildcard_subscription_available = false: CONNACK says so, and a wildcard
                SUBSCRIBE is answered with SUBACK 0xA2.
  redirect      The broker redirects with use_another_server to "other.example:1883":
                CONNACK 0x9C carries that Server Reference.

Prints PASS lines; exits 0 when every check passed, 1 on the first failure.
"""

import sys
import threading
import uuid

try:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties
except ImportError as exc:  # pragma: no cover - environment problem
    print(f"FAIL: paho-mqtt 2.x is required ({exc}); pip install paho-mqtt", flush=True)
    sys.exit(1)

WAIT = 5.0
RUN = uuid.uuid4().hex[:10]


def fail(message):
    print(f"FAIL: {message}", flush=True)
    sys.exit(1)


def check(condition, message):
    if not condition:
        fail(message)
    print(f"PASS: {message}", flush=True)


class Probe:
    """A paho v5 client whose CONNACK, SUBACK and messages are recorded."""

    def __init__(self, host, port, client_id, request_response=False):
        self.connected = threading.Event()
        self.subscribed = threading.Event()
        self.received = threading.Event()
        self.connack = None
        self.suback = None
        self.messages = []
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5
        )
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message
        props = Properties(PacketTypes.CONNECT)
        if request_response:
            props.RequestResponseInformation = 1
        self.client.connect_async(host, port, properties=props)
        self.client.loop_start()
        if not self.connected.wait(WAIT):
            fail(f"{client_id}: no CONNACK")

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        self.connack = (reason_code.value, properties)
        self.connected.set()
        if reason_code.value != 0:
            client.disconnect()

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties):
        self.suback = [code.value for code in reason_codes]
        self.subscribed.set()

    def _on_message(self, client, userdata, message):
        self.messages.append(message)
        self.received.set()

    def stop(self):
        self.client.disconnect()
        self.client.loop_stop()


def response(host, port):
    requester = Probe(host, port, f"req-{RUN}", request_response=True)
    code, props = requester.connack
    check(code == 0, "requester connected")
    prefix = getattr(props, "ResponseInformation", None)
    check(prefix == f"reply/req-{RUN}/", f"CONNACK Response Information is {prefix!r}")
    requester.client.subscribe(prefix + "#", qos=1)
    check(requester.subscribed.wait(WAIT) and requester.suback == [1], "subscribed to the prefix")
    responder = Probe(host, port, f"resp-{RUN}")
    check(responder.connack[0] == 0, "responder connected")
    responder.client.publish(prefix + "answer", b"42", qos=1).wait_for_publish(WAIT)
    check(requester.received.wait(WAIT), "the response arrived")
    check(requester.messages[0].topic == prefix + "answer", "on the response topic")
    plain = Probe(host, port, f"plain-{RUN}")
    check(
        getattr(plain.connack[1], "ResponseInformation", None) is None,
        "no Response Information without the request",
    )
    for probe in (requester, responder, plain):
        probe.stop()


def capabilities(host, port):
    probe = Probe(host, port, f"caps-{RUN}")
    code, props = probe.connack
    check(code == 0, "connected")
    check(getattr(props, "MaximumQoS", None) == 1, "CONNACK Maximum QoS 1")
    check(getattr(props, "RetainAvailable", None) == 0, "CONNACK Retain Available 0")
    check(
        getattr(props, "WildcardSubscriptionAvailable", None) == 0,
        "CONNACK Wildcard Subscription Available 0",
    )
    probe.client.subscribe("caps/+", qos=1)
    check(probe.subscribed.wait(WAIT), "SUBACK received")
    check(probe.suback == [0xA2], f"wildcard refused with 0xA2 ({probe.suback})")
    probe.stop()


def redirect(host, port):
    probe = Probe(host, port, f"moved-{RUN}")
    code, props = probe.connack
    check(code == 0x9C, f"CONNACK 0x9C Use another server ({code:#x})")
    reference = getattr(props, "ServerReference", None)
    check(reference == "other.example:1883", f"Server Reference {reference!r}")
    probe.client.loop_stop()


def main():
    if len(sys.argv) != 4:
        fail("usage: paho_mqtt5_features.py HOST PORT MODE")
    host, port, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    modes = {"response": response, "capabilities": capabilities, "redirect": redirect}
    if mode not in modes:
        fail(f"unknown mode {mode}")
    modes[mode](host, port)
    print("ALL PASSED", flush=True)


if __name__ == "__main__":
    main()
