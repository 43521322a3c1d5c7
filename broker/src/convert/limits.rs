//! Mosquitto's limits to Tern's `[limits]`: connections, packet and message size,
//! inflight window (also Mosquitto's Receive Maximum), queue, keep alive, topic aliases and
//! the expiry of persistent sessions. Also lists the Mosquitto defaults that Tern does not
//! share, for the limits the file leaves unset.
//!
//! Where Mosquitto counts per listener (`max_connections`, `max_topic_alias`) and Tern for
//! the whole broker, the finding says what the single value is.

use crate::config::Config;

use super::emit::{Entry, Table, Value};
use super::finding::{Finding, FindingKind};
use super::listeners::MappedListener;
use super::model::{last, Line};

/// Room added to `message_size_limit` (a payload size) for the fixed header, the topic and
/// the properties, to make a whole-packet limit of it.
const PACKET_OVERHEAD_BYTES: i64 = 8192;

/// Mosquitto's `max_topic_alias` when a listener does not set it.
const MOSQUITTO_TOPIC_ALIAS: u16 = 10;

/// `[limits]`, and the defaults note for the header.
pub(super) fn map_limits(
    globals: &[Line],
    listeners: &[MappedListener],
    labels: &[String],
    findings: &mut Vec<Finding>,
) -> (Table, Vec<String>) {
    let tern = Config::default_config().limits;
    let mut l = Limits {
        globals,
        findings,
        entries: Vec::new(),
        defaults: Vec::new(),
    };
    l.max_connections(listeners, labels, tern.max_connections);
    l.packet_size(tern.max_packet_size_bytes, tern.writer_cap_bytes);
    l.keep_alive(tern.max_keep_alive_secs);
    l.inflight(tern.max_inflight_messages);
    l.queue(tern.max_queued_messages, tern.max_queued_bytes);
    l.topic_alias(listeners, labels, tern.topic_alias_maximum);
    l.session_expiry();
    l.defaults.push(format!(
        "connections per IP address: Mosquitto has no limit; Tern's \
         max_connections_per_ip is {} and max_connect_rate_per_ip {}/s",
        tern.max_connections_per_ip, tern.max_connect_rate_per_ip
    ));
    let table = Table {
        name: "limits",
        comment: Vec::new(),
        entries: l.entries,
    };
    (table, l.defaults)
}

struct Limits<'a> {
    globals: &'a [Line],
    findings: &'a mut Vec<Finding>,
    entries: Vec<Entry>,
    defaults: Vec<String>,
}

impl<'a> Limits<'a> {
    /// The last `key` as a number, with its line; a malformed value is reported.
    fn int(&mut self, key: &str) -> Option<(i64, &'a Line)> {
        let line = last(self.globals, key)?;
        match line.integer() {
            Ok(n) => Some((n, line)),
            Err(f) => {
                self.findings.push(f);
                None
            }
        }
    }

    fn push(&mut self, key: &'static str, value: i64, comment: impl Into<String>) {
        self.entries
            .push(Entry::new(key, Value::Int(value), comment));
    }

    fn max_connections(&mut self, listeners: &[MappedListener], labels: &[String], tern: usize) {
        let global = self
            .int("global_max_connections")
            .or_else(|| self.int("global_max_clients"));
        if let Some((n, line)) = global {
            if n > 0 {
                self.push("max_connections", n, format!("{} ({})", line.key, line.at));
            }
            return;
        }
        let open = listeners.iter().zip(labels).filter(|(m, _)| m.open);
        let (limited, unlimited): (Vec<_>, Vec<_>) =
            open.partition(|(m, _)| m.max_connections.is_some());
        if limited.is_empty() {
            self.defaults.push(format!(
                "max_connections: Mosquitto has no limit; Tern's is {tern}"
            ));
            return;
        }
        let total = limited
            .iter()
            .filter_map(|(m, _)| m.max_connections.as_ref().map(|c| c.0))
            .fold(0i64, i64::saturating_add);
        let names: Vec<String> = limited.iter().map(|(_, l)| (*l).clone()).collect();
        let line = limited
            .iter()
            .find_map(|(m, _)| m.max_connections.as_ref().map(|c| &c.1));
        let at = |reason: String| Finding {
            at: line.map(|l| l.at.clone()),
            option: "max_connections".into(),
            kind: FindingKind::HandledDifferently,
            reason,
        };
        if !unlimited.is_empty() {
            let others: Vec<String> = unlimited.iter().map(|(_, l)| (*l).clone()).collect();
            self.findings.push(at(format!(
                "Tern counts connections over all listeners together, and {} had no limit: \
                 the limits of {} are not kept (Tern's total stays {tern})",
                others.join(", "),
                names.join(", ")
            )));
            return;
        }
        if total == 0 {
            self.findings.push(at(format!(
                "{} refused every client (max_connections 0); Tern needs at least 1, \
                 so its total stays {tern}",
                names.join(", ")
            )));
            return;
        }
        if names.len() > 1 {
            self.findings.push(at(format!(
                "Tern counts connections over all listeners together: their sum, {total}, is \
                 the limit, not {} each",
                names.join(", ")
            )));
        }
        self.push(
            "max_connections",
            total,
            format!("max_connections of {}", names.join(", ")),
        );
    }

