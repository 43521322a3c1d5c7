//! `tern-broker`: the Tern MQTT broker (MQTT 3.1, 3.1.1 and 5.0).
//!
//! The modules, in layers: each uses only its own layer and those listed before it
//! (`tests/layering.rs` keeps it so; DESIGN.md "Ownership").
//!
//! Model:
//! - [`error`]: why a connection ends, and the one mapping to reason codes.
//! - [`metrics`]: the broker's counters.
//! - [`message`]: a routed message and its encodings.
//! - [`config`]: configuration file, defaults, validation, the limits.
//! - [`features`]: `[mqtt]`: MQTT 5 capabilities, response information, redirection.
//! - [`auth`]: password files and ACLs (Mosquitto formats), JSON Web Tokens, the HTTP
//!   callout.
//! - [`http_client`]: a minimal HTTP/1.1 client (the callout, `tern ctl`).
//! - [`ip_limits`]: connections and connect rate per IP address.
//! - [`wal`]: the write-ahead log: framed records, group commit, recovery of a torn tail.
//! - [`journal`]: what the broker acknowledged as records in the log, checkpoints, and the
//!   state they rebuild.
//!
//! Output buffer:
//! - [`delivery`]: the SharedWriter every producer appends encoded packets to, and the
//!   broker-wide budget of bytes held for clients.
//! - [`retained`]: the retained store, ordered by topic so that a replay is a cursor.
//! - [`keep_alive`]: one broker-wide sweeper enforcing every connection's keep alive.
//! - [`idle_sweep`]: one broker-wide sweeper finding the connections idle long enough to
//!   park (`connection`'s `park.rs` parks them).
//! - [`park_poll`]: the epoll parked connections' sockets wait in, out of tokio's.
//!
//! Session:
//! - [`session`]: per-client state that outlives connections (delivery window and queue,
//!   subscription record, inbound QoS 2) and its sans-IO protocol state machine.
//!
//! Routing:
//! - [`backpressure`]: publishers held back by subscribers that cannot keep up.
//! - [`router`]: the subscription trie and the fan-out of one message (bridges behind a
//!   sink trait).
//!
//! Broker:
//! - [`broker`]: the broker's private state behind its API: sessions, subscriptions,
//!   retained messages, wills, offline timers, limits.
//!
//! Connection:
//! - [`connection`]: one client connection: CONNECT handshake, the driver around the
//!   session machine, the graceful close.
//!
//! Transport and HTTP:
//! - [`listener`]: TCP, TLS and WebSocket listeners under the connection limits.
//! - [`http`]: the HTTP listener: `/metrics`, `/health`, and the bridges (SSE, WebSocket
//!   JSON, MQTT over WebSocket, dashboard).
//! - [`mqtt_bridge`]: bridges to other MQTT brokers (`[[mqtt_bridges]]`).
//! - [`sys`]: the `$SYS/broker/...` statistics.
//! - [`cluster`]: several nodes as one broker over NATS (`[cluster]`), plugged into the
//!   broker through [`broker::ClusterLink`].
//! - [`reload`]: putting a changed configuration in force (SIGHUP).
//!
//! Server:
//! - [`server`]: runs the parts together until shutdown.
//! - [`checkpointer`]: persistence at run time: recovery at start, checkpoints, the last
//!   one at shutdown.
//! - [`ctl`], [`ctl_render`]: `tern ctl`, the admin API's command-line client.
//!
//! Tools:
//! - [`convert`]: `tern convert`, a Mosquitto configuration to a Tern one.

pub mod auth;
pub mod backpressure;
pub mod broker;
pub mod checkpointer;
pub mod cluster;
pub mod config;
pub mod connection;
pub mod convert;
pub mod ctl;
pub mod ctl_render;
pub mod delivery;
pub mod error;
pub mod features;
pub mod http;
pub mod http_client;
pub mod idle_sweep;
pub mod ip_limits;
pub mod journal;
pub mod keep_alive;
pub mod listener;
pub mod message;
pub mod metrics;
pub mod mqtt_bridge;
pub mod park_poll;
pub mod reload;
pub mod retained;
pub mod router;
pub mod server;
pub mod session;
pub mod sys;
#[cfg(test)]
mod test_support;
pub mod wal;

pub use broker::Broker;
pub use config::Config;
