//! Bridges to other MQTT brokers (`[[mqtt_bridges]]`, issue #14): Mosquitto, EMQX, a cloud
//! broker or another Tern.
//!
//! A bridge is two MQTT clients and the loop between them ([`run`]):
//! - on this broker, a local client over an in-memory stream ([`local`]), served by the
//!   broker's own connection code: its subscriptions (the out rules) sit in the trie like
//!   any session's, its persistent session is the queue towards the remote (kept across
//!   remote outages and reloads, and across restarts when persistence is on), and what it
//!   publishes (the in rules) is checked by the ACL under the bridge's user name;
//! - on the remote, a client built on `tern-codec` ([`remote`], [`transport`]: TCP or
//!   TLS), tried in the configured order and again after a backoff.
//!
//! [`outbound`] and [`inbound`] are the two directions' state machines (no I/O): each
//! hop is acknowledged only once the next one has the message, so nothing is lost across
//! a reconnect; [`topics`] maps topics between the prefixes. Loops are prevented with No
//! Local on both subscriptions (5.0), Mosquitto's bridge bit (3.1.1), an origin user
//! property, and, for a 3.1.1 remote that refused the bridge bit, fingerprints of what
//! went out ([`echo`]). The state, last error and counters are in the broker's
//! [`crate::metrics::bridge_links`], which `/metrics`, `$SYS`, `/api/stats` and the
//! dashboard read. [`MqttBridges`] starts them, and on reload restarts only the bridges
//! whose definition changed.
//!
//! Not here: the configuration schema ([`crate::config::mqtt_bridges`]) and the HTTP
//! bridges (SSE, WebSocket: [`crate::http::bridge`]).

mod backoff;
mod echo;
mod inbound;
mod local;
mod outbound;
mod remote;
mod run;
mod topics;
mod transport;
mod wire;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tern_codec::Packet;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::broker::Broker;
use crate::config::mqtt_bridges::MqttBridgeConfig;

pub use self::outbound::ORIGIN_PROPERTY;

/// How long the start waits for the bridges' local sessions to be subscribed.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a stopping bridge may take to say goodbye.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// What a bridge's machines want sent, each way.
#[derive(Debug, Default)]
pub(crate) struct Sends {
    /// To the local broker.
    pub(crate) local: Vec<Packet>,
    /// To the remote (dropped when the link is down).
    pub(crate) remote: Vec<Packet>,
}

/// What a bridge's task is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stop {
    /// Keep running.
    Run,
    /// Stop; a new definition takes over the local session (its queue is kept).
    Restart,
    /// Stop for good: the local session ends with it.
    Remove,
}

/// A running bridge.
#[derive(Debug)]
struct Running {
    config: Arc<MqttBridgeConfig>,
    stop: watch::Sender<Stop>,
    task: JoinHandle<()>,
}

/// Why a bridge could not be started.
#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    /// Its TLS settings are unusable (a PEM file).
    #[error("mqtt_bridges `{name}`: {message}")]
    Tls {
        /// The bridge.
        name: String,
        /// What is wrong.
        message: String,
    },
}

/// Loads `config`'s TLS files, if it has TLS (`tern check-config`).
///
/// # Errors
/// A file is missing or unusable; the error names the bridge and the file.
pub fn check_tls(config: &MqttBridgeConfig) -> Result<(), BridgeError> {
    let Some(settings) = &config.tls else {
        return Ok(());
    };
    transport::Tls::new(settings)
        .map(|_| ())
        .map_err(|e| BridgeError::Tls {
            name: config.name.clone(),
            message: e.to_string(),
        })
}

/// The TLS client of `config`, if it has TLS; a failure is also the bridge's last error.
fn tls_of(
    broker: &Broker,
    config: &MqttBridgeConfig,
) -> Result<Option<transport::Tls>, BridgeError> {
    let Some(settings) = &config.tls else {
        return Ok(None);
    };
    transport::Tls::new(settings).map(Some).map_err(|e| {
        broker
            .bridge_links()
            .get_or_add(&config.name)
            .set_last_error(e.to_string());
        BridgeError::Tls {
            name: config.name.clone(),
            message: e.to_string(),
        }
    })
}

/// The running bridges of a broker.
#[derive(Debug)]
pub struct MqttBridges {
    broker: Broker,
    running: Mutex<HashMap<String, Running>>,
}