    fn packet_size(&mut self, tern_packet: u32, writer_cap_bytes: usize) {
        let max = i64::from(tern_codec::decoder::MAX_PACKET_SIZE_BYTES);
        let packet = self.int("max_packet_size");
        let message = self.int("message_size_limit").filter(|(n, _)| *n > 0);
        let value = match (packet, message) {
            (Some((n, line)), message) => {
                if let Some((_, m)) = message {
                    self.findings.push(m.finding(
                        FindingKind::HandledDifferently,
                        "Tern has no separate payload limit; max_packet_size bounds whole \
                         packets",
                    ));
                }
                if !(20..=max).contains(&n) {
                    self.findings.push(
                        line.malformed(format!("{n} is not 20 to {max} (Mosquitto refuses it)")),
                    );
                    return;
                }
                if n < 64 {
                    self.findings.push(line.finding(
                        FindingKind::HandledDifferently,
                        format!("{n} is below Tern's smallest, 64 bytes, which is used"),
                    ));
                }
                self.push(
                    "max_packet_size_bytes",
                    n.max(64),
                    format!("max_packet_size ({})", line.at),
                );
                n.max(64)
            }
            (None, Some((n, line))) => {
                let bytes = n.saturating_add(PACKET_OVERHEAD_BYTES).min(max);
                self.findings.push(line.finding(
                    FindingKind::HandledDifferently,
                    format!(
                        "Tern limits whole packets, not payloads: max_packet_size_bytes = \
                         {bytes} ({n} + {PACKET_OVERHEAD_BYTES} for header, topic and \
                         properties); a larger packet ends the connection (0x95) where \
                         Mosquitto dropped the message"
                    ),
                ));
                self.push(
                    "max_packet_size_bytes",
                    bytes,
                    format!("message_size_limit ({})", line.at),
                );
                bytes
            }
            (None, None) => {
                self.defaults.push(format!(
                    "max_packet_size: Mosquitto has no limit; Tern's max_packet_size_bytes is \
                     {tern_packet}"
                ));
                return;
            }
        };
        if usize::try_from(value).is_ok_and(|v| v > writer_cap_bytes) {
            self.push(
                "writer_cap_bytes",
                value,
                "raised to max_packet_size_bytes, which Tern requires (per-client output buffer)",
            );
        }
    }

    fn keep_alive(&mut self, tern: u16) {
        let Some((n, line)) = self.int("max_keepalive") else {
            let tern = if tern == 0 {
                "none".to_string()
            } else {
                format!("{tern} s")
            };
            self.defaults.push(format!(
                "max_keepalive: Mosquitto 65535; Tern's cap (max_keep_alive_secs) is {tern}"
            ));
            return;
        };
        match u16::try_from(n) {
            Ok(n) => self.push(
                "max_keep_alive_secs",
                i64::from(n),
                format!(
                    "max_keepalive ({}); as in Mosquitto, told to 5.0 clients only",
                    line.at
                ),
            ),
            Err(_) => self
                .findings
                .push(line.malformed(format!("{n} is not 0 to 65535 (Mosquitto refuses it)"))),
        }
    }

    fn inflight(&mut self, tern: u16) {
        let Some((n, line)) = self.int("max_inflight_messages") else {
            self.defaults.push(format!(
                "max_inflight_messages: Mosquitto 20 (also its Receive Maximum); Tern's \
                 max_inflight_messages is {tern}"
            ));
            return;
        };
        if n > 65535 {
            let f = line.malformed(format!("{n} is over 65535 (Mosquitto refuses it)"));
            return self.findings.push(f);
        }
        let (value, note) = if n <= 0 {
            (65535, ": 0, no maximum")
        } else {
            (n, "")
        };
        let at = format!("max_inflight_messages ({}){note}", line.at);
        self.push("max_inflight_messages", value, at.clone());
        self.push(
            "receive_maximum",
            value,
            format!("{at}; Mosquitto announces it as its Receive Maximum too"),
        );
    }

