//! `tern-broker`: the Tern MQTT broker.