impl MqttBridges {
    /// Starts the bridges of the broker's configuration and waits (at most
    /// [`READY_TIMEOUT`]) until each one's local session is subscribed, so that a message
    /// published once the listeners open reaches the bridges. A bridge whose TLS files
    /// cannot be loaded is not started; its error is its last error and is logged.
    pub async fn start(broker: Broker) -> Arc<MqttBridges> {
        let bridges = Arc::new(MqttBridges {
            broker: broker.clone(),
            running: Mutex::new(HashMap::new()),
        });
        let mut ready = Vec::new();
        for config in broker.mqtt_bridges_config() {
            match tls_of(&broker, config) {
                Ok(tls) => ready.push(bridges.spawn(config.clone(), tls)),
                Err(e) => tracing::error!(error = %e, "bridge not started"),
            }
        }
        let all = async {
            for each in ready {
                let _ = each.await;
            }
        };
        if tokio::time::timeout(READY_TIMEOUT, all).await.is_err() {
            tracing::warn!("a bridge's local session is not subscribed yet; starting anyway");
        }
        bridges
    }

    /// Spawns the bridge; the receiver is told when its local session is subscribed.
    fn spawn(
        &self,
        config: MqttBridgeConfig,
        tls: Option<transport::Tls>,
    ) -> tokio::sync::oneshot::Receiver<()> {
        let status = self.broker.bridge_links().get_or_add(&config.name);
        let config = Arc::new(config);
        let (stop, stopped) = watch::channel(Stop::Run);
        let (ready, is_ready) = tokio::sync::oneshot::channel();
        let bridge = run::Bridge::new(
            self.broker.clone(),
            config.clone(),
            status,
            tls,
            Some(ready),
        );
        let task = tokio::spawn(bridge.run(stopped));
        tracing::info!(bridge = %config.name, remotes = ?config.remotes, "bridge started");
        self.lock()
            .insert(config.name.clone(), Running { config, stop, task });
        is_ready
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Running>> {
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Puts `new` in force (SIGHUP reload): unchanged bridges keep running untouched,
    /// changed ones are restarted (keeping their local session and queue), removed ones
    /// stop and end their local session, new ones start. The stops and starts finish in
    /// the background (a restarted bridge starts once its old task said goodbye).
    ///
    /// # Errors
    /// A new or changed bridge's TLS files could not be loaded: nothing was changed.
    pub fn reload(
        self: &Arc<Self>,
        new: &[MqttBridgeConfig],
    ) -> Result<ReloadedBridges, BridgeError> {
        let mut report = ReloadedBridges::default();
        let mut starting = Vec::new();
        {
            let running = self.lock();
            for config in new {
                match running.get(&config.name) {
                    Some(current) if *current.config == *config => continue,
                    Some(_) => report.restarted.push(config.name.clone()),
                    None => report.started.push(config.name.clone()),
                }
                starting.push((config.clone(), tls_of(&self.broker, config)?));
            }
            report.stopped = running
                .keys()
                .filter(|name| !new.iter().any(|c| &c.name == *name))
                .cloned()
                .collect();
        }
        let mut stopping = Vec::new();
        let mut running = self.lock();
        for name in report.restarted.iter().chain(&report.stopped) {
            if let Some(old) = running.remove(name) {
                let reason = if report.stopped.contains(name) {
                    self.broker.bridge_links().remove(name);
                    Stop::Remove
                } else {
                    Stop::Restart
                };
                let _ = old.stop.send(reason);
                stopping.push(old.task);
            }
        }
        drop(running);
        let this = self.clone();
        tokio::spawn(async move {
            for task in stopping {
                let _ = tokio::time::timeout(STOP_TIMEOUT, task).await;
            }
            for (config, tls) in starting {
                // Not waited for: a reload does not hold anything back.
                drop(this.spawn(config, tls));
            }
        });
        Ok(report)
    }

    /// Stops every bridge (shutdown); local sessions are kept.
    pub async fn stop(&self) {
        let tasks: Vec<JoinHandle<()>> = self
            .lock()
            .drain()
            .map(|(_, running)| {
                let _ = running.stop.send(Stop::Restart);
                running.task
            })
            .collect();
        for task in tasks {
            let _ = tokio::time::timeout(STOP_TIMEOUT, task).await;
        }
    }

    /// The names of the running bridges.
    pub fn names(&self) -> Vec<String> {
        self.lock().keys().cloned().collect()
    }
}

/// What a reload did to the bridges.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReloadedBridges {
    /// Changed and restarted.
    pub restarted: Vec<String>,
    /// Removed.
    pub stopped: Vec<String>,
    /// New.
    pub started: Vec<String>,
}