    fn queue(&mut self, tern_messages: usize, tern_bytes: usize) {
        match self.int("max_queued_messages") {
            Some((n, line)) if n <= 0 => self.push(
                "max_queued_messages",
                i64::from(u32::MAX),
                format!("max_queued_messages 0 ({}): no limit", line.at),
            ),
            Some((n, line)) => self.push(
                "max_queued_messages",
                n,
                format!("max_queued_messages ({})", line.at),
            ),
            None => self.defaults.push(format!(
                "max_queued_messages: Mosquitto 1000; Tern's is {tern_messages}"
            )),
        }
        match self.int("max_queued_bytes") {
            Some((n, line)) if n <= 0 => self.push(
                "max_queued_bytes",
                i64::MAX,
                format!("max_queued_bytes 0 ({}): no limit", line.at),
            ),
            Some((n, line)) => self.push(
                "max_queued_bytes",
                n,
                format!("max_queued_bytes ({})", line.at),
            ),
            None => self.defaults.push(format!(
                "max_queued_bytes: Mosquitto has no limit; Tern's is {tern_bytes}"
            )),
        }
    }

    fn topic_alias(&mut self, listeners: &[MappedListener], labels: &[String], tern: u16) {
        let open: Vec<_> = listeners
            .iter()
            .zip(labels)
            .filter(|(m, _)| m.open)
            .collect();
        let set: Vec<_> = open
            .iter()
            .filter_map(|(m, _)| m.max_topic_alias.as_ref())
            .collect();
        let Some((_, first_line)) = set.first() else {
            self.defaults.push(format!(
                "max_topic_alias: Mosquitto 10; Tern's topic_alias_maximum is {tern}"
            ));
            return;
        };
        let value = open
            .iter()
            .map(|(m, _)| {
                m.max_topic_alias
                    .as_ref()
                    .map_or(MOSQUITTO_TOPIC_ALIAS, |t| t.0)
            })
            .min()
            .unwrap_or(MOSQUITTO_TOPIC_ALIAS);
        let differ = open.iter().any(|(m, _)| {
            m.max_topic_alias
                .as_ref()
                .map_or(MOSQUITTO_TOPIC_ALIAS, |t| t.0)
                != value
        });
        if differ {
            self.findings.push(first_line.finding(
                FindingKind::HandledDifferently,
                format!("Tern has one topic_alias_maximum for all listeners: the lowest, {value}"),
            ));
        }
        self.push(
            "topic_alias_maximum",
            i64::from(value),
            format!("max_topic_alias ({})", first_line.at),
        );
    }

    fn session_expiry(&mut self) {
        let Some(line) = last(self.globals, "persistent_client_expiration") else {
            return;
        };
        let Some(secs) = expiration_secs(&line.value) else {
            let f = line.malformed(format!(
                "`{}` is not a number followed by h, d, w, m or y (Mosquitto refuses it)",
                line.value
            ));
            return self.findings.push(f);
        };
        self.findings.push(line.finding(
            FindingKind::HandledDifferently,
            "max_session_expiry_secs also caps the Session Expiry Interval 5.0 clients ask for",
        ));
        self.push(
            "max_session_expiry_secs",
            secs,
            format!("persistent_client_expiration {} ({})", line.value, line.at),
        );
    }
}

/// `14d` and the like, in seconds (Mosquitto: a month is 30 days, a year 365), at most
/// `u32::MAX`.
fn expiration_secs(value: &str) -> Option<i64> {
    let value = value.split_whitespace().next()?;
    let unit = match value.chars().last()? {
        'h' => 3600,
        'd' => 86_400,
        'w' => 7 * 86_400,
        'm' => 30 * 86_400,
        'y' => 365 * 86_400,
        _ => return None,
    };
    let count: i64 = value[..value.len() - 1].parse().ok().filter(|&n| n > 0)?;
    Some(count.saturating_mul(unit).min(i64::from(u32::MAX)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expirations() {
        assert_eq!(expiration_secs("2h"), Some(7200));
        assert_eq!(expiration_secs("14d"), Some(14 * 86_400));
        assert_eq!(expiration_secs("1y"), Some(365 * 86_400));
        assert_eq!(expiration_secs("999999y"), Some(i64::from(u32::MAX)));
        assert_eq!(expiration_secs("5"), None);
        assert_eq!(expiration_secs("0d"), None);
        assert_eq!(expiration_secs("é"), None);
    }
}
