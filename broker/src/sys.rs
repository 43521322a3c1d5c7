//! `$SYS/broker/...`: broker statistics published as retained messages every
//! `sys.interval_secs`, with Mosquitto's topic names; also purges expired retained messages.

use std::time::Duration;

use tokio::time::{Instant, MissedTickBehavior};

use crate::broker::Broker;
use crate::message::Message;
use crate::metrics::Metrics;
use crate::router::RouteScratch;

/// The version published on `$SYS/broker/version`.
pub const VERSION: &str = concat!("tern ", env!("CARGO_PKG_VERSION"));

/// Publishes statistics until the task is aborted.
pub async fn run(broker: Broker) {
    let secs = broker.sys_config().interval_secs;
    if secs == 0 {
        return;
    }
    let mut interval = tokio::time::interval(Duration::from_secs(secs));
    interval.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let mut scratch = RouteScratch::default();
    loop {
        interval.tick().await;
        let now = Instant::now();
        broker.purge_expired_retained(now);
        publish_stats(&broker, &mut scratch, now);
    }
}

/// Publishes one round of statistics.
pub fn publish_stats(broker: &Broker, scratch: &mut RouteScratch, now: Instant) {
    let m = &broker.metrics();
    let uptime = now.saturating_duration_since(broker.started_at()).as_secs();
    let stats: [(&str, String); 9] = [
        ("$SYS/broker/version", VERSION.to_string()),
        ("$SYS/broker/uptime", format!("{uptime} seconds")),
        (
            "$SYS/broker/clients/connected",
            Metrics::get(&m.clients_connected).to_string(),
        ),
        (
            "$SYS/broker/messages/received",
            Metrics::get(&m.messages_received).to_string(),
        ),
        (
            "$SYS/broker/messages/sent",
            Metrics::get(&m.messages_sent).to_string(),
        ),
        (
            "$SYS/broker/bytes/received",
            Metrics::get(&m.bytes_received).to_string(),
        ),
        (
            "$SYS/broker/bytes/sent",
            Metrics::get(&m.bytes_sent).to_string(),
        ),
        (
            "$SYS/broker/subscriptions/count",
            Metrics::get(&m.subscriptions).to_string(),
        ),
        (
            "$SYS/broker/retained messages/count",
            Metrics::get(&m.retained_messages).to_string(),
        ),
    ];
    for (topic, value) in stats.into_iter().chain(persistence_stats(broker)) {
        let message = Message::broker_made(topic, value, true, now);
        broker.publish(&message, scratch, now);
    }
    for (topic, value) in bridge_stats(broker) {
        let message = Message::broker_made(&topic, value, true, now);
        broker.publish(&message, scratch, now);
    }
}

/// `$SYS/broker/bridge/<name>/...`: each MQTT bridge's state (`up`, `connecting`,
/// `down`), the remote it is on or last tried, its last error, what it holds for the
/// remote, and its counters.
fn bridge_stats(broker: &Broker) -> Vec<(String, String)> {
    let mut stats = Vec::new();
    for link in broker.bridge_links().all() {
        let topic = |leaf: &str| format!("$SYS/broker/bridge/{}/{leaf}", link.name);
        stats.push((topic("state"), link.state().name().to_string()));
        stats.push((topic("remote"), link.remote()));
        stats.push((topic("last error"), link.last_error().unwrap_or_default()));
        stats.push((
            topic("queued"),
            crate::metrics::bridge_links::LinkStatus::get(&link.queued).to_string(),
        ));
        for (name, _, value) in link.counters.snapshot() {
            let leaf = match name.strip_prefix("messages_") {
                Some(rest) => format!("messages/{rest}"),
                None => name.replace('_', " "),
            };
            stats.push((topic(&leaf), value.to_string()));
        }
    }
    stats
}

/// `$SYS/broker/persistence/...` (Tern's own; Mosquitto has no equivalent): the journal's
/// size and activity, when persistence is on.
fn persistence_stats(broker: &Broker) -> Vec<(&'static str, String)> {
    let Some(journal) = broker.journal() else {
        return Vec::new();
    };
    let m = broker.metrics();
    let mut stats = vec![
        (
            "$SYS/broker/persistence/disk bytes",
            journal.disk_bytes().to_string(),
        ),
        (
            "$SYS/broker/persistence/checkpoints",
            Metrics::get(&m.journal_checkpoints).to_string(),
        ),
        (
            "$SYS/broker/persistence/recovery ms",
            Metrics::get(&m.journal_recovery_ms).to_string(),
        ),
    ];
    if let Some(wal) = journal.wal() {
        let load = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
        let s = wal.stats();
        stats.push((
            "$SYS/broker/persistence/records",
            load(&s.records).to_string(),
        ));
        stats.push((
            "$SYS/broker/persistence/fsyncs",
            load(&s.fsyncs).to_string(),
        ));
        stats.push((
            "$SYS/broker/persistence/commits",
            load(&s.batches).to_string(),
        ));
    }
    stats
}
