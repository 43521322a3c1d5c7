//! Test support for Tern's integration tests: a raw-packet MQTT client and broker harness.
