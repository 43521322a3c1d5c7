//! `tern-broker`: the Tern MQTT broker (MQTT 3.1, 3.1.1 and 5.0).
//!
//! Layout (see DESIGN.md for the path of one PUBLISH):
//! - [`config`]: configuration file, defaults and validation.
//! - [`listener`]: accept loops, connection limit, graceful shutdown.
//! - [`connection`]: one client connection: CONNECT handshake, packet loop, close.
//! - [`session`]: per-client state that outlives connections: delivery window and queue,
//!   subscriptions, inbound QoS 2 state, will and expiry timers.
//! - [`router`]: the subscription trie and the fan-out of one message.
//! - [`delivery`]: the SharedWriter every producer appends encoded packets to.
//! - [`retained`], [`will`], [`sys`]: retained messages, will messages, `$SYS` topics.
//! - [`auth`]: password file and ACL (Mosquitto formats).
//! - [`bridge`]: Server-Sent Events, the WebSocket JSON API, MQTT over WebSocket and the
//!   dashboard on the HTTP listener, fed from the router through shared rings.
//! - [`keep_alive`]: one sweeper enforcing every connection's keep alive.
//! - [`broker`]: the shared state tying these together; [`metrics`], [`error`].

pub mod auth;
pub mod backpressure;
pub mod broker;
pub mod config;
pub mod connection;
pub mod delivery;
pub mod error;
pub mod http;
pub mod ip_limits;
pub mod keep_alive;
pub mod listener;
pub mod message;
pub mod metrics;
pub mod reload;
pub mod router;
pub mod server;
pub mod session;
pub mod sys;
#[cfg(test)]
mod test_support;

pub use broker::Broker;
pub use config::Config;
